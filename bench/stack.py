"""What the benchmarks run on: scratch databases, registry emulators and a gateway.

The same wiring as the integration tests (``tests/integration/gateway/conftest.py``):
Verra issues a block into the Hong Kong venue's Verra account, the venue credits it to
``hk-seller``, and transfers move units from there to a Shenzhen account over real gRPC.
The gateway runs insecure (plaintext, no tokens): on loopback the benchmarks measure the
gateway's own work, and the per-client rate limit of the secure path would cap them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import select
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core.admin import open_accounts
from adapters.registry import build_adapter
from adapters.serials import parse_serial
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.log_keys import write_new_key
from gateway.server import GatewayServer
from registry_bridge.bridge import venue_account
from registry_bridge.model import UnitBlock
from registry_bridge.port import CreditRequest, IssueRequest, RegistryPort

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WIRED = ("verra", "hkmo", "shenzhen")
ECHO = "echo"
"""Served by :func:`serving_process` as a bare echo server instead of an emulator."""
SERIAL_START = 300_000_001
LANES = 8
LANE_SIZE = 100_000
SERIAL_END = SERIAL_START + LANES * LANE_SIZE - 1
# One issued block per lane, 100,000 units each: concurrent clients take units from
# blocks of their own (transfers carving one shared block would contend for its row).


def lane_serial(lane: int) -> str:
    """The Verra serial of lane ``lane``'s block."""
    start = SERIAL_START + lane * LANE_SIZE
    end = start + LANE_SIZE - 1
    return f"9660-{start}-{end}-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"


VERRA_SERIAL = lane_serial(0)
DATABASES = ("sqlite", "postgresql")


def postgres_available() -> bool:
    """Whether the local PostgreSQL server answers."""
    engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()
    return True


@contextmanager
def scratch_database(kind: str) -> Iterator[str]:
    """A new empty database of ``kind`` (``sqlite`` or ``postgresql``), dropped afterwards.

    Yields:
        Its SQLAlchemy URL.

    Raises:
        ValueError: ``kind`` is neither.
    """
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="carbonlink-bench-") as folder:
            yield f"sqlite:///{folder}/carbonlink.db"
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database {kind!r}")
    name = f"carbonlink_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield (
            sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Registries:
    """Running emulators and adapters that read and seed them through their native APIs."""

    targets: dict[str, str]
    """Each wired registry's ``host:port``."""
    ports: dict[str, RegistryPort]
    pid: int
    """The emulators' process (for its CPU time)."""

    def endpoints(
        self, down: tuple[str, ...] = (), dead_target: str = ""
    ) -> tuple[RegistryEndpoint, ...]:
        """The gateway's registry endpoints; those in ``down`` point at ``dead_target``."""
        return tuple(
            RegistryEndpoint(r, dead_target if r in down else target)
            for r, target in self.targets.items()
        )

    def seed_venue(self) -> list[UnitBlock]:
        """Verra issues each lane's block to the HK venue, which credits ``hk-seller``.

        The venue's back office opens ``hk-seller`` first, and Shenzhen's the buyer's
        account the transfers credit: a registry refuses units sent to an account it has
        not opened.
        """
        open_accounts(self.targets["hkmo"], ["hk-seller"])
        open_accounts(self.targets["shenzhen"], ["buyer"])
        blocks = []
        for lane in range(LANES):
            block = parse_serial("verra", lane_serial(lane))
            seed = uuid.uuid4().hex
            self.ports["verra"].issue(IssueRequest(f"seed-{seed}", venue_account("hkmo"), block))
            self.ports["hkmo"].credit(
                CreditRequest(f"deposit-{seed}", "hk-seller", block, "verra", "seed")
            )
            blocks.append(block)
        return blocks


_START_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 10.0


@dataclass
class ServingProcess:
    """A child process serving emulators (or an echo server) on loopback."""

    targets: dict[str, str]
    """Each served name's ``host:port``."""
    pid: int


