"""Client commands of a running gateway: ``carbonlink transfer
submit|evaluate|batch|get|list``, ``retire``, ``surrender`` and ``use get|list|resolve``.

They speak the public gRPC API (``--target``), like any other client. The commands that
act print a short human summary or, with ``--json``, the resource in protobuf's JSON
mapping; ``use get|list`` print the JSON always (every field, unset ones too), as the
auditor's listings do.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway import client_security, convert
from gateway.blocks import parse_block

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
_DEFAULT_TARGET = "127.0.0.1:50051"
_STATE_NAMES = tuple(
    name.removeprefix("TRANSFER_STATE_").lower()
    for name, _ in model_pb2.TransferState.items()
    if name != "TRANSFER_STATE_UNSPECIFIED"
)
_FINAL_STATES = (
    model_pb2.TRANSFER_STATE_COMPLETED,
    model_pb2.TRANSFER_STATE_REJECTED,
    model_pb2.TRANSFER_STATE_ROLLED_BACK,
)
"""The states a transfer never leaves."""
_USE_STATE_NAMES = tuple(
    name.removeprefix("USE_STATE_").lower()
    for name, _ in model_pb2.UseState.items()
    if name != "USE_STATE_UNSPECIFIED"
)


def account_ref(text: str) -> model_pb2.AccountRef:
    """``REGISTRY:ACCOUNT``, an argparse type."""
    registry, sep, account = text.partition(":")
    if not sep or not registry or not account:
        raise argparse.ArgumentTypeError(f"{text!r} is not REGISTRY:ACCOUNT")
    return model_pb2.AccountRef(registry=registry, account=account)


def _holder(text: str) -> model_pb2.AccountRef:
    """``REGISTRY:ACCOUNT``, or a bare ``REGISTRY`` for every account of it."""
    registry, sep, account = text.partition(":")
    if not registry or (sep and not account):
        raise argparse.ArgumentTypeError(f"{text!r} is not REGISTRY:ACCOUNT or REGISTRY")
    return model_pb2.AccountRef(registry=registry, account=account)


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


def page_size(text: str) -> int:
    """A ``--limit`` or ``--page-size`` flag: a page size of 1 or more that fits the API's
    int32."""
    size = int32(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{size} is not a page size (1 or more)")
    return size


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, gateway_pb2_grpc.LinkageGatewayStub]:
    channel = client_security.open_channel(args)
    return channel, gateway_pb2_grpc.LinkageGatewayStub(channel)


def message_dict(message: Message) -> dict[str, Any]:
    """``message`` in protobuf's JSON mapping, every field shown (unset ones with their
    zero)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def print_json(message: Message, stdout: TextIO | None = None) -> None:
    """``message`` as protobuf's JSON, every field shown (unset ones with their zero)."""
    print(json.dumps(message_dict(message), indent=2, sort_keys=True), file=stdout)


def _print(message: Message, args: argparse.Namespace, summary: str) -> None:
    if args.json:
        # Every field, so that a script reads a false ``allowed`` or an empty list as
        # such rather than finding the key missing.
        print_json(message)
    else:
        print(summary)


def _summary(transfer: model_pb2.Transfer) -> str:
    state = model_pb2.TransferState.Name(transfer.state).removeprefix("TRANSFER_STATE_")
    line = f"{transfer.name} {state}"
    if transfer.failure_reason:
        line += f": {transfer.failure_reason}"
    return line


_OUTCOME_UNKNOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""Codes after which an instruction may have been recorded, or may yet be carried on."""


def _call(args: argparse.Namespace, invoke: Any, request_id: str = "") -> int:
    """Run ``invoke`` on a stub of the gateway; a refusal printed, and its exit code.

    ``request_id`` is the instruction's idempotency key: when the call ends with its
    outcome unknown (the gateway or a registry did not answer), it is printed, since only
    the same key asks after the same instruction; a new one would make another.
    """
    try:
        channel, stub = _stub(args)
    except client_security.ClientSetupError as exc:
        print(f"carbonlink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(invoke(stub))
    except grpc.RpcError as exc:
        print(f"carbonlink: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if request_id and exc.code() in _OUTCOME_UNKNOWN:
            print(
                f"carbonlink: the request may have been recorded and carried on: run the "
                f"same command with --request-id {request_id} for its outcome (another id "
                "would be another request)",
                file=sys.stderr,
            )
        return EXIT_REFUSED
    except client_security.ClientSetupError as exc:
        print(f"carbonlink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        channel.close()


def _selectors(args: argparse.Namespace) -> list[model_pb2.UnitSelector]:
    """The units named by ``--serial`` and ``--block``, in that order."""
    selectors = [model_pb2.UnitSelector(serial=s) for s in args.serial]
    selectors += [model_pb2.UnitSelector(block=convert.block_id_to_pb(b)) for b in args.block]
    return selectors


def _usage(command: str, message: str) -> int:
    print(f"carbonlink {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _instruction(args: argparse.Namespace, command: str) -> model_pb2.TransferInstruction | int:
    """The transfer instruction ``transfer submit`` and ``transfer evaluate`` name, or the
    usage error's exit code when the flags cannot make one."""
    if not (args.serial or args.block):
        return _usage(command, "name the units with --serial or --block")
    if bool(args.currency) != bool(args.amount):
        return _usage(command, "a settlement needs both --currency and --amount, or neither")
    if args.compliance_year is not None and args.use != "corsia":
        return _usage(
            command,
            f"--compliance-year names a CORSIA obligation's year: it needs --use corsia, "
            f"not --use {args.use}",
        )
    instruction = model_pb2.TransferInstruction(
        source=args.source,
        destination=args.destination,
        units=_selectors(args),
        intended_use=args.use,
        compliance_year=args.compliance_year or 0,
    )
    if args.currency:
        instruction.settlement.CopyFrom(
            model_pb2.Settlement(currency=args.currency, amount=args.amount)
        )
    return instruction


