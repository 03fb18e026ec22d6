"""JSON encoding of canonical unit blocks: for stores, operation logs and the ledger.

A store keeps a block's attributes as one JSON document next to its serial range,
so a split piece keeps every attribute of the block it came from.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from typing import Any

from registry_bridge.model import (
    Authorization,
    BlockId,
    CorrespondingAdjustment,
    Program,
    UnitBlock,
)


def block_id_to_dict(block_id: BlockId) -> dict[str, Any]:
    """The JSON form of a block id."""
    return {
        "program": block_id.program.value,
        "serial_series": block_id.serial_series,
        "serial_start": block_id.serial_start,
        "serial_end": block_id.serial_end,
    }


def block_id_from_dict(data: dict[str, Any]) -> BlockId:
    """The block id of its JSON form."""
    return BlockId(
        Program(data["program"]),
        str(data["serial_series"]),
        int(data["serial_start"]),
        int(data["serial_end"]),
    )


def authorization_to_dict(auth: Authorization | None) -> dict[str, Any] | None:
    """A letter of authorization as JSON-ready data (None stays None)."""
    if auth is None:
        return None
    return {
        "letter_id": auth.letter_id,
        "host_country": auth.host_country,
        "authorized_uses": sorted(auth.authorized_uses),
        "issued_on": auth.issued_on.isoformat(),
    }


def authorization_from_dict(data: dict[str, Any] | None) -> Authorization | None:
    """The letter of :func:`authorization_to_dict`."""
    if data is None:
        return None
    return Authorization(
        letter_id=data["letter_id"],
        host_country=data["host_country"],
        authorized_uses=frozenset(data["authorized_uses"]),
        issued_on=date.fromisoformat(data["issued_on"]),
    )


def attributes_to_json(block: UnitBlock) -> str:
    """Every attribute of ``block`` except its serial range, as canonical JSON."""
    return json.dumps(
        {
            "project_id": block.project_id,
            "country": block.country,
            "vintage_start": block.vintage_start.isoformat(),
            "vintage_end": block.vintage_end.isoformat(),
            "region": block.region,
            "project_type": block.project_type,
            "methodology": block.methodology,
            "gas": block.gas,
            "gwp_basis": block.gwp_basis,
            "issuance_id": block.issuance_id,
            "authorization": authorization_to_dict(block.authorization),
            "corresponding_adjustment": block.corresponding_adjustment.value,
            "labels": sorted(block.labels),
            "native_attributes": [list(pair) for pair in block.native_attributes],
        },
        sort_keys=True,
    )


def block_from_parts(block_id: BlockId, attributes_json: str) -> UnitBlock:
    """Rebuild a block from its id and the JSON of :func:`attributes_to_json`."""
    # Many rows share one set of attributes (every split of a block keeps them): they are
    # parsed once and only the range differs.
    template = _TEMPLATES.get(attributes_json)
    if template is None:
        template = _parse_block(block_id, attributes_json)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[attributes_json] = template
        return template
    # The template passed UnitBlock's checks, none of which reads the range: a copy with
    # the range set needs no second run of them (dataclasses.replace runs them all again).
    block = copy.copy(template)
    object.__setattr__(block, "id", block_id)
    return block


# Parsed attributes by their JSON (a block's attributes never change), bounded.
_TEMPLATES: dict[str, UnitBlock] = {}
_MAX_TEMPLATES = 4096


def _parse_block(block_id: BlockId, attributes_json: str) -> UnitBlock:
    data = json.loads(attributes_json)
    return UnitBlock(
        id=block_id,
        project_id=data["project_id"],
        country=data["country"],
        vintage_start=date.fromisoformat(data["vintage_start"]),
        vintage_end=date.fromisoformat(data["vintage_end"]),
        region=data["region"],
        project_type=data["project_type"],
        methodology=data["methodology"],
        gas=data["gas"],
        gwp_basis=data["gwp_basis"],
        issuance_id=data["issuance_id"],
        authorization=authorization_from_dict(data["authorization"]),
        corresponding_adjustment=CorrespondingAdjustment(data["corresponding_adjustment"]),
        labels=frozenset(data["labels"]),
        native_attributes=tuple((str(k), str(v)) for k, v in data["native_attributes"]),
    )


def block_to_json(block: UnitBlock) -> str:
    """A whole block (range and attributes) as JSON."""
    return json.dumps(
        {"id": block_id_to_dict(block.id), "attributes": attributes_to_json(block)},
        sort_keys=True,
    )


def block_from_json(text: str) -> UnitBlock:
    """The block of :func:`block_to_json`."""
    data = json.loads(text)
    return block_from_parts(block_id_from_dict(data["id"]), data["attributes"])
