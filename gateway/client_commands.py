"""What the client commands of a running gateway do once parsed: ``carbonlink transfer
submit|evaluate|batch|get|list``, ``retire``, ``surrender`` and ``use get|list|resolve``
(their parser is ``gateway.cli_client``, which loads none of this).

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
from registry_bridge.transfers import AccountRef

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
_FINAL_STATES = (
    model_pb2.TRANSFER_STATE_COMPLETED,
    model_pb2.TRANSFER_STATE_REJECTED,
    model_pb2.TRANSFER_STATE_ROLLED_BACK,
)
"""The states a transfer never leaves."""


def account_to_pb(account: AccountRef) -> model_pb2.AccountRef:
    """An account parsed from ``REGISTRY:ACCOUNT`` (or a bare ``REGISTRY``), as the API
    carries it."""
    return model_pb2.AccountRef(registry=account.registry, account=account.account)


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


def print_message(message: Message, args: argparse.Namespace, summary: str) -> None:
    """``message`` as JSON under ``--json``, else ``summary``."""
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


def call(args: argparse.Namespace, invoke: Any, request_id: str = "") -> int:
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
            _say_how_to_ask_after(request_id)
        return EXIT_REFUSED
    except client_security.ClientSetupError as exc:
        print(f"carbonlink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Interrupted while the gateway had the request: it may be recorded and carried
        # on as if the answer had been lost, so say how to ask after it before
        # ``gateway.cli`` reports the interruption.
        if request_id:
            _say_how_to_ask_after(request_id)
        raise
    finally:
        channel.close()


def _say_how_to_ask_after(request_id: str) -> None:
    print(
        f"carbonlink: the request may have been recorded and carried on: run the same "
        f"command with --request-id {request_id} for its outcome (another id would be "
        "another request)",
        file=sys.stderr,
    )


def _selectors(args: argparse.Namespace) -> list[model_pb2.UnitSelector]:
    """The units named by ``--serial`` and ``--block``, in that order."""
    selectors = [model_pb2.UnitSelector(serial=s) for s in args.serial]
    selectors += [model_pb2.UnitSelector(block=convert.block_id_to_pb(b)) for b in args.block]
    return selectors


def usage_error(command: str, message: str) -> int:
    print(f"carbonlink {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _instruction(args: argparse.Namespace, command: str) -> model_pb2.TransferInstruction | int:
    """The transfer instruction ``transfer submit`` and ``transfer evaluate`` name, or the
    usage error's exit code when the flags cannot make one."""
    if not (args.serial or args.block):
        return usage_error(command, "name the units with --serial or --block")
    if bool(args.currency) != bool(args.amount):
        return usage_error(command, "a settlement needs both --currency and --amount, or neither")
    if args.compliance_year is not None and args.use != "corsia":
        return usage_error(
            command,
            f"--compliance-year names a CORSIA obligation's year: it needs --use corsia, "
            f"not --use {args.use}",
        )
    instruction = model_pb2.TransferInstruction(
        source=account_to_pb(args.source),
        destination=account_to_pb(args.destination),
        units=_selectors(args),
        intended_use=args.use,
        compliance_year=args.compliance_year or 0,
    )
    if args.currency:
        instruction.settlement.CopyFrom(
            model_pb2.Settlement(currency=args.currency, amount=args.amount)
        )
    return instruction


def submit(args: argparse.Namespace) -> int:
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
        print_message(transfer, args, _summary(transfer))
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

    return call(args, invoke, request.request_id)


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


def evaluate(args: argparse.Namespace) -> int:
    instruction = _instruction(args, "transfer evaluate")
    if isinstance(instruction, int):
        return instruction

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        reply = stub.EvaluateTransfer(
            gateway_pb2.EvaluateTransferRequest(instruction=instruction), timeout=args.timeout
        )
        print_message(reply, args, _decision_summary(reply.decision))
        return EXIT_OK if reply.decision.allowed else EXIT_REFUSED

    return call(args, invoke)


