"""Serials of a Belt-and-Road (Paris Agreement Art. 6.2) registry of ITMOs.

No Article 6 unique-identifier format is agreed (ANCHORS §1.7), so carbonlink adopts the
form of UNDP's open Article 6 registry (``@undp/serial-number-gen``, RULES-REFERENCE §5)
as **its own definition** for BRI ITMOs, unchanged except that every segment is checked::

    VU-ITMO-11-356-2022-0-27-35
     1   2   3   4    5  6  7  8

====  ==================  =========================================================
  #   segment             canonical meaning
====  ==================  =========================================================
  1   ``host_country``    ``UnitBlock.country``: ISO 3166-1 alpha-2 host Party
  2   ``unit_type``       ``ITMO``
  3   ``sectoral_scope``  native: CDM sectoral scope 1-15
  4   ``programme_id``    ``UnitBlock.project_id``: the mitigation programme, digits
  5   ``vintage``         the vintage year; the block's vintage is 1 January..31 December
  6   ``reserved``        native: digits, ``0`` in every published example, meaning unknown
  7   ``block_start``     ``BlockId.serial_start``
  8   ``block_end``       ``BlockId.serial_end`` (inclusive)
====  ==================  =========================================================

The published examples number blocks from small values per programme, so serials are
taken to be unique only within one host country's programme and vintage year:
``serial_series`` is ``"<host_country>-<programme_id>-<vintage>"`` (``VU-356-2022``).

Authorization (letter of authorization, authorized uses) and corresponding-adjustment
status are not part of the serial; they come from the registry's records and are left
at their defaults by ``parse_serial`` and ignored by ``format_serial``.
"""

from __future__ import annotations

from adapters._serial_segments import (
    CARRIED_BY_OFFSET_SERIALS,
    calendar_year,
    checked_format,
    native,
    split,
    year_of_calendar_vintage,
)
from registry_bridge.model import BlockId, Program, UnitBlock

REGISTRY_ID = "bri"

# NOTE(serials): issuance_id is not in an ITMO serial, so it is not compared on format.
_CARRIED = tuple(name for name in CARRIED_BY_OFFSET_SERIALS if name != "issuance_id")
_LAYOUT = (
    "host_country",
    "unit_type",
    "sectoral_scope",
    "programme_id",
    "vintage",
    "reserved",
    "block_start",
    "block_end",
)


def parse_serial(text: str) -> UnitBlock:
    """Parse an ITMO serial.

    Args:
        text: An 8-field ITMO serial.

    Returns:
        The block: program BRI-ITMO, a calendar-year vintage and native attributes
        ``sectoral_scope`` and ``reserved`` in that order.

    Raises:
        SerialFormatError: A segment is malformed; the error names it.
    """
    seg = split(REGISTRY_ID, text, {len(_LAYOUT): _LAYOUT})
    country = seg.country("host_country")
    seg.literal("unit_type", ("ITMO",))
    scope = seg.number("sectoral_scope")
    if not 1 <= scope <= 15:
        raise seg.error("sectoral_scope", "is not a CDM sectoral scope 1-15")
    programme_id = seg.digits("programme_id")
    year = seg.year("vintage")
    vintage_start, vintage_end = calendar_year(year)
    reserved = seg.digits("reserved")
    start, end = seg.block_range("block_start", "block_end")
    return UnitBlock(
        id=BlockId(Program.BRI_ITMO, f"{country}-{programme_id}-{year}", start, end),
        project_id=programme_id,
        country=country,
        vintage_start=vintage_start,
        vintage_end=vintage_end,
        native_attributes=(("sectoral_scope", str(scope)), ("reserved", reserved)),
    )


def format_serial(block: UnitBlock) -> str:
    """Write a BRI-ITMO block as its serial.

    Args:
        block: A BRI-ITMO block whose ``serial_series`` is
            ``"<country>-<project_id>-<vintage year>"``.

    Returns:
        The serial, which parses back to the block's carried attributes.

    Raises:
        SerialEncodeError: The block cannot be spelled in the format.
    """
    year = year_of_calendar_vintage(REGISTRY_ID, block)
    text = (
        f"{block.country}-ITMO-{native(REGISTRY_ID, block, 'sectoral_scope')}-"
        f"{block.project_id}-{year}-{native(REGISTRY_ID, block, 'reserved')}-"
        f"{block.id.serial_start}-{block.id.serial_end}"
    )
    return checked_format(REGISTRY_ID, block, text, parse_serial, _CARRIED)
