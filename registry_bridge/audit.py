"""Offline verification of a unit trace: no database, no network, no trust in the gateway.

An audit bundle is what ``carbonlink trace --json`` writes: the signed checkpoint, the
log's verifier key, the query, and every event of the traced units as the exact bytes
hashed into the log, each with its inclusion proof.  :func:`verify_bundle` checks, and
stops at the first failure with its reason:

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
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from registry_bridge import merkle
from registry_bridge.block_json import block_id_from_dict, block_id_to_dict
from registry_bridge.errors import CarbonlinkError
from registry_bridge.model import BlockId, HoldingStatus, merge_spans, spans_missing
from registry_bridge.signed_note import NoteError, Verifier, open_checkpoint, open_note

BUNDLE_FORMAT = "carbonlink-audit-bundle/3"
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


@dataclass(frozen=True)
class BundleEvent:
    """One proven event of a bundle."""

    index: int
    leaf_data: bytes
    proof: tuple[bytes, ...]


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

    def to_json(self) -> dict[str, Any]:
        """The bundle as a JSON document (bytes in base64)."""
        return {
            "format": BUNDLE_FORMAT,
            "query": {
                "registry": self.registry,
                "serial": self.serial,
                "block": block_id_to_dict(self.query),
            },
            "checkpoint": self.checkpoint,
            "trace_notes": list(self.trace_notes),
            "log_key": self.log_key,
            "events": [
                {
                    "index": e.index,
                    "leaf_data": base64.b64encode(e.leaf_data).decode(),
                    "proof": [base64.b64encode(h).decode() for h in e.proof],
                }
                for e in self.events
            ],
        }


def bundle_from_json(document: Any) -> Bundle:
    """Read a bundle document.

    Raises:
        AuditFailure: The document is not a bundle of this format.
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
        elif document["format"] == BUNDLE_FORMAT:
            notes = document["trace_notes"]
        else:
            raise AuditFailure(f"bundle format is {document['format']!r}, not {BUNDLE_FORMAT}")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise AuditFailure("not an audit bundle: its trace notes are not a list of text")
        query = document["query"]
        return Bundle(
            registry=str(query["registry"]),
            serial=str(query["serial"]),
            query=block_id_from_dict(query["block"]),
            checkpoint=str(document["checkpoint"]),
            trace_notes=tuple(notes),
            log_key=str(document["log_key"]),
            events=tuple(
                BundleEvent(
                    index=int(e["index"]),
                    leaf_data=base64.b64decode(e["leaf_data"], validate=True),
                    proof=tuple(base64.b64decode(h, validate=True) for h in e["proof"]),
                )
                for e in document["events"]
            ),
        )
    except AuditFailure:
        raise
    # OverflowError: JSON's Infinity, which int() cannot make a number of.
    except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as exc:
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
    registry: str
    account: str
    status: str
    mirror: bool
    origin: BlockId


def _key(block: BlockId) -> tuple[str, str, int, int]:
    return (block.program.value, block.serial_series, block.serial_start, block.serial_end)


def _describe(block: BlockId) -> str:
    series = f"/{block.serial_series}" if block.serial_series else ""
    return f"{block.program.value}{series} {block.serial_start}-{block.serial_end}"


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
    offset = origin.serial_start - block.serial_start
    return BlockId(
        origin.program,
        origin.serial_series,
        max(block.serial_start, query.serial_start) + offset,
        min(block.serial_end, query.serial_end) + offset,
    )


