"""Serials of the China national registry: CEA allowances and CCER credits.

Neither program publishes a serial format (RULES-REFERENCE §2: "CCER serial format: U"),
so these are **carbonlink's own definitions**, modelled on the Kyoto DES unit block
(originating registry, unit type, block start, block end, applicable period, project; see
``adapters._own_formats``).  Block numbers are unique program-wide: ``serial_series=""``.

CEA, four segments, e.g. ``CEA-2023-1000001-1005000`` (5,000 allowances of 2023):

1. ``unit_type``: ``CEA``.
2. ``vintage``: the allocation year YYYY; the block's vintage is 1 January..31 December.
3. ``block_start``: first serial, decimal without leading zeros.
4. ``block_end``: last serial, inclusive.

Country is ``CN``; project id and region are empty.

CCER, eight segments, e.g. ``CN-CCER-1-250000-20240101-20241231-HI-0001``:

1. ``originating_registry``: ``CN``, the national registry.
2. ``unit_type``: ``CCER``.
3. ``block_start`` and 4. ``block_end``: the inclusive block.
5. ``vintage_start`` and 6. ``vintage_end``: the reduction (monitoring) period, YYYYMMDD.
7. ``region``: ISO 3166-2:CN province code where the project lies (``HI`` = Hainan),
   giving ``UnitBlock.region`` ``CN-HI`` for the local-origin rules.
8. ``project_id``: the CCER project number, 1-32 upper-case letters or digits.

A CCER block keeps this spelling wherever it is held (Shenzhen, Hong Kong, ...). The
spelling does not say whether the units were recorded under the 2012 interim measures
(before the suspension of 14 Mar 2017) or registered under the 2023 measures, and the
vintage cannot be relied on to: the registry reports it with the units, as the label
``ccer_recorded_before_2017_03_14``, which the national rule pack reads.
"""

from __future__ import annotations

from adapters._own_formats import CCER, AllowanceFormat, MultiProgramCodec
from registry_bridge.model import Program, UnitBlock

REGISTRY_ID = "national"

CEA = AllowanceFormat(Program.CEA)
_CODEC = MultiProgramCodec(REGISTRY_ID, (CEA, CCER))


def parse_serial(text: str) -> UnitBlock:
    """Parse a CEA or CCER serial.

    Args:
        text: The serial.

    Returns:
        The canonical block.

    Raises:
        SerialFormatError: A segment is malformed; the error names it.
    """
    return _CODEC.parse(text)


def format_serial(block: UnitBlock) -> str:
    """Write a CEA or CCER block as its serial.

    Args:
        block: The block.

    Returns:
        The serial, which parses back to the block's carried attributes.

    Raises:
        SerialEncodeError: The block is of another program or cannot be spelled.
    """
    return _CODEC.format(block)
