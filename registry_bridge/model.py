"""The canonical unit model shared by every registry.

A unit block is identified after the Kyoto DES ``UnitBlockIdentifier``: the
originating program plus an inclusive serial range.  Some programs restart their
serial numbers for every issuance batch (Gold Standard serials ``...-30645-608-30350``
and ``...-30307-1-19149`` both start low), so the identity also carries
``serial_series``: the namespace inside the program in which serials are unique.
It is the empty string for programs whose serials are unique program-wide (Verra).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a C0 control character, which no id or name needs (and a
    NUL, which PostgreSQL cannot store or compare, fails any query it reaches)."""
    return _CONTROL_CHARACTER.search(text) is not None


class UnitKind(enum.StrEnum):
    """Whether a unit is an allowance of a cap-and-trade scheme or an offset credit."""

    ALLOWANCE = "allowance"
    OFFSET_CREDIT = "offset_credit"


class Program(enum.StrEnum):
    """The originating program of a unit: the namespace its serials are unique in."""

    VCS = "VCS"
    """Verra Verified Carbon Standard, Verified Carbon Units (VCU)."""
    GS = "GS"
    """Gold Standard Verified Emission Reductions (VER)."""
    CCER = "CCER"
    """China Certified Emission Reductions (national voluntary program)."""
    SZ_CI = "SZ-CI"
    """Shenzhen carbon-inclusive certified reductions."""
    GD_PHCER = "GD-PHCER"
    """Guangdong carbon-inclusive (Pu Hui) certified emission reductions."""
    BRI_ITMO = "BRI-ITMO"
    """Internationally transferred mitigation outcomes of a Belt-and-Road Article 6.2 registry."""
    SZA = "SZA"
    """Shenzhen pilot ETS allowances."""
    GDEA = "GDEA"
    """Guangdong pilot ETS allowances (the name GDEA is unconfirmed; see RULES-REFERENCE §3)."""
    CEA = "CEA"
    """China national ETS allowances."""

    @property
    def unit_kind(self) -> UnitKind:
        """The kind of unit the program issues."""
        if self in (Program.SZA, Program.GDEA, Program.CEA):
            return UnitKind.ALLOWANCE
        return UnitKind.OFFSET_CREDIT


