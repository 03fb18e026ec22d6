"""The migration section of a pack version: what happens to a leaving entity's holdings."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import yaml

from compliance_rules import Disposition, PackInvalidError, load_builtin
from compliance_rules.loader import build_pack


def test_shenzhen_dispositions_follow_the_version_in_force() -> None:
    pack = load_builtin("shenzhen")
    assert pack.version_for(date(2020, 1, 1)).migration is None
    before = pack.version_for(date(2024, 4, 30)).migration
    after = pack.version_for(date(2024, 5, 1)).migration
    assert before is not None and after is not None
    assert before.destination == after.destination == "national"
    assert before.dispositions["SZA"] is Disposition.KEEP_FOR_SALE
    assert after.dispositions["SZA"] is Disposition.CANCEL
    assert after.dispositions["CCER"] is Disposition.TRANSFER
    assert after.dispositions["SZ-CI"] is Disposition.KEEP_FOR_SALE
    assert after.sectors["steel"] == 2024
    assert after.sectors["civil_aviation"] is None


def test_unsourced_dispositions_are_marked_unconfirmed() -> None:
    after = load_builtin("shenzhen").version_for(date(2025, 1, 1)).migration
    assert after is not None
    assert {"SZA", "CCER", "SZ-CI"} <= after.unconfirmed
    # The 2024 sector years come from ICAP (secondary), not from a guess.
    assert "sectors" not in after.unconfirmed
    assert after.parameters["SZA"] == "migration_disposition_sza"


def _pack(migration: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    source = {"document": "d", "clause": "c", "confidence": "secondary"}
    return {
        "pack": "test",
        "title": "t",
        "rule_id_prefix": "CR-T-",
        "role": "scheme",
        "versions": [
            {
                "effective_from": "2024-01-01",
                "description": "d",
                "uses": ["compliance"],
                "parameters": parameters or {},
                "gwp": {
                    "report": "IPCC AR5",
                    "horizon_years": 100,
                    "confidence": "unconfirmed",
                    "note": "n",
                },
                "rules": [
                    {
                        "id": "CR-T-0001",
                        "kind": "accepted_programs",
                        "message": "m",
                        "source": source,
                        "uses": ["compliance"],
                        "params": {"programs": ["SZA"]},
                    }
                ],
                "migration": migration,
            }
        ],
    }


SOURCE = {"document": "d", "clause": "c", "confidence": "secondary"}


def test_an_unknown_disposition_is_refused_with_its_path() -> None:
    doc = _pack(
        {
            "destination": "national",
            "source": SOURCE,
            "sectors": {"steel": 2024},
            "dispositions": {"SZA": {"param": "d"}},
        },
        {"d": {"value": "sell_abroad", "confidence": "unconfirmed", "note": "n"}},
    )
    with pytest.raises(PackInvalidError) as caught:
        build_pack(doc, origin="test")
    paths = [i.path for i in caught.value.issues]
    assert "$.versions[0].migration.dispositions.SZA" in paths


def test_an_unknown_figure_cannot_drive_a_disposition() -> None:
    doc = _pack(
        {
            "destination": "national",
            "source": SOURCE,
            "sectors": {},
            "dispositions": {"SZA": {"param": "d"}},
        },
        {"d": {"value": None, "confidence": "unconfirmed", "note": "not found"}},
    )
    with pytest.raises(PackInvalidError) as caught:
        build_pack(doc, origin="test")
    assert any("unknown (null)" in i.message for i in caught.value.issues)


def test_a_literal_section_loads() -> None:
    doc = _pack(
        {
            "destination": "national",
            "source": SOURCE,
            "sectors": {"steel": 2024, "civil_aviation": None},
            "dispositions": {"SZA": "cancel"},
        }
    )
    pack = build_pack(yaml.safe_load(yaml.safe_dump(doc)), origin="test")
    rules = pack.versions[0].migration
    assert rules is not None
    assert rules.dispositions == {"SZA": Disposition.CANCEL}
    assert rules.unconfirmed == frozenset()