def _submit(args: argparse.Namespace) -> int:
    instruction = _instruction(args, "transfer submit")
    if isinstance(instruction, int):
        return instruction
    request = gateway_pb2.SubmitTransferRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        instruction=instruction,
        reply_when=(
            gateway_pb2.REPLY_WHEN_ACCEPTED if args.accept_only else gateway_pb2.REPLY_WHEN_SETTLED
        ),
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "SubmitTransfer", request)
        transfer = stub.SubmitTransfer(request, timeout=args.timeout)
        _print(transfer, args, _summary(transfer))
        if transfer.state == model_pb2.TRANSFER_STATE_COMPLETED:
            return EXIT_OK
        if args.accept_only and transfer.state not in _FINAL_STATES:
            print(
                f"carbonlink: {transfer.name} is accepted: the gateway settles it in the "
                f"background; `carbonlink transfer get {transfer.name}` shows where it stands",
                file=sys.stderr,
            )
            return EXIT_OK
        if transfer.state not in _FINAL_STATES:
            # Not refused: waiting on a registry, which the gateway retries by itself.
            print(
                f"carbonlink: {transfer.name} is not final yet: the gateway carries it on by "
                f"itself; `carbonlink transfer get {transfer.name}` shows where it stands",
                file=sys.stderr,
            )
        return EXIT_REFUSED

    return _call(args, invoke, request.request_id)


def _decision_summary(decision: model_pb2.Decision) -> str:
    verdict = "allowed" if decision.allowed else "DENIED"
    if decision.pack_versions:
        verdict += f" by {', '.join(decision.pack_versions)}"
    lines = [verdict]
    for v in decision.violations:
        lines.append(f"  {v.rule_id}: {v.message}")
        if v.source:
            lines.append(f"    source: {v.source}")
    if decision.deferred_rules:
        lines.append(f"  left to the surrender: {', '.join(decision.deferred_rules)}")
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> int:
    instruction = _instruction(args, "transfer evaluate")
    if isinstance(instruction, int):
        return instruction

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        reply = stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=instruction), timeout=args.timeout
        )
        _print(reply, args, _decision_summary(reply.decision))
        return EXIT_OK if reply.decision.allowed else EXIT_REFUSED

    return _call(args, invoke)


def _batch_request(args: argparse.Namespace) -> gateway_pb2.SubmitTransfersRequest | int:
    """The batch of ``FILE``, each instruction without a request id given
    ``BATCH-INDEX``, or the usage error's exit code."""
    try:
        text = Path(args.file).read_text(encoding="utf-8")
        request = json_format.Parse(text, gateway_pb2.SubmitTransfersRequest())
    # ValueError: not UTF-8 text; ParseError: not JSON, or not the batch message.
    except (OSError, ValueError, json_format.ParseError) as exc:
        return _usage("transfer batch", f"{args.file}: {exc}")
    if not request.transfers:
        return _usage("transfer batch", f'{args.file}: no instructions in "transfers"')
    if request.request_id or request.HasField("signature"):
        return _usage(
            "transfer batch",
            f"{args.file}: give the batch's request id with --request-id; the command signs it",
        )
    request.request_id = args.request_id or uuid.uuid4().hex
    for i, item in enumerate(request.transfers):
        if not item.request_id:
            item.request_id = f"{request.request_id}-{i}"
    return request


def _batch_summary(reply: gateway_pb2.SubmitTransfersResponse) -> str:
    lines = []
    for i, result in enumerate(reply.results):
        if result.HasField("transfer"):
            outcome = _summary(result.transfer)
        else:
            outcome = f"{_code_name(result.error.code)}: {result.error.message}"
        lines.append(f"[{i}] {result.request_id}: {outcome}")
    return "\n".join(lines)


