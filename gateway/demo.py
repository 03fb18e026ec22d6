"""``carbonlink demo``: the gateway's user journeys, end to end, on the embedded database.

The demo starts an emulator of each registry's native API and a gateway wired to them,
then plays each journey as its user would: over real gRPC sockets on the loopback
interface, through the public API.  Registry state is read back through the registries'
own APIs, so what the demo prints is what each registry holds, not what the gateway says.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core import RunningEmulator, start_emulator
from adapters.emulator_core.admin import open_accounts
from adapters.registry import REGISTRIES, build_adapter
from adapters.serials import parse_serial
from gateway import convert, demo_security
from gateway.config import GatewayConfig, RegistryEndpoint
from gateway.demo_auditor import demo_log_key, journey_auditor
from gateway.demo_migration import journey_covered_entity
from gateway.demo_operations import journey_operator
from gateway.logging_setup import configure_logging
from gateway.server import SERVICE_NAME, GatewayServer
from registry_bridge.bridge import venue_account
from registry_bridge.model import BlockId, HoldingStatus
from registry_bridge.port import BlockStatusRequest, CreditRequest, IssueRequest, RegistryPort

DEMO_REGISTRIES = ("verra", "gold-standard", "hkmo", "shenzhen", "guangdong", "national", "bri")
# The exchange operator settles for its members: it moves units out of these accounts only.
DEMO_OPERATOR_ACCOUNTS = ("hkmo:hk-seller", "shenzhen:sz-buyer")

DEMO_OPENED_ACCOUNTS = {"hkmo": ("hk-seller", "hk-buyer"), "shenzhen": ("sz-buyer",)}
"""The accounts the journeys send units to, which each registry's back office opens
first: a registry refuses units sent to an account it has not opened (the others are
opened by the issuances into them)."""
# A real Verra issuance (Verra public export): 20,745 VCUs of project 1060, vintage 2019.
VERRA_SERIAL = "9660-115597313-115618057-VCS-VCU-261-VER-US-14-1060-01012019-31122019-0"
# The foreign issuer's desk at Verra: Verra issued it the units of the projects it lists
# (VCS 5955 and 5954), which is what proves to the gateway that the projects are its own.
DEMO_ISSUER_ACCOUNT = ("verra", "project-proponent")
DEMO_ISSUER_SERIALS = (
    "17000-500000001-500001000-VCS-VCU-997-VER-BR-13-5955-20072024-19072025-0",
    "17001-500001001-500002000-VCS-VCU-997-VER-CN-1-5954-21092024-20092025-0",
)
SOLD_QUANTITY = 5_000
RETIRED_QUANTITY = 1_200
ACCEPTED_QUANTITY = 800


class DemoFailure(Exception):
    """A journey did not end as it must; the demo exits non-zero."""


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _emulators(workdir: Path) -> Iterator[dict[str, RunningEmulator]]:
    running: dict[str, RunningEmulator] = {}
    try:
        for registry_id in DEMO_REGISTRIES:
            running[registry_id] = start_emulator(
                REGISTRIES[registry_id].emulator(),
                data_dir=workdir / registry_id,
                credentials=demo_security.emulator_credentials(workdir, registry_id),
            )
        yield running
    finally:
        for emulator in running.values():
            emulator.stop()


def run(args: argparse.Namespace) -> int:
    """Run every journey; returns the process exit code."""
    log_sink = io.StringIO()
    configure_logging("info", "json", stream=log_sink)
    with tempfile.TemporaryDirectory(prefix="carbonlink-demo-") as scratch:
        workdir: Path = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            with _emulators(workdir) as emulators:
                _run_journeys(workdir, emulators)
        except (DemoFailure, grpc.RpcError) as exc:
            _say()
            _say(f"demo FAILED: {exc}")
            return 1
    _say()
    _say("demo finished: every journey ran over real gRPC.")
    return 0


def _run_journeys(workdir: Path, emulators: dict[str, RunningEmulator]) -> None:
    seeding = demo_security.registry_credentials(workdir)
    registry_ports = {
        r: build_adapter(r, e.target, credentials=seeding) for r, e in emulators.items()
    }
    _open_accounts(emulators, seeding)
    _seed_hong_kong_venue(registry_ports)
    _seed_issuer(registry_ports)
    config = GatewayConfig(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{workdir / 'gateway.db'}",
        registries=tuple(RegistryEndpoint(r, e.target) for r, e in emulators.items()),
        log_signing_key_file=str(demo_log_key(workdir)),
        metrics_listen="127.0.0.1:0",
        **demo_security.gateway_settings(workdir),
    )
    server = GatewayServer(config)
    port = server.start()
    target = f"127.0.0.1:{port}"
    try:
        # Each party over mutual TLS with a token of its role; instructions signed.
        with (
            demo_security.channel(
                workdir, target, "exchange_operator", accounts=DEMO_OPERATOR_ACCOUNTS
            ) as channel,
            demo_security.channel(
                workdir, target, "issuer", accounts=[":".join(DEMO_ISSUER_ACCOUNT)]
            ) as issuer,
            demo_security.channel(workdir, target, "auditor") as auditor,
        ):
            _journey_gateway_up(channel, target)
            _journey_exchange_operator(channel, registry_ports["verra"])
            _journey_foreign_issuer(issuer)
            journey_auditor(auditor, workdir, VERRA_SERIAL, DemoFailure)
        journey_covered_entity(workdir, target, registry_ports, server.import_registries)
        journey_operator(workdir, server.metrics_port, DemoFailure)
    finally:
        server.stop(grace_seconds=1)


def _open_accounts(
    emulators: dict[str, RunningEmulator], credentials: grpc.ChannelCredentials
) -> None:
    """Each registry's back office opens the accounts the journeys send units to."""
    for registry, accounts in DEMO_OPENED_ACCOUNTS.items():
        open_accounts(emulators[registry].target, accounts, credentials=credentials)


