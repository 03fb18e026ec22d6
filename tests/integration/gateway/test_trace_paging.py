"""TraceUnits in pages: a history of any length is traced, and verified offline, in
replies that each stay under a client's receive limit.

An issuance sold in one-tonne lots leaves one split event per lot, each about a kilobyte
of reply with its inclusion proof: 1,200 lots made a 1.3 MB trace of one tonne and 4.7 MB
of the whole issuance, past gRPC's default 4 MiB receive limit, so the auditor got
RESOURCE_EXHAUSTED and no history at all.  Here the same shape is built at a smaller
scale, against a gateway (and a client) whose limit is as much smaller.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters import serials
from adapters._pb.carbonlink.v1 import gateway_pb2
from gateway import audit_client, client_security, paging
from gateway.audit_client import bundle_from_pages
from gateway.cli import main
from gateway.convert import block_id_to_pb
from registry_bridge import db, ledger, provenance
from registry_bridge.audit import AuditFailure, bundle_from_json, verify_bundle
from registry_bridge.model import BlockId, Program
from registry_bridge.signed_note import parse_verifier_key
from tests.integration.gateway.conftest import LinkedRegistries, LiveGateway, running_gateway

AT = datetime(2026, 11, 27, tzinfo=UTC)
START = 500_000
ISSUED = 1_000
LOTS = 60
SERIAL = f"9660-{START}-{START + ISSUED - 1}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
ISSUANCE = serials.parse_serial("verra", SERIAL).id
LAST_TONNE = BlockId(Program.VCS, "", ISSUANCE.serial_end, ISSUANCE.serial_end)


def _cut_lots(gateway: LiveGateway, first: int, lots: int) -> None:
    """Cut one-tonne lots off the issuance, from its ``first`` serial on: one split event
    each, and every one of them concerns the last tonne too."""
    sessions = db.session_factory(gateway.server.engine)
    for lot in range(first, first + lots):
        piece = BlockId(Program.VCS, "", START + lot, START + lot)
        with db.unit_of_work(sessions) as session:
            (row,) = ledger.live_at(session, "verra", "seller", piece)
            ledger.carve(session, row, piece, AT)


def _issue_and_cut(gateway: LiveGateway, lots: int = LOTS) -> None:
    sessions = db.session_factory(gateway.server.engine)
    with db.unit_of_work(sessions) as session:
        ledger.issue(session, "verra", "seller", serials.parse_serial("verra", SERIAL), AT)
    _cut_lots(gateway, 0, lots)


@pytest.fixture
def long_history(database_url: str, registries: LinkedRegistries) -> Iterator[LiveGateway]:
    registries.seed_venue()
    # No recovery pass or registry import while a test runs: the tests count the
    # statements a page runs on the gateway's engine, and a background pass's would count.
    with running_gateway(
        database_url,
        registries,
        recovery_interval_seconds=3600,
        registry_import_interval_seconds=3600,
    ) as gateway:
        _issue_and_cut(gateway)
        yield gateway


def _request(block: BlockId, page_size: int = 0, token: str = "") -> gateway_pb2.TraceUnitsRequest:
    return gateway_pb2.TraceUnitsRequest(
        block=block_id_to_pb(block), page_size=page_size, page_token=token
    )


def _pages(
    gateway: LiveGateway, block: BlockId, page_size: int
) -> list[gateway_pb2.TraceUnitsResponse]:
    pages = [gateway.stub.TraceUnits(_request(block, page_size), timeout=30)]
    while pages[-1].next_page_token:
        pages.append(
            gateway.stub.TraceUnits(
                _request(block, page_size, pages[-1].next_page_token), timeout=30
            )
        )
    return pages


def _kinds(pages: list[gateway_pb2.TraceUnitsResponse]) -> list[str]:
    return [e.event.kind for page in pages for e in page.events]


def test_a_trace_longer_than_a_page_round_trips_and_verifies_offline(
    long_history: LiveGateway,
) -> None:
    pages = _pages(long_history, LAST_TONNE, page_size=16)
    assert len(pages) == 4  # the issuance and 60 splits, 16 a page
    assert [len(p.events) for p in pages] == [16, 16, 16, 13]
    assert _kinds(pages) == ["issuance"] + ["split"] * LOTS
    assert len({p.checkpoint.signed_note for p in pages}) == 1
    indexes = [e.event.index for page in pages for e in page.events]
    assert indexes == sorted(set(indexes))
    # Paged or read at once, the same events.
    (whole,) = _pages(long_history, LAST_TONNE, page_size=1000)
    assert [e.event.index for e in whole.events] == indexes

    trusted = parse_verifier_key(pages[0].checkpoint.verifier_key)
    document = bundle_from_pages(pages, "", "", LAST_TONNE).to_json()
    report = verify_bundle(bundle_from_json(json.loads(json.dumps(document))), trusted)
    assert report.events == LOTS + 1
    assert [(b.serial_start, s) for b, _, _, s in report.final] == [
        (ISSUANCE.serial_start + LOTS, "active")
    ]


def test_a_bundle_with_one_pages_event_dropped_is_refused(long_history: LiveGateway) -> None:
    pages = _pages(long_history, LAST_TONNE, page_size=16)
    trusted = parse_verifier_key(pages[0].checkpoint.verifier_key)
    honest = bundle_from_pages(pages, "", "", LAST_TONNE).to_json()
    verify_bundle(bundle_from_json(honest), trusted)
    dropped = pages[2].events[5].event.index
    events = [e for e in honest["events"] if e["index"] != dropped]
    # Named with the note of its page, of 16 events.
    with pytest.raises(AuditFailure, match=f"leaves out events {dropped} of the 16 the gateway"):
        verify_bundle(bundle_from_json({**honest, "events": events}), trusted)
    # A whole page left out, its note with it: the other pages' notes do not answer for
    # the indexes it did.
    without = bundle_from_pages([pages[0], pages[1], pages[3]], "", "", LAST_TONNE).to_json()
    first_gone = pages[1].events[-1].event.index + 1
    with pytest.raises(AuditFailure, match=f"no trace note answers for events {first_gone}-"):
        verify_bundle(bundle_from_json(without), trusted)


def test_paging_while_the_log_grows_verifies_against_the_pinned_checkpoint(
    long_history: LiveGateway,
) -> None:
    stub = long_history.stub
    first = stub.TraceUnits(_request(LAST_TONNE, 16), timeout=30)
    pinned = first.checkpoint.tree_size
    # More lots are cut meanwhile: new events of the traced tonne, past the pinned size.
    _cut_lots(long_history, LOTS, 10)
    assert stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest()).tree_size == pinned + 10
    pages = [first]
    while pages[-1].next_page_token:
        pages.append(
            stub.TraceUnits(_request(LAST_TONNE, 16, pages[-1].next_page_token), timeout=30)
        )
    assert {p.checkpoint.tree_size for p in pages} == {pinned}
    assert {e.proof.tree_size for p in pages for e in p.events} == {pinned}
    assert max(e.event.index for p in pages for e in p.events) < pinned
    trusted = parse_verifier_key(first.checkpoint.verifier_key)
    report = verify_bundle(
        bundle_from_json(bundle_from_pages(pages, "", "", LAST_TONNE).to_json()), trusted
    )
    assert report.events == LOTS + 1 and report.tree_size == pinned
    # A trace begun now sees the new lots, against the log as it is now.
    again = _pages(long_history, LAST_TONNE, page_size=1000)
    assert again[0].checkpoint.tree_size == pinned + 10
    assert _kinds(again).count("split") == LOTS + 10


def _violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def test_a_bad_or_tampered_page_token_is_an_invalid_argument(long_history: LiveGateway) -> None:
    stub = long_history.stub
    token = stub.TraceUnits(_request(LAST_TONNE, 16), timeout=30).next_page_token
    assert token
    sealed, _, seal = token.partition(".")
    fields = json.loads(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    # Asked to resume elsewhere, or at another tree size, with the seal kept.
    forged = [
        base64.urlsafe_b64encode(
            json.dumps({**fields, **change}, separators=(",", ":")).encode()
        ).decode()
        for change in ({"a": fields["a"] + 1}, {"n": fields["n"] - 1})
    ]
    other_query = BlockId(Program.VCS, "", ISSUANCE.serial_end - 1, ISSUANCE.serial_end)
    for bad, block in [
        *((f"{payload}.{seal}", LAST_TONNE) for payload in forged),
        ("not a token", LAST_TONNE),
        (token[:-2], LAST_TONNE),
        (token + "A", LAST_TONNE),
        (token, other_query),  # issued for another query
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.TraceUnits(_request(block, 16, bad), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _violations(caught.value) == ["page_token"]
        assert "page_token" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        stub.TraceUnits(_request(LAST_TONNE, -1), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == ["page_size"]
    # Refusals change nothing: the token still reads its page.
    assert stub.TraceUnits(_request(LAST_TONNE, 16, token), timeout=30).events


REPLY_LIMIT = 20 * 1024
"""The client's receive limit here, and the gateway's page budget: gRPC's 4 MiB scaled
down, so that a history several times the limit is quick to build."""


def test_a_history_past_the_receive_limit_is_traced_through_the_cli(
    database_url: str,
    registries: LinkedRegistries,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_gateway(database_url, registries, trace_page_bytes=REPLY_LIMIT) as gateway:
        _issue_and_cut(gateway, lots=160)
        # What the CLI receives, each reply measured as it comes off the wire.
        monkeypatch.setattr(
            client_security,
            "open_channel",
            lambda _args: grpc.insecure_channel(
                gateway.target, options=[("grpc.max_receive_message_length", REPLY_LIMIT)]
            ),
        )
        pages = [gateway.stub.TraceUnits(_request(ISSUANCE), timeout=30)]
        while pages[-1].next_page_token:
            pages.append(gateway.stub.TraceUnits(_request(ISSUANCE, 0, pages[-1].next_page_token)))
        sizes = [p.ByteSize() for p in pages]
        assert sum(sizes) > 4 * REPLY_LIMIT, sizes
        assert max(sizes) <= REPLY_LIMIT, sizes

        bundle = tmp_path / "bundle.json"
        target = ["--target", gateway.target, "--insecure"]
        assert main(["trace", "--registry", "verra", SERIAL, "--out", str(bundle), *target]) == 0
        key = gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest()).verifier_key
        written = capsys.readouterr().out
        # The file is the answer; the line says what went into it and how to check it.
        assert (
            "wrote 161 events of VCS:500000-500999" in written
            and f"({len(pages)} pages) to {bundle}" in written
        ), written
        assert f"carbonlink audit verify {bundle} --log-key KEY" in written, written
        assert main(["audit", "verify", str(bundle), "--log-key", key]) == 0
        out = capsys.readouterr().out
        assert out.startswith("OK: 161 events verified"), out
        notes = [line for line in bundle.read_text().splitlines() if '"trace_note"' in line]
        assert len(notes) == len(pages)

        # Smaller pages on request, each page's events printed before the next page is
        # asked for (a long history is never held whole), and the summary says how many
        # were read.
        pages_read: list[gateway_pb2.TraceUnitsResponse] = []
        reading = audit_client.trace_pages

        def counted(*args: Any) -> Iterator[gateway_pb2.TraceUnitsResponse]:
            for page in reading(*args):
                pages_read.append(page)
                yield page

        pages_at_event_lines: list[int] = []

        class Recording(io.StringIO):
            def write(self, text: str) -> int:
                if text.startswith("  #"):
                    pages_at_event_lines.append(len(pages_read))
                return super().write(text)

        printed = Recording()
        monkeypatch.setattr(audit_client, "trace_pages", counted)
        monkeypatch.setattr(sys, "stdout", printed)
        assert main(["trace", "--block", f"VCS:{START}-{START}", "--page-size", "1", *target]) == 0
        assert pages_at_event_lines == [1, 2]
        lines = printed.getvalue().splitlines()
        assert lines[0].startswith("proven against checkpoint size"), lines
        assert lines[-1] == "2 events in 2 pages", lines


def test_each_page_stays_under_the_default_limit(long_history: LiveGateway) -> None:
    """At the default settings, the largest page the gateway answers fits gRPC's default
    receive limit with room to spare."""
    config = long_history.server.config
    assert config.trace_page_bytes < 4 * 1024 * 1024
    pages = _pages(long_history, ISSUANCE, page_size=1000)
    assert all(p.ByteSize() <= config.trace_page_bytes for p in pages)
    assert _kinds(pages).count("split") == LOTS


def _statements_per_page(
    gateway: LiveGateway, block: BlockId, page_size: int
) -> tuple[list[gateway_pb2.TraceUnitsResponse], list[int]]:
    """A trace's pages, and how many statements the gateway ran for each."""
    pages: list[gateway_pb2.TraceUnitsResponse] = []
    counts: list[int] = []
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = gateway.server.engine
    token = ""
    while not pages or token:
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            pages.append(gateway.stub.TraceUnits(_request(block, page_size, token), timeout=30))
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
        counts.append(len(seen))
        seen.clear()
        token = pages[-1].next_page_token
    return pages, counts


