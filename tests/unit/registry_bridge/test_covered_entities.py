"""Covered entities as plain values: what ``carbonlink entity import`` checks locally."""

from __future__ import annotations

import pytest

from registry_bridge.covered_entities import claimed_by_the_other, parse_entities
from registry_bridge.errors import InvalidRequest
from tests.imports import SQL_STACK, loaded, modules_loaded_by


def test_the_entity_model_loads_no_database_code() -> None:
    # `carbonlink entity import` parses and checks its file before calling the gateway;
    # that should not load the database layer that stores the entities.
    modules = modules_loaded_by("import registry_bridge.covered_entities")
    assert loaded(modules, SQL_STACK) == []


@pytest.mark.parametrize(
    ("jurisdiction", "year", "refused"),
    [
        # The pilot: only the years the national ETS claimed, on either side of the first.
        ("shenzhen", 2023, False),
        ("shenzhen", 2024, True),
        ("shenzhen", 2025, False),
        ("shenzhen", 2026, False),
        # The national ETS: every year before the first, claimed or not (no move gave it
        # one), and from the first on the years the pilot claimed.
        ("national", 2022, True),
        ("national", 2023, True),
        ("national", 2024, False),
        ("national", 2025, True),
        ("national", 2026, False),
        # Another scheme is not part of the move.
        ("guangdong", 2024, False),
    ],
)
def test_under_an_abandoned_move_a_year_is_refused_to_the_scheme_that_did_not_claim_it(
    jurisdiction: str, year: int, refused: bool
) -> None:
    # Moved from 2024 and abandoned: the entity surrendered in the national ETS for 2024
    # while the move stood, and in the pilot for 2023 and, once it was abandoned, 2025.
    claimed = {"national": frozenset({2024}), "shenzhen": frozenset({2023, 2025})}
    assert (
        claimed_by_the_other(jurisdiction, year, "shenzhen", "national", 2024, claimed) is refused
    )


_STEEL = {
    "entity_id": "steel",
    "display_name": "Steel Works",
    "sector": "steel",
    "gases": ["CO2"],
    "accounts": {"shenzhen": "sz-steel"},
}
_YEAR = {
    "jurisdiction": "shenzhen",
    "compliance_year": 2023,
    "verified_emissions": 50000,
    "allowances_due": 50000,
}


@pytest.mark.parametrize(
    ("entity", "says"),
    [
        # Was dropped: the import said "0 years" and succeeded, the year never recorded.
        ({**_STEEL, "years": ["2023"]}, "entities[0].years[0]: must be an object"),
        ({**_STEEL, "years": [_YEAR, 2024]}, "entities[0].years[1]: must be an object"),
        # A misspelt field was ignored: the entity recorded without what it named.
        ({**_STEEL, "acounts": {"national": "cn-steel"}}, "entities[0]: unknown field 'acounts'"),
        (
            {**_STEEL, "years": [{**_YEAR, "verified_emission": 1}]},
            "entities[0].years[0]: unknown field 'verified_emission'",
        ),
    ],
)
def test_an_import_document_is_read_whole_or_refused_by_path(
    entity: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_entities({"entities": [entity]})
    assert says in str(caught.value)


def test_an_import_document_reads_every_field() -> None:
    (entity,) = parse_entities({"entities": [{**_STEEL, "years": [_YEAR]}]})
    assert (entity.entity_id, entity.accounts, entity.years[0].compliance_year) == (
        "steel",
        {"shenzhen": "sz-steel"},
        2023,
    )
