"""Conversions between generated protobuf messages and domain objects.

Generated types stop here: the servicer converts each request into domain values on the
way in and each domain result into a message on the way out.
"""

from __future__ import annotations

from adapters._pb.carbonlink.v1 import model_pb2
from gateway.catalog import RegistryInfo


def registry_to_pb(info: RegistryInfo, reachable: bool) -> model_pb2.Registry:
    """A registry resource."""
    return model_pb2.Registry(
        name=f"registries/{info.registry_id}",
        registry_id=info.registry_id,
        display_name=info.display_name,
        programs=list(info.programs),
        serial_format=info.serial_format,
        reachable=reachable,
    )