def test_a_page_reads_on_from_where_the_one_before_ended(
    long_history: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page k of a trace reads the log's events from page k-1's end: it reads none of
    the events before it again, so a history is read once however many pages it takes.

    The first page works out which serial ranges answer the query (the traced units and
    the origin serials they stand for) from every event of them, and the page token
    carries those; a page that worked them out again read every event of the trace
    from the first, a chunk at a time, and a trace of n pages read the history n times.
    Chunks of four events make such a reread show as statements.
    """
    monkeypatch.setattr(provenance, "_CHUNK", 4)
    short, short_counts = _statements_per_page(long_history, LAST_TONNE, 8)
    assert len(short) == 8  # the issuance and 60 splits
    _cut_lots(long_history, LOTS, 3 * LOTS)  # a history four times as long
    long, long_counts = _statements_per_page(long_history, LAST_TONNE, 8)
    assert len(long) == 31
    assert _kinds(long) == ["issuance"] + ["split"] * 4 * LOTS
    # Every page after the first, of either history, costs the same: what the page
    # itself reads, nothing of the events before it.
    later = {*short_counts[1:-1], *long_counts[1:-1]}
    assert len(later) == 1, (short_counts, long_counts)
    # The first page alone read the whole history (61 and 241 events, four a statement).
    assert long_counts[0] - short_counts[0] == (241 - 61) // 4
    assert later.pop() < short_counts[0] - 61 // 4
    trusted = parse_verifier_key(long[0].checkpoint.verifier_key)
    report = verify_bundle(
        bundle_from_json(bundle_from_pages(long, "", "", LAST_TONNE).to_json()), trusted
    )
    assert report.events == 4 * LOTS + 1


def test_a_page_token_carries_the_trace_state_bounded_and_sealed(
    long_history: LiveGateway,
) -> None:
    """The token's ranges are read back only as the gateway sealed them, and only so
    many: a token sealed with the gateway's key (as by a gateway of another version, or
    with its key leaked) that carries too many, other serials than the query's, or
    other than serial ranges is refused on page_token, and changes nothing."""
    stub = long_history.stub
    key = long_history.server.provenance.page_token_key
    scope = f"trace:block:VCS/:{LAST_TONNE.serial_start}-{LAST_TONNE.serial_end}"
    first = stub.TraceUnits(_request(LAST_TONNE, 16), timeout=30)
    resume = paging.decode_trace_token(first.next_page_token, scope, key)
    assert resume.ranges is not None and len(resume.ranges) == 1
    assert resume.ranges[0].serial_start <= LAST_TONNE.serial_start
    # A token without ranges (a gateway's before tokens carried them) pages as before.
    bare = paging.encode_sealed_token({"n": resume.pinned_size, "a": resume.start}, scope, key)
    carried = stub.TraceUnits(_request(LAST_TONNE, 16, first.next_page_token), timeout=30)
    again = stub.TraceUnits(_request(LAST_TONNE, 16, bare), timeout=30)
    assert again == carried

    tonne = ["VCS", "", LAST_TONNE.serial_start, LAST_TONNE.serial_end]
    position = {"n": resume.pinned_size, "a": resume.start}
    for ranges, why in [
        ([tonne] * (paging.TRACE_TOKEN_RANGES + 1), "serial ranges"),
        ([], "serial ranges"),
        ([["VCS", "", 1, 2]], "not those of this query"),
        ([["NOPE", "", 1, 2]], "other than serial ranges"),
        ([["VCS", "", 5, 2]], "other than serial ranges"),
        ([["VCS", "", "1", 2]], "other than serial ranges"),
        ([["VCS", ""]], "other than serial ranges"),
        ("VCS", "serial ranges"),
        ([["VCS", "x" * 4096, 1, 2]], "longer than any"),
    ]:
        forged = paging.encode_sealed_token({**position, "r": ranges}, scope, key)
        with pytest.raises(grpc.RpcError) as caught:
            stub.TraceUnits(_request(LAST_TONNE, 16, forged), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ranges
        assert _violations(caught.value) == ["page_token"]
        assert why in (caught.value.details() or ""), caught.value.details()
    assert stub.TraceUnits(_request(LAST_TONNE, 16, first.next_page_token), timeout=30) == carried


def test_a_trace_of_more_ranges_than_a_token_carries_pages_without_them() -> None:
    key = b"k" * 32
    many = tuple(BlockId(Program.VCS, "", 10 * i, 10 * i + 1) for i in range(40))
    for ranges, carried in [
        (many[:1], many[:1]),
        (many[: paging.TRACE_TOKEN_RANGES], many[: paging.TRACE_TOKEN_RANGES]),
        (many, None),
        ((BlockId(Program.VCS, "s" * 4000, 1, 2),), None),  # past the token's length
    ]:
        token = paging.encode_trace_token(paging.TraceResume(70, 16, ranges), "trace:x", key)
        assert len(token) <= paging.MAX_SEALED_TOKEN_CHARS
        assert paging.decode_trace_token(token, "trace:x", key) == paging.TraceResume(
            70, 16, carried
        )


OTHERS = (
    ("gold-standard", "GS1-1-KE-GS7495-16-2025-30645-30000-30999"),
    ("verra", "9661-100000-100999-VCS-VCU-261-VER-US-14-1061-01012019-31122019-0"),
)
"""Units cut in lots between the trace's own events, so that every page's window of the
log holds others' events too: another program's (Gold Standard), and the traced
program's of serials below the traced ones (entries that start below them)."""


