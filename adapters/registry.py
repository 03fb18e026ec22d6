"""The table of registries carbonlink links, and how to build an adapter for one.

The gateway wires its adapters once at start-up::

    adapter = build_adapter("verra", "registry.example:50051", RetryPolicy(attempts=5))

and tests start the matching emulator in-process (port 0) from the same table::

    running = start_emulator(REGISTRIES["verra"].emulator())
    adapter = build_adapter("verra", running.target)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import grpc

from adapters.retry import CallObserver, RetryingRegistry, RetryPolicy
from registry_bridge.errors import NotFound
from registry_bridge.model import Program
from registry_bridge.port import RegistryPort

if TYPE_CHECKING:
    # Only to name the type: the emulators (their gRPC servers and stores) load when
    # RegistryEntry.emulator() is called, as the adapters' clients load in client().
    from adapters.emulator_core import EmulatorSpec

ClientFactory = Callable[..., RegistryPort]


@dataclass(frozen=True)
class RegistryEntry:
    """One registry: its adapter, its emulator and how people know it."""

    registry_id: str
    display_name: str
    programs: tuple[Program, ...]
    """Programs whose units the registry holds natively (issues, or holds as a venue)."""
    serial_format: str
    """One line describing the registry's serial format."""
    package: str
    """The adapter package under ``adapters/``."""
    client_class: str
    """The client class in ``adapters/<package>/client.py``."""
    credited_programs: frozenset[Program] | None
    """Programs whose units the registry can be credited with from another registry:
    None for any (it issues a mirror block of them); a custody venue, those it holds;
    Verra and Gold Standard, only their own, back from a mirror elsewhere.  The gateway
    refuses a transfer of other units there before anything is locked."""

    def client(self, channel: grpc.Channel, timeout_s: float = 5.0) -> RegistryPort:
        """A client of the registry's native API over ``channel`` (without retries)."""
        module = importlib.import_module(f"adapters.{self.package}.client")
        factory: ClientFactory = getattr(module, self.client_class)
        return factory(channel, timeout_s=timeout_s)

    def emulator(self) -> EmulatorSpec:
        """The registry's emulator spec."""
        module = importlib.import_module(f"adapters.{self.package}.emulator")
        spec: EmulatorSpec = module.SPEC
        return spec


REGISTRIES: Mapping[str, RegistryEntry] = MappingProxyType(
    {
        entry.registry_id: entry
        for entry in (
            RegistryEntry(
                "verra",
                "Verra Registry (VCS)",
                (Program.VCS,),
                "batch-start-end-VCS-VCU-vvb-VER-CC-type-project-DDMMYYYY-DDMMYYYY-flag",
                "verra",
                "VerraClient",
                frozenset({Program.VCS}),
            ),
            RegistryEntry(
                "gold-standard",
                "Gold Standard Impact Registry (VER)",
                (Program.GS,),
                "GS serial: GS1-1-CC-GSnnnn-type-YYYY-batch-first-last",
                "gold_standard",
                "GoldStandardClient",
                frozenset({Program.GS}),
            ),
            RegistryEntry(
                "national",
                "China national registry (CEA and CCER)",
                (Program.CEA, Program.CCER),
                "DES-style unit block: originating program, start, end (adapters.national)",
                "national",
                "NationalClient",
                None,
            ),
            RegistryEntry(
                "hkmo",
                "Hong Kong and Macau voluntary carbon venues",
                (Program.VCS, Program.GS, Program.CCER, Program.BRI_ITMO),
                "the originating program's serial, held as it is",
                "hkmo",
                "VenueClient",
                frozenset({Program.VCS, Program.GS, Program.CCER, Program.BRI_ITMO}),
            ),
            RegistryEntry(
                "shenzhen",
                "Shenzhen pilot registry (SZA, SZ carbon-inclusive, CCER)",
                (Program.SZA, Program.SZ_CI, Program.CCER),
                "SZA-YYYY-start-end; SZ-CI-start-end-from-to-province-project; "
                "CCER as national (adapters.shenzhen)",
                "shenzhen",
                "ShenzhenClient",
                None,
            ),
            RegistryEntry(
                "guangdong",
                "Guangdong pilot registry (GDEA, PHCER)",
                (Program.GDEA, Program.GD_PHCER),
                "GDEA-YYYY-start-end; GD-PHCER-start-end-from-to-province-project "
                "(adapters.guangdong)",
                "guangdong",
                "GuangdongClient",
                None,
            ),
            RegistryEntry(
                "bri",
                "Belt-and-Road Article 6.2 registry (ITMOs)",
                (Program.BRI_ITMO,),
                "HOST-ITMO-scope-programme-YYYY-reserved-start-end (adapters.bri)",
                "bri",
                "BriClient",
                None,
            ),
        )
    }
)
"""Every registry by id."""


def entry(registry_id: str) -> RegistryEntry:
    """The table entry of ``registry_id``.

    Raises:
        NotFound: No registry has that id.
    """
    try:
        return REGISTRIES[registry_id]
    except KeyError as exc:
        raise NotFound(f"registry {registry_id}") from exc


MAX_REPLY_BYTES = 4 * 1024 * 1024
"""Largest registry reply an adapter accepts: gRPC's default, stated where the channels
are made.  Every reply is bounded well below it: a holdings listing comes a page per
call, each asking for ``LISTING_PAGE_SIZE`` (500) holdings of a few hundred bytes (and
capped by the emulators at 1 MiB); a batch reply answers a request kept to 512 KiB
(``BATCH_MAX_REQUEST_BYTES``); totals are a few rows; Verra's and Gold Standard's
lookups of one block, which do not page, answer its pieces (some 30,000 would be needed).
A registry answering more anyway is refused (``RESOURCE_EXHAUSTED``, a rejection) rather
than let cost the gateway what it sent."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
)
"""Options of every adapter's channel.

gRPC waits longer and longer between dials of an address that refuses it, up to two
minutes by default: a registry back from an outage would stay unreachable, each retry of
each call failing at once, long after it answers again.  A dial a second (a connection
attempt to a registry that is down costs nothing) keeps that wait within the retries of
one call (:class:`RetryPolicy`: about 1.5 s by default).  Replies may be up to
:data:`MAX_REPLY_BYTES`."""


def build_adapter(
    registry_id: str,
    target: str,
    retry: RetryPolicy | None = None,
    *,
    timeout_s: float = 5.0,
    credentials: grpc.ChannelCredentials | None = None,
    observer: CallObserver | None = None,
) -> RegistryPort:
    """Build the adapter of ``registry_id`` talking to ``target``, with the retry policy.

    Args:
        registry_id: A key of :data:`REGISTRIES`.
        target: ``host:port`` of the registry's native API.
        retry: The retry policy (default :class:`RetryPolicy`).
        timeout_s: Deadline of each native call, in seconds.
        credentials: TLS credentials; ``None`` opens an insecure channel (emulators).
        observer: Told of every attempt at a call (for metrics); None: nobody.

    Returns:
        The adapter, retrying transient failures.

    Raises:
        NotFound: No registry has that id.
    """
    registry = entry(registry_id)
    channel = registry_channel(target, credentials)
    return RetryingRegistry(registry.client(channel, timeout_s), retry or RetryPolicy(), observer)


def registry_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to a registry's (or its emulator's back office's) ``target``, with
    :data:`CHANNEL_OPTIONS`; ``credentials`` None for a plaintext one (emulators)."""
    if credentials is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
