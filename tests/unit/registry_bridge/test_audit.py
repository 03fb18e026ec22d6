"""The offline audit verifier on hand-built logs: each kind of bad history is refused."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from registry_bridge import merkle
from registry_bridge.audit import (
    AuditFailure,
    Bundle,
    BundleEvent,
    BundleHead,
    TraceStatement,
    bundle_from_json,
    index_ranges,
    note_line,
    open_trace_note,
    verify_bundle,
    verify_lines,
)
from registry_bridge.event_log import canonical_json
from registry_bridge.model import BlockId, Program
from registry_bridge.signed_note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    generate_private_key_pem,
    open_checkpoint,
    parse_verifier_key,
)
from tests.imports import SQL_STACK, loaded, modules_loaded_by

ORIGIN = "test.example/log"
BLOCK = BlockId(Program.VCS, "", 100, 199)


def _block(start: int, end: int, series: str = "") -> dict[str, Any]:
    return {"program": "VCS", "serial_series": series, "serial_start": start, "serial_end": end}


def _row(kind: str, block: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    body = {
        "kind": kind,
        "block": block,
        "origin": extra.pop("origin", block),
        "registry": extra.pop("registry", "verra"),
        "account": extra.pop("account", "a"),
        "status": status,
        "mirror": extra.pop("mirror", False),
        "row": 1,
    }
    body.update(extra)
    return body


HONEST = [
    _row("issuance", _block(100, 199), "active"),
    _row("split", _block(100, 199), "active", pieces=[_block(100, 149), _block(150, 199)]),
    _row("lock", _block(100, 149), "locked", previous_status="active"),
    _row("retire", _block(100, 149), "retired", previous_status="locked", beneficiary="B Co."),
]


def _bundle(
    bodies: list[dict[str, Any]],
    signer: NoteSigner,
    keep: list[int] | None = None,
    signed: list[int] | None = None,
) -> Bundle:
    """A bundle of the events ``keep`` (all by default), its trace note listing ``signed``
    (those kept by default: a gateway that signs what it sends)."""
    payloads, size, root, proof = _log_of(bodies)
    chosen = range(size) if keep is None else keep
    listed = tuple(chosen if signed is None else signed)
    return Bundle(
        registry="verra",
        serial="",
        query=BLOCK,
        checkpoint=signer.sign(Checkpoint(ORIGIN, size, root)),
        log_key=signer.verifier.encode(),
        events=tuple(BundleEvent(i, payloads[i], proof(i)) for i in chosen),
        trace_notes=(signer.sign_body(TraceStatement(ORIGIN, size, root, BLOCK, listed).body()),),
    )


def _log_of(
    bodies: list[dict[str, Any]],
) -> tuple[list[bytes], int, bytes, Callable[[int], tuple[bytes, ...]]]:
    """The payloads of a log of ``bodies``, its size and root, and its inclusion proofs
    (each subtree hashed once, however many proofs use it)."""
    payloads = [canonical_json({**b, "index": i}) for i, b in enumerate(bodies)]
    leaves = [hashlib.sha256(b"\x00" + p).digest() for p in payloads]
    size = len(leaves)

    @functools.cache
    def subtree(start: int, end: int) -> bytes:
        return merkle.root_from_leaves(leaves[start:end])

    def proof(index: int) -> tuple[bytes, ...]:
        return tuple(subtree(a, b) for a, b in merkle.inclusion_plan(index, size))

    return payloads, size, merkle.root_from_leaves(leaves), proof


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.from_pem(ORIGIN, generate_private_key_pem())


def test_an_honest_history_verifies(signer: NoteSigner) -> None:
    report = verify_bundle(_bundle(HONEST, signer), signer.verifier)
    assert report.events == 4 and report.tree_size == 4
    assert [(b.quantity, who) for b, who in report.retirements] == [(50, "B Co.")]
    assert {(b.serial_start, s) for b, _, _, s in report.final} == {
        (100, "retired"),
        (150, "active"),
    }


def test_the_note_format_round_trips_and_names_the_key(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 7, b"\x01" * 32))
    body, signature = note.split("\n\n")
    assert body.splitlines() == [ORIGIN, "7", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]
    assert signature.startswith(f"\u2014 {ORIGIN} ")
    key = parse_verifier_key(signer.verifier.encode())
    assert (
        key.key_id
        == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + signer.verifier.public_key).digest()[:4]
    )
    assert open_checkpoint(note, key) == Checkpoint(ORIGIN, 7, b"\x01" * 32)
    with pytest.raises(NoteError):
        open_checkpoint(note.replace("\n7\n", "\n8\n"), key)


@pytest.mark.parametrize(
    ("bodies", "keep", "reason"),
    [
        (
            [*HONEST, _row("lock", _block(100, 149), "locked", previous_status="retired")],
            None,
            "after reaching the terminal state retired",
        ),
        (
            [
                HONEST[0],
                _row(
                    "split", _block(100, 199), "active", pieces=[_block(100, 149), _block(151, 199)]
                ),
            ],
            None,
            "do not tile it",
        ),
        (HONEST, [1, 2, 3], "have no issuance"),
        (HONEST, [0, 1, 3], "the history left it active"),
        (
            [
                HONEST[0],
                _row(
                    "credit",
                    _block(1, 10, "sz-mirror"),
                    "active",
                    mirror=True,
                    origin=_block(100, 120),
                    registry="shenzhen",
                ),
            ],
            None,
            "units not conserved",
        ),
        ([HONEST[0], HONEST[0]], None, "already live"),
    ],
    ids=["after-terminal", "split-gap", "no-issuance", "missing-event", "mirror-size", "twice"],
)
def test_bad_histories_are_refused(
    signer: NoteSigner, bodies: list[dict[str, Any]], keep: list[int] | None, reason: str
) -> None:
    with pytest.raises(AuditFailure, match=reason):
        verify_bundle(_bundle(bodies, signer, keep), signer.verifier)


def test_another_key_or_a_changed_byte_is_refused(signer: NoteSigner) -> None:
    bundle = _bundle(HONEST, signer)
    stranger = NoteSigner.from_pem(ORIGIN, generate_private_key_pem())
    with pytest.raises(AuditFailure, match="not the trusted"):
        verify_bundle(bundle, stranger.verifier)
    forged = dataclasses.replace(bundle, log_key=stranger.verifier.encode())
    with pytest.raises(AuditFailure, match="checkpoint: the checkpoint is not signed"):
        verify_bundle(forged, stranger.verifier)
    first = bundle.events[0]
    changed = BundleEvent(first.index, first.leaf_data.replace(b"199", b"198"), first.proof)
    tampered = dataclasses.replace(bundle, events=(changed, *bundle.events[1:]))
    with pytest.raises(AuditFailure, match="event 0: not in the log"):
        verify_bundle(tampered, signer.verifier)


@pytest.mark.parametrize(("keep", "missing"), [([0, 1, 2], "3"), ([0, 3], "1-2"), ([1, 2, 3], "0")])
def test_an_event_left_out_of_what_the_gateway_signed_is_refused(
    signer: NoteSigner, keep: list[int], missing: str
) -> None:
    # Cut short, this history would read as a consistent, wrong present: units 100-149
    # active, when they were retired.
    bundle = _bundle(HONEST, signer, keep, signed=[0, 1, 2, 3])
    with pytest.raises(AuditFailure, match=f"leaves out events {missing} of the 4 the gateway"):
        verify_bundle(bundle, signer.verifier)


def test_an_event_the_gateway_did_not_sign_for_the_trace_is_refused(signer: NoteSigner) -> None:
    with pytest.raises(AuditFailure, match="events 3 are not among those the gateway signed"):
        verify_bundle(_bundle(HONEST, signer, signed=[0, 1, 2]), signer.verifier)


def test_a_trace_note_for_another_query_size_or_key_is_refused(signer: NoteSigner) -> None:
    bundle = _bundle(HONEST, signer)
    statement = TraceStatement(ORIGIN, 4, b"\x00" * 32, BLOCK, (0, 1, 2, 3))
    elsewhere = dataclasses.replace(
        statement, query=BlockId(Program.VCS, "", 100, 120), root=_root(bundle, signer)
    )
    with pytest.raises(AuditFailure, match="answers VCS 100-120, not the queried VCS 100-199"):
        verify_bundle(
            dataclasses.replace(bundle, trace_notes=(signer.sign_body(elsewhere.body()),)),
            signer.verifier,
        )
    with pytest.raises(AuditFailure, match=r"trace note is for tree size 4 .* not the checkpoint"):
        verify_bundle(
            dataclasses.replace(bundle, trace_notes=(signer.sign_body(statement.body()),)),
            signer.verifier,
        )
    stranger = NoteSigner.from_pem(ORIGIN, generate_private_key_pem())
    with pytest.raises(AuditFailure, match="trace note: the trace note is not signed by"):
        verify_bundle(
            dataclasses.replace(bundle, trace_notes=(stranger.sign_body(statement.body()),)),
            signer.verifier,
        )
    # A checkpoint is not a trace note, though signed by the same key.
    with pytest.raises(AuditFailure, match="trace note: a trace note's body is six lines"):
        verify_bundle(
            dataclasses.replace(bundle, trace_notes=(bundle.checkpoint,)), signer.verifier
        )
    changed = bundle.trace_notes[0].replace("\n0-3\n", "\n0-2\n")
    with pytest.raises(AuditFailure, match=r"trace note: the signature by .* does not verify"):
        verify_bundle(dataclasses.replace(bundle, trace_notes=(changed,)), signer.verifier)


def _root(bundle: Bundle, signer: NoteSigner) -> bytes:
    return open_checkpoint(bundle.checkpoint, signer.verifier).root


def test_a_bundle_of_the_first_format_is_not_verified(signer: NoteSigner) -> None:
    bundle = _bundle(HONEST, signer)
    document = bundle.to_json()
    assert bundle_from_json(document) == bundle
    old = {**document, "format": "carbonlink-audit-bundle/1"}
    del old["trace_notes"]
    with pytest.raises(AuditFailure, match="has no trace note: events left out of it cannot"):
        bundle_from_json(old)


def test_event_indexes_are_written_as_ranges() -> None:
    assert index_ranges([9, 0, 1, 2, 3, 7, 10, 11, 12]) == "0-3,7,9-12"
    assert index_ranges([5]) == "5"


def test_a_returned_mirror_is_followed_home(signer: NoteSigner) -> None:
    mirror = _block(1, 100, "sz-mirror")
    origin = _block(100, 199)
    at_shenzhen = {"registry": "shenzhen", "mirror": True, "origin": origin}
    bodies = [
        _row("issuance", origin, "active"),
        _row("lock", origin, "locked", previous_status="active"),
        _row("finalize", origin, "bridged", previous_status="locked"),
        _row("credit", mirror, "active", **at_shenzhen),
        _row("lock", mirror, "locked", previous_status="active", **at_shenzhen),
        _row("credit", origin, "active", previous_status="bridged", registry="hkmo", account="b"),
        _row("finalize", mirror, "locked", previous_status="locked", exported=True, **at_shenzhen),
    ]
    query = BlockId(Program.VCS, "sz-mirror", 1, 100)
    bundle = _queried(bodies, signer, query)
    report = verify_bundle(bundle, signer.verifier)
    # The mirror's units are back at their origin, in the buyer's hands at the venue.
    assert [(b.serial_start, r, a, s) for b, r, a, s in report.final] == [
        (100, "hkmo", "b", "active")
    ]


def test_a_mirror_piece_outside_the_query_is_kept_for_its_units_coming_back(
    signer: NoteSigner,
) -> None:
    """A mirror-side trace's verifier keeps the pieces of the mirror outside the queried
    serials: whether an event of one answers the query depends on origin serials that
    the queried units may come to stand for only later in the history, which the bundle
    does not say beforehand.  Here half a mirror goes home, then comes back to the same
    registry under the queried serials: the events of its first stay, as a piece of the
    mirror that stood for none of the queried units yet, answer the query and follow."""
    origin, first, rest = _block(100, 199), _block(100, 149), _block(150, 199)
    mirror = _block(1, 100, "sz-mirror")
    away, kept = _block(1, 50, "sz-mirror"), _block(51, 100, "sz-mirror")
    back = _block(101, 150, "sz-mirror")

    def at_shenzhen(stands_for: dict[str, Any]) -> dict[str, Any]:
        return {"registry": "shenzhen", "mirror": True, "origin": stands_for}

    at_hkmo = {"registry": "hkmo", "account": "b"}
    bodies = [
        _row("issuance", origin, "active"),
        _row("lock", origin, "locked", previous_status="active"),
        _row("finalize", origin, "bridged", previous_status="locked"),
        _row("credit", mirror, "active", **at_shenzhen(origin)),
        _row("split", mirror, "active", pieces=[away, kept], **at_shenzhen(origin)),
        # The first half goes home ...
        _row("lock", away, "locked", previous_status="active", **at_shenzhen(first)),
        _row("split", origin, "bridged", pieces=[first, rest]),
        _row("credit", first, "active", previous_status="bridged", **at_hkmo),
        _row(
            "finalize",
            away,
            "locked",
            previous_status="locked",
            exported=True,
            **at_shenzhen(first),
        ),
        # ... and comes back, under the queried serials.
        _row("lock", first, "locked", previous_status="active", **at_hkmo),
        _row("finalize", first, "bridged", previous_status="locked", **at_hkmo),
        _row("credit", back, "active", **at_shenzhen(first)),
    ]
    query = BlockId(Program.VCS, "sz-mirror", 101, 150)
    bundle = _queried(bodies, signer, query)
    report = verify_bundle(bundle, signer.verifier)
    assert report.events == len(bodies)
    assert [(b.serial_series, b.serial_start, r, s) for b, r, _, s in report.final] == [
        ("", 100, "hkmo", "bridged"),
        ("sz-mirror", 101, "shenzhen", "active"),
    ]


def test_the_verifier_loads_no_database_code() -> None:
    # The auditor's trusted code runs offline: the Merkle proofs it checks must not
    # drag in the database layer that stores the gateway's node cache.
    modules = modules_loaded_by("import registry_bridge.audit, registry_bridge.merkle")
    assert loaded(modules, SQL_STACK) == []


def open_trace_statement(bundle: Bundle, signer: NoteSigner) -> TraceStatement:
    return open_trace_note(bundle.trace_notes[0], signer.verifier)


@pytest.mark.parametrize(
    ("bodies", "reason"),
    [
        # JSON's Infinity reads as a float no serial number can be: refused with the
        # event it is in, where int() of it raised OverflowError through the verifier.
        (
            [_row("issuance", {**_block(100, 199), "serial_end": float("inf")}, "active")],
            "event 0",
        ),
        (
            [
                HONEST[0],
                _row(
                    "split",
                    _block(100, 199),
                    "active",
                    pieces=[_block(100, 149), {**_block(150, 199), "serial_start": float("inf")}],
                ),
            ],
            "event 1",
        ),
        # An event that changes no row but names an origin the verifier cannot read.
        (
            [*HONEST, {"kind": "transfer_state", "origin": {**_block(100, 199), "program": "X"}}],
            "event 4",
        ),
    ],
    ids=["infinite-serial", "infinite-piece", "unreadable-origin"],
)
def test_unreadable_numbers_and_blocks_in_signed_events_fail_with_the_event(
    signer: NoteSigner, bodies: list[dict[str, Any]], reason: str
) -> None:
    with pytest.raises(AuditFailure, match=reason):
        verify_bundle(_bundle(bodies, signer), signer.verifier)


@pytest.mark.parametrize("where", ["index", "query"])
def test_an_infinite_number_in_a_bundle_is_not_a_bundle(signer: NoteSigner, where: str) -> None:
    document = _bundle(HONEST, signer).to_json()
    if where == "index":
        document["events"][0]["index"] = float("inf")
    else:
        document["query"]["block"]["serial_start"] = float("inf")
    with pytest.raises(AuditFailure, match="not an audit bundle"):
        bundle_from_json(document)


def _queried(bodies: list[dict[str, Any]], signer: NoteSigner, query: BlockId) -> Bundle:
    """A bundle of every event of ``bodies`` answering ``query``, its trace note signed for
    that query (a trace of a mirror's serials, whose history runs through its origin's)."""
    bundle = dataclasses.replace(_bundle(bodies, signer), query=query)
    statement = dataclasses.replace(open_trace_statement(bundle, signer), query=query)
    return dataclasses.replace(bundle, trace_notes=(signer.sign_body(statement.body()),))


def _paged(bundle: Bundle, signer: NoteSigner, *windows: tuple[int, int]) -> Bundle:
    """``bundle`` with one trace note per window ``[start, end)``, as a paged trace has."""
    statement = open_trace_statement(bundle, signer)
    notes = tuple(
        signer.sign_body(
            dataclasses.replace(
                statement,
                indexes=tuple(i for i in statement.indexes if start <= i < end),
                window=(start, end),
            ).body()
        )
        for start, end in windows
    )
    return dataclasses.replace(bundle, trace_notes=notes)


def test_a_trace_read_in_pages_verifies_and_round_trips(signer: NoteSigner) -> None:
    bundle = _paged(_bundle(HONEST, signer), signer, (0, 2), (2, 3), (3, 4))
    document = bundle.to_json()
    assert document["format"] == "carbonlink-audit-bundle/3"
    assert len(document["trace_notes"]) == 3
    assert bundle_from_json(document) == bundle
    report = verify_bundle(bundle_from_json(document), signer.verifier)
    assert report.events == 4 and [(b.quantity, who) for b, who in report.retirements] == [
        (50, "B Co.")
    ]
    # The notes may come in any order: each says which indexes it answers for.
    shuffled = dataclasses.replace(bundle, trace_notes=bundle.trace_notes[::-1])
    assert verify_bundle(shuffled, signer.verifier).events == 4


def test_a_page_of_a_paged_trace_left_out_is_refused(signer: NoteSigner) -> None:
    paged = _paged(_bundle(HONEST, signer), signer, (0, 2), (2, 4))
    # The page's events and its note gone: the notes no longer account for every index.
    without_page = dataclasses.replace(
        paged, trace_notes=paged.trace_notes[:1], events=paged.events[:2]
    )
    with pytest.raises(AuditFailure, match=r"no trace note answers for events 2-3 .* incomplete"):
        verify_bundle(without_page, signer.verifier)
    # The note kept, one of its events dropped: named with its page's note.
    dropped = dataclasses.replace(paged, events=paged.events[:3])
    with pytest.raises(
        AuditFailure, match=r"leaves out events 3 of the 2 the gateway signed .* among events 2-3"
    ):
        verify_bundle(dropped, signer.verifier)
    first_missing = dataclasses.replace(
        paged, trace_notes=paged.trace_notes[1:], events=paged.events[2:]
    )
    with pytest.raises(AuditFailure, match="no trace note answers for events 0-1"):
        verify_bundle(first_missing, signer.verifier)


def test_paged_trace_notes_must_tile_the_log(signer: NoteSigner) -> None:
    bundle = _bundle(HONEST, signer)
    with pytest.raises(AuditFailure, match="trace notes overlap at event 1"):
        verify_bundle(_paged(bundle, signer, (0, 2), (1, 4)), signer.verifier)
    with pytest.raises(AuditFailure, match="no trace note answers for events 3"):
        verify_bundle(
            dataclasses.replace(_paged(bundle, signer, (0, 3)), events=bundle.events[:3]),
            signer.verifier,
        )
    with pytest.raises(AuditFailure, match="holds no trace note"):
        verify_bundle(dataclasses.replace(bundle, trace_notes=()), signer.verifier)


def test_a_trace_note_listing_an_event_outside_its_window_is_refused(
    signer: NoteSigner,
) -> None:
    statement = open_trace_statement(_bundle(HONEST, signer), signer)
    outside = dataclasses.replace(statement, indexes=(0, 1, 2), window=(0, 2))
    with pytest.raises(NoteError, match="event 2 is outside the note's window 0-1"):
        open_trace_note(signer.sign_body(outside.body()), signer.verifier)
    for window in ((2, 2), (0, 5), (3, 1)):
        empty = dataclasses.replace(statement, indexes=(0,), window=window)
        with pytest.raises(NoteError, match="window"):
            open_trace_note(signer.sign_body(empty.body()), signer.verifier)


def test_a_bundle_of_the_second_format_still_verifies(signer: NoteSigner) -> None:
    document = _bundle(HONEST, signer).to_json()
    (note,) = document.pop("trace_notes")
    second = {**document, "format": "carbonlink-audit-bundle/2", "trace_note": note}
    assert "carbonlink trace/1" in note
    assert verify_bundle(bundle_from_json(second), signer.verifier).events == 4
    # A note of one window that is not the whole log is refused there too.
    paged = _paged(_bundle(HONEST, signer), signer, (0, 2))
    second["trace_note"] = paged.trace_notes[0]
    with pytest.raises(AuditFailure, match="no trace note answers for events 2 of the log"):
        verify_bundle(bundle_from_json(second), signer.verifier)


def _lots(count: int) -> list[dict[str, Any]]:
    """An issuance of ``count + 1`` units cut one tonne at a time from its front: the
    history of its last tonne, one split per lot."""
    end = 100 + count
    return [
        _row("issuance", _block(100, end), "active"),
        *(
            _row(
                "split",
                _block(100 + lot, end),
                "active",
                pieces=[_block(100 + lot, 100 + lot), _block(101 + lot, end)],
            )
            for lot in range(count)
        ),
    ]


def _lines_of(
    bodies: list[dict[str, Any]], signer: NoteSigner, page: int
) -> tuple[BlockId, Iterator[str]]:
    """The last tonne's query, and a bundle of ``bodies`` as the lines ``trace`` writes,
    ``page`` events a page: made as they are read, so that a test measures only what
    the verifier holds."""
    payloads, size, root, proof = _log_of(bodies)
    last = bodies[0]["block"]["serial_end"]
    query = BlockId(Program.VCS, "", last, last)

    def lines() -> Iterator[str]:
        checkpoint = signer.sign(Checkpoint(ORIGIN, size, root))
        yield BundleHead("verra", "", query, checkpoint, signer.verifier.encode()).line()
        for start in range(0, size, page):
            end = min(start + page, size)
            statement = TraceStatement(
                ORIGIN, size, root, query, tuple(range(start, end)), (start, end)
            )
            yield note_line(signer.sign_body(statement.body()))
            for i in range(start, end):
                yield BundleEvent(i, payloads[i], proof(i)).line()

    return query, lines()


def test_a_bundle_written_as_lines_verifies_as_it_is_read(signer: NoteSigner) -> None:
    bundle = _paged(_bundle(HONEST, signer), signer, (0, 2), (2, 3), (3, 4))
    lines = list(bundle.lines())
    assert json.loads(lines[0])["format"] == "carbonlink-audit-bundle/4"
    # Each page's note, then the page's events: read one line at a time.
    assert ["trace_note" in json.loads(line) for line in lines[1:]] == [
        True, False, False, True, False, True, False,
    ]  # fmt: skip
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    report = verify_lines(iter(lines), signer.verifier)
    assert report == verify_bundle(bundle, signer.verifier)
    assert report.events == 4 and [(b.quantity, who) for b, who in report.retirements] == [
        (50, "B Co.")
    ]
    # What trace wrote before, one JSON document (format /3), is read and verified too.
    written = json.dumps(bundle.to_json(), indent=2, sort_keys=True) + "\n"
    assert verify_lines(io.StringIO(written), signer.verifier) == report


LOTS = 40


@pytest.mark.parametrize("tamper", ["leaf", "proof", "dropped"])
@pytest.mark.parametrize("at", [0, LOTS // 2, LOTS], ids=["start", "middle", "end"])
def test_a_tampered_line_fails_naming_its_event(signer: NoteSigner, tamper: str, at: int) -> None:
    _, lines = _lines_of(_lots(LOTS), signer, page=8)
    written = list(lines)
    assert verify_lines(iter(written), signer.verifier).events == LOTS + 1
    (position,) = [n for n, line in enumerate(written) if json.loads(line).get("index") == at]
    record = json.loads(written[position])
    if tamper == "leaf":
        leaf = base64.b64decode(record["leaf_data"])
        assert b'"account":"a"' in leaf
        changed = leaf.replace(b'"account":"a"', b'"account":"z"')
        record["leaf_data"] = base64.b64encode(changed).decode()
        reason = f"event {at}: not in the log of checkpoint size {LOTS + 1}"
    elif tamper == "proof":
        first = base64.b64decode(record["proof"][0])
        record["proof"][0] = base64.b64encode(bytes([first[0] ^ 1]) + first[1:]).decode()
        reason = f"event {at}: not in the log of checkpoint size {LOTS + 1}"
    else:
        record = None
        reason = f"leaves out events {at} of the"
    tampered = [
        *written[:position],
        *([] if record is None else [json.dumps(record) + "\n"]),
        *written[position + 1 :],
    ]
    with pytest.raises(AuditFailure, match=reason):
        verify_lines(iter(tampered), signer.verifier)


def test_verification_stops_at_the_first_bad_line_without_reading_on(signer: NoteSigner) -> None:
    _, lines = _lines_of(_lots(400), signer, page=8)
    read: list[str] = []

    def tampered() -> Iterator[str]:
        for n, line in enumerate(lines):
            read.append(line)
            # The first event's line, its leaf's bytes changed.
            yield line.replace('"leaf_data":"', '"leaf_data":"AAAA') if n == 2 else line

    with pytest.raises(AuditFailure, match="event 0: "):
        verify_lines(tampered(), signer.verifier)
    assert len(read) == 3  # the head, the first page's note, its first event


def _mirror_lots(count: int) -> list[dict[str, Any]]:
    """An issuance of ``count + 1`` units bridged whole to a mirror, which is cut one
    tonne at a time from its front: the history of the origin's last tonne, one split of
    the mirror per lot."""
    end = 100 + count
    origin = _block(100, end)
    at_shenzhen = {"registry": "shenzhen", "mirror": True}
    return [
        _row("issuance", origin, "active"),
        _row("lock", origin, "locked", previous_status="active"),
        _row("finalize", origin, "bridged", previous_status="locked"),
        _row("credit", _block(1, count + 1, "sz-mirror"), "active", origin=origin, **at_shenzhen),
        *(
            _row(
                "split",
                _block(1 + lot, count + 1, "sz-mirror"),
                "active",
                origin=_block(100 + lot, end),
                pieces=[
                    _block(1 + lot, 1 + lot, "sz-mirror"),
                    _block(2 + lot, count + 1, "sz-mirror"),
                ],
                **at_shenzhen,
            )
            for lot in range(count)
        ),
    ]


def test_an_origin_trace_holds_no_more_for_a_mirror_cut_in_more_lots(signer: NoteSigner) -> None:
    """The pieces cut off a mirror of the queried units that stand for none of them are
    not kept: four times the lots, the same memory (with them kept it was 3.6 times)."""
    peaks = []
    for lots in (200, 800):
        _, made = _lines_of(_mirror_lots(lots), signer, page=50)
        lines = list(made)
        tracemalloc.start()
        try:
            report = verify_lines(iter(lines), signer.verifier)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert report.events == lots + 4
        # The origin, bridged, and the mirror's last tonne, which stands for the queried one.
        assert [(b.serial_series, b.serial_start, r, s) for b, r, _, s in report.final] == [
            ("", 100, "verra", "bridged"),
            ("sz-mirror", lots + 1, "shenzhen", "active"),
        ]
    assert peaks[1] < 1.25 * peaks[0], peaks


def test_a_mirror_over_serials_issued_at_their_origin_is_refused_once_pieces_were_left_out(
    signer: NoteSigner,
) -> None:
    """Pieces are left out because the queried serials, issued at their origin, are the
    only origin serials asked (a mirror's serials being of a series of their own); a
    mirror among them would ask others, which the pieces left out could answer: the
    bundle is refused, not read short."""
    bodies = _mirror_lots(3)
    reused = _block(103, 103)  # the queried serial, credited as a mirror of another
    bodies.append(
        _row("credit", reused, "active", registry="hkmo", mirror=True, origin=_block(101, 101))
    )
    _, lines = _lines_of(bodies, signer, page=50)
    with pytest.raises(
        AuditFailure, match=r"event 7 .* a mirror's serials must be of a series of their own"
    ):
        verify_lines(lines, signer.verifier)


def test_verification_holds_no_more_for_a_longer_history(signer: NoteSigner) -> None:
    """The verifier holds a line at a time and the units' state, not the events read:
    four times the history, the same memory."""
    peaks = []
    for lots in (200, 800):
        _, made = _lines_of(_lots(lots), signer, page=50)
        lines = list(made)  # made before measuring: the bundle on disk, not the verifier
        tracemalloc.start()
        try:
            report = verify_lines(iter(lines), signer.verifier)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert report.events == lots + 1
        assert [(b.serial_start, s) for b, _, _, s in report.final] == [(100 + lots, "active")]
    assert peaks[1] < 1.25 * peaks[0], peaks
