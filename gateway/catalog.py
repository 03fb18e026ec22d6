"""What the gateway knows about the registries it is wired to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryInfo:
    """A wired registry as ListRegistries reports it."""

    registry_id: str
    display_name: str
    programs: tuple[str, ...]
    serial_format: str
    target: str
