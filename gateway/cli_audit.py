"""Auditor commands: ``carbonlink trace``, ``audit verify|key|keygen``, ``reconcile`` and
``reconciliations``.

``trace`` asks a running gateway (``--target``) for the history of some units, page by
page, and, with ``--json`` or ``--out``, writes one audit bundle of every page, as JSON
lines, each page as it comes.  ``audit verify`` checks such a bundle with no database and
no network, a line at a time as it reads it: the checkpoint's signature under the log
key the auditor trusts, every inclusion proof, and the history's shape
(``registry_bridge.audit``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from adapters.serial_errors import RegistryFormatError
from adapters.serials import REGISTRY_IDS, parse_serial
from gateway import client_security, convert
from gateway.blocks import parse_block
from gateway.cli_client import page_size
from gateway.client_commands import print_json
from gateway.client_security import ClientSetupError
from gateway.log_keys import write_new_key
from registry_bridge import merkle
from registry_bridge.audit import (
    AuditFailure,
    Bundle,
    BundleEvent,
    BundleHead,
    note_line,
    verify_lines,
)
from registry_bridge.block_json import block_id_from_dict
from registry_bridge.model import BlockId
from registry_bridge.signed_note import (
    NoteError,
    NoteSigner,
    Verifier,
    open_checkpoint,
    parse_verifier_key,
)

EXIT_OK = 0
EXIT_FAILED = 1
"""The bundle does not verify, the units are unknown, or the registries disagree."""
EXIT_USAGE = 2
_DEFAULT_TARGET = "127.0.0.1:50051"


def bundle_from_response(
    response: gateway_pb2.TraceUnitsResponse, registry: str, serial: str, query: BlockId
) -> Bundle:
    """The audit bundle of a TraceUnits answer of one page."""
    return bundle_from_pages([response], registry, serial, query)


def bundle_head(
    first: gateway_pb2.TraceUnitsResponse, registry: str, serial: str, query: BlockId
) -> BundleHead:
    """What a bundle of a trace says before its pages: the first page's checkpoint
    (every page's, from an honest gateway) and log key."""
    return BundleHead(
        registry, serial, query, first.checkpoint.signed_note, first.checkpoint.verifier_key
    )


def page_events(page: gateway_pb2.TraceUnitsResponse) -> list[BundleEvent]:
    """A page's events, each with its proof, as a bundle holds them."""
    return [
        BundleEvent(
            index=e.event.index,
            leaf_data=bytes(e.event.leaf_data),
            proof=tuple(bytes(h) for h in e.proof.hashes),
        )
        for e in page.events
    ]


def page_lines(page: gateway_pb2.TraceUnitsResponse) -> Iterator[str]:
    """A page's lines of a bundle: its trace note, then its events."""
    yield note_line(page.trace_note)
    for event in page_events(page):
        yield event.line()


def bundle_from_pages(
    pages: Sequence[gateway_pb2.TraceUnitsResponse], registry: str, serial: str, query: BlockId
) -> Bundle:
    """The audit bundle of a trace read in ``pages``, held whole: every page's note and
    every page's events."""
    head = bundle_head(pages[0], registry, serial, query)
    return Bundle(
        registry=registry,
        serial=serial,
        query=query,
        checkpoint=head.checkpoint,
        trace_notes=tuple(page.trace_note for page in pages),
        log_key=head.log_key,
        events=tuple(event for page in pages for event in page_events(page)),
    )


def trace_pages(
    stub: gateway_pb2_grpc.LinkageGatewayStub,
    request: gateway_pb2.TraceUnitsRequest,
    timeout: float,
) -> Iterator[gateway_pb2.TraceUnitsResponse]:
    """Every page of a trace, each against the first page's checkpoint, asked for as
    the one before has been used: a caller that writes each away holds one at a time.

    Raises:
        grpc.RpcError: The gateway refused a page.
        ValueError: A page is not of the same trace (another checkpoint, no progress).
    """
    first = stub.TraceUnits(request, timeout=timeout)
    yield first
    token, count = first.next_page_token, 1
    while token:
        request.page_token = token
        page = stub.TraceUnits(request, timeout=timeout)
        count += 1
        if page.checkpoint.signed_note != first.checkpoint.signed_note:
            raise ValueError(
                f"page {count} is proven against another checkpoint (size "
                f"{page.checkpoint.tree_size}) than the first page (size "
                f"{first.checkpoint.tree_size})"
            )
        if not page.events or page.next_page_token == token:
            raise ValueError(f"page {count} does not go on from the one before")
        yield page
        token = page.next_page_token


def read_trace_pages(
    stub: gateway_pb2_grpc.LinkageGatewayStub,
    request: gateway_pb2.TraceUnitsRequest,
    timeout: float,
) -> list[gateway_pb2.TraceUnitsResponse]:
    """Every page of a trace (see :func:`trace_pages`), held together.

    Raises:
        grpc.RpcError: The gateway refused a page.
        ValueError: A page is not of the same trace (another checkpoint, no progress).
    """
    return list(trace_pages(stub, request, timeout))


def bundle_lines(
    pages: Iterator[gateway_pb2.TraceUnitsResponse], registry: str, serial: str, query: BlockId
) -> Iterator[str]:
    """The lines of the audit bundle of a trace, written as its pages come: the head
    once the first has, then each page's note and events."""
    first = next(pages)
    yield bundle_head(first, registry, serial, query).line()
    yield from page_lines(first)
    for page in pages:
        yield from page_lines(page)


def _trace(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    if (args.block is None) == (args.serial is None):
        print("carbonlink trace: give either --registry R SERIAL or --block", file=sys.stderr)
        return EXIT_USAGE
    if args.block is not None:
        query: BlockId = args.block
        request = gateway_pb2.TraceUnitsRequest(block=convert.block_id_to_pb(query))
        registry, serial = "", ""
    else:
        if not args.registry:
            print("carbonlink trace: --registry is required with a serial", file=sys.stderr)
            return EXIT_USAGE
        try:
            query = parse_serial(args.registry, args.serial).id
        except RegistryFormatError as exc:
            print(f"carbonlink trace: {exc}", file=sys.stderr)
            return EXIT_USAGE
        registry, serial = args.registry, args.serial
        request = gateway_pb2.TraceUnitsRequest(registry=registry, serial=serial)
    try:
        channel = client_security.open_channel(args)
    except ClientSetupError as exc:
        print(f"carbonlink trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.page_size is not None:
        request.page_size = args.page_size
    with channel:
        pages = trace_pages(gateway_pb2_grpc.LinkageGatewayStub(channel), request, args.timeout)
        try:
            if args.out:
                return _write_bundle(Path(args.out), bundle_lines(pages, registry, serial, query))
            if args.json:
                stdout.writelines(bundle_lines(pages, registry, serial, query))
                return EXIT_OK
            _print_trace(list(pages), stdout)
        except grpc.RpcError as exc:
            print(f"carbonlink trace: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_FAILED
        except ValueError as exc:
            print(f"carbonlink trace: FAILED: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _write_bundle(path: Path, lines: Iterator[str]) -> int:
    """Write a bundle's lines to ``path`` as the pages come, whole or not at all.

    Raises:
        grpc.RpcError: The gateway refused a page: nothing is written.
        ValueError: A page is not of the same trace: nothing is written.
    """
    try:
        write_atomically(path, lines)
    except OSError as exc:
        print(f"carbonlink trace: cannot write {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _print_trace(pages: Sequence[gateway_pb2.TraceUnitsResponse], stdout: TextIO) -> None:
    """The trace for a reader: how many events, and a line for each."""
    events = sum(len(page.events) for page in pages)
    print(
        f"{events} events in {len(pages)} page{'' if len(pages) == 1 else 's'}, "
        f"proven against checkpoint size {pages[0].checkpoint.tree_size}",
        file=stdout,
    )
    for event in (traced.event for page in pages for traced in page.events):
        body = json.loads(event.leaf_data)
        where = f"{body.get('registry', '')}/{body.get('account', '')}".strip("/")
        print(
            f"  #{event.index:<6} {event.kind:<15} {where:<32} {body.get('status', ''):<12}"
            f" {_event_units(body)}".rstrip(),
            file=stdout,
        )


def _event_units(body: Any) -> str:
    """The units an event concerns, as a history reader follows them: once a block is
    split, holder and status alone no longer say which units moved."""
    if not isinstance(body, dict) or not isinstance(body.get("block"), dict):
        return ""
    try:
        text = _describe(block_id_from_dict(body["block"]))
        if isinstance(body.get("pieces"), list):
            pieces = sorted(block_id_from_dict(p) for p in body["pieces"])
            text += " -> " + ", ".join(_describe(p) for p in pieces)
    except (KeyError, TypeError, ValueError):
        return ""  # shown as the gateway wrote it with --json; audit verify judges it
    return text


def write_atomically(path: Path, chunks: Iterable[str]) -> None:
    """Replace ``path`` with the text of ``chunks`` whole or not at all: an auditor saves
    the latest checkpoint over the one kept, and a crash half-way through must leave the
    kept one, not a torn file; a bundle is written as its pages come, and a page the
    gateway refuses leaves no part of it.

    Raises:
        OSError: It could not be written; ``path`` is as it was.
        Exception: Whatever producing ``chunks`` raised; ``path`` is as it was.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            # mkstemp makes the file 0600: keep the mode of the file replaced, else 0644.
            os.fchmod(out.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_log_key(text: str) -> Verifier:
    """A verifier key given as the key itself or as a file holding it.

    Raises:
        NoteError: Neither a key nor a readable file with one.
    """
    candidate = Path(text)
    if "+" not in text or candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise NoteError(f"{text!r} is neither a verifier key nor a readable file") from exc
    return parse_verifier_key(text)


def _verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    try:
        trusted = read_log_key(args.log_key)
    except NoteError as exc:
        print(f"carbonlink audit verify: --log-key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Read a line at a time as it is verified: a bundle of any length fits.
        with Path(args.bundle).open(encoding="utf-8") as lines:
            report = verify_lines(lines, trusted)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"carbonlink audit verify: cannot read {args.bundle}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AuditFailure as exc:
        print(f"carbonlink audit verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items()))
    print(
        f"OK: {report.events} events verified against the checkpoint of size "
        f"{report.tree_size} signed by {trusted.name} ({kinds}); the gateway signed them "
        f"as every event of {_describe(report.query)} at that size",
        file=stdout,
    )
    for block, beneficiary in report.retirements:
        print(
            f"  retired {block.quantity} units ({_describe(block)}) for {beneficiary}", file=stdout
        )
    for block, registry, account, status in report.final:
        print(
            f"  at size {report.tree_size}: {_describe(block)} {status} at {registry}/{account}",
            file=stdout,
        )
    return EXIT_OK


def _describe(block: BlockId) -> str:
    series = f"/{block.serial_series}" if block.serial_series else ""
    return f"{block.program.value}{series}:{block.serial_start}-{block.serial_end}"


def _kept_checkpoint(path: Path) -> str:
    """The signed checkpoint note in ``path``: a note as written, or an audit bundle's.

    Raises:
        OSError: The file cannot be read.
        NoteError: It is not UTF-8 text, or neither a note nor a bundle.
    """
    try:
        with path.open(encoding="utf-8") as lines:
            first = lines.readline()
            # A bundle of lines has its checkpoint in its first; a note, or a bundle of
            # one document, is read whole.
            document = _json_or_none(first)
            if not isinstance(document, dict):
                text = first + lines.read()
                document = _json_or_none(text)
                if document is None:
                    return text
    except UnicodeDecodeError as exc:
        raise NoteError(
            f"{path} is not UTF-8 text: neither a signed checkpoint nor a bundle"
        ) from exc
    checkpoint = document.get("checkpoint") if isinstance(document, dict) else None
    if isinstance(checkpoint, str):
        return checkpoint
    raise NoteError(f"{path} is neither a signed checkpoint nor an audit bundle")


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _consistency(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    name = "carbonlink audit consistency"
    try:
        trusted = read_log_key(args.log_key)
        kept = open_checkpoint(_kept_checkpoint(Path(args.checkpoint)), trusted)
    except (OSError, NoteError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        channel = client_security.open_channel(args)
    except ClientSetupError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        try:
            latest = stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=args.timeout)
            now = open_checkpoint(latest.signed_note, trusted)
            if kept.size > now.size:
                # The log's key vouched for events the log no longer holds (say, its
                # database put back to an older copy): no proof can mend that, so the
                # gateway is not asked for one it would refuse as a bad request.
                print(
                    f"{name}: FAILED: the log is now at size {now.size}, smaller than the "
                    f"kept checkpoint of size {kept.size}: it lost events it had signed "
                    "(rolled back or rewritten)",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            proof = (
                stub.GetConsistencyProof(
                    gateway_pb2.GetConsistencyProofRequest(
                        first_size=kept.size, second_size=now.size
                    ),
                    timeout=args.timeout,
                ).hashes
                if kept.size and kept.size != now.size
                else []
            )
        except grpc.RpcError as exc:
            print(f"{name}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_FAILED
        except NoteError as exc:
            print(f"{name}: FAILED: the gateway's checkpoint: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        if kept.size == now.size:
            if kept.root != now.root:
                raise merkle.ProofError(f"two different roots for size {now.size}: a forked log")
        elif kept.size:
            merkle.verify_consistency(kept.size, now.size, list(proof), kept.root, now.root)
    except merkle.ProofError as exc:
        print(f"{name}: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.save:
        try:
            write_atomically(Path(args.save), [latest.signed_note])
        except OSError as exc:
            # The log was verified all the same: say so, and that nothing was kept.
            print(
                f"{name}: the log extends the kept checkpoint, but the latest could not be "
                f"saved to {args.save}: {exc}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    print(
        f"OK: the log now at size {now.size} extends the checkpoint of size {kept.size} "
        f"kept in {args.checkpoint}, both signed by {trusted.name}",
        file=stdout,
    )
    return EXIT_OK


def _key(args: argparse.Namespace) -> int:
    try:
        signer = NoteSigner.from_pem(args.origin, Path(args.signing_key).read_bytes())
    except (OSError, NoteError) as exc:
        print(f"carbonlink audit key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(signer.verifier.encode())
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    try:
        write_new_key(Path(args.out))
    except OSError as exc:
        print(f"carbonlink audit keygen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote a new Ed25519 log signing key to {args.out} (keep it private)")
    return EXIT_OK


def _ask(args: argparse.Namespace, command: str, call: Callable[[Any], Message]) -> Message | int:
    """``call`` on a stub of the gateway ``args`` name: its answer, or the exit code
    after saying why there is none."""
    try:
        channel = client_security.open_channel(args)
    except ClientSetupError as exc:
        print(f"carbonlink {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with channel:
        try:
            return call(gateway_pb2_grpc.LinkageGatewayStub(channel))
        except grpc.RpcError as exc:
            print(f"carbonlink {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_FAILED


def _reconcile(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    report = _ask(
        args,
        "reconcile",
        lambda stub: stub.Reconcile(
            gateway_pb2.ReconcileRequest(registries=args.registry or []), timeout=args.timeout
        ),
    )
    if isinstance(report, int):
        return report
    assert isinstance(report, gateway_pb2.ReconcileReport)
    if args.json:
        print_json(report, stdout)
    else:
        print(
            f"reconciliation {report.reconciliation_id}: "
            f"consistent={str(report.consistent).lower()} phase={report.phase}",
            file=stdout,
        )
        _print_findings(report, stdout)
    return EXIT_OK if report.consistent else EXIT_FAILED


def _print_findings(report: gateway_pb2.ReconcileReport, stdout: TextIO) -> None:
    for unread in report.unreadable_registries:
        code = code_pb2.Code.Name(unread.error.code)
        print(f"  [unreadable] {unread.registry}: {code}: {unread.error.message}", file=stdout)
    for item in report.discrepancies:
        persisting = " (persisting)" if item.persistent else ""
        print(f"  [{item.phase}] {item.registry}: {item.detail}{persisting}", file=stdout)


def _reconciliations(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    listed = _ask(
        args,
        "reconciliations",
        lambda stub: stub.ListReconciliations(
            gateway_pb2.ListReconciliationsRequest(
                page_size=args.limit, page_token=args.page_token, trigger=args.trigger or ""
            ),
            timeout=args.timeout,
        ),
    )
    if isinstance(listed, int):
        return listed
    assert isinstance(listed, gateway_pb2.ListReconciliationsResponse)
    if args.json:
        print_json(listed, stdout)
        return EXIT_OK
    for run in listed.reconciliations:
        who = run.requested_by or "schedule"
        ended = run.ended_at.ToJsonString() if run.HasField("ended_at") else "-"
        outcome = run.state
        if run.HasField("report"):
            outcome = f"consistent={str(run.report.consistent).lower()}"
        print(
            f"{run.id} {run.started_at.ToJsonString()} .. {ended} {run.trigger} by {who} on "
            f"{run.runner}: {','.join(run.registries)}: {outcome}",
            file=stdout,
        )
        if run.failure:
            print(f"  {run.state}: {run.failure}", file=stdout)
        if run.HasField("report"):
            _print_findings(run.report, stdout)
    if listed.next_page_token:
        print(
            f"more: ask again, same filters, with --page-token {listed.next_page_token}",
            file=stdout,
        )
    return EXIT_OK


def _log_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-key",
        required=True,
        metavar="KEY",
        help="the log's verifier key (NAME+ID+KEY), or a file holding it; get it out of band",
    )


def _gateway_arguments(parser: argparse.ArgumentParser, timeout: float) -> None:
    """Where the gateway is, how long to wait for it, and how to reach it securely."""
    parser.add_argument("--target", default=_DEFAULT_TARGET, help="gateway HOST:PORT")
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds to wait")
    client_security.add_arguments(parser)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``trace``, ``audit verify|key|keygen``, ``reconcile`` and ``reconciliations``.

    Args:
        subparsers: The top-level CLI's subparsers.
    """
    trace = subparsers.add_parser(
        "trace",
        help="the proven history of units, from any registry's serial",
        description=(
            "Ask the gateway for every event of the units of SERIAL (in registry R's format, "
            "origin or mirror) or of --block, each with an inclusion proof."
        ),
    )
    trace.add_argument("--registry", metavar="R", help=f"registry id: {', '.join(REGISTRY_IDS)}")
    trace.add_argument("serial", nargs="?", metavar="SERIAL", help="the serial, as R writes it")
    trace.add_argument(
        "--block",
        type=parse_block,
        help="a canonical block instead, PROGRAM[/SERIES]:START-END (e.g. a mirror's)",
    )
    trace.add_argument(
        "--json", action="store_true", help="print the audit bundle (JSON lines) as it is read"
    )
    trace.add_argument(
        "--out", help="write the audit bundle (JSON lines) to this file, a page at a time"
    )
    trace.add_argument(
        "--page-size",
        type=page_size,
        metavar="N",
        help="events per page asked of the gateway (default its own, 200; at most 1000); "
        "every page is read and the bundle holds them all",
    )
    _gateway_arguments(trace, timeout=60.0)
    trace.set_defaults(handler=_trace, client="auditor")

    audit = subparsers.add_parser("audit", help="verify provenance offline")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify an audit bundle offline (no database, no network)",
        description=(
            "Check the checkpoint signature under KEY, every inclusion proof, and that the "
            "history is well formed, a line at a time as the bundle is read (bundles of one "
            "JSON document, written before, are read whole). Exits 1 at the first failure, "
            "with the reason and the event it is in."
        ),
    )
    verify.add_argument("bundle", help="the bundle written by carbonlink trace --out or --json")
    _log_key_argument(verify)
    verify.set_defaults(handler=_verify)
    consistency = commands.add_parser(
        "consistency",
        help="check that the log still extends a checkpoint you kept",
        description=(
            "Fetch the gateway's latest checkpoint and a consistency proof from CHECKPOINT "
            "(a signed note, or an audit bundle holding one) to it, and verify both "
            "signatures under KEY and the proof: any rewrite of the log since CHECKPOINT "
            "fails. Exits 1 with the reason."
        ),
    )
    consistency.add_argument("checkpoint", help="a checkpoint kept earlier, or a bundle")
    _log_key_argument(consistency)
    consistency.add_argument("--save", help="write the latest checkpoint here, to keep")
    _gateway_arguments(consistency, timeout=60.0)
    consistency.set_defaults(handler=_consistency, client="auditor")
    key = commands.add_parser("key", help="print the verifier key of a log signing key")
    key.add_argument("--signing-key", required=True, help="the PEM file of the signing key")
    key.add_argument(
        "--origin", default="carbonlink.local/provenance", help="the log origin (key name)"
    )
    key.set_defaults(handler=_key)
    keygen = commands.add_parser("keygen", help="write a new Ed25519 log signing key (PEM)")
    keygen.add_argument("out", help="file to create (refuses to overwrite)")
    keygen.set_defaults(handler=_keygen)

    reconcile = subparsers.add_parser(
        "reconcile",
        help="ITL-style reconciliation of the gateway with each registry",
        description="Totals per program and status, then unit blocks, then the trail of "
        "any block that differs. A registry that cannot be read is named, with why, and "
        "the others are reconciled all the same. The run is recorded and its number "
        "printed (see `carbonlink reconciliations`); one runs at a time over the gateways "
        "sharing the database, so while another is under way this one is refused with "
        "RESOURCE_EXHAUSTED. Auditors and regulators only. Exits 1 when a registry "
        "disagrees or cannot be read, or the gateway refuses.",
    )
    reconcile.add_argument(
        "--registry", action="append", help="only this registry (repeatable; default all)"
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    _gateway_arguments(reconcile, timeout=120.0)
    reconcile.set_defaults(handler=_reconcile, client="auditor")

    runs = subparsers.add_parser(
        "reconciliations",
        help="the reconciliations run so far, newest first",
        description="Every reconciliation recorded by the gateways sharing the database, "
        "asked for or scheduled: who asked, which gateway ran it, when, and what it found "
        "(a scheduled run marks the differences the run before it found too as "
        "persisting). Auditors and regulators only.",
    )
    runs.add_argument(
        "--trigger", choices=("request", "schedule"), help="only runs asked for, or scheduled"
    )
    runs.add_argument(
        "--limit",
        type=page_size,
        default=20,
        help="at most this many, newest first (default 20; the gateway answers at most 1000)",
    )
    runs.add_argument(
        "--page-token", default="", help="the token the previous page ended with (same filters)"
    )
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    _gateway_arguments(runs, timeout=30.0)
    runs.set_defaults(handler=_reconciliations, client="auditor")
