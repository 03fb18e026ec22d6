"""Gold Standard VER serial numbers.

Layout (RULES-REFERENCE §5, Gold Standard public registry; the meaning of segments 1,
2 and 5 is not published, so they are kept verbatim as native attributes)::

    GS1-1-KE-GS7495-16-2025-30645-608-30350
     1  2  3    4    5   6    7    8    9

====  =====================  =====================================================
  #   segment                canonical meaning
====  =====================  =====================================================
  1   ``standard_code``      native: ``GS`` + digits (``GS1``), meaning unknown
  2   ``unit_code``          native: digits (``1``), meaning unknown
  3   ``country``            ``UnitBlock.country`` (ISO 3166-1 alpha-2)
  4   ``project_id``         ``UnitBlock.project_id``, ``GS`` + the GSID (``GS7495``)
  5   ``type_code``          native: digits (``16`` for domestic energy efficiency
                             in the samples); maybe a project-type code, unconfirmed
  6   ``vintage``            the vintage year
  7   ``issuance_batch``     ``BlockId.serial_series`` and ``UnitBlock.issuance_id``
  8   ``block_start``        ``BlockId.serial_start``
  9   ``block_end``          ``BlockId.serial_end`` (inclusive)
====  =====================  =====================================================

Gold Standard block numbers restart at 1 in every issuance batch (the sample exports
have many blocks ``...-1-<n>``), so serials are unique only within a batch: the batch
number is the block's ``serial_series`` (and also its ``issuance_id``).

The serial carries only the vintage *year*.  The exports also give a monitoring period,
but that belongs to the issuance record, not to the serial, so the codec sets
``vintage_start`` to 1 January and ``vintage_end`` to 31 December of that year, and it
refuses to format a block whose vintage is anything other than one calendar year.
"""

from __future__ import annotations

import re

from adapters._serial_segments import (
    CARRIED_BY_OFFSET_SERIALS,
    calendar_year,
    checked_format,
    native,
    split,
    year_of_calendar_vintage,
)
from adapters.serial_errors import SerialEncodeError
from registry_bridge.model import BlockId, Program, UnitBlock

REGISTRY_ID = "gold-standard"

_LAYOUT = (
    "standard_code",
    "unit_code",
    "country",
    "project_id",
    "type_code",
    "vintage",
    "issuance_batch",
    "block_start",
    "block_end",
)
_STANDARD_CODE = re.compile(r"GS[0-9]+")
_PROJECT_ID = re.compile(r"GS[0-9]+")


def parse_serial(text: str) -> UnitBlock:
    """Parse a Gold Standard serial into its canonical block.

    Args:
        text: A 9-field GS serial.

    Returns:
        The block: program GS, ``serial_series`` = ``issuance_id`` = the batch number,
        a calendar-year vintage, and native attributes ``standard_code``,
        ``unit_code``, ``type_code`` in that order.

    Raises:
        SerialFormatError: A segment is malformed; the error names it.
    """
    seg = split(REGISTRY_ID, text, {len(_LAYOUT): _LAYOUT})
    standard_code = seg.match("standard_code", _STANDARD_CODE, "GS followed by digits")
    unit_code = seg.digits("unit_code")
    country = seg.country("country")
    project_id = seg.match("project_id", _PROJECT_ID, "a GS project id such as GS7495")
    type_code = seg.digits("type_code")
    vintage_start, vintage_end = calendar_year(seg.year("vintage"))
    batch = seg.digits("issuance_batch")
    start, end = seg.block_range("block_start", "block_end")
    return UnitBlock(
        id=BlockId(Program.GS, batch, start, end),
        project_id=project_id,
        country=country,
        vintage_start=vintage_start,
        vintage_end=vintage_end,
        issuance_id=batch,
        native_attributes=(
            ("standard_code", standard_code),
            ("unit_code", unit_code),
            ("type_code", type_code),
        ),
    )


def format_serial(block: UnitBlock) -> str:
    """Write a GS block as its Gold Standard serial.

    Args:
        block: A GS block whose ``issuance_id`` equals its ``serial_series`` and whose
            vintage is one calendar year.

    Returns:
        The serial; ``parse_serial`` of it equals ``block`` in every carried attribute.

    Raises:
        SerialEncodeError: The block cannot be spelled in the format.
    """
    year = year_of_calendar_vintage(REGISTRY_ID, block)
    if block.issuance_id != block.id.serial_series:
        raise SerialEncodeError(
            registry=REGISTRY_ID,
            field="issuance_id",
            reason=(
                f"{block.issuance_id!r} differs from serial_series {block.id.serial_series!r}; "
                "both are the GS issuance batch number"
            ),
        )
    text = (
        f"{native(REGISTRY_ID, block, 'standard_code')}-{native(REGISTRY_ID, block, 'unit_code')}-"
        f"{block.country}-{block.project_id}-{native(REGISTRY_ID, block, 'type_code')}-{year}-"
        f"{block.id.serial_series}-{block.id.serial_start}-{block.id.serial_end}"
    )
    return checked_format(REGISTRY_ID, block, text, parse_serial, CARRIED_BY_OFFSET_SERIALS)
