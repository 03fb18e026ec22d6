"""The registry-level table of serial codecs, and the canonical JSON view of a block.

Every registry carbonlink links has one codec, ``adapters/<dir>/serial.py``; this module
maps registry ids to them so callers (the CLI, importers, the gateway) need not know the
package layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from adapters.bri import serial as bri
from adapters.gold_standard import serial as gold_standard
from adapters.guangdong import serial as guangdong
from adapters.hkmo import serial as hkmo
from adapters.national import serial as national
from adapters.serial_errors import RegistryFormatError, UnknownRegistryError
from adapters.shenzhen import serial as shenzhen
from adapters.verra import serial as verra
from registry_bridge.errors import FieldViolation
from registry_bridge.model import UnitBlock


@dataclass(frozen=True)
class SerialCodec:
    """A registry's serial codec."""

    registry_id: str
    parse: Callable[[str], UnitBlock]
    format: Callable[[UnitBlock], str]


CODECS: Mapping[str, SerialCodec] = MappingProxyType(
    {
        module.REGISTRY_ID: SerialCodec(
            module.REGISTRY_ID, module.parse_serial, module.format_serial
        )
        for module in (shenzhen, national, guangdong, hkmo, verra, gold_standard, bri)
    }
)
"""Codec per registry id."""

REGISTRY_IDS: tuple[str, ...] = tuple(CODECS)
"""Every registry id with a serial codec, in the order of the design document."""


def codec(registry_id: str) -> SerialCodec:
    """The codec of ``registry_id``.

    Raises:
        UnknownRegistryError: No registry has that id.
    """
    try:
        return CODECS[registry_id]
    except KeyError as exc:
        raise UnknownRegistryError(registry_id, REGISTRY_IDS) from exc


def parse_serial(registry_id: str, text: str) -> UnitBlock:
    """Parse ``text`` with the codec of ``registry_id``.

    Args:
        registry_id: One of ``REGISTRY_IDS``.
        text: The serial.

    Returns:
        The canonical block.

    Raises:
        UnknownRegistryError: No registry has that id.
        SerialFormatError: The serial is malformed; the error names the bad segment.
    """
    try:
        return codec(registry_id).parse(text)
    except RegistryFormatError:
        raise
    except ValueError as exc:
        # A well-formed serial whose block cannot exist (a number past the largest serial
        # the ledger can hold, say): as wrong an input as a bad segment.
        raise RegistryFormatError(
            f"{registry_id} serial {text!r}: {exc}",
            [FieldViolation("serial", f"{registry_id}: {exc}")],
        ) from exc


def format_serial(registry_id: str, block: UnitBlock) -> str:
    """Write ``block`` in the serial format of ``registry_id``.

    Args:
        registry_id: One of ``REGISTRY_IDS``.
        block: The block.

    Returns:
        The serial.

    Raises:
        UnknownRegistryError: No registry has that id.
        SerialEncodeError: The registry's format cannot spell the block.
    """
    return codec(registry_id).format(block)


JsonValue = str | int | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


def block_to_json(block: UnitBlock) -> dict[str, JsonValue]:
    """The canonical block as a JSON-ready dict.

    Dates are ISO 8601; labels and authorized uses are sorted so the output is stable;
    native attributes become an object in their serial order.

    Args:
        block: The block.

    Returns:
        A dict with the keys ``program``, ``serial_series``, ``serial_start``,
        ``serial_end``, ``quantity``, ``unit_kind``, ``project_id``, ``country``,
        ``region``, ``vintage_start``, ``vintage_end``, ``project_type``,
        ``methodology``, ``gas``, ``gwp_basis``, ``issuance_id``, ``authorization``,
        ``corresponding_adjustment``, ``labels`` and ``native_attributes``.
    """
    authorization: JsonValue = None
    if block.authorization is not None:
        auth = block.authorization
        authorization = {
            "letter_id": auth.letter_id,
            "host_country": auth.host_country,
            "authorized_uses": list[JsonValue](sorted(auth.authorized_uses)),
            "issued_on": auth.issued_on.isoformat(),
        }
    native: dict[str, JsonValue] = dict(block.native_attributes)
    return {
        "program": block.program.value,
        "serial_series": block.id.serial_series,
        "serial_start": block.id.serial_start,
        "serial_end": block.id.serial_end,
        "quantity": block.quantity,
        "unit_kind": block.unit_kind.value,
        "project_id": block.project_id,
        "country": block.country,
        "region": block.region,
        "vintage_start": block.vintage_start.isoformat(),
        "vintage_end": block.vintage_end.isoformat(),
        "project_type": block.project_type,
        "methodology": block.methodology,
        "gas": block.gas,
        "gwp_basis": block.gwp_basis,
        "issuance_id": block.issuance_id,
        "authorization": authorization,
        "corresponding_adjustment": block.corresponding_adjustment.value,
        "labels": list[JsonValue](sorted(block.labels)),
        "native_attributes": native,
    }
