"""A gateway with security on: mutual TLS to clients and registries, JWTs, signed instructions."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519

from adapters._pb.carbonlink.v1 import gateway_pb2_grpc, model_pb2
from adapters.emulator_core import FaultConfig, RunningEmulator, start_emulator
from adapters.registry import REGISTRIES, build_adapter
from adapters.serials import parse_serial
from gateway import demo_security
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.security.certs import init_dev_pki, instruction_key_entry, load_private_key
from gateway.security.client import InstructionSigner, role_channel
from gateway.security.instructions import SIGNED_METHODS
from gateway.security.layout import DEV_AUDIENCE, DEV_ISSUER, TlsLayout
from gateway.security.tls import channel_credentials, server_credentials
from gateway.security.tokens import mint_token
from gateway.server import GatewayServer
from registry_bridge.bridge import venue_account
from registry_bridge.port import CreditRequest, IssueRequest, RegistryPort
from tests.integration.accounts import WELL_KNOWN_ACCOUNTS
from tests.integration.serving import BACKGROUND_END_S

WIRED = ("verra", "hkmo", "shenzhen")
VERRA_SERIAL = "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"


def vcs_serial(project_id: str, first: int) -> str:
    """A Verra serial of 1,000 VCUs of ``project_id`` (Brazil, 2024-25) from ``first`` on."""
    return f"17000-{first}-{first + 999}-VCS-VCU-997-VER-BR-13-{project_id}-20072024-19072025-0"


def venue_units(first: int, count: int) -> list[model_pb2.UnitSelector]:
    """``count`` of the venue's Verra units (VERRA_SERIAL's), from offset ``first`` on."""
    origin = parse_serial("verra", VERRA_SERIAL).id
    return [
        model_pb2.UnitSelector(
            block=model_pb2.BlockId(
                program=origin.program.value,
                serial_start=origin.serial_start + first,
                serial_end=origin.serial_start + first + count - 1,
            )
        )
    ]


def venue_instruction(
    source: model_pb2.AccountRef, destination: model_pb2.AccountRef, first: int, count: int
) -> model_pb2.TransferInstruction:
    """``count`` of the venue's Verra units (VERRA_SERIAL's), from offset ``first`` on."""
    return model_pb2.TransferInstruction(
        source=source, destination=destination, units=venue_units(first, count)
    )


def row_counts(gateway: SecureGateway, *tables: type[Any]) -> list[int]:
    """How many rows each of ``tables`` (mapped classes) holds in the gateway's database."""
    with gateway.server.engine.connect() as connection:
        return [
            int(connection.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in tables
        ]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsLayout:
    """One development PKI for the session (tests that rotate keys make their own)."""
    return init_dev_pki(tmp_path_factory.mktemp("pki"), REGISTRIES)


@dataclass
class SecureGateway:
    """A running secure gateway and what a test needs to speak to it."""

    server: GatewayServer
    target: str
    pki: TlsLayout
    ports: dict[str, RegistryPort]
    emulators: dict[str, RunningEmulator]

    def token(
        self,
        role: str,
        *,
        subject: str | None = None,
        accounts: Sequence[str] = (),
        entities: Sequence[str] = (),
        **overrides: Any,
    ) -> str:
        """A valid token of ``role`` signed by the role's development key."""
        key = load_private_key(self.pki.jwt_key(role))
        settings: dict[str, Any] = {
            "subject": subject or role,
            "roles": [role],
            "issuer": DEV_ISSUER,
            "audience": DEV_AUDIENCE,
            "accounts": accounts,
            "entities": entities,
        }
        settings.update(overrides)
        return mint_token(key, f"{role}-1", **settings)

    def channel(self, role: str, token: str | None) -> grpc.Channel:
        """A mutual-TLS channel with ``role``'s client certificate and ``token``."""
        return role_channel(self.target, self.pki, role, token)

    def stub(self, role: str, token: str | None) -> gateway_pb2_grpc.LinkageGatewayStub:
        return gateway_pb2_grpc.LinkageGatewayStub(self.channel(role, token))

    def signer(self, party: str) -> InstructionSigner:
        return InstructionSigner.from_file(self.pki.instruction_key(party), DEV_AUDIENCE)

    def party(
        self,
        role: str,
        subject: str,
        accounts: Sequence[str] = (),
        entities: Sequence[str] = (),
    ) -> grpc.Channel:
        """A channel of a party of ``role`` with a ``subject`` of its own: its token names
        that subject, and a key registered for the subject signs its every instruction.

        The key is added to the PKI's instruction-key file, which the gateway re-reads:
        use it with a PKI of the test's own, not the session's.
        """
        key = ed25519.Ed25519PrivateKey.generate()
        key_id = f"{subject}-{uuid.uuid4().hex[:8]}"
        registry = json.loads(self.pki.instruction_keys.read_text(encoding="utf-8"))
        registry["keys"][key_id] = instruction_key_entry(key, subject)
        self.pki.instruction_keys.write_text(json.dumps(registry), encoding="utf-8")
        token = self.token(role, subject=subject, accounts=accounts, entities=entities)
        return grpc.intercept_channel(
            self.channel(role, token), _Signing(InstructionSigner(key, key_id, DEV_AUDIENCE))
        )

    def issue(self, registry: str, account: str, serial: str) -> None:
        """``registry`` issues the block of ``serial`` into ``account``, through its own API."""
        block = parse_serial(registry, serial)
        self.ports[registry].issue(IssueRequest(f"issue-{uuid.uuid4().hex}", account, block))

    def seed_venue(self, account: str = "hk-seller") -> None:
        block = parse_serial("verra", VERRA_SERIAL)
        seed = uuid.uuid4().hex
        self.ports["verra"].issue(IssueRequest(f"seed-{seed}", venue_account("hkmo"), block))
        self.ports["hkmo"].credit(CreditRequest(f"dep-{seed}", account, block, "verra", "seed"))


class _Signing(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    # NOTE(carbonlink): grpc ships no type stubs here, so its base class is Any.
    """Signs every instruction a channel sends (with a fresh nonce each time)."""

    def __init__(self, signer: InstructionSigner) -> None:
        self._signer = signer

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = str(client_call_details.method).rsplit("/", 1)[-1]
        if method in SIGNED_METHODS:
            self._signer.sign(method, request)
        return continuation(client_call_details, request)


def start_secure_gateway(
    pki: TlsLayout,
    database_url: str,
    registries: Sequence[str] = WIRED,
    faults: Mapping[str, FaultConfig] | None = None,
    **settings: Any,
) -> tuple[GatewayServer, dict[str, RunningEmulator], dict[str, RegistryPort]]:
    """Emulators of ``registries`` serving mutual TLS (injecting ``faults``, by registry),
    and a gateway with every security setting on."""
    emulators = {
        r: start_emulator(
            REGISTRIES[r].emulator(),
            faults=(faults or {}).get(r),
            credentials=server_credentials(pki.registry_cert(r), pki.registry_key(r), pki.ca_cert),
            accounts=WELL_KNOWN_ACCOUNTS,
        )
        for r in registries
    }
    seeding = channel_credentials(
        pki.ca_cert, pki.client_cert("registry"), pki.client_key("registry")
    )
    ports = {r: build_adapter(r, e.target, credentials=seeding) for r, e in emulators.items()}
    fields: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "database_url": database_url,
        "registries": tuple(RegistryEndpoint(r, e.target) for r, e in emulators.items()),
        "tls_cert_file": str(pki.gateway_cert),
        "tls_key_file": str(pki.gateway_key),
        "tls_ca_file": str(pki.ca_cert),
        "jwks_file": str(pki.jwks),
        "instruction_keys_file": str(pki.instruction_keys),
    }
    fields.update(settings)
    return GatewayServer(GatewayConfig(**fields)), emulators, ports


@contextlib.contextmanager
def running_secure_gateway(
    pki: TlsLayout,
    database_url: str,
    also_wired: Sequence[str] = (),
    faults: Mapping[str, FaultConfig] | None = None,
    **settings: Any,
) -> Iterator[SecureGateway]:
    """Start a secure gateway (with its emulators, the HK venue seeded); stop it after.

    The gateway is wired to WIRED's registries and to ``also_wired``'s, whose emulators
    inject ``faults`` (by registry).
    """
    wired = (*WIRED, *also_wired)
    server, emulators, ports = start_secure_gateway(pki, database_url, wired, faults, **settings)
    try:
        gateway = SecureGateway(server, "", pki, ports, emulators)
        gateway.seed_venue()
        port = server.start()
        gateway.target = f"127.0.0.1:{port}"
        yield gateway
    finally:
        server.stop(grace_seconds=0)
        server.wait_background(BACKGROUND_END_S)
        for emulator in emulators.values():
            emulator.stop()


@pytest.fixture
def secure_gateway(pki: TlsLayout, tmp_path: Path) -> Iterator[SecureGateway]:
    with running_secure_gateway(pki, f"sqlite:///{tmp_path}/gateway.db") as gateway:
        yield gateway


@pytest.fixture
def national_gateway(database_url: str, tmp_path: Path) -> Iterator[SecureGateway]:
    """A secure gateway wired to Shenzhen and the national registry too, with the PKI the
    demo's client channels use (under ``tmp_path``): a covered entity's migration."""
    pki = demo_security.layout(tmp_path)
    with running_secure_gateway(pki, database_url, also_wired=("national",)) as gateway:
        yield gateway