def _seed_hong_kong_venue(ports: dict[str, RegistryPort]) -> None:
    """Verra issues the block into the HK venue's Verra account; the venue books it."""
    block = parse_serial("verra", VERRA_SERIAL)
    seed = uuid.uuid4().hex
    ports["verra"].issue(IssueRequest(f"demo-seed-{seed}", venue_account("hkmo"), block))
    ports["hkmo"].credit(CreditRequest(f"demo-deposit-{seed}", "hk-seller", block, "verra", "seed"))


def _seed_issuer(ports: dict[str, RegistryPort]) -> None:
    """Verra issues the projects' units into their issuer's account."""
    registry, account = DEMO_ISSUER_ACCOUNT
    seed = uuid.uuid4().hex
    for i, serial in enumerate(DEMO_ISSUER_SERIALS):
        block = parse_serial(registry, serial)
        ports[registry].issue(IssueRequest(f"demo-issue-{seed}-{i}", account, block))


def _journey_gateway_up(channel: grpc.Channel, target: str) -> None:
    _say(f"== gateway on {target} (embedded SQLite)")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        _say(f"   health {service or '(server)'}: {status}")
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise DemoFailure(f"gateway health for {service!r} is {status}")
    gateway = gateway_pb2_grpc.LinkageGatewayStub(channel)
    listed = gateway.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=5)
    _say(f"   ListRegistries: {len(listed.registries)} registries wired")
    for registry in listed.registries:
        state = "reachable" if registry.reachable else "UNREACHABLE"
        _say(f"     {registry.name:28} {registry.display_name} [{state}]")
        if not registry.reachable:
            raise DemoFailure(f"{registry.name} is not reachable")


def _verra_states(verra: RegistryPort, block: BlockId) -> dict[tuple[int, int], HoldingStatus]:
    return {
        (h.block.id.serial_start, h.block.id.serial_end): h.status
        for h in verra.block_status(BlockStatusRequest(block))
    }


def _expect_verra(
    verra: RegistryPort, block: BlockId, expected: dict[tuple[int, int], HoldingStatus]
) -> None:
    found = _verra_states(verra, block)
    for (start, end), status in sorted(found.items()):
        _say(f"     Verra {start}-{end}: {status.value}")
    if found != expected:
        raise DemoFailure(f"Verra shows {found}, expected {expected}")


def _state_name(state: model_pb2.TransferState.ValueType) -> str:
    return model_pb2.TransferState.Name(state).removeprefix("TRANSFER_STATE_")


def _completed(transfer: model_pb2.Transfer) -> model_pb2.Transfer:
    """Say the transfer's history; it must have completed."""
    states = " -> ".join(_state_name(s.state) for s in transfer.history)
    _say(f"   {transfer.name}: {states}")
    if transfer.state != model_pb2.TRANSFER_STATE_COMPLETED:
        raise DemoFailure(f"{transfer.name} ended {transfer.state}: {transfer.failure_reason}")
    return transfer


