"""Serials held at the Hong Kong and Macau voluntary venues.

HKEX Core Climate and the Macau International Carbon Exchange issue no units of their
own: their accounts hold units of other programs, under the serials those programs gave
them.  This codec therefore has no format of its own.  It recognises the originating
program from the serial's shape and delegates to that program's codec, and formats a
block back with its originating program's codec:

==============  ===========================================  ==========================
program         recognised by                                codec
==============  ===========================================  ==========================
VCS             fifth segment ``VCU`` (fourth in a legacy    ``adapters.verra.serial``
                12-field serial)
GS              first segment ``GS`` + digits (``GS1``)      ``adapters.gold_standard``
BRI-ITMO        second segment ``ITMO``                      ``adapters.bri.serial``
CCER            starts ``CN-CCER-``                          ``adapters.national``
SZ-CI           starts ``SZ-CI-``                            ``adapters.shenzhen``
GD-PHCER        starts ``GD-PHCER-``                         ``adapters.guangdong``
==============  ===========================================  ==========================

Allowances (SZA, GDEA, CEA) are compliance units that the voluntary venues do not hold,
so their serials are refused here.  Errors are re-raised under the registry id ``hkmo``
with the same segment, chained to the origin codec's error.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from adapters.bri import serial as bri
from adapters.gold_standard import serial as gold_standard
from adapters.guangdong import serial as guangdong
from adapters.national import serial as national
from adapters.serial_errors import SerialEncodeError, SerialFormatError
from adapters.shenzhen import serial as shenzhen
from adapters.verra import serial as verra
from registry_bridge.model import Program, UnitBlock

REGISTRY_ID = "hkmo"

HELD_PROGRAMS: tuple[Program, ...] = (
    Program.VCS,
    Program.GS,
    Program.BRI_ITMO,
    Program.CCER,
    Program.SZ_CI,
    Program.GD_PHCER,
)
"""The programs whose units the venues hold, in the order their shapes are tried."""

_GS_STANDARD = re.compile(r"GS[0-9]+")

_Parser = Callable[[str], UnitBlock]
_Formatter = Callable[[UnitBlock], str]

_FORMATTERS: dict[Program, _Formatter] = {
    Program.VCS: verra.format_serial,
    Program.GS: gold_standard.format_serial,
    Program.BRI_ITMO: bri.format_serial,
    Program.CCER: national.format_serial,
    Program.SZ_CI: shenzhen.format_serial,
    Program.GD_PHCER: guangdong.format_serial,
}


def _origin_parser(text: str) -> _Parser | None:
    parts = text.split("-")
    if _GS_STANDARD.fullmatch(parts[0]):
        return gold_standard.parse_serial
    if len(parts) > 4 and "VCU" in (parts[3], parts[4]):
        return verra.parse_serial
    if len(parts) > 1 and parts[1] == "ITMO":
        return bri.parse_serial
    leading = tuple(parts[:2])
    if leading == ("CN", "CCER"):
        return national.parse_serial
    if leading == ("SZ", "CI"):
        return shenzhen.parse_serial
    if leading == ("GD", "PHCER"):
        return guangdong.parse_serial
    return None


def parse_serial(text: str) -> UnitBlock:
    """Parse the serial of a unit held at a Hong Kong or Macau venue.

    Args:
        text: A serial in its originating program's format.

    Returns:
        The canonical block, as the originating program's codec reads it.

    Raises:
        SerialFormatError: The shape matches no held program, or the origin codec
            rejects a segment (re-raised under ``hkmo``).
    """
    parser = _origin_parser(text)
    if parser is None:
        held = ", ".join(p.value for p in HELD_PROGRAMS)
        raise SerialFormatError(
            registry=REGISTRY_ID,
            serial=text,
            segment_index=1,
            segment_name="program_code",
            reason=f"the serial matches the format of no program the venues hold ({held})",
        )
    try:
        return parser(text)
    except SerialFormatError as exc:
        raise SerialFormatError(
            registry=REGISTRY_ID,
            serial=text,
            segment_index=exc.segment_index,
            segment_name=exc.segment_name,
            reason=f"{exc.reason} (as a {exc.registry} serial)",
        ) from exc


def format_serial(block: UnitBlock) -> str:
    """Write a held block with its originating program's codec.

    Args:
        block: A block of one of ``HELD_PROGRAMS``.

    Returns:
        The serial in the originating program's format.

    Raises:
        SerialEncodeError: The program is not held at the venues, or the origin codec
            cannot spell the block.
    """
    formatter = _FORMATTERS.get(block.program)
    if formatter is None:
        held = ", ".join(p.value for p in HELD_PROGRAMS)
        raise SerialEncodeError(
            registry=REGISTRY_ID,
            field="program",
            reason=f"{block.program.value} is not held at the venues ({held})",
        )
    return formatter(block)
