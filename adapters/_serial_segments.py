"""Shared machinery of the serial codecs: segment splitting, segment checks, round-trip guard.

Private to ``adapters``: codecs use it so every registry reports a bad segment the same
way (1-based position, layout name, quoted value, reason).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from adapters.serial_errors import SerialEncodeError, SerialFormatError
from registry_bridge.model import UnitBlock

_CANONICAL_NUMBER = re.compile(r"0|[1-9][0-9]*")
_DIGITS = re.compile(r"[0-9]+")
_COUNTRY = re.compile(r"[A-Z]{2}")
_YEAR = re.compile(r"[0-9]{4}")
_DATE8 = re.compile(r"[0-9]{8}")

CN_PROVINCES: frozenset[str] = frozenset(
    [
        "AH",
        "BJ",
        "CQ",
        "FJ",
        "GD",
        "GS",
        "GX",
        "GZ",
        "HA",
        "HB",
        "HE",
        "HI",
        "HK",
        "HL",
        "HN",
        "JL",
        "JS",
        "JX",
        "LN",
        "MO",
        "NM",
        "NX",
        "QH",
        "SC",
        "SD",
        "SH",
        "SN",
        "SX",
        "TJ",
        "TW",
        "XJ",
        "XZ",
        "YN",
        "ZJ",
    ]
)
"""ISO 3166-2:CN subdivision codes (the part after ``CN-``), as revised in 2017."""


@dataclass(frozen=True)
class Segments:
    """A serial split on ``-`` into named segments, with checks that raise precise errors."""

    registry: str
    text: str
    names: tuple[str, ...]
    values: tuple[str, ...]

    def error(self, name: str, reason: str) -> SerialFormatError:
        """The error for segment ``name``, quoting its value before ``reason``."""
        index = self.names.index(name)
        return SerialFormatError(
            registry=self.registry,
            serial=self.text,
            segment_index=index + 1,
            segment_name=name,
            reason=f"{self.values[index]!r} {reason}",
        )

    def raw(self, name: str) -> str:
        """The segment's text; an empty segment is always malformed."""
        value = self.values[self.names.index(name)]
        if not value:
            raise self.error(name, "is empty")
        return value

    def match(self, name: str, pattern: re.Pattern[str], expected: str) -> str:
        """The segment's text, which must fully match ``pattern``."""
        value = self.raw(name)
        if pattern.fullmatch(value) is None:
            raise self.error(name, f"is not {expected}")
        return value

    def literal(self, name: str, allowed: Iterable[str]) -> str:
        """The segment's text, which must be one of ``allowed``."""
        choices = tuple(allowed)
        value = self.raw(name)
        if value not in choices:
            raise self.error(name, f"is not one of {', '.join(choices)}")
        return value

    def digits(self, name: str) -> str:
        """Decimal digits kept as text, leading zeros and all (identifiers, codes)."""
        return self.match(name, _DIGITS, "a decimal number")

    def number(self, name: str) -> int:
        """A serial number: decimal digits without leading zeros.

        Leading zeros are refused because the block is stored as integers and must
        format back to the same text.
        """
        value = self.digits(name)
        if _CANONICAL_NUMBER.fullmatch(value) is None:
            raise self.error(name, "has leading zeros")
        return int(value)

    def country(self, name: str) -> str:
        """An ISO 3166-1 alpha-2 country code (two upper-case letters)."""
        return self.match(name, _COUNTRY, "an ISO 3166-1 alpha-2 country code")

    def province(self, name: str) -> str:
        """An ISO 3166-2:CN province code without the ``CN-`` prefix."""
        value = self.raw(name)
        if value not in CN_PROVINCES:
            raise self.error(name, "is not an ISO 3166-2:CN province code such as GD")
        return value

    def year(self, name: str) -> int:
        """A four-digit year from 1900 on."""
        value = int(self.match(name, _YEAR, "a four-digit year"))
        if value < 1900:
            raise self.error(name, "is not a year from 1900 on")
        return value

    def ddmmyyyy(self, name: str) -> date:
        """A calendar date written DDMMYYYY (Verra)."""
        value = self.match(name, _DATE8, "a DDMMYYYY date")
        return self._date(name, int(value[4:]), int(value[2:4]), int(value[:2]), "DDMMYYYY")

    def yyyymmdd(self, name: str) -> date:
        """A calendar date written YYYYMMDD (carbonlink's own formats)."""
        value = self.match(name, _DATE8, "a YYYYMMDD date")
        return self._date(name, int(value[:4]), int(value[4:6]), int(value[6:]), "YYYYMMDD")

    def _date(self, name: str, year: int, month: int, day: int, spelling: str) -> date:
        try:
            return date(year, month, day)
        except ValueError as exc:
            raise self.error(name, f"is not a {spelling} date ({exc})") from exc

    def block_range(self, start_name: str, end_name: str) -> tuple[int, int]:
        """The inclusive block ``(start, end)``; the end may not be below the start."""
        start = self.number(start_name)
        end = self.number(end_name)
        if end < start:
            raise self.error(end_name, f"is below the block start {start}")
        return start, end

    def vintage(self, start: date, end: date, end_name: str) -> None:
        """Refuse a vintage period that ends before it starts."""
        if end < start:
            raise self.error(end_name, f"is before the vintage start {start.isoformat()}")


