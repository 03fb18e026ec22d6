"""Covered entities as plain values: what ``carbonlink entity import`` checks locally."""

from __future__ import annotations

from tests.imports import SQL_STACK, loaded, modules_loaded_by


def test_the_entity_model_loads_no_database_code() -> None:
    # `carbonlink entity import` parses and checks its file before calling the gateway;
    # that should not load the database layer that stores the entities.
    modules = modules_loaded_by("import registry_bridge.covered_entities")
    assert loaded(modules, SQL_STACK) == []
