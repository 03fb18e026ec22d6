"""SIGKILL the gateway at random moments under concurrent load: nothing is lost, nothing
counts twice, and every answer it gave still stands.

The other crash tests kill the gateway at a fault hook, one transfer at a time.  Here
clients send single transfers (some of several blocks, one credit each), batches,
retirements and returns of mirrors to the custody venue, all at once, against registries
that add latency and lose some replies after applying the call.  The gateway process is
killed with SIGKILL at moments drawn from a fixed seed -- after so many more answers,
whatever it is doing then -- and restarted on the same port, and the clients retry what
failed under the same request ids, as an exchange's would.  Twice the restarted gateway
is killed again by its fault hook: once at the first source it locks, and then it stays
down until the locks of the transfers it left have expired (the lock TTL is short); once,
with the clients holding off, at the first transfer it completes -- while it resumes the
dead one's transfers.

After the last restart: every transfer and use reaches a final state; every request the
clients saw answered is there under the answer they got; every request id sent again
gets the same transfer or use, and nothing new but what never got in; every invariant
holds, reconciliation with the registries included; the log's earlier checkpoint is
consistent with the last, and traces of the traded units verify offline.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core import FaultConfig
from adapters.serials import parse_serial
from gateway.audit_client import bundle_from_pages, read_trace_pages
from gateway.convert import block_id_to_pb
from gateway.log_keys import write_new_key
from registry_bridge import db, invariants, merkle
from registry_bridge.audit import verify_bundle
from registry_bridge.model import BlockId, Program
from registry_bridge.port import IssueRequest
from registry_bridge.schema import TransferRecord, UnitUseRecord
from registry_bridge.signed_note import NoteSigner, Verifier, open_checkpoint
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    WIRED,
    LinkedRegistries,
    linked_registries,
)
from tests.integration.serving import quick_redial_channel
from tests.loopback import HOST, free_port

SEED = 20261127
KILLS = 4
"""Kills at random moments; two more at the fault hook: one followed by an outage past the
lock TTL, one during start-up recovery."""
RECOVERY_KILL_AT = 2
"""After which kill the restarted gateway is killed again while it resumes."""
OUTAGE_AT = 1
"""After which kill the restarted gateway dies at its first source lock, and stays down
until its transfers' locks have expired."""
LOG_ORIGIN = "carbonlink.local/provenance"
FINAL = ("COMPLETED", "REJECTED", "ROLLED_BACK")
VENUE_BLOCK = parse_serial("verra", VERRA_SERIAL).id
ORIGIN_BLOCK = parse_serial(
    "verra", "9660-300000001-300010000-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
)
_RETRIED = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
)
"""Failures a client retries under the same request id (ABORTED: a conflict, try again)."""
_DEADLINE_SECONDS = 90.0
"""How long any one wait may take before the test calls the gateway stuck."""

T = TypeVar("T")


@dataclass
class Sent:
    """One request as a client sent it, and the answer it saw (if any)."""

    kind: str
    """``transfer`` or ``retire``."""
    request: bytes
    answer: str = ""
    """The transfer's or use's name, once answered."""


