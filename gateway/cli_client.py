"""The parser of the client commands of a running gateway: ``carbonlink transfer
submit|evaluate|batch|get|list``, ``retire``, ``surrender`` and ``use get|list|resolve``.

They speak the public gRPC API (``--target``), like any other client. The commands that
act print a short human summary or, with ``--json``, the resource in protobuf's JSON
mapping; ``use get|list`` print the JSON always (every field, unset ones too), as the
auditor's listings do.  Parsing loads neither gRPC nor the generated messages: each
handler imports ``gateway.client_commands``, which does, when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway import addresses, client_security
from gateway.blocks import parse_block
from registry_bridge.transfers import INTENDED_USES, AccountRef

_DEFAULT_TARGET = "127.0.0.1:50051"
TRANSFER_STATE_NAMES = (
    "proposed",
    "checked",
    "source_locked",
    "destination_credited",
    "source_finalized",
    "completed",
    "rejected",
    "rolled_back",
)
"""``transfer list --state``: carbonlink.v1.TransferState's values, lower case and without
their prefix (a test holds them to the generated enum)."""
USE_STATE_NAMES = ("pending", "completed", "rejected", "failed", "resolved")
"""``use list --state``: carbonlink.v1.UseState's values, as ``TRANSFER_STATE_NAMES``."""


def account_ref(text: str) -> AccountRef:
    """``REGISTRY:ACCOUNT``, an argparse type."""
    registry, sep, account = text.partition(":")
    if not sep or not registry or not account:
        raise argparse.ArgumentTypeError(f"{text!r} is not REGISTRY:ACCOUNT")
    return AccountRef(registry=registry, account=account)


def _holder(text: str) -> AccountRef:
    """``REGISTRY:ACCOUNT``, or a bare ``REGISTRY`` for every account of it."""
    registry, sep, account = text.partition(":")
    if not registry or (sep and not account):
        raise argparse.ArgumentTypeError(f"{text!r} is not REGISTRY:ACCOUNT or REGISTRY")
    return AccountRef(registry=registry, account=account)


def int32(text: str) -> int:
    """An integer flag the API carries as int32: out of its range, a usage error here
    (the server judges the value itself; the message could not even be built)."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"{value} is outside the 32-bit range the API carries")
    return value


MAX_TIMEOUT_SECONDS = 31_622_400
"""A year: the longest ``--timeout`` (the gateway's own waits stop there too).  gRPC
takes a deadline past a few centuries, or an infinite one, as already passed."""


def timeout_seconds(text: str) -> float:
    """A ``--timeout``: more than 0 seconds, at most a year, an argparse type.  gRPC
    answers 0, a negative number, NaN or infinity with DEADLINE_EXCEEDED before asking
    the gateway anything, which reads as a gateway too slow to answer."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from exc
    if not 0 < value <= MAX_TIMEOUT_SECONDS:  # NaN too: every comparison is false
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a wait: more than 0 seconds, at most {MAX_TIMEOUT_SECONDS} (a year)"
        )
    return value


def request_id_flag(text: str) -> str:
    """A ``--request-id``, an argparse type.  An empty one (an unset shell variable, say)
    would be replaced by a new id on every run, each run then another request: the
    idempotency the flag is there for, silently lost."""
    if not text:
        raise argparse.ArgumentTypeError(
            "an empty request id would be a new request on every run: give the id, or leave "
            "the flag out for a new one"
        )
    return text