def split(registry: str, text: str, layouts: Mapping[int, tuple[str, ...]]) -> Segments:
    """Split ``text`` on ``-`` and name the segments after the layout of that length.

    Args:
        registry: Registry id, for errors.
        text: The serial.
        layouts: Segment names per accepted segment count.

    Returns:
        The named segments.

    Raises:
        SerialFormatError: The segment count fits no layout; the error names the first
            missing segment, or the first one past the end of the longest layout.
    """
    if not text.strip():
        first = min(layouts.values(), key=len)[0]
        raise SerialFormatError(
            registry=registry,
            serial=text,
            segment_index=1,
            segment_name=first,
            reason="is empty: the serial is blank",
        )
    values = tuple(text.split("-"))
    names = layouts.get(len(values))
    if names is not None:
        return Segments(registry, text, names, values)
    longest = max(layouts.values(), key=len)
    shortest = min(layouts.values(), key=len)
    counts = " or ".join(str(n) for n in sorted(layouts))
    if len(values) < len(shortest):
        index = len(values)
        name = shortest[index]
        reason = f"is missing: the serial has {len(values)} segments, expected {counts}"
    else:
        index = len(longest)
        name = "unexpected"
        reason = (
            f"{values[index]!r} is past the last segment ({longest[-1]}): "
            f"the serial has {len(values)} segments, expected {counts}"
        )
    raise SerialFormatError(
        registry=registry,
        serial=text,
        segment_index=index + 1,
        segment_name=name,
        reason=reason,
    )


def calendar_year(year: int) -> tuple[date, date]:
    """The vintage period of a year-coded serial: 1 January to 31 December."""
    return date(year, 1, 1), date(year, 12, 31)


def year_of_calendar_vintage(registry: str, block: UnitBlock) -> int:
    """The year of a block whose vintage is exactly one calendar year.

    Raises:
        SerialEncodeError: The vintage is not 1 January to 31 December of one year.
    """
    year = block.vintage_start.year
    if (block.vintage_start, block.vintage_end) != calendar_year(year):
        raise SerialEncodeError(
            registry=registry,
            field="vintage_start",
            reason=(
                f"{block.vintage_start.isoformat()}..{block.vintage_end.isoformat()} is not "
                "one calendar year, the only vintage this serial can carry"
            ),
        )
    return year


def native(registry: str, block: UnitBlock, key: str) -> str:
    """The native attribute ``key`` a serial needs, or a typed error when the block lacks it."""
    try:
        return block.native(key)
    except KeyError as exc:
        raise SerialEncodeError(
            registry=registry,
            field=f"native:{key}",
            reason="is missing; the serial cannot be written without it",
        ) from exc


CARRIED_BY_OFFSET_SERIALS: tuple[str, ...] = (
    "id",
    "project_id",
    "country",
    "vintage_start",
    "vintage_end",
    "issuance_id",
    "native_attributes",
)
"""The attributes a serial of the common offset shape spells out; others keep defaults."""


def checked_format(
    registry: str,
    block: UnitBlock,
    text: str,
    parse: Callable[[str], UnitBlock],
    carried: tuple[str, ...],
) -> str:
    """Return ``text`` once it is known to read back as ``block``.

    Formatting is a plain f-string; this guard re-parses the result and compares every
    attribute the serial carries, so a block that the format cannot spell (a project
    id with a ``-`` in it, a wrong program) fails here with the attribute's name rather
    than producing a serial that means something else.

    Args:
        registry: Registry id, for errors.
        block: The block that was formatted.
        text: The formatted serial.
        parse: The codec's parser.
        carried: Names of the ``UnitBlock`` attributes the serial spells out.

    Returns:
        ``text``.

    Raises:
        SerialEncodeError: The text does not parse, or reads back differently.
    """
    try:
        parsed = parse(text)
    except SerialFormatError as exc:
        raise SerialEncodeError(
            registry=registry,
            field=exc.segment_name,
            reason=f"gives an invalid serial: {exc.reason}",
        ) from exc
    for name in carried:
        want = getattr(block, name)
        got = getattr(parsed, name)
        if want != got:
            raise SerialEncodeError(
                registry=registry,
                field=name,
                reason=f"{want!r} cannot be written in the serial (it would read back as {got!r})",
            )
    return text