@dataclass
class Clients:
    """Client threads against one gateway address, retrying what failed in transit."""

    target: str
    sent: dict[str, Sent] = field(default_factory=dict)
    mirrors: list[tuple[str, model_pb2.UnitBlock]] = field(default_factory=list)
    answers: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    go: threading.Event = field(default_factory=threading.Event)
    """Clear: clients neither send nor retry (a gateway left to its recovery alone)."""
    stop: threading.Event = field(default_factory=threading.Event)

    def call(self, request_id: str, kind: str, request: bytes, send: Callable[[], T]) -> T | None:
        """Send until answered (the same request id every time); None once stopped."""
        with self.lock:
            self.sent[request_id] = Sent(kind, request)
        while not self.stop.is_set():
            self.go.wait()
            try:
                answer = send()
            except grpc.RpcError as exc:
                if exc.code() in _RETRIED:
                    continue
                with self.lock:
                    self.errors.append(f"{request_id}: {exc.code().name}: {exc.details()}")
                return None
            with self.lock:
                self.answers += 1
            return answer
        return None

    def answered(self, request_id: str, name: str) -> None:
        with self.lock:
            self.sent[request_id].answer = name

    def transfer(
        self,
        stub: gateway_pb2_grpc.LinkageGatewayStub,
        request_id: str,
        units: list[BlockId],
        source: tuple[str, str],
        destination: tuple[str, str],
    ) -> None:
        request = gateway_pb2.SubmitTransferRequest(
            request_id=request_id, instruction=_instruction(source, destination, units)
        )
        transfer = self.call(
            request_id,
            "transfer",
            request.SerializeToString(),
            lambda: stub.SubmitTransfer(request, timeout=30, wait_for_ready=True),
        )
        if transfer is not None:
            self.answered(request_id, transfer.name)
            self._keep_mirrors(destination, transfer)

    def _keep_mirrors(self, destination: tuple[str, str], transfer: model_pb2.Transfer) -> None:
        if destination[0] == "shenzhen" and transfer.state == model_pb2.TRANSFER_STATE_COMPLETED:
            with self.lock:
                self.mirrors.extend((destination[1], b) for b in transfer.credited_blocks)

    def singles(self, name: str, source: tuple[str, str], start: int, count: int) -> None:
        """``count`` transfers to Shenzhen, some of two or three blocks with gaps."""
        rng = random.Random(f"{SEED}-{name}")
        at = start
        with quick_redial_channel(self.target) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            for n in range(count):
                units = []
                for _ in range(rng.choice((1, 1, 2, 3))):
                    size = rng.randint(1, 6)
                    units.append(BlockId(Program.VCS, "", at, at + size - 1))
                    at += size + rng.randint(1, 3)
                self.transfer(stub, f"{name}-{n}", units, source, ("shenzhen", f"buyer-{name}"))

    def batches(self, name: str, source: tuple[str, str], start: int, count: int) -> None:
        """``count`` batches of 20 to 60 one-block transfers to Shenzhen."""
        rng = random.Random(f"{SEED}-{name}")
        at = start
        destination = ("shenzhen", f"buyer-{name}")
        with quick_redial_channel(self.target) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            for n in range(count):
                items = []
                for i in range(rng.randint(20, 60)):
                    size = rng.randint(1, 4)
                    units = [BlockId(Program.VCS, "", at, at + size - 1)]
                    at += size
                    items.append(
                        gateway_pb2.SubmitTransferRequest(
                            request_id=f"{name}-{n}-{i}",
                            instruction=_instruction(source, destination, units),
                        )
                    )
                with self.lock:
                    for item in items:
                        self.sent[item.request_id] = Sent("transfer", item.SerializeToString())
                batch = gateway_pb2.SubmitTransfersRequest(transfers=items)
                reply = self.call(
                    f"{name}-{n}",
                    "batch",
                    b"",
                    functools.partial(stub.SubmitTransfers, batch, timeout=60, wait_for_ready=True),
                )
                if reply is None:
                    continue
                for result in reply.results:
                    if result.HasField("transfer"):
                        self.answered(result.request_id, result.transfer.name)
                        self._keep_mirrors(destination, result.transfer)
                    else:
                        with self.lock:
                            self.errors.append(f"{result.request_id}: {result.error.message}")

    def uses(self, name: str, count: int) -> None:
        """Retire part of a mirror, or send part of it back to the Hong Kong venue."""
        rng = random.Random(f"{SEED}-{name}")
        done = 0
        with quick_redial_channel(self.target) as channel:
            stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
            while done < count and not self.stop.is_set():
                with self.lock:
                    picked = self.mirrors.pop(0) if self.mirrors else None
                if picked is None:
                    self.stop.wait(0.05)  # poll for the next mirror a transfer credits
                    continue
                holder, mirror = picked
                part = BlockId(
                    Program(mirror.id.program),
                    mirror.id.serial_series,
                    mirror.id.serial_start,
                    rng.randint(mirror.id.serial_start, mirror.id.serial_end),
                )
                request_id = f"{name}-{done}"
                done += 1
                if rng.random() < 0.5:
                    self.transfer(
                        stub, request_id, [part], ("shenzhen", holder), ("hkmo", "hk-back")
                    )
                    continue
                retire = gateway_pb2.RetireRequest(
                    request_id=request_id,
                    account=model_pb2.AccountRef(registry="shenzhen", account=holder),
                    units=[_selector(part)],
                    beneficiary="Chaos Test Co.",
                )
                use = self.call(
                    request_id,
                    "retire",
                    retire.SerializeToString(),
                    functools.partial(stub.Retire, retire, timeout=30, wait_for_ready=True),
                )
                if use is not None:
                    self.answered(request_id, use.name)