def _batch_request(args: argparse.Namespace) -> gateway_pb2.SubmitTransfersRequest | int:
    """The batch of ``FILE``, each instruction without a request id given
    ``BATCH-INDEX``, or the usage error's exit code."""
    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return usage_error("transfer batch", f"{args.file}: Failed to load JSON: {exc}")
    # ValueError: not UTF-8 text.
    except (OSError, ValueError) as exc:
        return usage_error("transfer batch", f"{args.file}: {exc}")
    if not isinstance(document, dict):
        # protobuf's parser would read [] as a batch of no instructions, and a string as
        # the names of fields.
        return usage_error(
            "transfer batch",
            f'{args.file}: the batch is a JSON object, {{"transfers": [...]}}, not '
            f"{_json_kind(document)}",
        )
    try:
        request = json_format.ParseDict(document, gateway_pb2.SubmitTransfersRequest())
    except json_format.ParseError as exc:  # not the batch message
        return usage_error("transfer batch", f"{args.file}: {exc}")
    if not request.transfers:
        return usage_error("transfer batch", f'{args.file}: no instructions in "transfers"')
    if request.request_id or request.HasField("signature"):
        return usage_error(
            "transfer batch",
            f"{args.file}: give the batch's request id with --request-id; the command signs it",
        )
    if args.accept_only:
        if request.reply_when not in (
            gateway_pb2.REPLY_WHEN_UNSPECIFIED,
            gateway_pb2.REPLY_WHEN_ACCEPTED,
        ):
            return usage_error(
                "transfer batch",
                f'{args.file}: its "reply_when" asks for another answer than --accept-only',
            )
        request.reply_when = gateway_pb2.REPLY_WHEN_ACCEPTED
    request.request_id = args.request_id or uuid.uuid4().hex
    for i, item in enumerate(request.transfers):
        if not item.request_id:
            item.request_id = f"{request.request_id}-{i}"
    return request


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number"


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


def batch(args: argparse.Namespace) -> int:
    request = _batch_request(args)
    if isinstance(request, int):
        return request

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "SubmitTransfers", request)
        reply = stub.SubmitTransfers(request, timeout=args.timeout)
        print_message(reply, args, _batch_summary(reply))
        if request.reply_when == gateway_pb2.REPLY_WHEN_ACCEPTED:
            # Accepted is as good as completed: the gateway settles the rest by itself.
            refused = (model_pb2.TRANSFER_STATE_REJECTED, model_pb2.TRANSFER_STATE_ROLLED_BACK)
            fine = all(
                r.HasField("transfer") and r.transfer.state not in refused for r in reply.results
            )
            if fine:
                print(
                    "carbonlink: the batch is accepted: the gateway settles it in the "
                    "background; `carbonlink transfer get NAME` shows where each stands",
                    file=sys.stderr,
                )
            return EXIT_OK if fine else EXIT_REFUSED
        completed = all(
            r.HasField("transfer") and r.transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
            for r in reply.results
        )
        return EXIT_OK if completed else EXIT_REFUSED

    return call(args, invoke, request.request_id)


def get(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("transfers/") else f"transfers/{args.name}"

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        transfer = stub.GetTransfer(gateway_pb2.GetTransferRequest(name=name), timeout=args.timeout)
        print_message(transfer, args, _summary(transfer))
        return EXIT_OK

    return call(args, invoke)


def list_transfers(args: argparse.Namespace) -> int:
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
        print_message(reply, args, "\n".join(lines))
        return EXIT_OK

    return call(args, invoke)


def retire(args: argparse.Namespace) -> int:
    if not (args.serial or args.block):
        return usage_error("retire", "name the units with --serial or --block")
    request = gateway_pb2.RetireRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        account=account_to_pb(args.account),
        units=_selectors(args),
        beneficiary=args.beneficiary,
        claim_text=args.claim,
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "Retire", request)
        use = stub.Retire(request, timeout=args.timeout)
        print_message(use, args, f"{use.name} retired for {use.beneficiary}")
        return EXIT_OK

    return call(args, invoke, request.request_id)


def surrender(args: argparse.Namespace) -> int:
    if not (args.serial or args.block):
        return usage_error("surrender", "name the units with --serial or --block")
    request = gateway_pb2.SurrenderRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        account=account_to_pb(args.account),
        units=_selectors(args),
        entity_id=args.entity,
        compliance_year=args.year,
        jurisdiction=args.jurisdiction,
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "Surrender", request)
        use = stub.Surrender(request, timeout=args.timeout)
        print_message(
            use,
            args,
            f"{use.name} surrendered for {use.entity_id}, {use.jurisdiction} {use.compliance_year}",
        )
        return EXIT_OK

    return call(args, invoke, request.request_id)


def use_get(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("uses/") else f"uses/{args.name}"

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        print_json(stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=args.timeout))
        return EXIT_OK

    return call(args, invoke)


def use_resolve(args: argparse.Namespace) -> int:
    name = args.name if args.name.startswith("uses/") else f"uses/{args.name}"
    if args.settle_manually and not args.reason.strip():
        return usage_error(
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

    return call(args, invoke, request.request_id)


def use_list(args: argparse.Namespace) -> int:
    request = gateway_pb2.ListUsesRequest(
        page_size=args.limit, page_token=args.page_token, kind=args.kind or ""
    )
    if args.holder is not None:
        request.holder.CopyFrom(account_to_pb(args.holder))
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

    return call(args, invoke)
