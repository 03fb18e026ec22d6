"""Retirements and surrenders through the public gRPC API: what the reply tells the holder."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.demo_migration import pilot_entity, record_entity
from registry_bridge import ledger
from registry_bridge.bridge import venue_account
from registry_bridge.db import unit_of_work
from registry_bridge.model import BlockId, HoldingStatus, Program
from registry_bridge.port import BlockStatusRequest, IssueRequest, RetireRequest
from registry_bridge.schema import UnitUseRecord
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)
from tests.logs import logged_events

ORIGIN = parse_serial("verra", VERRA_SERIAL).id
START = ORIGIN.serial_start
BUYER = model_pb2.AccountRef(registry="shenzhen", account="buyer")
SELLER = model_pb2.AccountRef(registry="hkmo", account="hk-seller")


def _selector(program: str, series: str, start: int, end: int) -> model_pb2.UnitSelector:
    return model_pb2.UnitSelector(
        block=model_pb2.BlockId(
            program=program, serial_series=series, serial_start=start, serial_end=end
        )
    )


def _bridge_to_shenzhen(
    gateway: LiveGateway, request_id: str, quantity: int
) -> model_pb2.UnitBlock:
    """Moves the first ``quantity`` Verra units from the venue to a Shenzhen buyer; the mirror."""
    moved = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id=request_id,
            instruction=model_pb2.TransferInstruction(
                source=SELLER,
                destination=BUYER,
                units=[_selector("VCS", "", START, START + quantity - 1)],
            ),
        ),
        timeout=30,
    )
    assert moved.state == model_pb2.TRANSFER_STATE_COMPLETED, moved.failure_reason
    mirror: model_pb2.UnitBlock = moved.credited_blocks[0]
    return mirror


def test_a_retirement_names_the_holders_blocks_it_took_with_their_attributes(
    live_gateway: LiveGateway,
) -> None:
    mirror = _bridge_to_shenzhen(live_gateway, "to-retire", 50)
    m = mirror.id
    request = gateway_pb2.RetireRequest(
        request_id="retire-blocks",
        account=BUYER,
        units=[
            _selector(m.program, m.serial_series, m.serial_start, m.serial_start + 9),
            _selector(m.program, m.serial_series, m.serial_start + 20, m.serial_start + 24),
        ],
        beneficiary="Acme Ltd",
    )
    use = live_gateway.stub.Retire(request, timeout=30)
    assert use.state == model_pb2.USE_STATE_COMPLETED
    # The holder's (Shenzhen mirror) serials, not the Verra origin behind them.
    assert [
        (b.id.program, b.id.serial_series, b.id.serial_start, b.id.serial_end) for b in use.blocks
    ] == [
        (m.program, m.serial_series, m.serial_start, m.serial_start + 9),
        (m.program, m.serial_series, m.serial_start + 20, m.serial_start + 24),
    ]
    assert [b.quantity for b in use.blocks] == [10, 5]
    for block in use.blocks:
        assert block.project_id == mirror.project_id != ""
        assert block.vintage_start == mirror.vintage_start
        assert block.unit_kind == mirror.unit_kind == model_pb2.UNIT_KIND_OFFSET_CREDIT
        assert block.methodology == mirror.methodology
    # The same request answered again names the same blocks, and says it is done.
    again = live_gateway.stub.Retire(request, timeout=30)
    assert list(again.blocks) == list(use.blocks)
    assert again.state == model_pb2.USE_STATE_COMPLETED


def test_a_retirement_at_a_custody_venue_names_the_origin_serials_the_venue_holds(
    live_gateway: LiveGateway,
) -> None:
    use = live_gateway.stub.Retire(
        gateway_pb2.RetireRequest(
            request_id="retire-at-venue",
            account=SELLER,
            units=[_selector("VCS", "", START + 100, START + 119)],
            beneficiary="Acme Ltd",
        ),
        timeout=30,
    )
    assert [(b.id.program, b.id.serial_start, b.id.serial_end, b.quantity) for b in use.blocks] == [
        ("VCS", START + 100, START + 119, 20)
    ]
    assert use.blocks[0].country == "US"


def test_a_use_recorded_before_its_legs_kept_their_blocks_still_names_them(
    live_gateway: LiveGateway,
) -> None:
    mirror = _bridge_to_shenzhen(live_gateway, "to-retire-old", 30)
    m = mirror.id
    request = gateway_pb2.RetireRequest(
        request_id="retire-old",
        account=BUYER,
        units=[_selector(m.program, m.serial_series, m.serial_start + 5, m.serial_start + 14)],
        beneficiary="Acme Ltd",
    )
    first = live_gateway.stub.Retire(request, timeout=30)
    # As an older gateway recorded it: legs naming block ids only.
    with unit_of_work(live_gateway.server.bridge.sessions) as session:
        record = session.get(UnitUseRecord, first.name.removeprefix("uses/"))
        assert record is not None
        detail = json.loads(record.detail)
        for leg in detail["legs"]:
            leg.pop("unit", None)
        record.detail = json.dumps(detail, sort_keys=True)
    again = live_gateway.stub.Retire(request, timeout=30)
    assert list(again.blocks) == list(first.blocks)
    assert again.blocks[0].quantity == 10
    assert again.blocks[0].project_id == mirror.project_id


# ------------------------------------------------------------------ units used elsewhere

QUIET_RECOVERY: dict[str, Any] = {
    # The tests drive recovery themselves: the loop must not settle a use meanwhile.
    "recovery_interval_seconds": 3600,
    "registry_retry_initial_wait_seconds": 0.01,
    "registry_retry_max_wait_seconds": 0.02,
}


@pytest.fixture
def quiet_gateway(database_url: str, registries: LinkedRegistries) -> Iterator[LiveGateway]:
    registries.seed_venue()
    with running_gateway(database_url, registries, **QUIET_RECOVERY) as gateway:
        yield gateway


def _mirror_units(mirror: model_pb2.UnitBlock, first: int, last: int) -> BlockId:
    m = mirror.id
    return BlockId(
        Program(m.program), m.serial_series, m.serial_start + first, m.serial_start + last
    )


def _retire_request(request_id: str, units: BlockId) -> gateway_pb2.RetireRequest:
    return gateway_pb2.RetireRequest(
        request_id=request_id,
        account=BUYER,
        units=[
            _selector(
                units.program.value, units.serial_series, units.serial_start, units.serial_end
            )
        ],
        beneficiary="Acme Ltd",
    )


def _statuses(registries: LinkedRegistries, registry: str, block: BlockId) -> set[HoldingStatus]:
    return {h.status for h in registries.ports[registry].block_status(BlockStatusRequest(block))}


def _use_states(gateway: LiveGateway) -> dict[str, str]:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        return {r.request_id: r.state for r in session.execute(sa.select(UnitUseRecord)).scalars()}


def _refused(gateway: LiveGateway, request: gateway_pb2.RetireRequest) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        gateway.stub.Retire(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    return caught.value.details() or ""


def test_a_mirror_whose_origin_was_retired_at_its_registry_is_refused_and_nothing_is_done(
    quiet_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    """The origin retired at Verra behind the gateway's back: retiring its Shenzhen mirror
    would count the tonnes twice. The retirement is refused for good, naming the double
    use, and the mirror is left as it was at Shenzhen (not retired there)."""
    mirror = _bridge_to_shenzhen(quiet_gateway, "to-retire", 50)
    behind = BlockId(Program.VCS, "", START, START + 9)
    registries.ports["verra"].retire(
        RetireRequest("elsewhere-1", venue_account("hkmo"), behind, "Someone else", "")
    )
    request = _retire_request("retire-used", _mirror_units(mirror, 0, 9))
    with logged_events() as logs:
        message = _refused(quiet_gateway, request)
        assert "double use" in message and "verra" in message and "retired" in message
        assert _statuses(registries, "shenzhen", _mirror_units(mirror, 0, 9)) == {
            HoldingStatus.ACTIVE
        }
        assert _use_states(quiet_gateway)["retire-used"] == "rejected"
        # Final: the same request gets the same answer, and recovery has nothing to retry.
        assert _refused(quiet_gateway, request) == message
        assert quiet_gateway.server.bridge.resume_uses() == 0
    assert not [e for e in logs if e["log_level"] == "error"]
    # The mirror's other units, whose origin is still immobilized, retire as before.
    quiet_gateway.stub.Retire(
        _retire_request("retire-rest", _mirror_units(mirror, 10, 19)), timeout=30
    )
    assert _statuses(registries, "verra", BlockId(Program.VCS, "", START + 10, START + 19)) == {
        HoldingStatus.RETIRED
    }


def test_a_mirror_retired_at_its_own_registry_is_refused_before_the_origin_is_touched(
    quiet_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    mirror = _bridge_to_shenzhen(quiet_gateway, "to-retire", 50)
    units = _mirror_units(mirror, 0, 9)
    registries.ports["shenzhen"].retire(
        RetireRequest("elsewhere-2", "buyer", units, "Someone else", "")
    )
    message = _refused(quiet_gateway, _retire_request("retire-used", units))
    assert "double use" in message and "shenzhen" in message
    # The origin behind it is still immobilized: nothing of the use was done anywhere.
    assert _statuses(registries, "verra", BlockId(Program.VCS, "", START, START + 9)) == {
        HoldingStatus.BRIDGED
    }
    assert _use_states(quiet_gateway)["retire-used"] == "rejected"


def test_a_pending_use_whose_origin_was_retired_meanwhile_is_resolved_by_recovery(
    quiet_gateway: LiveGateway, registries: LinkedRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway stops after recording the use, before any registry hears of it; the
    origin is retired elsewhere meanwhile. Recovery ends the use refused, once."""
    mirror = _bridge_to_shenzhen(quiet_gateway, "to-retire", 50)
    bridge = quiet_gateway.server.bridge

    def crash(use_id: str) -> None:
        raise RuntimeError("the gateway stopped here")

    monkeypatch.setattr(bridge, "_finish_use", crash)
    request = _retire_request("retire-pending", _mirror_units(mirror, 0, 9))
    with pytest.raises(grpc.RpcError):
        quiet_gateway.stub.Retire(request, timeout=30)
    monkeypatch.undo()
    assert _use_states(quiet_gateway)["retire-pending"] == "pending"
    registries.ports["verra"].retire(
        RetireRequest(
            "elsewhere-3",
            venue_account("hkmo"),
            BlockId(Program.VCS, "", START, START + 9),
            "X",
            "",
        )
    )
    assert bridge.resume_uses() == 0
    assert _use_states(quiet_gateway)["retire-pending"] == "rejected"
    assert bridge.resume_uses() == 0
    assert "double use" in _refused(quiet_gateway, request)
    assert _statuses(registries, "shenzhen", _mirror_units(mirror, 0, 9)) == {HoldingStatus.ACTIVE}


