"""Conversions between the API's messages and domain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from adapters._pb.carbonlink.v1 import model_pb2
from gateway import convert
from registry_bridge.errors import InvalidRequest
from registry_bridge.model import BlockId, Program, UnitBlock
from registry_bridge.transfers import (
    AccountRef,
    Transfer,
    TransferInstruction,
    TransferState,
    TransferStep,
    UnitUse,
    UseRequest,
    UseState,
)
from tests.imports import SQL_STACK, loaded, modules_loaded_by

# Before and after the epoch, with and without microseconds, UTC, another offset, naive
# (taken as UTC, as protobuf's own conversion takes it).
_TIMES = [
    datetime(2026, 11, 27, 12, 39, 2, 123456, tzinfo=UTC),
    datetime(2026, 11, 27, 20, 39, 2, 999999, tzinfo=timezone(timedelta(hours=8))),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 2, 29, 0, 0, 0, 1),
]


def _protobuf_time(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _transfer(times: list[datetime]) -> Transfer:
    block = BlockId(Program.VCS, "VCS-1", 1, 10)
    return Transfer(
        transfer_id="t-1",
        request_id="r-1",
        instruction=TransferInstruction(
            AccountRef("verra", "seller"), AccountRef("shenzhen", "buyer"), (block,)
        ),
        state=TransferState.COMPLETED,
        decision=None,
        history=tuple(TransferStep(TransferState.PROPOSED, at) for at in times),
        failure_reason="",
        credited_blocks=(),
        created_at=times[0],
        updated_at=times[-1],
    )


@pytest.mark.parametrize("at", _TIMES, ids=str)
def test_a_transfers_times_are_the_instants_protobuf_itself_would_give(at: datetime) -> None:
    other = datetime(2026, 1, 1, tzinfo=UTC)
    message = convert.transfer_to_pb(_transfer([at, other]))

    assert message.create_time == _protobuf_time(at)
    assert message.update_time == _protobuf_time(other)
    assert [step.time for step in message.history] == [_protobuf_time(at), _protobuf_time(other)]
    assert message.history[0].state == model_pb2.TRANSFER_STATE_PROPOSED


def _instruction(account: str) -> model_pb2.TransferInstruction:
    return model_pb2.TransferInstruction(
        source=model_pb2.AccountRef(registry="verra", account=account),
        destination=model_pb2.AccountRef(registry="shenzhen", account="buyer"),
        units=[
            model_pb2.UnitSelector(
                block=model_pb2.BlockId(
                    program="VCS", serial_series="VCS-1", serial_start=1, serial_end=10
                )
            )
        ],
    )


def _no_serials(registry: str, serial: str) -> UnitBlock:
    raise AssertionError("the instructions here name blocks, not serials")


@pytest.mark.parametrize("character", ["\x00", "\t", "\n", "\x1f"])
def test_an_account_with_a_control_character_is_refused_by_name(character: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        convert.instruction_from_pb(_instruction(f"sel{character}ler"), _no_serials)

    assert "instruction.source.account: contains control characters" in str(raised.value)


@pytest.mark.parametrize("account", ["seller", "賣方-01", "s\x7fller", "ﬀ seller"])
def test_an_account_of_printable_text_is_taken_as_given(account: str) -> None:
    instruction = convert.instruction_from_pb(_instruction(account), _no_serials)

    assert instruction.source == AccountRef("verra", account)


def _project(**fields: object) -> model_pb2.Project:
    project = model_pb2.Project(
        program="VCS",
        project_id="VCS-5955",
        display_name="Landfill gas capture",
        project_type="landfill_gas",
        methodology="ACM0001",
        country="BR",
        region="São Paulo",
        labels=["methane"],
        other_registrations=[
            model_pb2.ProjectRegistration(
                program="GS",
                project_id="GS-1",
                issued_period_start="2020-01-01",
                issued_period_end="2020-12-31",
            )
        ],
    )
    for path, value in fields.items():
        target: object = project
        *parents, name = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, list):
            del getattr(target, name)[:]
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)
    return project


def test_a_project_of_plain_text_is_taken_as_given() -> None:
    listing = convert.project_from_pb(_project())

    assert (listing.display_name, listing.region, listing.labels) == (
        "Landfill gas capture",
        "São Paulo",
        frozenset({"methane"}),
    )


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"display_name": "x" * 2001}, "project.display_name: is longer than 2000 characters"),
        ({"methodology": "ACM0001\nforged line"}, "project.methodology: contains control"),
        ({"region": "\x00"}, "project.region: contains control characters"),
        ({"project_type": "y" * 129}, "project.project_type: is longer than 128 characters"),
        ({"labels": ["methane", ""]}, "project.labels[1]: is required"),
    ],
    ids=["long name", "newline", "nul", "long type", "empty label"],
)
def test_a_projects_bad_text_is_refused_by_its_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        convert.project_from_pb(_project(**fields))

    assert named in str(raised.value)


def test_an_other_registration_without_its_project_is_refused_by_its_field() -> None:
    project = _project()
    project.other_registrations[0].project_id = ""

    with pytest.raises(InvalidRequest) as raised:
        convert.project_from_pb(project)

    assert "project.other_registrations[0].project_id: is required" in str(raised.value)


def _registration(n: int) -> model_pb2.ProjectRegistration:
    return model_pb2.ProjectRegistration(
        program="GS",
        project_id=f"GS-{n}",
        issued_period_start="2020-01-01",
        issued_period_end="2020-12-31",
    )


@pytest.mark.parametrize(
    ("fields", "path", "what"),
    [
        ({"labels": ["methane"] * 65}, "project.labels", "labels"),
        (
            {"other_registrations": [_registration(n) for n in range(65)]},
            "project.other_registrations",
            "registrations",
        ),
        (
            {"authorization.authorized_uses": ["ndc"] * 65},
            "project.authorization.authorized_uses",
            "uses",
        ),
    ],
    ids=["labels", "registrations", "authorized uses"],
)
def test_a_list_of_a_project_past_its_cap_is_refused_by_its_field(
    fields: dict[str, list[object]], path: str, what: str
) -> None:
    at_cap = {name: value[: convert.MAX_LIST_ENTRIES] for name, value in fields.items()}
    convert.project_from_pb(_project(**at_cap))

    with pytest.raises(InvalidRequest) as raised:
        convert.project_from_pb(_project(**fields))

    assert str(raised.value) == f"{path}: holds more than {convert.MAX_LIST_ENTRIES} {what}"


def test_past_the_cap_a_projects_bad_labels_are_not_each_named() -> None:
    with pytest.raises(InvalidRequest) as raised:
        convert.project_from_pb(_project(labels=["\x00"] * 100_000))

    assert [v.field for v in raised.value.violations] == ["project.labels"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (UseState.PENDING, model_pb2.USE_STATE_PENDING),
        (UseState.COMPLETED, model_pb2.USE_STATE_COMPLETED),
        (UseState.REJECTED, model_pb2.USE_STATE_REJECTED),
        (UseState.FAILED, model_pb2.USE_STATE_FAILED),
        (UseState.RESOLVED, model_pb2.USE_STATE_RESOLVED),
    ],
    ids=str,
)
def test_a_use_says_where_it_stands(state: UseState, expected: int) -> None:
    use = UnitUse(
        use_id="u-1",
        request_id="retire-1",
        request=UseRequest(
            "retirement",
            AccountRef("verra", "holder"),
            (BlockId(Program.VCS, "VCS-1", 1, 10),),
            beneficiary="Acme Ltd",
        ),
        state=state,
        blocks=(),
        decision=None,
        created_at=_TIMES[0],
    )
    assert convert.use_to_pb(use).state == expected


def test_converting_loads_neither_the_bridge_nor_the_database() -> None:
    # The CLI's client commands convert too: a script calling the gateway should not
    # start by loading the bridge, its rules gate and the database layer.
    modules = modules_loaded_by("import gateway.convert")
    heavy = (*SQL_STACK, "registry_bridge.bridge", "registry_bridge.ledger")
    assert loaded(modules, (*heavy, "registry_bridge.rules_gate", "compliance_rules")) == []