def _selector(block: BlockId) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(block=block_id_to_pb(block))


def _instruction(
    source: tuple[str, str], destination: tuple[str, str], units: list[BlockId]
) -> model_pb2.TransferInstruction:
    return model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry=source[0], account=source[1]),
        destination=model_pb2.AccountRef(registry=destination[0], account=destination[1]),
        units=[_selector(u) for u in units],
    )


class GatewayProcess:
    """``carbonlink serve`` on one port, killed and started again at will."""

    def __init__(
        self, database_url: str, registries: LinkedRegistries, key: Path, log: Path
    ) -> None:
        self.target = f"{HOST}:{free_port()}"
        self._database_url = database_url
        self._log = log
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_")}
        self._env.update(
            CARBONLINK_REGISTRIES=",".join(
                f"{e.registry_id}={e.target}" for e in registries.endpoints()
            ),
            CARBONLINK_INSECURE="true",
            CARBONLINK_RECOVERY_INTERVAL_SECONDS="0.2",
            # A short lease lets a restarted gateway take the dead one's transfers over at
            # once; a short lock TTL lets restarts find locks expired.
            CARBONLINK_TRANSFER_LEASE_SECONDS="1",
            CARBONLINK_LOCK_TTL_SECONDS="4",
            CARBONLINK_LOG_SIGNING_KEY_FILE=str(key),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **settings: str) -> None:
        env = dict(self._env)
        env.update({f"CARBONLINK_{k.upper()}": v for k, v in settings.items()})
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--listen",
                    self.target,
                    "--database-url",
                    self._database_url,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        process = self.process
        with quick_redial_channel(self.target) as channel:
            ready = grpc.channel_ready_future(channel)
            # Ready, or gone already (killed by its fault hook as soon as it served).
            try:
                _poll("the gateway to serve", lambda: ready.done() or process.poll() is not None)
            except AssertionError as exc:
                # What the gateway was doing: a start that never serves is otherwise
                # reported with no clue, its log gone with the test's folder.
                tail = self._log.read_text(errors="replace")[-4000:]
                raise AssertionError(
                    f"{exc} ({_reached_afresh(self.target)}); its log ends:\n{tail}"
                ) from exc
            finally:
                ready.cancel()
        if not settings:
            assert process.poll() is None, f"the gateway died on start-up: {self._log}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=_DEADLINE_SECONDS) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def chaos_registries() -> Iterator[LinkedRegistries]:
    """The registries, slow and losing some replies after they applied the call."""
    faults = FaultConfig(
        latency_ms=2, crash_after_commit_fraction=0.03, duplicate_delivery_fraction=0.05, seed=SEED
    )
    with linked_registries(dict.fromkeys(WIRED, faults)) as linked:
        yield linked


def _reached_afresh(target: str) -> str:
    """Whether a new channel reaches ``target``: tells a gateway that does not serve from
    a test channel that stopped dialling."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
        try:
            grpc.channel_ready_future(fresh).result(timeout=5)
        except grpc.FutureTimeoutError:
            return "a new channel did not reach it either"
    return "a new channel reached it"


def _poll(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _DEADLINE_SECONDS
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {_DEADLINE_SECONDS} s for {what}")
        time.sleep(0.05)


def _unfinished(sessions: sessionmaker[Session]) -> tuple[list[str], list[str]]:
    with db.read_only(sessions) as session:
        transfers = list(
            session.execute(
                sa.select(TransferRecord.id).where(TransferRecord.state.not_in(FINAL))
            ).scalars()
        )
        uses = list(
            session.execute(
                sa.select(UnitUseRecord.id).where(UnitUseRecord.state == "pending")
            ).scalars()
        )
    return transfers, uses


def _locked(sessions: sessionmaker[Session]) -> bool:
    """Whether an unfinished transfer's lock is still within its TTL."""
    with db.read_only(sessions) as session:
        expiries = session.execute(
            sa.select(TransferRecord.lock_expires_at).where(
                TransferRecord.state.not_in(FINAL), TransferRecord.lock_expires_at.is_not(None)
            )
        ).scalars()
        now = datetime.now(UTC)
        return any(expires is not None and expires >= now for expires in expiries)


