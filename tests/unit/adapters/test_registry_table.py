"""The table of registries (``adapters.registry``)."""

from __future__ import annotations

from tests.imports import loaded, modules_loaded_by


def test_the_table_loads_no_emulator() -> None:
    # The CLI names the registries in its arguments (`certs init`, `emulate`); only the
    # commands that run an emulator should load the emulators' server and stores.
    modules = modules_loaded_by("import adapters.registry")
    assert loaded(modules, ("adapters.emulator_core",)) == []
