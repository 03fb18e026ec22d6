"""Offline verification of a unit trace: no database, no network, no trust in the gateway.

An audit bundle is what ``carbonlink trace --json`` writes: the signed checkpoint, the
log's verifier key, the query, and every event of the traced units as the exact bytes
hashed into the log, each with its inclusion proof.  It is written as JSON lines (format
``/4``): a head line (format, query, checkpoint, log key), then for each page of the
trace its trace note on a line of its own followed by the page's events, one a line, so
that it is written as the pages come and verified as it is read, a line at a time
(:func:`verify_lines`): the verifier holds one line and the traced units' state, never
the events read, however long the history.  Bundles of the single-document formats
(``/2``, ``/3``) are still read, whole, and verified the same way.  The checks stop at
the first failure with its reason, which names the event or note it is in:

1. the bundle was signed by the key the auditor trusts (given out of band);
2. the checkpoint's signature;
3. the trace notes' signatures, and that they answer this bundle's query at this
   checkpoint with exactly this bundle's events: none left out, none added.  A trace
   read in pages has one note per page, each for a window of the log's indexes; the
   windows must tile the whole log, so a page left out (note and events) is seen too;
4. every event's inclusion proof against the checkpoint's root, and that each event's
   bytes name its own position;
5. that the history is well formed: every unit traces back to an issuance in the bundle,
   rows are only changed while live and in the state the log last left them, no event
   follows a terminal state, splits cut a block into pieces that sum to the whole, a
   mirror stands for exactly as many origin units as it holds, and the events cover the
   queried serials.

Inclusion proofs show that each event given is in the log; they cannot show that none
was left out, and a history cut short reads as a consistent, wrong present (units shown
spendable that were retired since).  So the gateway signs, with the log's key, which
events answer the query at the checkpoint (the trace note; for a paged trace, one note
per page, each saying which events answer among the indexes of its window), and a
bundle missing one of them is refused.  A gateway that signs an incomplete list has put
its key to a false statement, which a later trace of the same units exposes.

Everything checked comes from the proven bytes; the bundle's other fields are only
conveniences and are never trusted.  This module deliberately re-implements the little
replay it needs rather than import the ledger's invariant checker: the verifier is the
auditor's trusted code and should stay small and free of database code.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from registry_bridge import merkle
from registry_bridge.block_json import block_id_from_dict, block_id_to_dict
from registry_bridge.errors import CarbonlinkError
from registry_bridge.model import (
    BlockId,
    HoldingStatus,
    merge_blocks,
    merge_spans,
    origin_serials,
    spans_missing,
)
from registry_bridge.signed_note import NoteError, Verifier, open_checkpoint, open_note

BUNDLE_FORMAT = "carbonlink-audit-bundle/4"
"""JSON lines: a head, then each page's trace note followed by the page's events."""
_FORMAT_3 = "carbonlink-audit-bundle/3"
"""One JSON document holding every trace note and every event: still verified."""
_FORMAT_1 = "carbonlink-audit-bundle/1"
_FORMAT_2 = "carbonlink-audit-bundle/2"
"""One trace note, for the whole log: still verified (a trace too long for one reply
could not be written in it)."""
_LEAF_PREFIX = b"\x00"
TRACE_NOTE_TYPE = "carbonlink trace/1"
"""The second line of a trace note for the whole log (a checkpoint's second line is its
tree size)."""
PAGE_NOTE_TYPE = "carbonlink trace/2"
"""The second line of a trace note for a window of the log: one page of a paged trace."""


class AuditFailure(CarbonlinkError):
    """The bundle does not verify; the message is the first reason found."""


def index_ranges(indexes: Sequence[int]) -> str:
    """Sorted event indexes written as ranges: ``0-3,7,9-12``."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    at = 0
    while at < len(ordered):
        end = at
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[at], ordered[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        at = end + 1
    return ",".join(parts)


def _parse_index_ranges(text: str) -> tuple[int, ...]:
    indexes: list[int] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise NoteError(f"event indexes {part!r} are not N or N-M")
        low, high = int(first), int(last) if dash else int(first)
        if high < low or (indexes and low <= indexes[-1]):
            raise NoteError(f"event indexes {part!r} are not in rising order")
        indexes.extend(range(low, high + 1))
    return tuple(indexes)


@dataclass(frozen=True)
class TraceStatement:
    """What the gateway signs with a trace: these events answer this query at this tree.

    With a ``window``, only of the indexes in it: a paged trace signs one statement per
    page, and the windows of a whole trace tile ``[0, size)``.
    """

    origin: str
    size: int
    root: bytes
    query: BlockId
    indexes: tuple[int, ...]
    """Every event of the trace (in the window), in rising order."""
    window: tuple[int, int] | None = None
    """``(start, end)``: the statement is of the indexes ``start <= i < end`` only.
    None, or the whole log, is written as a statement of the first kind (which verifiers
    of bundles before paging read)."""

    @property
    def span(self) -> tuple[int, int]:
        """The indexes the statement answers for, ``[start, end)``."""
        return self.window if self.window is not None else (0, self.size)

    def body(self) -> str:
        """The exact text that is signed."""
        query = json.dumps(block_id_to_dict(self.query), sort_keys=True, separators=(",", ":"))
        root = base64.b64encode(self.root).decode()
        ranges = index_ranges(self.indexes)
        start, end = self.span
        if (start, end) == (0, self.size):
            return f"{self.origin}\n{TRACE_NOTE_TYPE}\n{self.size}\n{root}\n{query}\n{ranges}\n"
        return (
            f"{self.origin}\n{PAGE_NOTE_TYPE}\n{self.size}\n{root}\n{query}\n"
            f"{start} {end}\n{ranges}\n"
        )


def open_trace_note(note: str, trusted: Verifier) -> TraceStatement:
    """Verify a trace note against the log key and return what it states.

    Raises:
        NoteError: The note is malformed, lists an event outside its window, or is not
            signed by ``trusted``.
    """
    lines = open_note(note, trusted, "trace note")
    if len(lines) == 7 and lines[1] == PAGE_NOTE_TYPE:
        origin, _, size_text, root_text, query_text, window_text, ranges = lines
    elif len(lines) == 6 and lines[1] == TRACE_NOTE_TYPE:
        origin, _, size_text, root_text, query_text, ranges = lines
        window_text = f"0 {size_text}"
    else:
        raise NoteError(
            f"a trace note's body is six lines, the second {TRACE_NOTE_TYPE!r}, or seven, "
            f"the second {PAGE_NOTE_TYPE!r}"
        )
    if not size_text.isdigit():
        raise NoteError(f"tree size {size_text!r} is not a decimal number")
    size = int(size_text)
    start_text, _, end_text = window_text.partition(" ")
    if not (start_text.isdigit() and end_text.isdigit()):
        raise NoteError(f"window {window_text!r} is not two decimal numbers")
    start, end = int(start_text), int(end_text)
    if not 0 <= start < end <= size:
        raise NoteError(f"window {start}-{end - 1} is not a part of a log of size {size}")
    try:
        root = base64.b64decode(root_text, validate=True)
        query = block_id_from_dict(json.loads(query_text))
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise NoteError(f"the trace note's root or query is malformed: {exc}") from exc
    indexes = _parse_index_ranges(ranges)
    for index in (indexes[0], indexes[-1]):
        if not start <= index < end:
            raise NoteError(f"event {index} is outside the note's window {start}-{end - 1}")
    window = None if (start, end) == (0, size) else (start, end)
    return TraceStatement(origin, size, root, query, indexes, window)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


@dataclass(frozen=True)
class BundleEvent:
    """One proven event of a bundle."""

    index: int
    leaf_data: bytes
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        """The event as JSON (bytes in base64)."""
        return {
            "index": self.index,
            "leaf_data": _b64(self.leaf_data),
            "proof": [_b64(h) for h in self.proof],
        }

    def line(self) -> str:
        """The event's line of a bundle."""
        return _line(self.to_json())


def note_line(note: str) -> str:
    """The line of a bundle that opens a page: its trace note."""
    return _line({"trace_note": note})


@dataclass(frozen=True)
class BundleHead:
    """What a bundle says before its pages: the query, the checkpoint, the log key."""

    registry: str
    serial: str
    query: BlockId
    checkpoint: str
    log_key: str

    def fields(self) -> dict[str, Any]:
        """The head's fields as JSON, under the names every format gives them."""
        return {
            "query": {
                "registry": self.registry,
                "serial": self.serial,
                "block": block_id_to_dict(self.query),
            },
            "checkpoint": self.checkpoint,
            "log_key": self.log_key,
        }

    def line(self) -> str:
        """The first line of a bundle."""
        return _line({"format": BUNDLE_FORMAT, **self.fields()})


BundlePart = str | BundleEvent
"""A page's trace note (the page's events follow it), or an event."""


@dataclass(frozen=True)
class Bundle:
    """An audit bundle: a trace and everything needed to check it offline."""

    registry: str
    serial: str
    query: BlockId
    checkpoint: str
    log_key: str
    events: tuple[BundleEvent, ...]
    trace_notes: tuple[str, ...]
    """The gateway's signed lists of the events answering the query (TraceStatements):
    one for a trace read whole, one per page for a paged one."""

    @property
    def head(self) -> BundleHead:
        """What the bundle says before its pages."""
        return BundleHead(self.registry, self.serial, self.query, self.checkpoint, self.log_key)

    def parts(self) -> Iterator[BundlePart]:
        """Each trace note, in the order of the log indexes it answers for, followed by
        the events among them: the order in which a bundle's lines are written and read.

        A note that cannot be read comes first, so that verifying says why; an event no
        note answers for comes after them all, where verifying refuses it.
        """
        notes = sorted(self.trace_notes, key=_window_of)
        starts = [_window_of(note)[0] for note in notes]
        pages: list[list[BundleEvent]] = [[] for _ in notes]
        beyond: list[BundleEvent] = []
        for event in self.events:
            page = bisect.bisect_right(starts, event.index) - 1
            (pages[page] if page >= 0 else beyond).append(event)
        for note, events in zip(notes, pages, strict=True):
            yield note
            yield from events
        yield from beyond

    def lines(self) -> Iterator[str]:
        """The bundle as JSON lines (format ``/4``): its head, then each page's note
        followed by the page's events."""
        yield self.head.line()
        for part in self.parts():
            yield note_line(part) if isinstance(part, str) else part.line()

    def to_json(self) -> dict[str, Any]:
        """The bundle as one JSON document, of format ``/3`` (bytes in base64): what
        ``trace`` wrote before bundles were written as lines, read by
        :func:`bundle_from_json` and :func:`verify_lines`."""
        return {
            "format": _FORMAT_3,
            **self.head.fields(),
            "trace_notes": list(self.trace_notes),
            "events": [e.to_json() for e in self.events],
        }


def _window_of(note: str) -> tuple[int, int]:
    """The log indexes a trace note says it answers for, read without checking its
    signature (only to order the notes of a document: each is verified as it is read);
    ``(-1, -1)`` for a note that cannot be read so."""
    lines = note.split("\n")
    try:
        if lines[1] == PAGE_NOTE_TYPE:
            start, end = lines[5].split(" ")
            return int(start), int(end)
        return 0, int(lines[2])
    except (IndexError, ValueError):
        return -1, -1


def _head_from_json(document: Mapping[str, Any]) -> BundleHead:
    query = document["query"]
    return BundleHead(
        registry=str(query["registry"]),
        serial=str(query["serial"]),
        query=block_id_from_dict(query["block"]),
        checkpoint=str(document["checkpoint"]),
        log_key=str(document["log_key"]),
    )


def _event_from_json(record: Mapping[str, Any]) -> BundleEvent:
    return BundleEvent(
        index=int(record["index"]),
        leaf_data=base64.b64decode(record["leaf_data"], validate=True),
        proof=tuple(base64.b64decode(h, validate=True) for h in record["proof"]),
    )


_UNREADABLE = (KeyError, TypeError, ValueError, OverflowError, binascii.Error)
"""What reading a bundle's JSON raises where it is not a bundle. OverflowError: JSON's
Infinity, which int() cannot make a number of."""


def bundle_from_json(document: Any) -> Bundle:
    """Read a bundle of one of the single-document formats (``/2``, ``/3``).

    Raises:
        AuditFailure: The document is not a bundle of these formats.
    """
    try:
        if document["format"] == _FORMAT_1:
            raise AuditFailure(
                f"a {_FORMAT_1} bundle has no trace note: events left out of it cannot be "
                "detected, so it is not verified; trace the units again for a bundle of "
                f"format {BUNDLE_FORMAT}"
            )
        notes: Any
        if document["format"] == _FORMAT_2:
            notes = [document["trace_note"]]
        elif document["format"] == _FORMAT_3:
            notes = document["trace_notes"]
        else:
            raise AuditFailure(
                f"bundle format is {document['format']!r}, not {BUNDLE_FORMAT} (lines), "
                f"{_FORMAT_3} or {_FORMAT_2}"
            )
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise AuditFailure("not an audit bundle: its trace notes are not a list of text")
        head = _head_from_json(document)
        return Bundle(
            registry=head.registry,
            serial=head.serial,
            query=head.query,
            checkpoint=head.checkpoint,
            log_key=head.log_key,
            trace_notes=tuple(notes),
            events=tuple(_event_from_json(e) for e in document["events"]),
        )
    except AuditFailure:
        raise
    except _UNREADABLE as exc:
        raise AuditFailure(f"not an audit bundle: {exc.__class__.__name__}: {exc}") from exc


@dataclass
class AuditReport:
    """What a verified bundle shows."""

    query: BlockId
    tree_size: int
    events: int
    kinds: Counter[str] = field(default_factory=Counter)
    issued: list[BlockId] = field(default_factory=list)
    """Origin blocks whose issuance the bundle contains."""
    retirements: list[tuple[BlockId, str]] = field(default_factory=list)
    """Retired blocks (origin side and mirrors) with their beneficiary."""
    final: list[tuple[BlockId, str, str, str]] = field(default_factory=list)
    """Rows over the queried serials as the history leaves them: block, registry,
    account, status."""


@dataclass
class _Row:
    block: BlockId
    registry: str
    account: str
    status: str
    mirror: bool
    origin: BlockId


def _key(block: BlockId) -> tuple[str, str, int, int]:
    return (block.program.value, block.serial_series, block.serial_start, block.serial_end)


def _terminal(status: str) -> bool:
    try:
        return HoldingStatus(status).is_terminal
    except ValueError:
        return False


def _covered(block: BlockId, spans: Sequence[BlockId]) -> bool:
    """Whether the union of ``spans`` covers every serial of ``block``."""
    runs = merge_spans((s.serial_start, s.serial_end) for s in spans if s.overlaps(block))
    return not spans_missing(block.serial_start, block.serial_end, runs)


def _origin_part(block: BlockId, origin: BlockId, query: BlockId) -> BlockId | None:
    """The origin serials that the part of ``block`` inside ``query`` stands for."""
    if not block.overlaps(query):
        return None
    start = max(block.serial_start, query.serial_start)
    return origin_serials(block, origin, start, min(block.serial_end, query.serial_end))


class _History:
    """The traced units' rows as the history, read an event at a time, leaves them.

    What it keeps is the units' state, not the events: the live rows, the issued blocks,
    and the origin serials the queried units stand for (kept merged).  A piece split off
    an origin row of the queried program and series outside the queried serials is not
    kept: no event of it answers the query (a mirror's serials are of a series of their
    own), so it would only be carried to the end unread.  Once the queried serials are
    seen issued at their origin, neither is a piece of a mirror that stands for none of
    them: the origin serials asked are the queried ones, for good.

    On a mirror's side the pieces of the mirror outside the queried serials are kept: the
    queried units may come to stand for other origin serials later in the history (units
    sent home and back under the queried serials), whose pieces' events then answer the
    query too, and the bundle does not say beforehand which.
    """

    def __init__(self, report: AuditReport) -> None:
        self._report = report
        self._live: dict[tuple[str, str, int, int], _Row] = {}
        # The origin serials the queried units stand for: a mirror's query follows its
        # units home when they are returned, where they are origin rows of other serials.
        self._asked: list[BlockId] = [report.query]
        self._issued_here = False
        """Whether an issuance of queried serials was read: they are origin serials."""
        self._dropped = False
        """Whether a piece was left out for that (one of a mirror, or of another series)."""

    def _kept(self, row: _Row) -> bool:
        query = self._report.query
        if row.block.overlaps(query):
            return True
        kept = row.mirror or (row.block.program, row.block.serial_series) != (
            query.program,
            query.serial_series,
        )
        if kept and self._issued_here and not row.origin.overlaps(query):
            self._dropped = True
            return False
        return kept

    def add(self, index: int, body: Mapping[str, Any]) -> None:
        """Apply one event.

        Raises:
            AuditFailure: The event is malformed, or does not follow from the history.
        """
        report = self._report
        kind = str(body.get("kind", ""))
        report.kinds[kind] += 1
        if "block" not in body:
            return  # transfer_state and other events that change no row
        where = f"event {index} ({kind})"
        try:
            block = block_id_from_dict(body["block"])
            origin = block_id_from_dict(body["origin"])
            registry, account = str(body["registry"]), str(body["account"])
            status, mirror = str(body["status"]), bool(body["mirror"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise AuditFailure(f"{where}: malformed row event: {exc}") from exc
        part = _origin_part(block, origin, report.query)
        if part is not None and not _covered(part, self._asked):
            if self._dropped:
                # Only a mirror in the series of serials issued at their origin gets
                # here: the pieces left out could answer the query after all.
                raise AuditFailure(
                    f"{where}: {block.label} stands for origin units "
                    f"{part.label} among the queried serials, which were issued at "
                    "their origin: a mirror's serials must be of a series of their own"
                )
            self._asked = merge_blocks([*self._asked, part])
        if block.quantity != origin.quantity:
            raise AuditFailure(
                f"{where}: {block.label} holds {block.quantity} units but stands for "
                f"{origin.quantity} origin units ({origin.label}): units not conserved"
            )
        if kind == "issuance":
            report.issued.append(block)
            self._issued_here = self._issued_here or block.overlaps(report.query)
        if not _covered(origin, report.issued):
            raise AuditFailure(
                f"{where}: origin units {origin.label} have no issuance earlier in the history"
            )
        live = self._live
        key = _key(block)
        previous = live.get(key)
        creates = kind == "issuance" or (kind == "credit" and "previous_status" not in body)
        if creates:
            if kind == "issuance":
                if mirror or block != origin:
                    raise AuditFailure(f"{where}: an issuance must be an origin block")
            elif not mirror:
                raise AuditFailure(f"{where}: a credit without a prior state must be a mirror")
            if previous is not None:
                raise AuditFailure(f"{where}: {block.label} is already live")
            live[key] = _Row(block, registry, account, status, mirror, origin)
            return
        if previous is None:
            raise AuditFailure(f"{where}: {block.label} is not live at this point of the history")
        if _terminal(previous.status):
            raise AuditFailure(
                f"{where}: {block.label} changes after reaching the terminal state "
                f"{previous.status}"
            )
        if previous.origin != origin or previous.mirror != mirror:
            raise AuditFailure(f"{where}: {block.label} changed the origin it stands for")
        if kind == "split":
            self._split(where, body, previous, (registry, account, status))
            return
        if body.get("previous_status", previous.status) != previous.status:
            raise AuditFailure(
                f"{where}: says {block.label} was {body['previous_status']}, but the "
                f"history left it {previous.status}"
            )
        if body.get("exported"):
            del live[key]
            return
        live[key] = _Row(block, registry, account, status, mirror, origin)
        if status == HoldingStatus.RETIRED.value:
            report.retirements.append((block, str(body.get("beneficiary", ""))))

    def _split(
        self, where: str, body: Mapping[str, Any], previous: _Row, held: tuple[str, str, str]
    ) -> None:
        block, origin = previous.block, previous.origin
        if held != (previous.registry, previous.account, previous.status):
            raise AuditFailure(f"{where}: a split must not change holder or state")
        try:
            pieces = sorted(block_id_from_dict(p) for p in body["pieces"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise AuditFailure(f"{where}: malformed split pieces: {exc}") from exc
        at = block.serial_start
        for piece in pieces:
            if (piece.program, piece.serial_series) != (block.program, block.serial_series) or (
                piece.serial_start != at
            ):
                raise AuditFailure(
                    f"{where}: the pieces of {block.label} do not tile it "
                    f"({', '.join(p.label for p in pieces)}): units not conserved"
                )
            at = piece.serial_end + 1
        if at != block.serial_end + 1 or len(pieces) < 2:
            raise AuditFailure(
                f"{where}: the pieces of {block.label} do not sum to the whole: units not conserved"
            )
        del self._live[_key(block)]
        for piece in pieces:
            first = origin.serial_start + piece.serial_start - block.serial_start
            row = _Row(
                piece,
                previous.registry,
                previous.account,
                previous.status,
                previous.mirror,
                BlockId(origin.program, origin.serial_series, first, first + piece.quantity - 1),
            )
            if self._kept(row):
                self._live[_key(piece)] = row

    def final(self) -> list[tuple[BlockId, str, str, str]]:
        """The rows over the queried serials, or standing for their origin serials."""
        query = self._report.query
        return sorted(
            (
                (row.block, row.registry, row.account, row.status)
                for row in self._live.values()
                if row.block.overlaps(query) or any(row.origin.overlaps(a) for a in self._asked)
            ),
            key=lambda r: _key(r[0]),
        )


def _missing_page(start: int, end: int) -> NoReturn:
    span = str(start) if end == start + 1 else f"{start}-{end - 1}"
    raise AuditFailure(
        f"no trace note answers for events {span} of the log: a page of the trace is "
        "missing, the history is incomplete"
    )


@dataclass
class _Page:
    """The trace note being read, and which of its events are still to come."""

    statement: TraceStatement
    next: int = 0
    """Position in ``statement.indexes`` of the next event the bundle must give."""

    def refuse_left_out(self, before: int | None = None) -> None:
        """Refuse the bundle if an event the note signed, before index ``before`` (all
        of them for None), did not come."""
        indexes = self.statement.indexes
        end = len(indexes)
        if before is not None:
            end = bisect.bisect_left(indexes, before, lo=self.next)
        if end == self.next:
            return
        start, stop = self.statement.span
        raise AuditFailure(
            f"the bundle leaves out events {index_ranges(indexes[self.next : end])} of the "
            f"{len(indexes)} the gateway signed as this trace's among events {start}-"
            f"{stop - 1}: the history is incomplete"
        )


class _Verification:
    """A bundle checked as it is read: its head, then each note and event in turn."""

    def __init__(self, head: BundleHead, trusted: Verifier) -> None:
        if head.log_key.strip() != trusted.encode():
            raise AuditFailure(
                f"the bundle names log key {head.log_key.strip()!r}, not the trusted "
                f"{trusted.encode()!r}"
            )
        try:
            checkpoint = open_checkpoint(head.checkpoint, trusted)
        except NoteError as exc:
            raise AuditFailure(f"checkpoint: {exc}") from exc
        if checkpoint.origin != trusted.name:
            raise AuditFailure(f"checkpoint origin {checkpoint.origin!r} is not {trusted.name!r}")
        self._trusted = trusted
        self._query = head.query
        self._checkpoint = checkpoint
        self._page: _Page | None = None
        self._answered = 0
        """Where the log indexes the notes read so far answer for end."""
        self._last = -1
        self._touched: list[BlockId] = []
        """The queried serials the events concern, kept merged."""
        self.report = AuditReport(query=head.query, tree_size=checkpoint.size, events=0)
        self._history = _History(self.report)

    def note(self, note: str) -> None:
        """Open the next page: its note must answer this query at this checkpoint, for
        the log indexes from where the previous note's ended."""
        try:
            statement = open_trace_note(note, self._trusted)
        except NoteError as exc:
            raise AuditFailure(f"trace note: {exc}") from exc
        checkpoint = self._checkpoint
        if (statement.origin, statement.size, statement.root) != (
            self._trusted.name,
            checkpoint.size,
            checkpoint.root,
        ):
            raise AuditFailure(
                f"the trace note is for tree size {statement.size} of {statement.origin!r}, "
                "not the checkpoint's"
            )
        if statement.query != self._query:
            raise AuditFailure(
                f"the trace note answers {statement.query.label}, not the queried "
                f"{self._query.label}"
            )
        start, end = statement.span
        if start < self._answered:
            raise AuditFailure(f"the trace notes overlap at event {start}")
        if start > self._answered:
            _missing_page(self._answered, start)
        if self._page is not None:
            self._page.refuse_left_out()
        self._answered = end
        self._page = _Page(statement)

    def event(self, event: BundleEvent) -> None:
        """Check one event: signed by the current page's note, in the log, well formed,
        and following from the history before it."""
        index = event.index
        if index <= self._last:
            raise AuditFailure(f"event {index} is out of order (after {self._last})")
        self._last = index
        page = self._page
        if page is None:
            raise AuditFailure(
                f"the bundle holds no trace note before event {index}: events left out "
                "cannot be detected (each page's events follow its note)"
            )
        if index >= self._answered:
            # Each page's events follow its note: the note answering for this one is
            # not in the bundle.
            _missing_page(self._answered, index + 1)
        page.refuse_left_out(before=index)
        indexes = page.statement.indexes
        if page.next == len(indexes) or indexes[page.next] != index:
            raise AuditFailure(
                f"events {index} are not among those the gateway signed as this trace's"
            )
        page.next += 1
        checkpoint = self._checkpoint
        leaf = hashlib.sha256(_LEAF_PREFIX + event.leaf_data).digest()
        try:
            merkle.verify_inclusion(index, checkpoint.size, leaf, event.proof, checkpoint.root)
        except merkle.ProofError as exc:
            raise AuditFailure(
                f"event {index}: not in the log of checkpoint size {checkpoint.size}: {exc}"
            ) from exc
        try:
            body = json.loads(event.leaf_data)
        except ValueError as exc:
            raise AuditFailure(f"event {index}: leaf data is not JSON") from exc
        if not isinstance(body, Mapping) or body.get("index") != index:
            raise AuditFailure(f"event {index}: leaf data does not name index {index}")
        self.report.events += 1
        self._history.add(index, body)
        touched: list[BlockId] = []
        for key in ("block", "origin"):
            if isinstance(body.get(key), dict):
                try:
                    touched.append(block_id_from_dict(body[key]))
                except (KeyError, TypeError, ValueError, OverflowError) as exc:
                    # Only events that change no row get here unread: the history's
                    # check read every row event's blocks already.
                    raise AuditFailure(f"event {index}: malformed {key}: {exc}") from exc
        inside = [span for span in touched if span.overlaps(self._query)]
        if inside and not all(_covered(span, self._touched) for span in inside):
            self._touched = merge_blocks([*self._touched, *inside])

    def finish(self) -> AuditReport:
        """What the whole bundle shows, once the notes answered for the whole log and
        every event they signed came."""
        if self._page is None:
            raise AuditFailure("the bundle holds no trace note: events left out cannot be detected")
        self._page.refuse_left_out()
        if self._answered != self._checkpoint.size:
            _missing_page(self._answered, self._checkpoint.size)
        if not self.report.events:
            raise AuditFailure("the bundle holds no events")
        self.report.final = self._history.final()
        if not _covered(self._query, self._touched):
            raise AuditFailure(f"the events do not cover the queried units {self._query.label}")
        return self.report


def verify_parts(head: BundleHead, parts: Iterable[BundlePart], trusted: Verifier) -> AuditReport:
    """Verify a bundle read a part at a time, as its parts come.

    Args:
        head: What the bundle says before its pages.
        parts: Each page's trace note followed by the page's events, in log order.
        trusted: The log's verifier key, obtained out of band (not from the bundle).

    Returns:
        What the verified history shows.

    Raises:
        AuditFailure: At the first check that fails, saying which and why (naming the
            event or note it is in).
    """
    verification = _Verification(head, trusted)
    for part in parts:
        if isinstance(part, str):
            verification.note(part)
        else:
            verification.event(part)
    return verification.finish()


def verify_bundle(bundle: Bundle, trusted: Verifier) -> AuditReport:
    """Verify a bundle held whole (see :func:`verify_parts`) offline against the log key
    the auditor trusts.

    Raises:
        AuditFailure: At the first check that fails, saying which and why.
    """
    return verify_parts(bundle.head, bundle.parts(), trusted)


def _record(line: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise AuditFailure(f"line {number} of the bundle is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise AuditFailure(f"line {number} of the bundle is not a JSON object")
    return record


def _parts_of(lines: Iterator[str]) -> Iterator[BundlePart]:
    """The notes and events of a bundle's lines after its head, one line at a time."""
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        record = _record(line, number)
        try:
            if "trace_note" in record:
                note = record["trace_note"]
                if not isinstance(note, str):
                    raise TypeError("a trace note is text")
                yield note
            else:
                yield _event_from_json(record)
        except _UNREADABLE as exc:
            raise AuditFailure(
                f"line {number} of the bundle is neither a trace note nor an event: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc


def verify_lines(lines: Iterable[str], trusted: Verifier) -> AuditReport:
    """Verify a bundle as its lines are read (a file opened as text is its lines).

    A bundle of JSON lines (format ``/4``) is verified a line at a time: what is held is
    one line and the traced units' state, whatever the number of events.  A bundle of
    one JSON document (``/2``, ``/3``, written before bundles were lines) is read whole,
    then verified the same way.

    Raises:
        AuditFailure: The bundle is not one, or at the first check that fails, saying
            which and why (naming the event, note or line it is in).
    """
    reading = iter(lines)
    first = next(reading, "")
    try:
        head_record: Any = json.loads(first)
    except ValueError:
        head_record = None  # a document over several lines: one of the earlier formats
    if isinstance(head_record, dict) and head_record.get("format") == BUNDLE_FORMAT:
        try:
            head = _head_from_json(head_record)
        except _UNREADABLE as exc:
            raise AuditFailure(
                f"line 1 of the bundle is not its head: {exc.__class__.__name__}: {exc}"
            ) from exc
        return verify_parts(head, _parts_of(reading), trusted)
    text = first + "".join(reading)
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise AuditFailure(f"not an audit bundle: not JSON: {exc}") from exc
    return verify_bundle(bundle_from_json(document), trusted)