def _check_history(bodies: Sequence[tuple[int, dict[str, Any]]], report: AuditReport) -> None:
    live: dict[tuple[str, str, int, int], _Row] = {}
    blocks: dict[tuple[str, str, int, int], BlockId] = {}
    # The origin serials the queried units stand for: a mirror's query follows its units
    # home when they are returned, where they are origin rows of other serials.
    asked: list[BlockId] = [report.query]
    for index, body in bodies:
        kind = str(body.get("kind", ""))
        report.kinds[kind] += 1
        if "block" not in body:
            continue  # transfer_state and other events that change no row
        where = f"event {index} ({kind})"
        try:
            block = block_id_from_dict(body["block"])
            origin = block_id_from_dict(body["origin"])
            registry, account = str(body["registry"]), str(body["account"])
            status, mirror = str(body["status"]), bool(body["mirror"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise AuditFailure(f"{where}: malformed row event: {exc}") from exc
        part = _origin_part(block, origin, report.query)
        if part is not None:
            asked.append(part)
        if block.quantity != origin.quantity:
            raise AuditFailure(
                f"{where}: {_describe(block)} holds {block.quantity} units but stands for "
                f"{origin.quantity} origin units ({_describe(origin)}): units not conserved"
            )
        if kind == "issuance":
            report.issued.append(block)
        if not _covered(origin, report.issued):
            raise AuditFailure(
                f"{where}: origin units {_describe(origin)} have no issuance earlier in the history"
            )
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
                raise AuditFailure(f"{where}: {_describe(block)} is already live")
            live[key] = _Row(registry, account, status, mirror, origin)
            blocks[key] = block
            continue
        if previous is None:
            raise AuditFailure(
                f"{where}: {_describe(block)} is not live at this point of the history"
            )
        if _terminal(previous.status):
            raise AuditFailure(
                f"{where}: {_describe(block)} changes after reaching the terminal state "
                f"{previous.status}"
            )
        if previous.origin != origin or previous.mirror != mirror:
            raise AuditFailure(f"{where}: {_describe(block)} changed the origin it stands for")
        if kind == "split":
            held = (previous.registry, previous.account, previous.status)
            if (registry, account, status) != held:
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
                        f"{where}: the pieces of {_describe(block)} do not tile it "
                        f"({', '.join(_describe(p) for p in pieces)}): units not conserved"
                    )
                at = piece.serial_end + 1
            if at != block.serial_end + 1 or len(pieces) < 2:
                raise AuditFailure(
                    f"{where}: the pieces of {_describe(block)} do not sum to the whole: "
                    "units not conserved"
                )
            del live[key]
            for piece in pieces:
                offset = piece.serial_start - block.serial_start
                live[_key(piece)] = _Row(
                    previous.registry,
                    previous.account,
                    previous.status,
                    previous.mirror,
                    BlockId(
                        origin.program,
                        origin.serial_series,
                        origin.serial_start + offset,
                        origin.serial_start + offset + piece.quantity - 1,
                    ),
                )
                blocks[_key(piece)] = piece
            continue
        if body.get("previous_status", previous.status) != previous.status:
            raise AuditFailure(
                f"{where}: says {_describe(block)} was {body['previous_status']}, but the "
                f"history left it {previous.status}"
            )
        if body.get("exported"):
            del live[key]
            continue
        live[key] = _Row(registry, account, status, mirror, origin)
        if status == HoldingStatus.RETIRED.value:
            report.retirements.append((block, str(body.get("beneficiary", ""))))
    report.final = sorted(
        (
            (blocks[k], row.registry, row.account, row.status)
            for k, row in live.items()
            if blocks[k].overlaps(report.query) or any(row.origin.overlaps(a) for a in asked)
        ),
        key=lambda r: _key(r[0]),
    )


def _missing_page(start: int, end: int) -> NoReturn:
    span = str(start) if end == start + 1 else f"{start}-{end - 1}"
    raise AuditFailure(
        f"no trace note answers for events {span} of the log: a page of the trace is "
        "missing, the history is incomplete"
    )


def _check_trace_notes(bundle: Bundle, size: int, root: bytes, trusted: Verifier) -> None:
    """The signed trace notes answer this query at this checkpoint with these events, and
    together answer for every index of the log: a page left out leaves a gap."""
    if not bundle.trace_notes:
        raise AuditFailure("the bundle holds no trace note: events left out cannot be detected")
    statements: list[TraceStatement] = []
    for note in bundle.trace_notes:
        try:
            statement = open_trace_note(note, trusted)
        except NoteError as exc:
            raise AuditFailure(f"trace note: {exc}") from exc
        if (statement.origin, statement.size, statement.root) != (trusted.name, size, root):
            raise AuditFailure(
                f"the trace note is for tree size {statement.size} of {statement.origin!r}, "
                "not the checkpoint's"
            )
        if statement.query != bundle.query:
            raise AuditFailure(
                f"the trace note answers {_describe(statement.query)}, not the queried "
                f"{_describe(bundle.query)}"
            )
        statements.append(statement)
    at = 0
    for statement in sorted(statements, key=lambda s: s.span):
        start, end = statement.span
        if start < at:
            raise AuditFailure(f"the trace notes overlap at event {start}")
        if start > at:
            _missing_page(at, start)
        at = end
    if at != size:
        _missing_page(at, size)
    signed = {i for statement in statements for i in statement.indexes}
    given = {e.index for e in bundle.events}
    if missing := sorted(signed - given):
        raise AuditFailure(
            f"the bundle leaves out events {index_ranges(missing)} of the "
            f"{len(signed)} the gateway signed as this trace's: the history is incomplete"
        )
    if extra := sorted(given - signed):
        raise AuditFailure(
            f"events {index_ranges(extra)} are not among those the gateway signed as this trace's"
        )


def verify_bundle(bundle: Bundle, trusted: Verifier) -> AuditReport:
    """Verify a bundle offline against the log key the auditor trusts.

    Args:
        bundle: The bundle, as read by :func:`bundle_from_json`.
        trusted: The log's verifier key, obtained out of band (not from the bundle).

    Returns:
        What the verified history shows.

    Raises:
        AuditFailure: At the first check that fails, saying which and why.
    """
    if bundle.log_key.strip() != trusted.encode():
        raise AuditFailure(
            f"the bundle names log key {bundle.log_key.strip()!r}, not the trusted "
            f"{trusted.encode()!r}"
        )
    try:
        checkpoint = open_checkpoint(bundle.checkpoint, trusted)
    except NoteError as exc:
        raise AuditFailure(f"checkpoint: {exc}") from exc
    if checkpoint.origin != trusted.name:
        raise AuditFailure(f"checkpoint origin {checkpoint.origin!r} is not {trusted.name!r}")
    _check_trace_notes(bundle, checkpoint.size, checkpoint.root, trusted)
    if not bundle.events:
        raise AuditFailure("the bundle holds no events")
    bodies: list[tuple[int, dict[str, Any]]] = []
    last = -1
    for event in bundle.events:
        if event.index <= last:
            raise AuditFailure(f"event {event.index} is out of order (after {last})")
        last = event.index
        leaf = hashlib.sha256(_LEAF_PREFIX + event.leaf_data).digest()
        try:
            merkle.verify_inclusion(
                event.index, checkpoint.size, leaf, event.proof, checkpoint.root
            )
        except merkle.ProofError as exc:
            raise AuditFailure(
                f"event {event.index}: not in the log of checkpoint size {checkpoint.size}: {exc}"
            ) from exc
        try:
            body = json.loads(event.leaf_data)
        except ValueError as exc:
            raise AuditFailure(f"event {event.index}: leaf data is not JSON") from exc
        if not isinstance(body, Mapping) or body.get("index") != event.index:
            raise AuditFailure(f"event {event.index}: leaf data does not name index {event.index}")
        bodies.append((event.index, dict(body)))
    report = AuditReport(query=bundle.query, tree_size=checkpoint.size, events=len(bodies))
    _check_history(bodies, report)
    touched: list[BlockId] = []
    for index, body in bodies:
        for key in ("block", "origin"):
            if isinstance(body.get(key), dict):
                try:
                    touched.append(block_id_from_dict(body[key]))
                except (KeyError, TypeError, ValueError, OverflowError) as exc:
                    # Only events that change no row get here unread: the history's
                    # check read every row event's blocks already.
                    raise AuditFailure(f"event {index}: malformed {key}: {exc}") from exc
    if not _covered(bundle.query, touched):
        raise AuditFailure(f"the events do not cover the queried units {_describe(bundle.query)}")
    return report
