"""carbonlink's own serial formats for the Chinese programs, after the Kyoto DES unit block.

No public serial format exists for CCER, Shenzhen or Guangdong units (RULES-REFERENCE §2
and §5 mark the CCER format U), so carbonlink defines two shapes, both modelled on the
DES ``TransactionUnitBlock`` (ANCHORS §1.3): originating registry and unit type first,
then the inclusive block, then the applicable period and the project.  Serial numbers in
both are unique across the whole program, so ``serial_series`` is always ``""``.

Allowance shape, four segments (the unit and vintage lead, as the exchanges name the
product, e.g. ``SZA-2017``)::

    SZA-2017-1-50000
    unit_type-vintage-block_start-block_end

Offset shape, eight segments::

    CN-CCER-1-250000-20240101-20241231-HI-0001
    originating_registry-unit_type-block_start-block_end-vintage_start-vintage_end-region-project_id

Dates are YYYYMMDD, the region is the ISO 3166-2:CN province code without ``CN-`` (the
canonical ``UnitBlock.region`` is ``CN-HI``), and the project id is 1-32 upper-case letters
or digits.  Block numbers have no leading zeros.  The host country is always ``CN``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from adapters._serial_segments import calendar_year, checked_format, split, year_of_calendar_vintage
from adapters.serial_errors import SerialEncodeError, SerialFormatError
from registry_bridge.model import BlockId, Program, UnitBlock

_PROJECT_ID = re.compile(r"[A-Z0-9]{1,32}")
_CARRIED = (
    "id",
    "project_id",
    "country",
    "vintage_start",
    "vintage_end",
    "region",
    "native_attributes",
)
_ALLOWANCE = ("unit_type", "vintage", "block_start", "block_end")
_OFFSET = (
    "originating_registry",
    "unit_type",
    "block_start",
    "block_end",
    "vintage_start",
    "vintage_end",
    "region",
    "project_id",
)


class ProgramFormat(Protocol):
    """One program's serial format inside a registry's codec."""

    @property
    def program(self) -> Program:
        """The program the format spells."""
        ...

    @property
    def leading_segment(self) -> str:
        """The first segment, which tells the formats of one registry apart."""
        ...

    def parse(self, registry: str, text: str) -> UnitBlock:
        """Parse ``text``; errors name ``registry``."""
        ...

    def format(self, registry: str, block: UnitBlock) -> str:
        """Format ``block``; errors name ``registry``."""
        ...


@dataclass(frozen=True)
class AllowanceFormat:
    """``<PROGRAM>-<YYYY>-<start>-<end>``: an allowance block of one vintage year."""

    program: Program

    @property
    def leading_segment(self) -> str:
        """The program code, e.g. ``SZA``."""
        return self.program.value

    def parse(self, registry: str, text: str) -> UnitBlock:
        """Parse an allowance serial.

        Raises:
            SerialFormatError: A segment is malformed.
        """
        seg = split(registry, text, {len(_ALLOWANCE): _ALLOWANCE})
        seg.literal("unit_type", (self.program.value,))
        vintage_start, vintage_end = calendar_year(seg.year("vintage"))
        start, end = seg.block_range("block_start", "block_end")
        return UnitBlock(
            id=BlockId(self.program, "", start, end),
            project_id="",
            country="CN",
            vintage_start=vintage_start,
            vintage_end=vintage_end,
        )

    def format(self, registry: str, block: UnitBlock) -> str:
        """Format an allowance block.

        Raises:
            SerialEncodeError: The block cannot be spelled in the format.
        """
        year = year_of_calendar_vintage(registry, block)
        text = f"{block.program.value}-{year}-{block.id.serial_start}-{block.id.serial_end}"
        return checked_format(registry, block, text, lambda s: self.parse(registry, s), _CARRIED)


@dataclass(frozen=True)
class OffsetFormat:
    """``<ORIGIN>-<UNIT>-<start>-<end>-<YYYYMMDD>-<YYYYMMDD>-<province>-<project>``."""

    program: Program
    origin: str
    """Originating registry code: ``CN`` (national), ``SZ`` (Shenzhen), ``GD`` (Guangdong)."""
    unit_type: str

    @property
    def leading_segment(self) -> str:
        """The originating registry code."""
        return self.origin

    def parse(self, registry: str, text: str) -> UnitBlock:
        """Parse an offset serial.

        Raises:
            SerialFormatError: A segment is malformed.
        """
        seg = split(registry, text, {len(_OFFSET): _OFFSET})
        seg.literal("originating_registry", (self.origin,))
        seg.literal("unit_type", (self.unit_type,))
        start, end = seg.block_range("block_start", "block_end")
        vintage_start = seg.yyyymmdd("vintage_start")
        vintage_end = seg.yyyymmdd("vintage_end")
        seg.vintage(vintage_start, vintage_end, "vintage_end")
        province = seg.province("region")
        project_id = seg.match("project_id", _PROJECT_ID, "1-32 upper-case letters or digits")
        return UnitBlock(
            id=BlockId(self.program, "", start, end),
            project_id=project_id,
            country="CN",
            vintage_start=vintage_start,
            vintage_end=vintage_end,
            region=f"CN-{province}",
        )

    def format(self, registry: str, block: UnitBlock) -> str:
        """Format an offset block.

        Raises:
            SerialEncodeError: The block cannot be spelled in the format.
        """
        if not block.region.startswith("CN-"):
            raise SerialEncodeError(
                registry=registry,
                field="region",
                reason=f"{block.region!r} is not an ISO 3166-2:CN subdivision such as CN-GD",
            )
        province = block.region.removeprefix("CN-")
        text = (
            f"{self.origin}-{self.unit_type}-{block.id.serial_start}-{block.id.serial_end}-"
            f"{block.vintage_start:%Y%m%d}-{block.vintage_end:%Y%m%d}-{province}-"
            f"{block.project_id}"
        )
        return checked_format(registry, block, text, lambda s: self.parse(registry, s), _CARRIED)


CCER = OffsetFormat(Program.CCER, "CN", "CCER")
"""CCER as issued by the national registry; the same spelling wherever the units are held."""


@dataclass(frozen=True)
class MultiProgramCodec:
    """A registry's codec over several program formats, told apart by their first segment."""

    registry: str
    formats: tuple[ProgramFormat, ...]

    def _by_leading(self) -> Mapping[str, ProgramFormat]:
        return {f.leading_segment: f for f in self.formats}

    def parse(self, text: str) -> UnitBlock:
        """Parse a serial of any program the registry holds.

        Raises:
            SerialFormatError: No format starts with the first segment, or the chosen
                format rejects a segment.
        """
        leading = text.split("-", 1)[0]
        chosen = self._by_leading().get(leading)
        if chosen is None:
            expected = ", ".join(f"{f.leading_segment} ({f.program.value})" for f in self.formats)
            raise SerialFormatError(
                registry=self.registry,
                serial=text,
                segment_index=1,
                segment_name="program_code",
                reason=f"{leading!r} starts no serial this registry holds; expected {expected}",
            )
        return chosen.parse(self.registry, text)

    def format(self, block: UnitBlock) -> str:
        """Format a block of any program the registry holds.

        Raises:
            SerialEncodeError: The registry holds no such program, or the block cannot
                be spelled in its program's format.
        """
        for candidate in self.formats:
            if candidate.program is block.program:
                return candidate.format(self.registry, block)
        held = ", ".join(f.program.value for f in self.formats)
        raise SerialEncodeError(
            registry=self.registry,
            field="program",
            reason=f"{block.program.value} is not a program this registry holds ({held})",
        )
