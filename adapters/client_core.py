"""What every registry client shares: calling a native RPC and typing its failures.

A native call either answers, or fails with a gRPC status.  UNAVAILABLE and
DEADLINE_EXCEEDED mean the registry may not have seen the call (or its answer was lost);
UNKNOWN, INTERNAL and ABORTED mean it failed while handling it, and may or may not have
applied it.  None of these is an answer: they become :class:`RegistryUnavailable`, which
the retry policy retries with the same operation id (a repeat of an applied operation
answers what it did), and which leaves a transfer where it stands.  Taken as a refusal,
a credit applied before its answer was lost would have rolled its transfer back while
the destination held the units.  Every other status is the registry's answer and becomes
:class:`RegistryRejected`, carrying the registry's own rejection code when it sent one in
the trailing metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import grpc
from google.protobuf.message import Message

from adapters import serials
from registry_bridge.errors import Abandoned, RegistryRejected, RegistryUnavailable
from registry_bridge.model import (
    Authorization,
    BlockId,
    CorrespondingAdjustment,
    HoldingStatus,
    Program,
    UnitBlock,
)
from registry_bridge.port import ListHoldingsRequest, ProgramTotal, RegistryHolding, StillWanted

# Trailing-metadata key carrying a registry's own rejection code (set by the emulators).
REJECTION_CODE_KEY = "registry-rejection-code"

_TRANSIENT = frozenset(
    {
        # A cancelled call may have been applied before it was cancelled: taking it for
        # a refusal would roll back a transfer whose units the registry had locked.
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)

BATCH_MAX_ITEMS = 500
"""Items per batch RPC at most; a longer batch is split into several calls.  Half the
emulators' cap (``adapters.emulator_core.servicing.BATCH_ITEMS_CAP``), so a registry with
a lower cap than ours is still unlikely to refuse a whole call."""

BATCH_MAX_REQUEST_BYTES = 512 * 1024
"""Serialized items per batch RPC at most, in bytes.  A reply carries a whole block per
item (several times a lock request's size), and gRPC refuses messages over 4 MiB by
default: a quarter of that for the request keeps the reply under the limit too."""

BATCH_ITEM_TIMEOUT_S = 0.02
"""Added to a batch RPC's deadline per item, in seconds: a registry applies the items one
after the other, so one call-sized deadline would time out a large batch that is merely
working (and the retry would redo it from the operation log, slower still)."""

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Resp_co = TypeVar("Resp_co", covariant=True)
Msg = TypeVar("Msg")
Canonical = TypeVar("Canonical")
Item = TypeVar("Item", bound=Message)
Result = TypeVar("Result")
Native = TypeVar("Native", bound=Message)
Converted = TypeVar("Converted")


class NativeAuthorization(Protocol):
    """A native authorization message spelled in the common way (all registries but BRI)."""

    @property
    def letter_id(self) -> str: ...
    @property
    def host_country(self) -> str: ...
    @property
    def authorized_uses(self) -> Iterable[str]: ...
    @property
    def issued_on(self) -> str: ...


def rejection_code(error: grpc.RpcError) -> str:
    """The registry's own rejection code of a failed call, else the gRPC status name."""
    for key, value in error.trailing_metadata() or ():
        if key == REJECTION_CODE_KEY:
            return str(value)
    return str(error.code().name)


class NativeCall(Protocol[Resp_co]):
    """A native RPC under way (a gRPC call future)."""

    def result(self, timeout: float | None = None) -> Resp_co:
        """The answer, waiting at most ``timeout`` seconds (``grpc.FutureTimeoutError``),
        or the call's failure (``grpc.RpcError``)."""
        ...

    def cancel(self) -> bool:
        """Cancel the call: the registry sees it cancelled.  False when it had ended."""
        ...


class NativeMethod(Protocol[Resp_co]):
    """A stub's unary method: called and waited for, or started as a :class:`NativeCall`."""

    def __call__(self, request: Any, *, timeout: float) -> Resp_co: ...

    def future(self, request: Any, *, timeout: float) -> NativeCall[Resp_co]: ...


READ_POLL_S = 0.05
"""How often a read given a ``still_wanted`` asks it while the registry has not answered,
in seconds: the longest a read runs on for a caller who has gone.  Asking is cheap (a
gRPC call's ``is_active``), and the wait ends as soon as the answer comes."""


def invoke(
    registry_id: str,
    method: NativeMethod[Resp],
    request: Req,
    timeout_s: float,
    *,
    still_wanted: StillWanted | None = None,
) -> Resp:
    """Call one native RPC, typing its failure.

    Args:
        registry_id: The registry, named in the errors.
        method: A stub method.
        request: The native request.
        timeout_s: The call's deadline, in seconds.
        still_wanted: For a read only: asked before the call and while it is under way;
            false cancels the call (see ``registry_bridge.port.StillWanted``).

    Returns:
        The native response.

    Raises:
        RegistryUnavailable: The registry was unreachable, too slow, or failed while
            handling the call (transient: it may be retried with the same operation id).
        RegistryRejected: The registry refused the call (final).
        Abandoned: ``still_wanted`` answered false; the call, if made, was cancelled.
    """
    try:
        if still_wanted is None:
            return method(request, timeout=timeout_s)
        return _answer_while_wanted(registry_id, method, request, timeout_s, still_wanted)
    except grpc.RpcError as exc:
        status = exc.code()
        if status in _TRANSIENT:
            raise RegistryUnavailable(registry_id, f"{status.name}: {exc.details()}") from exc
        raise RegistryRejected(registry_id, rejection_code(exc), str(exc.details())) from exc


def _answer_while_wanted(
    registry_id: str,
    method: NativeMethod[Resp],
    request: Req,
    timeout_s: float,
    still_wanted: StillWanted,
) -> Resp:
    """The answer of a read, unless its caller goes first (see :func:`invoke`).

    Raises:
        grpc.RpcError: The call failed.
        Abandoned: ``still_wanted`` answered false.
    """
    # Asked first too, so a retry of a read whose caller has gone is never sent.
    if not still_wanted():
        raise Abandoned(f"{registry_id}: read not started, its caller is gone")
    call = method.future(request, timeout=timeout_s)
    while True:
        try:
            return call.result(timeout=READ_POLL_S)
        except grpc.FutureTimeoutError:
            if not still_wanted():
                # Cancelled rather than let run to its deadline: the registry stops
                # working for no one, and the caller's worker (and a stopping server)
                # is not held until the registry answers.  The call's own CANCELLED
                # status would read as a transient failure and be retried.
                call.cancel()
                raise Abandoned(f"{registry_id}: read cancelled, its caller is gone") from None


class NativeRefusal(Protocol):
    """A registry's refusal of one item of a batch, spelled as most registries spell it."""

    @property
    def code(self) -> str: ...
    @property
    def message(self) -> str: ...


def item_refused(registry_id: str, refusal: NativeRefusal) -> RegistryRejected:
    """The error of one refused batch item: the one its single call would have raised."""
    return RegistryRejected(registry_id, refusal.code or "REJECTED", refusal.message)


def _chunks(
    items: Sequence[tuple[int, Item]], max_items: int, max_bytes: int
) -> Iterator[list[tuple[int, Item]]]:
    """Consecutive runs of ``items``, each within both caps (an oversized item goes alone)."""
    chunk: list[tuple[int, Item]] = []
    size = 0
    for position, item in items:
        item_size = item.ByteSize()
        if chunk and (len(chunk) >= max_items or size + item_size > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((position, item))
        size += item_size
    if chunk:
        yield chunk


def invoke_batch(
    registry_id: str,
    requests: Sequence[Canonical],
    *,
    to_native: Callable[[Canonical], Item],
    call: Callable[[list[Item], float], Sequence[Result]],
    from_native: Callable[[Result], RegistryHolding],
    timeout_s: float,
    max_items: int = BATCH_MAX_ITEMS,
    max_bytes: int = BATCH_MAX_REQUEST_BYTES,
) -> list[RegistryHolding | RegistryRejected]:
    """Apply many canonical requests through a registry's batch RPC (the port's ``*_many``).

    Each request is translated as its single call translates it; one the adapter already
    refuses (a program the registry cannot name) gets that refusal in its slot and is not
    sent.  The rest go in as few calls as the caps allow, in order, and each answer is
    translated as the single call's answer is, a refused item becoming its
    ``RegistryRejected`` in its slot.

    Args:
        registry_id: The registry, named in the errors.
        requests: The canonical requests, in the order the registry must apply them.
        to_native: The single call's request translation; raises ``RegistryRejected``
            for a request the registry cannot take.
        call: One batch RPC over native items with a deadline in seconds, answering one
            result per item in order (typically :func:`invoke` of the batch stub).
        from_native: The single call's answer translation; raises ``RegistryRejected``
            for a refused item (see :func:`item_refused`).
        timeout_s: The single call's deadline, in seconds; a batch call gets
            :data:`BATCH_ITEM_TIMEOUT_S` more per item.
        max_items: Items per call at most.
        max_bytes: Serialized items per call at most, in bytes.

    Returns:
        Per request, in order: the holding, or the refusal its single call would raise.

    Raises:
        RegistryUnavailable: A call failed in transit (earlier calls' items may have been
            applied; repeating the whole batch is safe, as every item has its operation id).
        RegistryRejected: The registry refused a call as a whole, or answered a number of
            results other than the number of items (the reply cannot be matched up).
    """
    # Filled by position: by the adapter's own refusal, or by the registry's answer.
    results: dict[int, RegistryHolding | RegistryRejected] = {}
    outgoing: list[tuple[int, Item]] = []
    for position, request in enumerate(requests):
        try:
            outgoing.append((position, to_native(request)))
        except RegistryRejected as refusal:
            results[position] = refusal
    for chunk in _chunks(outgoing, max_items, max_bytes):
        answers = call([item for _, item in chunk], timeout_s + BATCH_ITEM_TIMEOUT_S * len(chunk))
        if len(answers) != len(chunk):
            raise RegistryRejected(
                registry_id,
                "BATCH_REPLY_MISMATCH",
                f"{registry_id} answered {len(answers)} results to a batch of {len(chunk)}",
            )
        for (position, _), answer in zip(chunk, answers, strict=True):
            try:
                results[position] = from_native(answer)
            except RegistryRejected as refusal:
                results[position] = refusal
    return [results[position] for position in range(len(requests))]


LISTING_PAGE_SIZE = 500
"""Holdings asked for per page of a native listing.  A registry may answer fewer (its own
cap), and a page of this many holdings of a few hundred bytes each stays far below gRPC's
default 4 MiB reply limit, so no channel needs a larger one; a few hundred pages list a
registry of 100,000 holdings."""


@dataclass(frozen=True)
class HoldingsPage:
    """One page of a registry's native holdings listing, in canonical terms."""

    holdings: tuple[RegistryHolding, ...]
    next_page: str
    """The registry's token of the page after this one; '' after the last page."""


@runtime_checkable
class PagedListing(Protocol):
    """A client whose holdings listing is read a page per native call.

    :class:`adapters.retry.RetryingRegistry` retries such a listing page by page, so a
    transient failure repeats the page that failed, not the pages already read.
    """

    @property
    def registry_id(self) -> str: ...

    def list_holdings_page(
        self, request: ListHoldingsRequest, page: str, still_wanted: StillWanted | None = None
    ) -> HoldingsPage:
        """One page of the listing: the first for ``page`` '', else the one ``page`` names.

        Raises:
            RegistryUnavailable: The call failed in transit; asking for the same page
                again is safe.
            RegistryRejected: The registry refused the call (a token it did not give).
            Abandoned: ``still_wanted`` answered false; the call was cancelled.
        """
        ...


def iter_pages(
    registry_id: str, fetch: Callable[[str], HoldingsPage]
) -> Iterator[tuple[RegistryHolding, ...]]:
    """Every page's holdings of a native listing, in order, each asked for only when the
    one before has been taken, from the first page to the one without a next.

    Pages resume after the last holding of the page before (see
    ``adapters.emulator_core.paging`` for what that guarantees while the registry
    changes); a registry answering an empty page with a next token is still followed.

    Args:
        registry_id: The registry, named in the error.
        fetch: One page by its token ('' for the first).

    Raises:
        RegistryUnavailable: ``fetch`` failed in transit.
        RegistryRejected: ``fetch`` was refused, or ``PAGE_TOKEN_REPEATED``: the
            registry answered a token it had answered before, which would list the same
            pages for ever.
    """
    answered: set[str] = set()
    page = fetch("")
    yield page.holdings
    while page.next_page:
        if page.next_page in answered:
            raise RegistryRejected(
                registry_id,
                "PAGE_TOKEN_REPEATED",
                f"{registry_id} answered the page token {page.next_page!r} twice",
            )
        answered.add(page.next_page)
        page = fetch(page.next_page)
        yield page.holdings


def read_pages(
    registry_id: str, fetch: Callable[[str], HoldingsPage]
) -> tuple[RegistryHolding, ...]:
    """Every page of a native listing (:func:`iter_pages`), its holdings in order.

    Raises:
        RegistryUnavailable: ``fetch`` failed in transit.
        RegistryRejected: ``fetch`` was refused, or a page token came twice.
    """
    return tuple(h for page in iter_pages(registry_id, fetch) for h in page)


def list_all_holdings(
    client: PagedListing, request: ListHoldingsRequest, still_wanted: StillWanted | None = None
) -> tuple[RegistryHolding, ...]:
    """A client's whole listing (``RegistryPort.list_holdings``), read page by page.

    Raises:
        RegistryUnavailable: A page failed in transit.
        RegistryRejected: A page was refused, or a page token came twice.
        Abandoned: ``still_wanted`` answered false; the page under way was cancelled.
    """
    return read_pages(
        client.registry_id,
        lambda page: client.list_holdings_page(request, page, still_wanted),
    )


SERIALS_KEPT = 8192
"""Serials remembered each way (spelled from a block, parsed into one), per process.  A
block is named again at every step of its transfer (its lock, its finalize, a listing),
and a registry whose wire carries serials spells (and checks by parsing back) or parses
one per block named, ~10 us each; a few thousand cover the blocks of the batches in flight."""


@functools.lru_cache(maxsize=SERIALS_KEPT)
def spell_serial(registry_id: str, block: UnitBlock) -> str:
    """:func:`adapters.serials.format_serial`, remembered (a block is immutable).

    Raises:
        SerialEncodeError: The registry's format cannot spell the block.
    """
    return serials.format_serial(registry_id, block)


@functools.lru_cache(maxsize=SERIALS_KEPT)
def read_serial(registry_id: str, text: str) -> UnitBlock:
    """:func:`adapters.serials.parse_serial`, remembered (a block is immutable).

    Raises:
        SerialFormatError: The serial is malformed.
    """
    return serials.parse_serial(registry_id, text)


ATTRIBUTE_SETS_KEPT = 1024
"""Attribute sets remembered per conversion (see :class:`AttributeMemo`); a registry holds
units of a few issuances at a time, and the memo starts over when full."""

# Everything of a block but its id, read in one call (a tuple, hashable: the fields of a
# block are immutable values).  Read off the dataclass, so a field added to UnitBlock is
# part of the key without anyone remembering to add it here.
_attributes_of = operator.attrgetter(
    *(field.name for field in dataclasses.fields(UnitBlock) if field.name != "id")
)


class AttributeMemo(Generic[Converted]):
    """A conversion of a block's attributes (not its serial range), remembered by them.

    Every block of a batch, and every piece of a split block, shares its attributes
    (project, vintage, labels, ...) with others, and converting them is most of the cost
    of converting a block; the range is written per block.

    Args:
        convert: The conversion; it must not read the block's id (a native message
            leaves its range unset).
    """

    def __init__(self, convert: Callable[[UnitBlock], Converted]) -> None:
        self._convert = convert
        self._kept: dict[object, Converted] = {}

    def __call__(self, block: UnitBlock) -> Converted:
        """The conversion of ``block``'s attributes: shared, so a message is copied, not changed."""
        key = _attributes_of(block)
        converted = self._kept.get(key)
        if converted is None:
            converted = self._convert(block)
            if len(self._kept) >= ATTRIBUTE_SETS_KEPT:
                self._kept.clear()
            self._kept[key] = converted
        return converted


class NativeAttributeMemo(Generic[Native]):
    """Canonical blocks of native messages, remembered by the message without its range.

    The reverse of :class:`AttributeMemo`: a native block converts to a canonical one
    with the attributes of any other message that differs from it only in its range.

    Args:
        message: The native message type.
        range_field: Its field holding the serial range.
        convert: The full conversion of a native message (raises ``ValueError`` for a
            malformed one, which is then never remembered).
    """

    def __init__(
        self, message: type[Native], range_field: str, convert: Callable[[Native], UnitBlock]
    ) -> None:
        self._message = message
        self._range_field = range_field
        self._convert = convert
        self._kept: dict[bytes, UnitBlock] = {}

    def __call__(self, native: Native, block_id: BlockId) -> UnitBlock:
        """The canonical block of ``native``, whose range is ``block_id``."""
        probe = self._message()
        probe.CopyFrom(native)
        probe.ClearField(self._range_field)
        key = probe.SerializeToString()
        template = self._kept.get(key)
        if template is None:
            template = self._convert(native)
            if len(self._kept) >= ATTRIBUTE_SETS_KEPT:
                self._kept.clear()
            self._kept[key] = template
        return relabelled(template, block_id)


def relabelled(block: UnitBlock, block_id: BlockId) -> UnitBlock:
    """``block``'s attributes over another id."""
    # NOTE(registry-adapters): dataclasses.replace runs __init__ over every field again
    # (~3 us) to change one; the attributes were checked when ``block`` was made and a
    # BlockId checks itself, so a copy of the fields with the new id is the same block.
    # The copy is what copy.copy makes of a (frozen, unslotted) dataclass, without its
    # generic protocol lookups (~1.5 us).
    copied: UnitBlock = object.__new__(type(block))
    copied.__dict__.update(block.__dict__)
    copied.__dict__["id"] = block_id
    return copied


def not_supported(registry_id: str, operation: str) -> RegistryRejected:
    """The error for a canonical operation the registry has no native counterpart of."""
    return RegistryRejected(
        registry_id, "NOT_SUPPORTED", f"{registry_id} has no native {operation} operation"
    )


def canonical_status(
    registry_id: str, statuses: Mapping[int, HoldingStatus], native: int
) -> HoldingStatus:
    """The canonical status of a registry's native state.

    Args:
        registry_id: The registry, named in the error.
        statuses: The registry's native state -> canonical status table.
        native: The native state the registry answered.

    Returns:
        The canonical status.

    Raises:
        RegistryRejected: ``UNKNOWN_STATE``: the registry answered a state the adapter
            cannot translate (unset, or newer than the adapter); guessing one would
            misreport where the units are.
    """
    status = statuses.get(native)
    if status is None:
        raise RegistryRejected(
            registry_id, "UNKNOWN_STATE", f"{registry_id} answered an unknown state {native}"
        )
    return status


def authorization_to_native(message: Callable[..., Msg], auth: Authorization | None) -> Msg | None:
    """An authorization as a registry's native message of the common spelling (``None`` for none).

    Args:
        message: The native message type, with fields ``letter_id``, ``host_country``,
            ``authorized_uses`` and ``issued_on`` (ISO date).
        auth: The canonical authorization, if any.
    """
    if auth is None:
        return None
    return message(
        letter_id=auth.letter_id,
        host_country=auth.host_country,
        authorized_uses=sorted(auth.authorized_uses),
        issued_on=auth.issued_on.isoformat(),
    )


def authorization_from_native(native: NativeAuthorization) -> Authorization:
    """The canonical authorization of a native message of the common spelling.

    Raises:
        ValueError: ``issued_on`` is not an ISO date.
    """
    return Authorization(
        letter_id=native.letter_id,
        host_country=native.host_country,
        authorized_uses=frozenset(native.authorized_uses),
        issued_on=date.fromisoformat(native.issued_on),
    )


def adjustment_from_native(text: str) -> CorrespondingAdjustment:
    """The corresponding-adjustment status of its native text ('' is not applicable).

    Raises:
        ValueError: An unknown status.
    """
    return CorrespondingAdjustment(text or CorrespondingAdjustment.NOT_APPLICABLE.value)


def program_totals(
    statuses: Mapping[int, HoldingStatus], rows: Iterable[tuple[str, int, int]]
) -> tuple[ProgramTotal, ...]:
    """A registry's totals in canonical terms, native states it has no canonical name for left out.

    Args:
        statuses: The registry's native state -> canonical status table.
        rows: ``(program, native state, quantity)`` per native total row.

    Returns:
        One total per row whose state the table names.

    Raises:
        ValueError: A kept row names an unknown program.
    """
    return tuple(
        ProgramTotal(Program(program), statuses[state], quantity)
        for program, state, quantity in rows
        if state in statuses
    )


def to_rfc3339(moment: datetime | None) -> str:
    """A timezone-aware moment as RFC 3339 in UTC ('' for none)."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        raise ValueError(f"moment {moment} has no time zone")
    return moment.astimezone(UTC).isoformat()


def from_rfc3339(text: str) -> datetime | None:
    """The moment of an RFC 3339 string (``None`` for '')."""
    return datetime.fromisoformat(text) if text else None


def to_ddmmyyyy(day: date) -> str:
    """Verra's date form, DDMMYYYY."""
    return day.strftime("%d%m%Y")


def from_iso_date(text: str) -> date:
    """A YYYY-MM-DD date."""
    return date.fromisoformat(text)