def page_size(text: str) -> int:
    """A ``--limit`` or ``--page-size`` flag: a page size of 1 or more that fits the API's
    int32."""
    size = int32(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{size} is not a page size (1 or more)")
    return size


def _submit(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.submit(args)


def _evaluate(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.evaluate(args)


def _batch(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.batch(args)


def _get(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.get(args)


def _list(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.list_transfers(args)


def _retire(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.retire(args)


def _surrender(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.surrender(args)


def _use_get(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.use_get(args)


def _use_resolve(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.use_resolve(args)


def _use_list(args: argparse.Namespace) -> int:
    from gateway import client_commands  # gRPC and the messages: for running it only

    return client_commands.use_list(args)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", type=addresses.target, default=_DEFAULT_TARGET, help="gateway HOST:PORT"
    )
    parser.add_argument(
        "--timeout", type=timeout_seconds, default=60.0, help="seconds to wait (default 60)"
    )
    client_security.add_arguments(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    _connection(parser)
    parser.add_argument("--json", action="store_true", help="print the resource as JSON")


def _json_always(parser: argparse.ArgumentParser) -> None:
    """``--json`` on a command that prints JSON whatever: taken, so that a script passing
    it to every client command is not refused here."""
    parser.add_argument("--json", action="store_true", help="JSON (what this prints anyway)")


def _unit_arguments(parser: argparse.ArgumentParser, serial_help: str) -> None:
    parser.add_argument("--serial", action="append", default=[], help=serial_help)
    parser.add_argument(
        "--block",
        action="append",
        default=[],
        type=parse_block,
        metavar="PROGRAM[/SERIES]:START-END",
        help="units by canonical block, e.g. a mirror's VCS/shenzhen-mirror:1-100 (repeatable)",
    )


def _instruction_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of one transfer instruction (``transfer submit`` and ``evaluate``)."""
    _common(parser)
    parser.add_argument(
        "--from",
        dest="source",
        type=account_ref,
        required=True,
        metavar="REGISTRY:ACCOUNT",
        help="the account the units leave (your token must name it)",
    )
    parser.add_argument(
        "--to",
        dest="destination",
        type=account_ref,
        required=True,
        metavar="REGISTRY:ACCOUNT",
        help="the account credited",
    )
    _unit_arguments(parser, "serial in the source registry's format (repeatable)")
    parser.add_argument(
        "--use",
        default="holding",
        choices=sorted(INTENDED_USES),
        help="intended use of the units, whose rules decide (default %(default)s)",
    )
    parser.add_argument(
        "--compliance-year",
        type=int32,
        metavar="YEAR",
        help="with --use corsia: the offsetting obligation's year, whose CORSIA rules decide "
        "(default: the rules of the transfer's day)",
    )
    parser.add_argument("--currency", help="settlement currency (HKD, RMB, MOP...)")
    parser.add_argument(
        "--amount", help="settlement amount in plain digits, to the cent at most: 1250.50"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``transfer submit|evaluate|batch|get|list``, ``retire``, ``surrender`` and ``use
    get|list|resolve``."""
    transfer = subparsers.add_parser("transfer", help="cross-registry transfers")
    commands = transfer.add_subparsers(dest="transfer_command", required=True)

    submit = commands.add_parser(
        "submit",
        help="move units from one registry account to another",
        description="Move units from one registry account to another: the rules of the "
        "destination decide, then the units are locked at the source, credited at the "
        "destination and finalized. Prints the transfer's name and state; exits 1 unless it "
        "completed (REJECTED by the rules, or waiting on a registry that does not answer: "
        "the gateway carries it on; read it with `transfer get`).",
    )
    _instruction_arguments(submit)
    submit.add_argument(
        "--request-id",
        type=request_id_flag,
        help="idempotency key (default: a new one); the same key and instruction again "
        "answer the first transfer",
    )
    submit.add_argument(
        "--accept-only",
        action="store_true",
        help="answer once the rules allowed the transfer and it is recorded (CHECKED; exit "
        "0), not once it is settled: the gateway settles it in the background; follow it "
        "with `transfer get`",
    )
    submit.set_defaults(handler=_submit)

    evaluate = commands.add_parser(
        "evaluate",
        help="dry run: would the rules allow this transfer? (nothing changes)",
        description="Dry run of a transfer (EvaluateTransfer): the rules engine's decision "
        "on the instruction as `transfer submit` would send it, every violated rule with "
        "its source, nothing locked or moved. Exits 1 when the transfer would be denied.",
    )
    _instruction_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    batch = commands.add_parser(
        "batch",
        help="submit a file of transfer instructions as one batch",
        description="Submit the instructions of FILE as one SubmitTransfers batch, signed "
        "once: each succeeds or fails on its own. FILE is JSON in the API's form: "
        '{"transfers": [{"request_id": "...", "instruction": {"source": {"registry": '
        '"hkmo", "account": "hk-seller"}, "destination": {...}, "units": [{"serial": '
        '"..."}], "intended_use": "holding", "settlement": {"currency": "HKD", "amount": '
        '"1000.00"}}}, ...]}. An instruction without a request_id gets BATCH-INDEX, so '
        "re-running the command with the same --request-id repeats the same requests. "
        "Prints one line per instruction; exits 1 unless every one completed (with "
        "--accept-only: unless every one was accepted).",
    )
    _common(batch)
    batch.add_argument("file", type=Path, help="the batch, JSON (see above)")
    batch.add_argument(
        "--request-id",
        type=request_id_flag,
        help="the batch's idempotency key, BATCH (default: a new one)",
    )
    batch.add_argument(
        "--accept-only",
        action="store_true",
        help="answer once the rules allowed each instruction and it is recorded (CHECKED), "
        "not once it is settled: the gateway settles the batch in the background; follow "
        "each transfer with `transfer get`",
    )
    batch.set_defaults(handler=_batch)

    get = commands.add_parser("get", help="show one transfer")
    _common(get)
    get.add_argument("name", help="transfers/ID or ID")
    get.set_defaults(handler=_get)

    listing = commands.add_parser(
        "list",
        help="list transfers",
        description="The transfers you may read, oldest first, a page at a time: a page that "
        "is not the last ends with the --page-token to read on, each page going on after the "
        "last transfer of the one before.",
    )
    _common(listing)
    listing.add_argument(
        "--state",
        type=str.lower,
        choices=TRANSFER_STATE_NAMES,
        help="only transfers in this state, e.g. completed",
    )
    listing.add_argument("--registry", default="", help="only transfers touching this registry")
    listing.add_argument(
        "--page-size",
        "--limit",
        dest="page_size",
        type=page_size,
        default=50,
        help="transfers per page (default 50; the gateway answers at most 1000)",
    )
    listing.add_argument(
        "--page-token", default="", help="the token the previous page ended with (same filters)"
    )
    listing.set_defaults(handler=_list)

    retire = subparsers.add_parser(
        "retire",
        help="retire units for a voluntary claim",
        description="Retire units of ACCOUNT for BENEFICIARY's claim: checked at their "
        "registries first (units used there already are a double use, refused with nothing "
        "done), then retired at each (a mirror's origin too). Prints the use's name; "
        "`carbonlink use get` reads it back.",
    )
    _common(retire)
    retire.add_argument(
        "--account",
        type=account_ref,
        required=True,
        metavar="REGISTRY:ACCOUNT",
        help="the account holding the units (your token must name it)",
    )
    _unit_arguments(retire, "serial in the account's registry format (repeatable)")
    retire.add_argument(
        "--beneficiary", required=True, help="on whose behalf the units are retired"
    )
    retire.add_argument("--claim", default="", help="claim text recorded with the retirement")
    retire.add_argument(
        "--request-id", type=request_id_flag, help="idempotency key (default: a new one)"
    )
    retire.set_defaults(handler=_retire)

    surrender = subparsers.add_parser(
        "surrender",
        help="surrender units for a covered entity's compliance year",
        description="Surrender units of ACCOUNT toward ENTITY's obligation for YEAR in "
        "JURISDICTION: the jurisdiction's rules (eligible units, offset limits) decide, and "
        "the token must name both the account and the entity.",
    )
    _common(surrender)
    surrender.add_argument(
        "--account",
        type=account_ref,
        required=True,
        metavar="REGISTRY:ACCOUNT",
        help="the account holding the units (your token must name it)",
    )
    _unit_arguments(surrender, "serial in the account's registry format (repeatable)")
    surrender.add_argument("--entity", required=True, help="the covered entity's id")
    surrender.add_argument(
        "--year", type=int32, required=True, help="the compliance year surrendered for"
    )
    surrender.add_argument(
        "--jurisdiction",
        required=True,
        choices=("shenzhen", "guangdong", "national"),
        help="the scheme whose obligation the units settle, and whose rules decide",
    )
    surrender.add_argument(
        "--request-id", type=request_id_flag, help="idempotency key (default: a new one)"
    )
    surrender.set_defaults(handler=_surrender)

    use = subparsers.add_parser(
        "use",
        help="retirements and surrenders, as the gateway holds them",
        description="Read back retirements and surrenders in their state: pending (a "
        "registry has not answered), completed, rejected (refused before anything was done, "
        "e.g. a double use), failed (refused after a registry had done its part: its units "
        "are held, rule CL-USE-0001, until an operator resolves it) or resolved (settled by "
        "hand), with why and each registry leg. Each prints JSON. You read the uses of the "
        "accounts your token names; auditors and regulators read all.",
    )
    use_commands = use.add_subparsers(dest="use_command", required=True)
    get_use = use_commands.add_parser("get", help="show one retirement or surrender")
    _connection(get_use)
    _json_always(get_use)
    get_use.add_argument("name", help="uses/ID or ID")
    get_use.set_defaults(handler=_use_get)
    resolve_use = use_commands.add_parser(
        "resolve",
        help="settle a failed retirement or surrender (exchange operators)",
        description="Settle a failed use: one registry did its part and a later one "
        "refused, so the units are used at one and not the other, and held until this is "
        "settled. --retry asks the refusing registry again (the use completes, or stays "
        "failed with the new refusal: exit 1). --settle-manually records that the remaining "
        "part was settled at its registry outside the gateway, which the gateway checks "
        "with the registry first; --reason is then required. Either is recorded in the "
        "provenance log. Prints the use as JSON. The same --request-id asked again changes "
        "nothing more.",
    )
    _connection(resolve_use)
    _json_always(resolve_use)
    resolve_use.add_argument("name", help="uses/ID or ID of a failed use")
    how = resolve_use.add_mutually_exclusive_group(required=True)
    how.add_argument("--retry", action="store_true", help="ask the refusing registry again")
    how.add_argument(
        "--settle-manually",
        action="store_true",
        help="record the remaining part settled outside the gateway (needs --reason)",
    )
    resolve_use.add_argument(
        "--reason", default="", help="why, in your words (the registry's reference)"
    )
    resolve_use.add_argument(
        "--request-id", type=request_id_flag, help="idempotency key (default: a new one)"
    )
    resolve_use.set_defaults(handler=_use_resolve)
    list_uses = use_commands.add_parser(
        "list",
        help="list retirements and surrenders",
        description="The uses you may read, oldest first, a page at a time: a page that "
        "is not the last says on stderr the --page-token to read on with.",
    )
    _connection(list_uses)
    _json_always(list_uses)
    list_uses.add_argument("--kind", choices=("retirement", "surrender"), help="only this kind")
    list_uses.add_argument(
        "--holder",
        type=_holder,
        metavar="REGISTRY[:ACCOUNT]",
        help="only uses of this account's units (of every account of REGISTRY alone)",
    )
    list_uses.add_argument(
        "--state", type=str.lower, choices=USE_STATE_NAMES, help="only uses in this state"
    )
    list_uses.add_argument(
        "--limit",
        "--page-size",
        dest="limit",
        type=page_size,
        default=50,
        help="uses per page (default 50; the gateway answers at most 1000)",
    )
    list_uses.add_argument(
        "--page-token", default="", help="the token the previous page ended with (same filters)"
    )
    list_uses.set_defaults(handler=_use_list)
