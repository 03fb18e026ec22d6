"""Serials of the Guangdong registry: GDEA allowances and PHCER carbon-inclusive units.

Guangdong publishes no serial format (and the allowance name GDEA itself is unconfirmed,
RULES-REFERENCE §3), so these are **carbonlink's own definitions**, modelled on the Kyoto
DES unit block (see ``adapters._own_formats``).  Block numbers are unique program-wide:
``serial_series=""``.

GDEA allowances, four segments, e.g. ``GDEA-2024-300001-310000``:

1. ``unit_type``: ``GDEA``.
2. ``vintage``: the allocation year YYYY; the block's vintage is 1 January..31 December.
3. ``block_start`` and 4. ``block_end``: the inclusive block, no leading zeros.

Country is ``CN``; project id and region are empty.

PHCER (Guangdong 碳普惠 certified reductions, program ``GD-PHCER``), eight segments,
e.g. ``GD-PHCER-1-8000-20220101-20221231-GD-PH440100001``:

1. ``originating_registry``: ``GD``, the Guangdong registry.
2. ``unit_type``: ``PHCER``.
3. ``block_start`` and 4. ``block_end``: the inclusive block.
5. ``vintage_start`` and 6. ``vintage_end``: the reduction period, YYYYMMDD.
7. ``region``: ISO 3166-2:CN province code (``GD``), giving ``UnitBlock.region`` ``CN-GD``.
8. ``project_id``: 1-32 upper-case letters or digits.
"""

from __future__ import annotations

from adapters._own_formats import AllowanceFormat, MultiProgramCodec, OffsetFormat
from registry_bridge.model import Program, UnitBlock

REGISTRY_ID = "guangdong"

GDEA = AllowanceFormat(Program.GDEA)
PHCER = OffsetFormat(Program.GD_PHCER, "GD", "PHCER")
_CODEC = MultiProgramCodec(REGISTRY_ID, (GDEA, PHCER))


def parse_serial(text: str) -> UnitBlock:
    """Parse a GDEA or PHCER serial.

    Args:
        text: The serial.

    Returns:
        The canonical block.

    Raises:
        SerialFormatError: A segment is malformed; the error names it.
    """
    return _CODEC.parse(text)


def format_serial(block: UnitBlock) -> str:
    """Write a GDEA or PHCER block as its serial.

    Args:
        block: The block.

    Returns:
        The serial, which parses back to the block's carried attributes.

    Raises:
        SerialEncodeError: The block is of another program or cannot be spelled.
    """
    return _CODEC.format(block)