def _transfer(
    gateway: gateway_pb2_grpc.LinkageGatewayStub, request: gateway_pb2.SubmitTransferRequest
) -> model_pb2.Transfer:
    return _completed(gateway.SubmitTransfer(request, timeout=60))


def _journey_exchange_operator(channel: grpc.Channel, verra: RegistryPort) -> None:
    _say()
    _say("== exchange operator: Verra VCUs sold at the Hong Kong venue to a Shenzhen buyer")
    gateway = gateway_pb2_grpc.LinkageGatewayStub(channel)
    origin = parse_serial("verra", VERRA_SERIAL).id
    first = origin.serial_start
    sold = BlockId(origin.program, "", first, first + SOLD_QUANTITY - 1)
    rest = BlockId(origin.program, "", sold.serial_end + 1, origin.serial_end)
    _say(f"   hk-seller holds {origin.quantity} VCUs {VERRA_SERIAL} at the HK venue")

    selector = model_pb2.UnitSelector(block=convert.block_id_to_pb(sold))
    evaluation = gateway.EvaluateTransfer(
        gateway_pb2.EvaluateTransferRequest(
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                units=[selector],
            )
        ),
        timeout=30,
    )
    _say(f"   EvaluateTransfer (dry run): allowed={evaluation.decision.allowed}")
    if not evaluation.decision.allowed:
        raise DemoFailure(f"evaluation denied: {evaluation.decision.violations}")

    settlement = _transfer(
        gateway,
        gateway_pb2.SubmitTransferRequest(
            request_id=f"hkex-trade-{uuid.uuid4().hex[:8]}",
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                units=[selector],
                settlement=model_pb2.Settlement(
                    currency="HKD", amount="412500.00", trade_reference="HKEX-CC-0001"
                ),
            ),
        ),
    )
    mirror = settlement.credited_blocks[0]
    _say(
        f"   Shenzhen issued mirror {mirror.id.serial_series} "
        f"{mirror.id.serial_start}-{mirror.id.serial_end} ({mirror.quantity} units)"
    )
    _expect_verra(
        verra,
        origin,
        {
            (sold.serial_start, sold.serial_end): HoldingStatus.BRIDGED,
            (rest.serial_start, rest.serial_end): HoldingStatus.ACTIVE,
        },
    )

    _say(f"   sz-buyer retires {RETIRED_QUANTITY} mirror units")
    retired_mirror = model_pb2.BlockId(
        program=mirror.id.program,
        serial_series=mirror.id.serial_series,
        serial_start=mirror.id.serial_start,
        serial_end=mirror.id.serial_start + RETIRED_QUANTITY - 1,
    )
    use = gateway.Retire(
        gateway_pb2.RetireRequest(
            request_id=f"retire-{uuid.uuid4().hex[:8]}",
            account=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
            units=[model_pb2.UnitSelector(block=retired_mirror)],
            beneficiary="Shenzhen Example Manufacturing Co.",
            claim_text="Offsetting 2025 scope 2 emissions",
        ),
        timeout=60,
    )
    _say(f"   {use.name}: retired for {use.beneficiary}")
    retired_origin_end = sold.serial_start + RETIRED_QUANTITY - 1
    _expect_verra(
        verra,
        origin,
        {
            (sold.serial_start, retired_origin_end): HoldingStatus.RETIRED,
            (retired_origin_end + 1, sold.serial_end): HoldingStatus.BRIDGED,
            (rest.serial_start, rest.serial_end): HoldingStatus.ACTIVE,
        },
    )

    _say("   the rest of the mirror returns to Hong Kong")
    returning = model_pb2.BlockId(
        program=mirror.id.program,
        serial_series=mirror.id.serial_series,
        serial_start=retired_mirror.serial_end + 1,
        serial_end=mirror.id.serial_end,
    )
    _transfer(
        gateway,
        gateway_pb2.SubmitTransferRequest(
            request_id=f"return-{uuid.uuid4().hex[:8]}",
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                destination=model_pb2.AccountRef(registry="hkmo", account="hk-buyer"),
                units=[model_pb2.UnitSelector(block=returning)],
            ),
        ),
    )
    _expect_verra(
        verra,
        origin,
        {
            (sold.serial_start, retired_origin_end): HoldingStatus.RETIRED,
            (retired_origin_end + 1, origin.serial_end): HoldingStatus.ACTIVE,
        },
    )

    _say("   a second trade answered at acceptance: the order flow does not wait on registries")
    second = BlockId(
        origin.program, "", rest.serial_start, rest.serial_start + ACCEPTED_QUANTITY - 1
    )
    accepted: model_pb2.Transfer = gateway.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id=f"hkex-trade-{uuid.uuid4().hex[:8]}",
            reply_when=gateway_pb2.REPLY_WHEN_ACCEPTED,
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                units=[model_pb2.UnitSelector(block=convert.block_id_to_pb(second))],
            ),
        ),
        timeout=60,
    )
    answered = _state_name(accepted.state)
    _say(f"   {accepted.name}: answered {answered}; WatchTransfer follows its settlement")
    if accepted.state != model_pb2.TRANSFER_STATE_CHECKED:
        raise DemoFailure(f"{accepted.name} was answered {answered}: {accepted.failure_reason}")
    watched = list(
        gateway.WatchTransfer(gateway_pb2.WatchTransferRequest(name=accepted.name), timeout=60)
    )
    _completed(watched[-1])
    _expect_verra(
        verra,
        origin,
        {
            (sold.serial_start, retired_origin_end): HoldingStatus.RETIRED,
            (retired_origin_end + 1, sold.serial_end): HoldingStatus.ACTIVE,
            (second.serial_start, second.serial_end): HoldingStatus.BRIDGED,
            (second.serial_end + 1, origin.serial_end): HoldingStatus.ACTIVE,
        },
    )


