"""Verra VCU serial numbers.

A VCU serial names an inclusive block of units (RULES-REFERENCE §5; the layout follows
the ``VcsSerialNumber`` parser of stellarcarbon/sc-audit and Verra's public exports)::

    19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1
      1       2         3      4   5    6   7   8  9  10     11       12    13

====  =========================  ===============================================
  #   segment                    canonical meaning
====  =========================  ===============================================
  1   ``issuance_batch``         ``UnitBlock.issuance_id`` (digits, kept as text)
  2   ``block_start``            ``BlockId.serial_start``
  3   ``block_end``              ``BlockId.serial_end`` (inclusive)
  4   ``program``                ``VCS``; absent in legacy 12-field serials
  5   ``unit_type``              ``VCU``
  6   ``vvb_id``                 native: 3-4 digit code, official meaning unknown
  7   ``registry_code``          native: ``VER`` or legacy ``MER``, meaning unknown
  8   ``country``                ``UnitBlock.country`` (ISO 3166-1 alpha-2)
  9   ``project_type_code``      native: maybe the sectoral scope, unconfirmed
 10   ``project_id``             ``UnitBlock.project_id`` (the VCS project id)
 11   ``vintage_start``          ``UnitBlock.vintage_start``, DDMMYYYY
 12   ``vintage_end``            ``UnitBlock.vintage_end``, DDMMYYYY
 13   ``additional_certification``  native: ``0`` or ``1``
====  =========================  ===============================================

Verra block numbers are unique across the whole program, so ``serial_series`` is ``""``.
A legacy 12-field serial (no ``VCS`` segment) is recorded with the native attribute
``layout=legacy-12`` so it formats back without the segment.  Block numbers must be
written without leading zeros, so that the integer block formats back to the same text.
"""

from __future__ import annotations

import re

from adapters._serial_segments import CARRIED_BY_OFFSET_SERIALS, checked_format, native, split
from registry_bridge.model import BlockId, Program, UnitBlock

REGISTRY_ID = "verra"

_CURRENT = (
    "issuance_batch",
    "block_start",
    "block_end",
    "program",
    "unit_type",
    "vvb_id",
    "registry_code",
    "country",
    "project_type_code",
    "project_id",
    "vintage_start",
    "vintage_end",
    "additional_certification",
)
_LEGACY = tuple(name for name in _CURRENT if name != "program")
_LAYOUTS = {len(_CURRENT): _CURRENT, len(_LEGACY): _LEGACY}
_LEGACY_LAYOUT = "legacy-12"
_CODE = re.compile(r"[0-9]{1,6}")


def parse_serial(text: str) -> UnitBlock:
    """Parse a VCU serial into its canonical block.

    Args:
        text: A 13-field (or legacy 12-field) VCU serial.

    Returns:
        The block, with ``serial_series=""`` and the native segments kept in
        ``native_attributes`` in the order ``vvb_id``, ``registry_code``,
        ``project_type_code``, ``additional_certification`` (then ``layout`` for a
        legacy serial).

    Raises:
        SerialFormatError: A segment is malformed; the error names it.
    """
    seg = split(REGISTRY_ID, text, _LAYOUTS)
    batch = seg.digits("issuance_batch")
    start, end = seg.block_range("block_start", "block_end")
    legacy = len(seg.values) == len(_LEGACY)
    if not legacy:
        seg.literal("program", ("VCS",))
    seg.literal("unit_type", ("VCU",))
    vvb_id = seg.match("vvb_id", _CODE, "a verifier code of 1-6 digits")
    registry_code = seg.literal("registry_code", ("VER", "MER"))
    country = seg.country("country")
    project_type_code = seg.match("project_type_code", _CODE, "a project type code of 1-6 digits")
    project_id = seg.digits("project_id")
    vintage_start = seg.ddmmyyyy("vintage_start")
    vintage_end = seg.ddmmyyyy("vintage_end")
    seg.vintage(vintage_start, vintage_end, "vintage_end")
    flag = seg.literal("additional_certification", ("0", "1"))
    attributes = [
        ("vvb_id", vvb_id),
        ("registry_code", registry_code),
        ("project_type_code", project_type_code),
        ("additional_certification", flag),
    ]
    if legacy:
        attributes.append(("layout", _LEGACY_LAYOUT))
    return UnitBlock(
        id=BlockId(Program.VCS, "", start, end),
        project_id=project_id,
        country=country,
        vintage_start=vintage_start,
        vintage_end=vintage_end,
        issuance_id=batch,
        native_attributes=tuple(attributes),
    )


def format_serial(block: UnitBlock) -> str:
    """Write a VCS block as its VCU serial.

    Attributes the serial does not carry (region, methodology, labels, ...) are ignored.

    Args:
        block: A VCS block with the native attributes ``parse_serial`` records.

    Returns:
        The serial; ``parse_serial`` of it equals ``block`` in every carried attribute.

    Raises:
        SerialEncodeError: The block is not VCS, lacks a native attribute, or has a
            value the format cannot spell.
    """
    vvb_id = native(REGISTRY_ID, block, "vvb_id")
    registry_code = native(REGISTRY_ID, block, "registry_code")
    project_type_code = native(REGISTRY_ID, block, "project_type_code")
    flag = native(REGISTRY_ID, block, "additional_certification")
    legacy = ("layout", _LEGACY_LAYOUT) in block.native_attributes
    program = "" if legacy else f"{block.program.value}-"
    text = (
        f"{block.issuance_id}-{block.id.serial_start}-{block.id.serial_end}-{program}VCU-"
        f"{vvb_id}-{registry_code}-{block.country}-{project_type_code}-{block.project_id}-"
        f"{block.vintage_start:%d%m%Y}-{block.vintage_end:%d%m%Y}-{flag}"
    )
    return checked_format(REGISTRY_ID, block, text, parse_serial, CARRIED_BY_OFFSET_SERIALS)
