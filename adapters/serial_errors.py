"""Typed errors of the registry serial codecs and export readers.

Every failure to read a registry's own text (a serial number, a row of an export
file) is a :class:`RegistryFormatError`: an ``InvalidRequest`` of carbonlink's error
tree (and a ``ValueError``), since the input is wrong, not the program.  Each subclass
carries the fields a caller needs to point a user at the exact bad piece (the serial
segment, the CSV line) and one ``FieldViolation`` saying the same, so the gateway maps
it to ``INVALID_ARGUMENT`` with a field violation without parsing messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from registry_bridge.errors import FieldViolation, InvalidRequest


class RegistryFormatError(InvalidRequest, ValueError):
    """Root of the errors raised on malformed registry text."""


class SerialFormatError(RegistryFormatError):
    """A serial number does not follow its registry's format.

    Attributes:
        registry: Registry id whose codec rejected the serial (``"verra"``).
        serial: The serial text as given.
        segment_index: 1-based position of the bad ``-``-separated segment.
        segment_name: Name of the bad segment in the codec's layout (``"vintage_start"``).
        reason: Why the segment is wrong, without the segment's position.
    """

    def __init__(
        self,
        *,
        registry: str,
        serial: str,
        segment_index: int,
        segment_name: str,
        reason: str,
    ) -> None:
        self.registry = registry
        self.serial = serial
        self.segment_index = segment_index
        self.segment_name = segment_name
        self.reason = reason
        super().__init__(
            f"{registry} serial {serial!r}: segment {segment_index} ({segment_name}) {reason}",
            [FieldViolation(f"serial.segment[{segment_index}].{segment_name}", reason)],
        )


class SerialEncodeError(RegistryFormatError):
    """A unit block cannot be written in a registry's serial format.

    Raised by ``format_serial`` when a block's attribute has no faithful spelling in
    the format (a Gold Standard vintage that is not a calendar year, a Verra block
    without its verifier code), so the serial would not read back as the block.

    Attributes:
        registry: Registry id whose codec refused the block.
        attribute: The block attribute at fault (``"vintage_start"``, ``"native:vvb_id"``).
        reason: Why it cannot be written.
    """

    def __init__(self, *, registry: str, field: str, reason: str) -> None:
        self.registry = registry
        self.attribute = field
        self.reason = reason
        super().__init__(
            f"{registry} cannot format block: {field} {reason}",
            [FieldViolation(f"block.{field}", reason)],
        )


def unknown_registry_reason(registry: str, known: Sequence[str]) -> str:
    """Why ``registry`` is refused when it names no registry: it, and every id that does.

    One wording wherever an unknown registry id is refused (the ``serial`` command, the
    gateway's ParseSerial, TraceUnits, transfer instructions, filters), so a caller who
    mistyped one reads what to type instead.
    """
    return f"unknown registry {registry!r}; known registries: {', '.join(known)}"


class UnknownRegistryError(RegistryFormatError):
    """A registry id names no registry carbonlink has a codec for.

    Attributes:
        registry: The unknown id.
        known: The ids that exist.
    """

    def __init__(self, registry: str, known: tuple[str, ...]) -> None:
        self.registry = registry
        self.known = known
        reason = unknown_registry_reason(registry, known)
        super().__init__(reason, [FieldViolation("registry", reason)])


class ExportFormatError(RegistryFormatError):
    """A registry export file cannot be read.

    Attributes:
        source: Name of the file or stream.
        line: 1-based physical line of the file where the bad record starts (a quoted
            field may span several lines; this is the first of them).
        column: The CSV column at fault, or ``""`` when the whole record or header is.
        reason: What is wrong.
    """

    def __init__(self, *, source: str, line: int, column: str, reason: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.reason = reason
        where = f"{source}:{line}"
        what = f"column {column!r}: {reason}" if column else reason
        super().__init__(
            f"{where}: {what}", [FieldViolation(f"line[{line}].{column or 'record'}", reason)]
        )


class ExportRowError(ExportFormatError):
    """One data row of a registry export is bad; the whole file is refused."""