def _await_answers(clients: Clients, more: int) -> None:
    target = clients.answers + more
    _poll("the clients' next answers", lambda: clients.answers >= target)


def _checkpoint(target: str) -> model_pb2.Checkpoint:
    with grpc.insecure_channel(target) as channel:
        checkpoint: model_pb2.Checkpoint = gateway_pb2_grpc.LinkageGatewayStub(
            channel
        ).GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=30)
    return checkpoint


def _kill_before_an_outage(gateway: GatewayProcess, sessions: sessionmaker[Session]) -> None:
    """Kill the gateway; the one restarted dies as soon as it has locked some transfer's
    source, and stays down past the lock TTL: the transfers it left roll back (or, if
    credited, forward) when it is back."""
    gateway.kill()
    gateway.start(fault_crash_after_state="SOURCE_LOCKED")
    process = gateway.process
    assert process is not None
    _poll("a source lock", lambda: process.poll() is not None)
    assert process.returncode == -signal.SIGKILL
    _poll("the dead gateway's locks to expire", lambda: not _locked(sessions))
    gateway.start()


def _kill_during_recovery(
    gateway: GatewayProcess, clients: Clients, sessions: sessionmaker[Session]
) -> None:
    """Kill the gateway with the clients held off; the one restarted, alone with the dead
    one's transfers, dies at the first it completes (unless every one rolls back)."""
    clients.go.clear()
    gateway.kill()
    if _unfinished(sessions) != ([], []):
        gateway.start(fault_crash_after_state="COMPLETED")
        process = gateway.process
        assert process is not None
        _poll(
            "the resumed transfers",
            lambda: process.poll() is not None or _unfinished(sessions)[0] == [],
        )
        gateway.stop()
    gateway.start()
    clients.go.set()


@pytest.mark.slow
def test_random_kills_under_concurrent_load_lose_nothing_and_count_nothing_twice(
    database_url: str, chaos_registries: LinkedRegistries, tmp_path: Path
) -> None:
    registries = chaos_registries
    registries.seed_venue("hk-seller")
    registries.ports["verra"].issue(IssueRequest("seed-origin", "vs-seller", ORIGIN_BLOCK))
    key = tmp_path / "log.key"
    write_new_key(key)
    trusted = NoteSigner.from_pem(LOG_ORIGIN, key.read_bytes()).verifier
    engine = db.create_engine(database_url)
    sessions = db.session_factory(engine)
    gateway = GatewayProcess(database_url, registries, key, tmp_path / "gateway.log")
    rng = random.Random(SEED)
    clients = Clients(gateway.target)
    clients.go.set()
    threads = [
        threading.Thread(
            target=clients.singles,
            args=("venue", ("hkmo", "hk-seller"), VENUE_BLOCK.serial_start, 40),
        ),
        threading.Thread(
            target=clients.singles,
            args=("origin", ("verra", "vs-seller"), ORIGIN_BLOCK.id.serial_start, 40),
        ),
        threading.Thread(
            target=clients.batches,
            args=("batch", ("verra", "vs-seller"), ORIGIN_BLOCK.id.serial_start + 5_000, 5),
        ),
        threading.Thread(target=clients.uses, args=("use", 20)),
    ]
    try:
        gateway.start()
        for thread in threads:
            thread.start()
        earlier: model_pb2.Checkpoint | None = None
        for kill in range(KILLS):
            # Kill after a few more answers: other calls are in flight, at any step.
            _await_answers(clients, rng.randint(3, 15))
            if earlier is None:
                earlier = _checkpoint(gateway.target)
            if kill == RECOVERY_KILL_AT:
                _kill_during_recovery(gateway, clients, sessions)
            elif kill == OUTAGE_AT:
                _kill_before_an_outage(gateway, sessions)
            else:
                gateway.kill()
                gateway.start()
        for thread in threads:
            thread.join(timeout=_DEADLINE_SECONDS)
            assert not thread.is_alive(), "a client never got its answers"
        assert clients.errors == []
        _poll("every transfer and use to end", lambda: _unfinished(sessions) == ([], []))
        assert earlier is not None
        _check_answers(clients, sessions, gateway.target)
        _check_invariants(sessions, registries)
        _check_log(gateway.target, trusted, earlier)
    finally:
        clients.stop.set()
        clients.go.set()
        gateway.stop()
        engine.dispose()


