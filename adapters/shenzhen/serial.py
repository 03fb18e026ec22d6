"""Serials of the Shenzhen registry: SZA allowances, Shenzhen carbon-inclusive units, CCER.

Shenzhen publishes no serial format, so these are **carbonlink's own definitions**,
modelled on the Kyoto DES unit block (see ``adapters._own_formats``).  The first segment
says which program a serial belongs to.  Block numbers are unique program-wide:
``serial_series=""``.

SZA allowances, four segments, vintage-coded like the traded product ``SZA-2017``,
e.g. ``SZA-2017-1-50000``:

1. ``unit_type``: ``SZA``.
2. ``vintage``: the allocation year YYYY; the block's vintage is 1 January..31 December.
3. ``block_start`` and 4. ``block_end``: the inclusive block, no leading zeros.

Country is ``CN``; project id and region are empty.

Shenzhen carbon-inclusive (碳普惠) certified reductions, program ``SZ-CI``, eight segments,
e.g. ``SZ-CI-1001-1500-20230101-20231231-GD-SZCI2023001``:

1. ``originating_registry``: ``SZ``, the Shenzhen registry.
2. ``unit_type``: ``CI``.
3. ``block_start`` and 4. ``block_end``: the inclusive block.
5. ``vintage_start`` and 6. ``vintage_end``: the reduction period, YYYYMMDD.
7. ``region``: ISO 3166-2:CN province code (``GD`` for Shenzhen itself; other codes
   for cross-region carbon-inclusive projects), giving ``UnitBlock.region`` ``CN-GD``.
8. ``project_id``: 1-32 upper-case letters or digits.

CCER held in Shenzhen keeps its national spelling (``adapters.national.serial``), e.g.
``CN-CCER-1-250000-20240101-20241231-HI-0001``, and parses as program ``CCER``.
"""

from __future__ import annotations

from adapters._own_formats import CCER, AllowanceFormat, MultiProgramCodec, OffsetFormat
from registry_bridge.model import Program, UnitBlock

REGISTRY_ID = "shenzhen"

SZA = AllowanceFormat(Program.SZA)
SZ_CI = OffsetFormat(Program.SZ_CI, "SZ", "CI")
_CODEC = MultiProgramCodec(REGISTRY_ID, (SZA, SZ_CI, CCER))


def parse_serial(text: str) -> UnitBlock:
    """Parse an SZA, SZ-CI or CCER serial.

    Args:
        text: The serial.

    Returns:
        The canonical block.

    Raises:
        SerialFormatError: A segment is malformed; the error names it.
    """
    return _CODEC.parse(text)


def format_serial(block: UnitBlock) -> str:
    """Write an SZA, SZ-CI or CCER block as its serial.

    Args:
        block: The block.

    Returns:
        The serial, which parses back to the block's carried attributes.

    Raises:
        SerialEncodeError: The block is of another program or cannot be spelled.
    """
    return _CODEC.format(block)