def _code_name(code: int) -> str:
    """A google.rpc.Status code by its name, as a refused call's is printed."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), f"code {code}")


def _batch(args: argparse.Namespace) -> int:
    request = _batch_request(args)
    if isinstance(request, int):
        return request

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "SubmitTransfers", request)
        reply = stub.SubmitTransfers(request, timeout=args.timeout)
        _print(reply, args, _batch_summary(reply))
        completed = all(
            r.HasField("transfer") and r.transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
            for r in reply.results
        )
        return EXIT_OK if completed else EXIT_REFUSED

    return _call(args, invoke, request.request_id)


def _get(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("transfers/") else f"transfers/{args.name}"

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        transfer = stub.GetTransfer(gateway_pb2.GetTransferRequest(name=name), timeout=args.timeout)
        _print(transfer, args, _summary(transfer))
        return EXIT_OK

    return _call(args, invoke)


def _list(args: argparse.Namespace) -> int:
    state = model_pb2.TRANSFER_STATE_UNSPECIFIED
    if args.state:
        state = model_pb2.TransferState.Value(f"TRANSFER_STATE_{args.state.upper()}")

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        reply = stub.ListTransfers(
            gateway_pb2.ListTransfersRequest(
                page_size=args.page_size,
                page_token=args.page_token,
                state=state,
                registry=args.registry,
            ),
            timeout=args.timeout,
        )
        lines = [_summary(t) for t in reply.transfers] or ["no transfers"]
        if reply.next_page_token:
            # Else a page reads as the whole listing: say that there is more, and how.
            token = reply.next_page_token
            lines.append(f"more: ask again, same filters, with --page-token {token}")
        _print(reply, args, "\n".join(lines))
        return EXIT_OK

    return _call(args, invoke)


def _retire(args: argparse.Namespace) -> int:
    if not (args.serial or args.block):
        return _usage("retire", "name the units with --serial or --block")
    request = gateway_pb2.RetireRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        account=args.account,
        units=_selectors(args),
        beneficiary=args.beneficiary,
        claim_text=args.claim,
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "Retire", request)
        use = stub.Retire(request, timeout=args.timeout)
        _print(use, args, f"{use.name} retired for {use.beneficiary}")
        return EXIT_OK

    return _call(args, invoke, request.request_id)


def _surrender(args: argparse.Namespace) -> int:
    if not (args.serial or args.block):
        return _usage("surrender", "name the units with --serial or --block")
    request = gateway_pb2.SurrenderRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        account=args.account,
        units=_selectors(args),
        entity_id=args.entity,
        compliance_year=args.year,
        jurisdiction=args.jurisdiction,
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "Surrender", request)
        use = stub.Surrender(request, timeout=args.timeout)
        _print(
            use,
            args,
            f"{use.name} surrendered for {use.entity_id}, {use.jurisdiction} {use.compliance_year}",
        )
        return EXIT_OK

    return _call(args, invoke, request.request_id)


def _use_get(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("uses/") else f"uses/{args.name}"

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        print_json(stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=args.timeout))
        return EXIT_OK

    return _call(args, invoke)


def _use_resolve(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("uses/") else f"uses/{args.name}"
    if args.settle_manually and not args.reason.strip():
        return _usage(
            "use resolve",
            "--settle-manually needs --reason: what was settled where (the registry's reference)",
        )
    request = gateway_pb2.ResolveUseRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        name=name,
        action=(
            model_pb2.USE_RESOLUTION_ACTION_RETRY
            if args.retry
            else model_pb2.USE_RESOLUTION_ACTION_SETTLE_MANUALLY
        ),
        reason=args.reason,
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "ResolveUse", request)
        use = stub.ResolveUse(request, timeout=args.timeout)
        print_json(use)
        if use.state == model_pb2.USE_STATE_FAILED:
            # A retry the registry refused again: the use is as unsettled as before.
            refusal = use.resolutions[-1].refusal if use.resolutions else use.refusal_reason
            print(f"carbonlink: {use.name} is still failed: {refusal}", file=sys.stderr)
            return EXIT_REFUSED
        return EXIT_OK

    return _call(args, invoke, request.request_id)


def _use_list(args: argparse.Namespace) -> int:
    request = gateway_pb2.ListUsesRequest(
        page_size=args.limit, page_token=args.page_token, kind=args.kind or ""
    )
    if args.holder is not None:
        request.holder.CopyFrom(args.holder)
    if args.state:
        request.state = model_pb2.UseState.Value(f"USE_STATE_{args.state.upper()}")

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        reply = stub.ListUses(request, timeout=args.timeout)
        print_json(reply)
        if reply.next_page_token:
            # On stderr: stdout stays one JSON document for a script to read.
            print(
                f"more: ask again, same filters, with --page-token {reply.next_page_token}",
                file=sys.stderr,
            )
        return EXIT_OK

    return _call(args, invoke)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=_DEFAULT_TARGET, help="gateway HOST:PORT")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
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
        choices=sorted(convert.INTENDED_USES),
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
        "Prints one line per instruction; exits 1 unless every one completed.",
    )
    _common(batch)
    batch.add_argument("file", type=Path, help="the batch, JSON (see above)")
    batch.add_argument(
        "--request-id", help="the batch's idempotency key, BATCH (default: a new one)"
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
        choices=_STATE_NAMES,
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
    retire.add_argument("--request-id", help="idempotency key (default: a new one)")
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
    surrender.add_argument("--request-id", help="idempotency key (default: a new one)")
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
    resolve_use.add_argument("--request-id", help="idempotency key (default: a new one)")
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
        "--state", type=str.lower, choices=_USE_STATE_NAMES, help="only uses in this state"
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