class HoldingStatus(enum.StrEnum):
    """Where a block stands at the registry that holds it."""

    ACTIVE = "active"
    LOCKED = "locked"
    """Pending a transfer; the lock has an expiry."""
    BRIDGED = "bridged"
    """Immobilized at its origin while a mirror block exists elsewhere."""
    RETIRED = "retired"
    CANCELLED = "cancelled"
    SURRENDERED = "surrendered"
    EXPORTED = "exported"
    """Left this registry (a venue position delivered out, or a mirror returned); it never
    changes again at this registry."""

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change again."""
        return self in (
            HoldingStatus.RETIRED,
            HoldingStatus.CANCELLED,
            HoldingStatus.SURRENDERED,
            HoldingStatus.EXPORTED,
        )


class CorrespondingAdjustment(enum.StrEnum):
    """Whether the host country has applied (or committed to) a corresponding adjustment."""

    NOT_APPLICABLE = "not_applicable"
    PENDING = "pending"
    APPLIED = "applied"


@dataclass(frozen=True)
class Authorization:
    """A host-country letter of authorization (Paris Agreement Art. 6.2, CORSIA)."""

    letter_id: str
    host_country: str
    """ISO 3166-1 alpha-2 code of the authorizing Party."""
    authorized_uses: frozenset[str]
    """For example ``{"ndc", "corsia", "oimp"}``."""
    issued_on: date


Span = tuple[int, int]
"""An inclusive run of serial numbers, ``(start, end)``."""


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Adjacent or overlapping spans joined into maximal runs, in order."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def spans_missing(start: int, end: int, merged: Sequence[Span]) -> list[Span]:
    """The parts of ``start..end`` outside ``merged`` (as :func:`merge_spans` returns)."""
    gaps: list[Span] = []
    at = start
    # Reconciliation asks this once per block against one account's runs, which may be
    # tens of thousands: the runs before the last one starting at or before ``start`` end
    # before it, so a search skips them instead of a walk.
    first = max(bisect.bisect_right(merged, start, key=lambda span: span[0]) - 1, 0)
    for index in range(first, len(merged)):
        low, high = merged[index]
        if high < at:
            continue
        if low > end:
            break
        if low > at:
            gaps.append((at, low - 1))
        at = max(at, high + 1)
        if at > end:
            return gaps
    if at <= end:
        gaps.append((at, end))
    return gaps


MAX_SERIAL = 2**63 - 1
"""The largest serial number: the ledger stores serials as signed 64-bit integers."""


@dataclass(frozen=True, order=True)
class BlockId:
    """The global identity of a serial block (DES ``UnitBlockIdentifier``)."""

    program: Program
    serial_series: str
    serial_start: int
    serial_end: int

    def __post_init__(self) -> None:
        if self.serial_start < 0:
            raise ValueError(f"serial_start must be >= 0, got {self.serial_start}")
        if self.serial_end < self.serial_start:
            raise ValueError(
                f"serial_end {self.serial_end} is below serial_start {self.serial_start}"
            )
        if self.serial_end > MAX_SERIAL:
            raise ValueError(
                f"serial_end {self.serial_end} is above the largest serial {MAX_SERIAL}"
            )
        if self.quantity > MAX_SERIAL:
            # Only 0 to MAX_SERIAL: its count, one more than MAX_SERIAL, fits no 64-bit
            # quantity (the API's, the ledger's), so the block could not be answered.
            raise ValueError(
                f"serials {self.serial_start}-{self.serial_end} are more units than one "
                f"block holds (at most {MAX_SERIAL})"
            )

    @property
    def quantity(self) -> int:
        """Number of units (tCO2e) in the inclusive range."""
        return self.serial_end - self.serial_start + 1

    @property
    def label(self) -> str:
        """``PROGRAM[/SERIES] START-END``: the block as messages name it (a mirror's series
        told from its origin's serials)."""
        series = f"/{self.serial_series}" if self.serial_series else ""
        return f"{self.program.value}{series} {self.serial_start}-{self.serial_end}"

    def overlaps(self, other: BlockId) -> bool:
        """True when both blocks share at least one serial of the same program and series."""
        return (
            self.program == other.program
            and self.serial_series == other.serial_series
            and self.serial_start <= other.serial_end
            and other.serial_start <= self.serial_end
        )

    def contains(self, other: BlockId) -> bool:
        """True when every serial of ``other`` lies in this block."""
        return (
            self.program == other.program
            and self.serial_series == other.serial_series
            and self.serial_start <= other.serial_start
            and other.serial_end <= self.serial_end
        )


def merge_blocks(blocks: Iterable[BlockId]) -> list[BlockId]:
    """``blocks`` with overlapping and adjacent ones of a program and series joined: the
    same serials in as few ranges as they make (units sold in lots leave one range per
    lot; their run is one)."""
    runs: dict[tuple[Program, str], list[Span]] = {}
    for block in blocks:
        runs.setdefault((block.program, block.serial_series), []).append(
            (block.serial_start, block.serial_end)
        )
    return [
        BlockId(program, series, start, end)
        for (program, series), spans in runs.items()
        for start, end in merge_spans(spans)
    ]


def origin_serials(block: BlockId, origin: BlockId, start: int, end: int) -> BlockId:
    """The serials of ``origin`` that ``start``..``end`` of ``block`` stand for, ``block``
    standing for ``origin`` serial for serial (a mirror, or a piece of one)."""
    first = origin.serial_start + (start - block.serial_start)
    return BlockId(origin.program, origin.serial_series, first, first + (end - start))


@dataclass(frozen=True)
class UnitBlock:
    """A run of units with everything the rules need to know about them.

    ``native_attributes`` keeps the segments of a registry's own serial that have no
    canonical meaning (Verra's verifier code, Gold Standard's leading ``GS1-1``), so a
    serial formats back exactly as it was parsed.
    """

    id: BlockId
    project_id: str
    country: str
    """ISO 3166-1 alpha-2 host country."""
    vintage_start: date
    vintage_end: date
    region: str = ""
    """Province or city where the project lies, for local-origin rules."""
    project_type: str = ""
    methodology: str = ""
    gas: str = "CO2"
    gwp_basis: str = ""
    """The IPCC assessment report whose GWP values converted the gas to CO2e, e.g. ``AR5``."""
    issuance_id: str = ""
    authorization: Authorization | None = None
    corresponding_adjustment: CorrespondingAdjustment = CorrespondingAdjustment.NOT_APPLICABLE
    labels: frozenset[str] = frozenset()
    native_attributes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.vintage_end < self.vintage_start:
            raise ValueError(
                f"vintage_end {self.vintage_end} is before vintage_start {self.vintage_start}"
            )

    @property
    def program(self) -> Program:
        """The originating program."""
        return self.id.program

    @property
    def unit_kind(self) -> UnitKind:
        """Allowance or offset credit, from the program."""
        return self.id.program.unit_kind

    @property
    def quantity(self) -> int:
        """Number of units in the block."""
        return self.id.quantity

    def native(self, key: str) -> str:
        """The native serial attribute ``key``; raises KeyError when absent."""
        for name, value in self.native_attributes:
            if name == key:
                return value
        raise KeyError(key)

    def with_range(self, serial_start: int, serial_end: int) -> UnitBlock:
        """The same block attributes over a sub-range (used when a block splits)."""
        if not (self.id.serial_start <= serial_start <= serial_end <= self.id.serial_end):
            raise ValueError(
                f"range {serial_start}-{serial_end} is not inside "
                f"{self.id.serial_start}-{self.id.serial_end}"
            )
        return dataclasses.replace(
            self,
            id=BlockId(self.id.program, self.id.serial_series, serial_start, serial_end),
        )

    def split(self, quantity: int) -> tuple[UnitBlock, UnitBlock]:
        """Split off the first ``quantity`` units; the two pieces sum to the whole."""
        if not 0 < quantity < self.quantity:
            raise ValueError(f"cannot split {quantity} off a block of {self.quantity}")
        cut = self.id.serial_start + quantity
        return (
            self.with_range(self.id.serial_start, cut - 1),
            self.with_range(cut, self.id.serial_end),
        )


@dataclass(frozen=True)
class Holding:
    """Where a block sits now: registry, account and status."""

    block: UnitBlock
    registry: str
    account: str
    status: HoldingStatus
    lock_expires_at: datetime | None = None
    mirror_of: BlockId | None = None
    """For a mirror block: the origin block it stands for."""
