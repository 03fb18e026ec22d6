"""What the auditor commands that ask a running gateway do once parsed: ``carbonlink
trace``, ``audit consistency``, ``reconcile`` and ``reconciliations`` (their parser is
``gateway.cli_audit``, which loads none of this).

``trace`` asks the gateway (``--target``) for the history of some units, page by page,
and, with ``--json`` or ``--out``, writes one audit bundle of every page, as JSON lines,
each page as it comes; ``audit verify`` (``gateway.audit_offline``) checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc
from adapters.serial_errors import RegistryFormatError
from adapters.serials import parse_serial
from gateway import client_security, convert
from gateway.audit_offline import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    describe,
    kept_checkpoint,
    read_log_key,
    write_atomically,
)
from gateway.client_commands import print_json
from gateway.client_security import ClientSetupError
from registry_bridge import merkle
from registry_bridge.audit import Bundle, BundleEvent, BundleHead, note_line
from registry_bridge.block_json import block_id_from_dict
from registry_bridge.model import BlockId
from registry_bridge.signed_note import NoteError, open_checkpoint


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


def trace(args: argparse.Namespace, out: TextIO | None = None) -> int:
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
                tally = _Tally()
                lines = bundle_lines(tally.counting(pages), registry, serial, query)
                written = _write_bundle(Path(args.out), lines)
                if written == EXIT_OK:
                    print(tally.summary(args.out, query), file=stdout)
                return written
            if args.json:
                stdout.writelines(bundle_lines(pages, registry, serial, query))
                return EXIT_OK
            _print_trace(pages, stdout)
        except grpc.RpcError as exc:
            print(f"carbonlink trace: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_FAILED
        except ValueError as exc:
            print(f"carbonlink trace: FAILED: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


class _Tally:
    """What a bundle written to a file holds, for the line that says where it went."""

    def __init__(self) -> None:
        self.events = 0
        self.pages = 0
        self.tree_size = 0

    def counting(
        self, pages: Iterator[gateway_pb2.TraceUnitsResponse]
    ) -> Iterator[gateway_pb2.TraceUnitsResponse]:
        """``pages`` as they come, counted."""
        for page in pages:
            self.pages += 1
            self.events += len(page.events)
            self.tree_size = page.checkpoint.tree_size
            yield page

    def summary(self, path: str, query: BlockId) -> str:
        # The file is the answer; without this line a successful --out printed nothing,
        # and the reader had to open the bundle to learn whether any history was in it.
        pages = "1 page" if self.pages == 1 else f"{self.pages} pages"
        events = "1 event" if self.events == 1 else f"{self.events} events"
        return (
            f"wrote {events} of {describe(query)} ({pages}) to {path}, proven against the "
            f"checkpoint of size {self.tree_size}; check it offline with: "
            f"carbonlink audit verify {path} --log-key KEY"
        )


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


def _print_trace(pages: Iterator[gateway_pb2.TraceUnitsResponse], stdout: TextIO) -> None:
    """The trace for a reader: a line for each event, printed as its page comes (a long
    history is never held whole), then how many events and pages there were."""
    events = count = 0
    for page in pages:
        if not count:
            print(f"proven against checkpoint size {page.checkpoint.tree_size}:", file=stdout)
        count += 1
        for traced in page.events:
            event = traced.event
            body = json.loads(event.leaf_data)
            where = f"{body.get('registry', '')}/{body.get('account', '')}".strip("/")
            print(
                f"  #{event.index:<6} {event.kind:<15} {where:<32} {body.get('status', ''):<12}"
                f" {_event_units(body)}".rstrip(),
                file=stdout,
            )
            events += 1
    print(f"{events} events in {count} page{'' if count == 1 else 's'}", file=stdout)


def _event_units(body: Any) -> str:
    """The units an event concerns, as a history reader follows them: once a block is
    split, holder and status alone no longer say which units moved."""
    if not isinstance(body, dict) or not isinstance(body.get("block"), dict):
        return ""
    try:
        text = describe(block_id_from_dict(body["block"]))
        if isinstance(body.get("pieces"), list):
            pieces = sorted(block_id_from_dict(p) for p in body["pieces"])
            text += " -> " + ", ".join(describe(p) for p in pieces)
    except (KeyError, TypeError, ValueError):
        return ""  # shown as the gateway wrote it with --json; audit verify judges it
    return text


def consistency(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    name = "carbonlink audit consistency"
    try:
        trusted = read_log_key(args.log_key)
        kept = open_checkpoint(kept_checkpoint(Path(args.checkpoint)), trusted)
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


def reconcile(args: argparse.Namespace, out: TextIO | None = None) -> int:
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


def reconciliations(args: argparse.Namespace, out: TextIO | None = None) -> int:
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
    if not listed.reconciliations:
        # As `transfer list` says "no transfers": an empty page printed nothing at all.
        filtered = f" triggered {args.trigger}" if args.trigger else ""
        print(f"no reconciliations{filtered}", file=stdout)
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