def _check_answers(clients: Clients, sessions: sessionmaker[Session], target: str) -> None:
    """Every answer stands, and every request sent again gets the same one."""
    with db.read_only(sessions) as session:
        transfers = {
            r: i
            for r, i in session.execute(sa.select(TransferRecord.request_id, TransferRecord.id))
        }
        uses = {
            r: i for r, i in session.execute(sa.select(UnitUseRecord.request_id, UnitUseRecord.id))
        }
    sent = {r: s for r, s in clients.sent.items() if s.kind != "batch"}
    for request_id, request in sent.items():
        if request.answer:
            stored = transfers if request.kind == "transfer" else uses
            kind = "transfers" if request.kind == "transfer" else "uses"
            assert f"{kind}/{stored.get(request_id)}" == request.answer, request_id
    never_in = [r for r, s in sent.items() if s.kind == "transfer" and r not in transfers]
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        again = [
            gateway_pb2.SubmitTransferRequest.FromString(s.request)
            for s in sent.values()
            if s.kind == "transfer"
        ]
        for at in range(0, len(again), 200):
            reply = stub.SubmitTransfers(
                gateway_pb2.SubmitTransfersRequest(transfers=again[at : at + 200]), timeout=120
            )
            for result in reply.results:
                assert result.HasField("transfer"), result.error.message
                first = sent[result.request_id].answer or (
                    f"transfers/{transfers[result.request_id]}"
                    if result.request_id in transfers
                    else result.transfer.name
                )
                assert result.transfer.name == first, result.request_id
        for request_id, request in sent.items():
            if request.kind != "retire" or request_id not in uses:
                continue
            use = stub.Retire(gateway_pb2.RetireRequest.FromString(request.request), timeout=30)
            assert use.name == f"uses/{uses[request_id]}", request_id
    with db.read_only(sessions) as session:
        count = session.execute(sa.select(sa.func.count()).select_from(TransferRecord)).scalar()
    # Nothing twice: only the requests that never got in are new.
    assert count == len(transfers) + len(never_in)
    _poll("the repeated requests to end", lambda: _unfinished(sessions) == ([], []))


def _check_invariants(sessions: sessionmaker[Session], registries: LinkedRegistries) -> None:
    with db.read_only(sessions) as session:
        assert invariants.check_all(session, registries.ports) == []
        states: dict[str, int] = {
            state: count
            for state, count in session.execute(
                sa.select(TransferRecord.state, sa.func.count()).group_by(TransferRecord.state)
            )
        }
    # The clients' transfers were allowed and their units were theirs: the kills may roll
    # some back, never refuse them.
    assert states.get("COMPLETED", 0) > 0
    assert "REJECTED" not in states, states


def _check_log(target: str, trusted: Verifier, earlier: model_pb2.Checkpoint) -> None:
    """The log before the kills is a prefix of the log now; traces verify offline."""
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
        later = stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=30)
        assert later.verifier_key == earlier.verifier_key
        opened = open_checkpoint(later.signed_note, trusted)
        assert (opened.size, opened.root) == (later.tree_size, later.root_hash)
        proof = stub.GetConsistencyProof(
            gateway_pb2.GetConsistencyProofRequest(
                first_size=earlier.tree_size, second_size=later.tree_size
            ),
            timeout=30,
        )
        merkle.verify_consistency(
            earlier.tree_size,
            later.tree_size,
            list(proof.hashes),
            earlier.root_hash,
            later.root_hash,
        )
        for block in (VENUE_BLOCK, ORIGIN_BLOCK.id):
            query = BlockId(block.program, "", block.serial_start, block.serial_start + 299)
            # A long history: more than one page, read whole into one bundle.
            pages = read_trace_pages(
                stub,
                gateway_pb2.TraceUnitsRequest(
                    block=model_pb2.BlockId(
                        program=query.program.value,
                        serial_start=query.serial_start,
                        serial_end=query.serial_end,
                    )
                ),
                timeout=60,
            )
            report = verify_bundle(bundle_from_pages(pages, "", "", query), trusted)
            assert report.events == sum(len(page.events) for page in pages)
            assert report.issued and report.tree_size == later.tree_size