def test_a_refusal_after_part_of_a_use_was_done_ends_it_failed_not_pending(
    quiet_gateway: LiveGateway, registries: LinkedRegistries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone retires the mirror at Shenzhen between the gateway's checks and its own
    retirement there, after the origin was retired for the use: the origin's retirement
    cannot be undone. The use ends failed, named as a double use, once; never retried."""
    mirror = _bridge_to_shenzhen(quiet_gateway, "to-retire", 50)
    units = _mirror_units(mirror, 0, 9)
    store = registries.emulators["shenzhen"].store
    original = store.retire

    def retired_elsewhere_first(operation_id: str, account: str, *args: Any, **kwargs: Any) -> Any:
        if not operation_id.startswith("elsewhere"):
            original("elsewhere-4", account, *args, **kwargs)
        return original(operation_id, account, *args, **kwargs)

    monkeypatch.setattr(store, "retire", retired_elsewhere_first)
    request = _retire_request("retire-raced", units)
    with logged_events() as logs:
        message = _refused(quiet_gateway, request)
        monkeypatch.undo()
        assert "double use" in message and "shenzhen" in message and "verra" in message
        assert _use_states(quiet_gateway)["retire-raced"] == "failed"
        read = _get_use(quiet_gateway, _use_name(quiet_gateway, "retire-raced"))
        assert read.state == model_pb2.USE_STATE_FAILED
        assert message == f"the retirement is refused: {read.refusal_reason}"
        assert "needs an operator" in read.refusal_reason
        assert _refused(quiet_gateway, request) == message
        assert quiet_gateway.server.bridge.resume_uses() == 0
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["use_failed"]
    # The ledger says what the use did: the origin retired at Verra, the mirror released.
    origin = BlockId(Program.VCS, "", START, START + 9)
    assert _statuses(registries, "verra", origin) == {HoldingStatus.RETIRED}
    with unit_of_work(quiet_gateway.server.bridge.sessions) as session:
        assert {r.status for r in ledger.origin_rows(session, origin)} == {HoldingStatus.RETIRED}
        assert {r.status for r in ledger.live_at(session, "shenzhen", "buyer", units)} == {
            HoldingStatus.ACTIVE
        }


# ------------------------------------------------------------------ reading uses back


def _get_use(gateway: LiveGateway, name: str) -> model_pb2.UnitUse:
    use: model_pb2.UnitUse = gateway.stub.GetUse(gateway_pb2.GetUseRequest(name=name), timeout=30)
    return use


def _use_name(gateway: LiveGateway, request_id: str) -> str:
    with unit_of_work(gateway.server.bridge.sessions) as session:
        use_id = session.execute(
            sa.select(UnitUseRecord.id).where(UnitUseRecord.request_id == request_id)
        ).scalar_one()
    return f"uses/{use_id}"


def _refusal_code(invoke: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        invoke()
    return caught.value.code(), caught.value.details() or ""


def test_a_completed_use_reads_back_as_retire_answered_it(live_gateway: LiveGateway) -> None:
    use = live_gateway.stub.Retire(
        gateway_pb2.RetireRequest(
            request_id="retire-to-read",
            account=SELLER,
            units=[_selector("VCS", "", START + 200, START + 209)],
            beneficiary="Acme Ltd",
            claim_text="2025 flights",
        ),
        timeout=30,
    )
    read = _get_use(live_gateway, use.name)
    assert read == use
    assert read.state == model_pb2.USE_STATE_COMPLETED and read.refusal_reason == ""
    assert (read.kind, read.beneficiary, read.claim_text) == (
        "retirement",
        "Acme Ltd",
        "2025 flights",
    )


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("transfers/abc", grpc.StatusCode.INVALID_ARGUMENT, "name: must be uses/{use_id}"),
        ("uses/", grpc.StatusCode.INVALID_ARGUMENT, "name: must be uses/{use_id}"),
        ("uses/a\nb", grpc.StatusCode.INVALID_ARGUMENT, "name: must be uses/{use_id}"),
        ("uses/" + "0" * 32, grpc.StatusCode.NOT_FOUND, "uses/" + "0" * 32),
    ],
    ids=["other-collection", "no-id", "control-character", "unknown"],
)
def test_a_use_name_that_is_malformed_or_unknown_is_refused_by_name(
    live_gateway: LiveGateway, name: str, code: grpc.StatusCode, words: str
) -> None:
    got, details = _refusal_code(lambda: _get_use(live_gateway, name))
    assert got == code and words in details


def test_a_use_refused_as_a_double_use_reads_back_rejected_with_why(
    quiet_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    """Retire answers a refused use with FAILED_PRECONDITION only; GetUse shows it as the
    gateway keeps it: rejected, the units it would have taken, and the same reason."""
    mirror = _bridge_to_shenzhen(quiet_gateway, "to-retire", 50)
    registries.ports["verra"].retire(
        RetireRequest(
            "elsewhere-5",
            venue_account("hkmo"),
            BlockId(Program.VCS, "", START, START + 9),
            "Someone else",
            "",
        )
    )
    units = _mirror_units(mirror, 0, 9)
    message = _refused(quiet_gateway, _retire_request("retire-twice", units))
    # The caller learns its name from the listing of its refused uses.
    rejected = quiet_gateway.stub.ListUses(
        gateway_pb2.ListUsesRequest(holder=BUYER, state=model_pb2.USE_STATE_REJECTED), timeout=30
    )
    assert [u.name for u in rejected.uses] == [_use_name(quiet_gateway, "retire-twice")]
    read = _get_use(quiet_gateway, rejected.uses[0].name)
    assert read == rejected.uses[0]
    assert read.state == model_pb2.USE_STATE_REJECTED
    assert "double use" in read.refusal_reason and "verra" in read.refusal_reason
    assert message == f"the retirement is refused: {read.refusal_reason}"
    assert [(b.id.serial_series, b.id.serial_start, b.id.serial_end) for b in read.blocks] == [
        (units.serial_series, units.serial_start, units.serial_end)
    ]
    assert read.beneficiary == "Acme Ltd" and read.request_id == "retire-twice"


# ------------------------------------------------------------------ listing uses

STEEL = pilot_entity("steel-uses", "steel", 2023, 9_000_000)
STEEL_SZ = model_pb2.AccountRef(registry="shenzhen", account=STEEL.shenzhen_account)


@contextlib.contextmanager
def pilot_gateway(database_url: str) -> Iterator[LiveGateway]:
    """A gateway with Verra units at the Hong Kong venue and ``STEEL``'s Shenzhen
    allowances, learnt from the registries at start-up, and ``STEEL`` recorded."""
    with linked_registries() as registries:
        registries.seed_venue()
        registries.ports["shenzhen"].issue(
            IssueRequest("seed-steel-sza", STEEL.shenzhen_account, STEEL.sza)
        )
        with running_gateway(database_url, registries) as gateway:
            record_entity(gateway.stub, STEEL)
            yield gateway


def surrender_request(request_id: str, first: int, last: int) -> gateway_pb2.SurrenderRequest:
    """``STEEL``'s allowances ``first`` to ``last`` (from 0), for its final pilot year."""
    sza = STEEL.sza.id
    return gateway_pb2.SurrenderRequest(
        request_id=request_id,
        account=STEEL_SZ,
        units=[_selector(sza.program.value, "", sza.serial_start + first, sza.serial_start + last)],
        entity_id=STEEL.entity_id,
        compliance_year=STEEL.final_year,
        jurisdiction="shenzhen",
    )


def _venue_retirement(request_id: str, first: int, last: int) -> gateway_pb2.RetireRequest:
    return gateway_pb2.RetireRequest(
        request_id=request_id,
        account=SELLER,
        units=[_selector("VCS", "", START + first, START + last)],
        beneficiary="Acme Ltd",
    )


@pytest.fixture
def five_uses(database_url: str) -> Iterator[tuple[LiveGateway, list[str]]]:
    """Three retirements at the Hong Kong venue and two surrenders of allowances at
    Shenzhen, interleaved; their names in the order they were made."""
    with pilot_gateway(database_url) as gateway:
        names = []
        for i in range(5):
            if i % 2 == 0:
                use = gateway.stub.Retire(
                    _venue_retirement(f"r-{i}", 10 * i, 10 * i + 9), timeout=60
                )
            else:
                use = gateway.stub.Surrender(
                    surrender_request(f"s-{i}", 10 * i, 10 * i + 9), timeout=60
                )
            assert use.state == model_pb2.USE_STATE_COMPLETED
            names.append(use.name)
        yield gateway, names


def _list(gateway: LiveGateway, **fields: Any) -> gateway_pb2.ListUsesResponse:
    reply: gateway_pb2.ListUsesResponse = gateway.stub.ListUses(
        gateway_pb2.ListUsesRequest(**fields), timeout=30
    )
    return reply


def test_uses_are_listed_oldest_first_a_page_at_a_time(
    five_uses: tuple[LiveGateway, list[str]],
) -> None:
    gateway, names = five_uses
    first = _list(gateway, page_size=3)
    assert [u.name for u in first.uses] == names[:3] and first.next_page_token
    second = _list(gateway, page_size=3, page_token=first.next_page_token)
    assert [u.name for u in second.uses] == names[3:] and second.next_page_token == ""
    # Each listed use is the resource GetUse reads.
    for use in [*first.uses, *second.uses]:
        assert _get_use(gateway, use.name) == use
    # A use made after the first page does not shift the pages still to read.
    gateway.stub.Retire(_venue_retirement("r-late", 100, 109), timeout=60)
    again = _list(gateway, page_size=3, page_token=first.next_page_token)
    assert [u.name for u in again.uses] == [*names[3:], again.uses[-1].name]
    assert again.uses[-1].request_id == "r-late"


def test_uses_are_filtered_by_kind_holder_and_state(
    five_uses: tuple[LiveGateway, list[str]],
) -> None:
    gateway, names = five_uses

    def listed(**fields: Any) -> list[str]:
        return [u.name for u in _list(gateway, **fields).uses]

    assert listed(kind="surrender") == [names[1], names[3]]
    assert listed(kind="retirement") == [names[0], names[2], names[4]]
    assert listed(holder=SELLER) == [names[0], names[2], names[4]]
    assert listed(holder=model_pb2.AccountRef(registry="shenzhen")) == [names[1], names[3]]
    assert listed(holder=model_pb2.AccountRef(registry="shenzhen", account="sz-other")) == []
    assert listed(kind="retirement", holder=STEEL_SZ) == []
    assert listed(state=model_pb2.USE_STATE_COMPLETED) == names
    assert listed(state=model_pb2.USE_STATE_PENDING) == []
    # Filtered pages go on as unfiltered ones do.
    page = _list(gateway, kind="retirement", page_size=2)
    assert [u.name for u in page.uses] == [names[0], names[2]]
    rest = _list(gateway, kind="retirement", page_size=2, page_token=page.next_page_token)
    assert [u.name for u in rest.uses] == [names[4]] and rest.next_page_token == ""
    surrender = _list(gateway, kind="surrender").uses[0]
    assert (surrender.entity_id, surrender.compliance_year, surrender.jurisdiction) == (
        STEEL.entity_id,
        STEEL.final_year,
        "shenzhen",
    )


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"page_token": "not-a-token"}, "page_token: is not a token this server issued"),
        ({"kind": "retire"}, "kind: must be retirement or surrender"),
        ({"state": 9}, "state: unknown use state 9"),
        ({"page_size": -1}, "page_size: must not be negative"),
        ({"holder": model_pb2.AccountRef(account="cn-steel")}, "holder.registry: is required"),
        ({"holder": model_pb2.AccountRef(registry="vera")}, "holder.registry: unknown registry"),
    ],
    ids=["token", "kind", "state", "page-size", "holder-without-registry", "unknown-registry"],
)
def test_a_bad_listing_request_is_refused_by_its_field(
    live_gateway: LiveGateway, fields: dict[str, Any], words: str
) -> None:
    code, details = _refusal_code(lambda: _list(live_gateway, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details


def test_a_page_token_is_refused_when_the_filters_change_between_pages(
    five_uses: tuple[LiveGateway, list[str]],
) -> None:
    gateway, _ = five_uses
    token = _list(gateway, kind="retirement", page_size=1).next_page_token
    code, details = _refusal_code(
        lambda: _list(gateway, kind="surrender", page_size=1, page_token=token)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token: does not belong to this listing" in details