def _journey_foreign_issuer(channel: grpc.Channel) -> None:
    _say()
    _say("== foreign credit issuer: projects ask to list in Shenzhen")
    gateway = gateway_pb2_grpc.LinkageGatewayStub(channel)
    # Real projects from Verra's public project list.
    landfill = model_pb2.Project(
        program="VCS",
        project_id="5955",
        display_name="Cascavel Landfill Gas Project",
        project_type="Waste handling and disposal",
        methodology="VMR0016",
        country="BR",
        start_date="2024-07-20",
        crediting_period_start="2024-07-20",
        crediting_period_end="2031-07-19",
    )
    reply = gateway.ListProject(
        gateway_pb2.ListProjectRequest(
            request_id=f"list-{uuid.uuid4().hex[:8]}", project=landfill, jurisdiction="shenzhen"
        ),
        timeout=30,
    )
    _say(f"   VCS 5955 (Brazil, landfill gas): listed={reply.listed}")
    for use in reply.eligibility:
        verdict = "eligible" if use.decision.allowed else "not eligible"
        reasons = "; ".join(v.rule_id for v in use.decision.violations)
        _say(f"     {use.use:22} {verdict}{' (' + reasons + ')' if reasons else ''}")
    if not reply.listed:
        raise DemoFailure(f"VCS 5955 was refused: {reply.refusals}")

    twice = model_pb2.Project(
        program="VCS",
        project_id="5954",
        display_name="Yunyang County No.2 Domestic Waste Landfill Gas Power Generation Project",
        project_type="Energy industries (renewable/non-renewable sources)",
        methodology="ACM0001",
        country="CN",
        region="Chongqing",
        start_date="2024-09-21",
        crediting_period_start="2024-09-21",
        crediting_period_end="2034-09-20",
        other_registrations=[
            model_pb2.ProjectRegistration(
                program="CCER",
                project_id="CCER-500-2024-0042",
                issued_period_start="2024-09-21",
                issued_period_end="2025-09-20",
            )
        ],
    )
    refused = gateway.ListProject(
        gateway_pb2.ListProjectRequest(
            request_id=f"list-{uuid.uuid4().hex[:8]}", project=twice, jurisdiction="shenzhen"
        ),
        timeout=30,
    )
    _say(f"   VCS 5954, also issued as CCER for 2024-25: listed={refused.listed}")
    for violation in refused.refusals:
        _say(f"     refused {violation.rule_id}: {violation.message}")
    if refused.listed or not refused.refusals:
        raise DemoFailure("a project already issued under CCER for the same period was listed")

    # A project whose units sit in another party's account (the HK venue's VCS 1060): the
    # gateway asks Verra, finds none of them in the issuer's account, and lists nothing.
    squatted = model_pb2.Project(program="VCS", project_id="1060", country="US")
    try:
        gateway.ListProject(
            gateway_pb2.ListProjectRequest(
                request_id=f"list-{uuid.uuid4().hex[:8]}", project=squatted, jurisdiction="shenzhen"
            ),
            timeout=30,
        )
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        _say(f"   VCS 1060, none of its units in the issuer's account: {exc.code().name}")
        _say(f"     {exc.details()}")
    else:
        raise DemoFailure("a project none of whose units the issuer holds was listed")


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(workdir=None)))