def _cut_with_others_between(gateway: LiveGateway, lots: int) -> None:
    """Issue the traced units and ``OTHERS``, then cut ``lots`` one-tonne lots off each,
    in turn: the trace's lot, then one of each of the others."""
    sessions = db.session_factory(gateway.server.engine)
    issuances = [("verra", serials.parse_serial("verra", SERIAL))] + [
        (registry, serials.parse_serial(registry, serial)) for registry, serial in OTHERS
    ]
    with db.unit_of_work(sessions) as session:
        for registry, issued in issuances:
            ledger.issue(session, registry, "seller", issued, AT)
    for lot in range(lots):
        for registry, issued in issuances:
            first = issued.id.serial_start + lot
            piece = BlockId(issued.id.program, issued.id.serial_series, first, first)
            with db.unit_of_work(sessions) as session:
                (row,) = ledger.live_at(session, registry, "seller", piece)
                ledger.carve(session, row, piece, AT)


def _event_block_reads(
    gateway: LiveGateway, block: BlockId, page_size: int
) -> list[tuple[int, int, str, Any]]:
    """For each page of a trace: the first log index it answers for, the last it may
    read to know whether an event follows (the next page's first event, or the log's
    last), and the statement (with its parameters) that found its events' indexes
    among the traced ranges' index entries."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # Not the first page's read of the query's events: its lookup reads the same way.
        if "event_idx >=" in statement and "ledger_events" not in statement:
            statements.append((statement, parameters))

    engine = gateway.server.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        pages = _pages(gateway, block, page_size)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == len(pages)
    firsts = [page.events[0].event.index for page in pages]
    starts = [0, *(page.events[-1].event.index + 1 for page in pages[:-1])]
    lasts = [*firsts[1:], pages[0].checkpoint.tree_size - 1]
    return [
        (start, last, *statement)
        for start, last, statement in zip(starts, lasts, statements, strict=True)
    ]


def test_a_page_seeks_the_traced_entries_where_the_page_before_ended(
    live_gateway: LiveGateway,
) -> None:
    """A page reads the traced ranges' index entries from where the page before it ended,
    and only the traced program's: page k reads no more than page 2, however far into
    the log it is.

    SQLite read, on every page, every entry of the traced program that starts below the
    traced serials, from the log's first event, and sorted them; PostgreSQL walked the
    log's primary key from the page's position through every program's events.
    Here every page's window holds as many events of another program, and of the traced
    program's lower serials, as of the trace.
    """
    _cut_with_others_between(live_gateway, lots=40)
    engine = live_gateway.server.engine
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        # The planner chooses by cost: let it know the table.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE event_blocks")
    reads = _event_block_reads(live_gateway, LAST_TONNE, page_size=8)
    assert len(reads) == 6  # the issuance and 40 splits, 8 a page
    with engine.connect() as connection:
        for _, _, statement, parameters in reads:
            if not postgres:
                plan = [
                    str(row[-1])
                    for row in connection.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {statement}", parameters
                    )
                ]
                assert not any("TEMP B-TREE" in step for step in plan), plan
                searches = [step for step in plan if " event_blocks " in f"{step} "]
                assert searches, plan
                for step in searches:
                    # The position bounds the seek: the index is read from it, not
                    # filtered from the program's first entry.
                    assert step.startswith(
                        "SEARCH event_blocks USING COVERING INDEX ix_event_blocks_node "
                        "(program=? AND serial_series=? AND serial_node=? AND event_idx>? "
                        "AND event_idx<?)"
                    ), plan
                continue
            (explained,) = connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
            ).scalar_one()
            assert _node_seeks(explained) > 0


def _event_block_scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The PostgreSQL plan nodes under ``node`` (and it) that read event_blocks."""
    found = [node] if node.get("Relation Name") == "event_blocks" else []
    for child in node.get("Plans", ()):
        found.extend(_event_block_scans(child))
    return found