@contextmanager
def serving_process(names: tuple[str, ...]) -> Iterator[ServingProcess]:
    """A child process (:mod:`bench.registry_process`) serving ``names``; stopped afterwards.

    The child stops when its stdin closes -- here on the way out, whatever happened
    inside, or by itself if this process dies -- and is killed if it does not stop in
    time.
    """
    # -P: the working directory must not shadow the installed packages (a stray
    # ``bench.py`` there would be imported instead of this package).
    command = [sys.executable, "-P", "-m", "bench.registry_process", *names]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None  # PIPE sets both
    try:
        ready, _, _ = select.select([process.stdout], [], [], _START_TIMEOUT_SECONDS)
        line = process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(
                f"the bench's serving process did not start (exit code {process.poll()}; "
                "see stderr above)"
            )
        answer = json.loads(line)
        if "targets" not in answer:
            raise RuntimeError(f"the bench's serving process did not start: {answer.get('error')}")
        yield ServingProcess(answer["targets"], process.pid)
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()  # the child's signal to stop
        try:
            process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@contextmanager
def registries() -> Iterator[Registries]:
    """Verra, HK/Macau and Shenzhen emulators on loopback, seeded; stopped afterwards.

    They run in a child process of their own, as real registries are other systems:
    inside the gateway's process they competed with it for one GIL (on 2 cores), and
    their work was counted as the gateway's.
    """
    with serving_process(WIRED) as serving:
        targets = serving.targets
        linked = Registries(
            targets, {r: build_adapter(r, t) for r, t in targets.items()}, serving.pid
        )
        linked.seed_venue()
        yield linked


@functools.cache
def _log_signing_key() -> Path:
    """One log signing key for every gateway of a run, removed when the process ends.

    As a deployment configures one: without it, each gateway would sign with a key of its
    own and say so at error level, a line per gateway in the middle of the results.
    """
    folder = scratch_dir()
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "log-signing-key.pem"
    write_new_key(path)
    return path


def gateway_config(database_url: str, endpoints: tuple[RegistryEndpoint, ...]) -> GatewayConfig:
    """The benchmark gateway's configuration: defaults, insecure, loopback."""
    return GatewayConfig(
        listen="127.0.0.1:0",
        database_url=database_url,
        registries=endpoints,
        insecure=True,
        log_level="error",
        log_signing_key_file=str(_log_signing_key()),
    )


@dataclass
class Gateway:
    """A started gateway and a channel to it."""

    server: GatewayServer
    target: str


@contextmanager
def gateway(config: GatewayConfig) -> Iterator[Gateway]:
    """A started gateway; stopped afterwards."""
    server = GatewayServer(config)
    port = server.start()
    try:
        yield Gateway(server, f"127.0.0.1:{port}")
    finally:
        server.stop(grace_seconds=0)


def stub(target: str) -> tuple[grpc.Channel, gateway_pb2_grpc.LinkageGatewayStub]:
    """A new channel to ``target`` and a gateway stub over it."""
    channel = grpc.insecure_channel(target)
    return channel, gateway_pb2_grpc.LinkageGatewayStub(channel)


class SerialCursor:
    """Hands out one-unit blocks of one lane's seeded Verra block, each once."""

    def __init__(self, lane: int = 0) -> None:
        """Start at the lane's first serial."""
        self._next = SERIAL_START + lane * LANE_SIZE
        self._end = self._next + LANE_SIZE - 1

    def take(self) -> int:
        """The next unused serial.

        Raises:
            RuntimeError: The lane's block is used up.
        """
        serial = self._next
        if serial > self._end:
            raise RuntimeError("the benchmark's seeded block is used up")
        self._next += 1
        return serial


def transfer_request(
    request_id: str, serial: int, last: int | None = None
) -> gateway_pb2.SubmitTransferRequest:
    """A transfer of VCS units ``serial``..``last`` (one unit when no ``last``) from the HK
    venue's seller to a Shenzhen buyer."""
    return gateway_pb2.SubmitTransferRequest(
        request_id=request_id,
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
            destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
            units=[
                model_pb2.UnitSelector(
                    block=model_pb2.BlockId(
                        program="VCS",
                        serial_series="",
                        serial_start=serial,
                        serial_end=serial if last is None else last,
                    )
                )
            ],
        ),
    )


def scratch_dir() -> Path:
    """A new temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix="carbonlink-bench-"))