def _node_seeks(explained: dict[str, Any]) -> int:
    """How many index seeks a PostgreSQL plan (``EXPLAIN (ANALYZE, FORMAT JSON)``) of a
    page's lookup ran, each checked to seek a node of the traced serials' tree from the
    page's position (``ix_event_blocks_node``) and to drop no entry it read outside the
    index.

    The entries read are not counted: EXPLAIN counts none that an index condition
    passes over inside the index, and gives a repeated scan's rows per loop, rounded.
    """
    scans = _event_block_scans(explained["Plan"])
    assert scans, explained
    for scan in scans:
        assert scan["Node Type"] in ("Index Only Scan", "Index Scan"), explained
        assert scan["Index Name"] == "ix_event_blocks_node", explained
        assert "serial_node =" in scan["Index Cond"], explained
        assert "event_idx >=" in scan["Index Cond"], explained
        assert scan.get("Rows Removed by Filter", 0) == 0, explained
    return sum(scan["Actual Loops"] for scan in scans)


def _peak_bytes(argv: list[str]) -> int:
    """The most memory the CLI's command ``argv`` held at once (it must succeed)."""
    tracemalloc.start()
    try:
        assert main(argv) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_trace_is_written_and_verified_a_page_at_a_time(
    long_history: LiveGateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``trace --out`` writes each page as it comes and ``audit verify`` checks a line at
    a time: four times the history, the same memory (both held every page, and the
    bundle's text, at once). And an event tampered with at the start, in the middle or at
    the end of a long bundle fails, named."""
    # The gateway runs in this process, and its first page reads the units' events a
    # chunk at a time: chunks smaller than either history keep its share the same.
    monkeypatch.setattr(provenance, "_CHUNK", 8)
    target = ["--target", long_history.target, "--insecure"]
    tonne = f"VCS:{LAST_TONNE.serial_start}-{LAST_TONNE.serial_end}"
    key = long_history.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest()).verifier_key
    bundle = tmp_path / "bundle.jsonl"
    trace = ["trace", "--block", tonne, "--out", str(bundle), "--page-size", "16", *target]
    verify = ["audit", "verify", str(bundle), "--log-key", key]
    peaks: list[tuple[int, int]] = []
    for lots in (LOTS, 4 * LOTS):
        if lots > LOTS:
            _cut_lots(long_history, LOTS, lots - LOTS)
            key = long_history.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest()).verifier_key
        peaks.append((_peak_bytes(trace), _peak_bytes(verify)))
        written, verified = capsys.readouterr().out.split("\n", 1)
        assert written.startswith(f"wrote {lots + 1} events of {tonne} "), written
        assert verified.startswith(f"OK: {lots + 1} events verified"), verified
    (trace_few, verify_few), (trace_many, verify_many) = peaks
    assert trace_many < 1.5 * trace_few, peaks
    assert verify_many < 1.5 * verify_few, peaks

    lines = bundle.read_text().splitlines(keepends=True)
    assert sum('"trace_note"' in line for line in lines) == 16  # 241 events, 16 a page
    events = [n for n, line in enumerate(lines) if '"leaf_data"' in line]
    for line in (events[0], events[len(events) // 2], events[-1]):
        event = json.loads(lines[line])
        proof = base64.b64decode(event["proof"][-1])
        event["proof"][-1] = base64.b64encode(bytes([proof[0] ^ 1]) + proof[1:]).decode()
        forged = tmp_path / "forged.jsonl"
        forged.write_text("".join([*lines[:line], json.dumps(event) + "\n", *lines[line + 1 :]]))
        assert main(["audit", "verify", str(forged), "--log-key", key]) == 1
        err = capsys.readouterr().err
        assert f"FAILED: event {event['index']}: not in the log" in err, err
        # Left out, it is named too, with its page's note.
        forged.write_text("".join([*lines[:line], *lines[line + 1 :]]))
        assert main(["audit", "verify", str(forged), "--log-key", key]) == 1
        err = capsys.readouterr().err
        assert f"FAILED: the bundle leaves out events {event['index']} of the " in err, err


BUSY = (
    "9662-600000-600999-VCS-VCU-261-VER-US-14-1062-01012019-31122019-0",
    "9661-100000-100999-VCS-VCU-261-VER-US-14-1061-01012019-31122019-0",
)
"""A second traced issuance, and units of no trace, all of the traced program: cut in lots
between the traced lots, they fill every page's window with entries of other units."""


def _cut_among_others(gateway: LiveGateway, traced: BlockId, lots: int, others: int) -> None:
    """Cut ``lots`` one-tonne lots off ``traced``, each followed by ``others`` lots cut off
    ``BUSY``'s untraced issuance (after those cut before)."""
    sessions = db.session_factory(gateway.server.engine)
    other = serials.parse_serial("verra", BUSY[1]).id
    with db.read_only(sessions) as session:
        cut = sum(1 for _ in ledger.live_at(session, "verra", "seller", other)) - 1
    for lot in range(lots):
        pieces = [traced.serial_start + lot]
        pieces += [other.serial_start + cut + lot * others + n for n in range(others)]
        for first in pieces:
            piece = BlockId(Program.VCS, "", first, first)
            with db.unit_of_work(sessions) as session:
                (row,) = ledger.live_at(session, "verra", "seller", piece)
                ledger.carve(session, row, piece, AT)


def _page_work(gateway: LiveGateway, block: BlockId) -> list[int]:
    """For each page of ``block``'s trace, the work its lookup of its events' indexes
    did: on SQLite, the virtual machine's steps running the same statement again; on
    PostgreSQL, the index seeks ``EXPLAIN ANALYZE`` counts, each checked to be a seek of
    the traced serials (see :func:`_node_seeks`)."""
    engine = gateway.server.engine
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE event_blocks")
    work: list[int] = []
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    with engine.connect() as connection:
        for _, _, statement, parameters in _event_block_reads(gateway, block, page_size=8):
            if postgres:
                (explained,) = connection.exec_driver_sql(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
                ).scalar_one()
                work.append(_node_seeks(explained))
                continue
            steps[0] = 0
            raw = connection.connection.driver_connection
            assert raw is not None
            raw.set_progress_handler(step, 1)
            try:
                raw.execute(statement, parameters).fetchall()
            finally:
                raw.set_progress_handler(None, 1)
            work.append(steps[0])
    return work


def test_a_page_reads_the_traced_units_entries_not_its_programs(
    live_gateway: LiveGateway,
) -> None:
    """A page's lookup reads the index entries of the traced units, not every entry of
    the traced program inside its window: a trace of a few events in a busy program does
    not read the program's other units' entries between them (nor, on its last page,
    every entry of the program after its last event).

    Two traced issuances of one program: the first's lots cut with one lot of untraced
    units after each, the second's with eight.  Each page's window of the second holds
    eight times as many other units' entries as traced ones, and the first's last page
    spans the whole of the second's history.  SQLite read every entry of the window (its
    steps grew with them); PostgreSQL read the program's entries in log order, testing
    each one's serials.
    """
    sessions = db.session_factory(live_gateway.server.engine)
    with db.unit_of_work(sessions) as session:
        for serial in (SERIAL, *BUSY):
            ledger.issue(session, "verra", "seller", serials.parse_serial("verra", serial), AT)
    quiet = ISSUANCE
    busy = serials.parse_serial("verra", BUSY[0]).id
    _cut_among_others(live_gateway, quiet, lots=24, others=1)
    _cut_among_others(live_gateway, busy, lots=24, others=8)
    for wide in (False, True):
        works = {}
        for name, block in [("quiet", quiet), ("busy", busy)]:
            # The last tonne of each issuance, or the whole of it.
            first = block.serial_start if wide else block.serial_end
            works[name] = _page_work(live_gateway, dataclasses.replace(block, serial_start=first))
            assert len(works[name]) == 4  # the issuance and 24 splits, 8 a page
        # Every page, of a busy program or of a long log after the trace's last event,
        # works as hard as a quiet program's middle page: the work follows the traced
        # units' entries, not the window's.
        quiet_page = works["quiet"][1]
        assert all(work <= 1.25 * quiet_page for name in works for work in works[name]), (
            wide,
            works,
        )
