"""The covered-entity and migration RPCs: protobuf in, domain calls, protobuf out.

Kept apart from ``servicer.py`` (whose methods delegate here) so that the migration
conversions stay in one place; like ``convert``, this is the only place these generated
types meet ``registry_bridge.migration``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from gateway import convert
from registry_bridge.covered_entities import ComplianceYear, ComplianceYearRef, CoveredEntity
from registry_bridge.db import unit_of_work
from registry_bridge.entities import (
    get_entity,
    upsert_entity,
    withdraw_entity_years,
    year_withdrawals,
)
from registry_bridge.errors import FieldViolation, InvalidRequest, NotFound, PermissionDenied
from registry_bridge.idempotency import answer_once
from registry_bridge.ledger import LedgerHolding
from registry_bridge.migration import (
    Abandonment,
    Migration,
    MigrationPlan,
    MigrationRequest,
    Migrations,
    StepAttempt,
)
from registry_bridge.model import has_control_characters
from registry_bridge.transfers import AccountRef, RuleViolation

_MAX_ITEMS = 100
"""Accounts or years in one UpsertCoveredEntity: far above any real entity, well below a
request that would hold a transaction open for long."""


MAX_ACKNOWLEDGED_WARNINGS = 64
"""Warning codes one migration request may acknowledge, a repeated code counted each
time: a plan warns of a handful of rules, and without a cap a request of millions of codes
had each one checked, and each bad one named in the refusal."""

_WARNING_CODE = re.compile(r"CL-[A-Z]+-\d{4}")


def _raise_if(problems: list[FieldViolation]) -> None:
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


def request_from_pb(message: gateway_pb2.PlanMigrationRequest, path: str = "") -> MigrationRequest:
    """A migration request; every missing field reported at once.

    Raises:
        InvalidRequest: A field is missing or too long, or more than
            ``MAX_ACKNOWLEDGED_WARNINGS`` warnings are acknowledged.
    """
    prefix = f"{path}." if path else ""
    problems: list[FieldViolation] = []
    for name in ("entity_id", "from_jurisdiction", "to_jurisdiction"):
        convert.check_text(problems, f"{prefix}{name}", getattr(message, name))
    if not message.first_year:
        problems.append(FieldViolation(f"{prefix}first_year", "is required"))
    if convert.check_count(
        problems,
        f"{prefix}acknowledged_warnings",
        message.acknowledged_warnings,
        "warning codes",
        MAX_ACKNOWLEDGED_WARNINGS,
    ):
        for i, code in enumerate(message.acknowledged_warnings):
            if not _WARNING_CODE.fullmatch(code):
                problems.append(
                    FieldViolation(f"{prefix}acknowledged_warnings[{i}]", "is not a warning code")
                )
    destination = None
    if message.HasField("destination_account"):
        destination = convert.account_from_pb(
            problems, f"{prefix}destination_account", message.destination_account
        )
    _raise_if(problems)
    return MigrationRequest(
        entity_id=message.entity_id,
        from_jurisdiction=message.from_jurisdiction,
        to_jurisdiction=message.to_jurisdiction,
        first_year=message.first_year,
        acknowledged=frozenset(message.acknowledged_warnings),
        destination=destination,
    )


def _account_pb(account: AccountRef | None) -> model_pb2.AccountRef | None:
    if account is None:
        return None
    return model_pb2.AccountRef(registry=account.registry, account=account.account)


def _holding_pb(holding: LedgerHolding) -> model_pb2.Holding:
    message = model_pb2.Holding(
        block=convert.unit_block_to_pb(holding.block),
        registry=holding.registry,
        account=holding.account,
        status=convert.HOLDING_STATUS[holding.status],
    )
    if holding.is_mirror:
        message.mirror_of.CopyFrom(convert.block_id_to_pb(holding.origin))
    return message


def _violation_pb(v: RuleViolation) -> model_pb2.Violation:
    return model_pb2.Violation(
        rule_id=v.rule_id,
        message=v.message,
        source=v.source,
        blocks=[convert.block_id_to_pb(b) for b in v.blocks],
        details=dict(v.details),
    )


def plan_to_pb(plan: MigrationPlan) -> gateway_pb2.MigrationPlan:
    """A migration plan (the dry run's answer)."""
    request = plan.request
    message = gateway_pb2.MigrationPlan(
        entity_id=request.entity_id,
        from_jurisdiction=request.from_jurisdiction,
        to_jurisdiction=request.to_jurisdiction,
        first_year=request.first_year,
        final_pilot_year=plan.final_pilot_year,
        dispositions=[
            gateway_pb2.HoldingDisposition(
                holding=_holding_pb(d.holding),
                action=d.action.value,
                destination=_account_pb(d.destination),
                reason=d.reason,
            )
            for d in plan.dispositions
        ],
        destination_account=_account_pb(plan.destination_account),
        blocking_violations=[_violation_pb(v) for v in plan.blocking],
        warnings=[_violation_pb(v) for v in plan.warnings],
        pack_version=plan.pack_version,
        executable=plan.executable,
    )
    o = plan.obligation
    if o is not None:
        message.verified_emissions = o.verified_emissions
        message.allowances_due = o.allowances_due
        message.allowances_surrendered = o.allowances_surrendered
        message.offsets_surrendered = o.offsets_surrendered
        message.units_surrendered = o.units_surrendered
        message.shortfall = o.shortfall
    return message


def migration_to_pb(migration: Migration) -> gateway_pb2.Migration:
    """A migration resource."""
    return gateway_pb2.Migration(
        name=f"migrations/{migration.migration_id}",
        request_id=migration.request_id,
        plan=plan_to_pb(migration.plan),
        state=migration.state,
        transfers=[f"transfers/{t}" for t in migration.transfers],
        steps=[
            gateway_pb2.MigrationStep(
                seq=s.seq,
                kind=s.kind,
                state=s.state,
                description=s.description,
                operation=s.operation,
                transfer=f"transfers/{s.transfer_id}" if s.transfer_id else "",
                error=s.error,
                attempts=[_attempt_to_pb(a) for a in s.attempts],
            )
            for s in migration.steps
        ],
        failure_reason=migration.failure_reason,
        abandonment=_abandonment_pb(migration.abandonment),
    )


def _abandonment_pb(abandonment: Abandonment | None) -> gateway_pb2.MigrationAbandonment | None:
    if abandonment is None:
        return None
    return gateway_pb2.MigrationAbandonment(
        request_id=abandonment.request_id,
        abandoned_by=abandonment.caller,
        reason=abandonment.reason,
        abandoned_at=convert.timestamp(abandonment.at),
        signature_key_id=abandonment.signature_key_id,
    )


def _attempt_to_pb(attempt: StepAttempt) -> gateway_pb2.MigrationStepAttempt:
    message = gateway_pb2.MigrationStepAttempt(
        attempt=attempt.attempt,
        state=attempt.state,
        operation=attempt.operation,
        units=[convert.block_id_to_pb(b) for b in attempt.units],
        left=[
            gateway_pb2.MigrationUnitsLeft(block=convert.block_id_to_pb(x.block), reason=x.reason)
            for x in attempt.left
        ],
        transfer=f"transfers/{attempt.transfer_id}" if attempt.transfer_id else "",
        error=attempt.error,
    )
    if attempt.started_at is not None:
        message.started_at.CopyFrom(convert.timestamp(attempt.started_at))
    if attempt.ended_at is not None:
        message.ended_at.CopyFrom(convert.timestamp(attempt.ended_at))
    return message


def migration_id(name: str) -> str:
    """The id of a ``migrations/{id}`` resource name.

    Raises:
        InvalidRequest: The name is not of that form.
    """
    prefix = "migrations/"
    if (
        not name.startswith(prefix)
        or not name[len(prefix) :]
        or len(name) > 200
        or has_control_characters(name)
    ):
        raise InvalidRequest.field("name", "must be migrations/{migration_id}")
    return name[len(prefix) :]


def entity_from_pb(message: gateway_pb2.CoveredEntity) -> CoveredEntity:
    """A covered entity from its message (checked again by the domain on upsert).

    Raises:
        InvalidRequest: Too many accounts, years or gases, an unknown or repeated
            registry.
    """
    problems: list[FieldViolation] = []
    if len(message.accounts) > _MAX_ITEMS or len(message.years) > _MAX_ITEMS:
        problems.append(FieldViolation("entity", f"at most {_MAX_ITEMS} accounts and years"))
    if message.withdrawn_years:
        # Output only: a client that sends back a reply must not think it withdrew them.
        problems.append(
            FieldViolation(
                "entity.withdrawn_years",
                "is the gateway's record of withdrawals, not an input: name the years to "
                "withdraw in withdraw_years",
            )
        )
    convert.check_count(problems, "entity.gases", message.gases, "gases", _MAX_ITEMS)
    # Past a cap, nothing more is read: one violation, not one per account, year or gas.
    _raise_if(problems)
    accounts: dict[str, str] = {}
    for i, a in enumerate(message.accounts):
        convert.check_registry(problems, f"entity.accounts[{i}].registry", a.registry)
        convert.check_text(problems, f"entity.accounts[{i}].account", a.account)
        if a.registry in accounts:
            problems.append(
                FieldViolation(f"entity.accounts[{i}].registry", "names a registry twice")
            )
        accounts[a.registry] = a.account
    _raise_if(problems)
    return CoveredEntity(
        entity_id=message.entity_id,
        display_name=message.display_name,
        sector=message.sector,
        gases=tuple(message.gases),
        accounts=accounts,
        years=tuple(
            ComplianceYear(
                y.jurisdiction, y.compliance_year, y.verified_emissions, y.allowances_due
            )
            for y in message.years
        ),
    )


def withdrawals_from_pb(
    messages: Sequence[gateway_pb2.ComplianceYearRef],
) -> tuple[ComplianceYearRef, ...]:
    """The years an UpsertCoveredEntity withdraws (checked again by the domain).

    Raises:
        InvalidRequest: More than ``_MAX_ITEMS`` of them.
    """
    problems: list[FieldViolation] = []
    convert.check_count(problems, "withdraw_years", messages, "years", _MAX_ITEMS)
    _raise_if(problems)
    return tuple(ComplianceYearRef(m.jurisdiction, m.compliance_year) for m in messages)


# ----------------------------------------------------------------------------- handlers


def plan_migration(
    migrations: Migrations, request: gateway_pb2.PlanMigrationRequest
) -> gateway_pb2.MigrationPlan:
    """PlanMigration: the dry run."""
    return plan_to_pb(migrations.plan(request_from_pb(request)))


def execute_migration(
    migrations: Migrations, request: gateway_pb2.ExecuteMigrationRequest, caller: str
) -> gateway_pb2.Migration:
    """ExecuteMigration: start, or resume, the migration of ``caller``'s request id."""
    convert.request_id(request.request_id)
    if not request.HasField("plan"):
        raise InvalidRequest.field("plan", "is required")
    return migration_to_pb(
        migrations.execute(request.request_id, request_from_pb(request.plan, "plan"), caller=caller)
    )


def get_migration(
    migrations: Migrations, request: gateway_pb2.GetMigrationRequest
) -> gateway_pb2.Migration:
    """GetMigration."""
    return migration_to_pb(migrations.get(migration_id(request.name)))


def abandon_migration(
    migrations: Migrations,
    request: gateway_pb2.AbandonMigrationRequest,
    caller: str,
    may_read: Callable[[str], bool],
    may_act_for: Callable[[str], bool],
) -> gateway_pb2.Migration:
    """AbandonMigration: give a failed migration up as ``caller``, if ``may_act_for`` its
    entity; a migration the caller may not read (``may_read``) does not exist to it.

    Raises:
        InvalidRequest: The request id, name or reason is missing or malformed.
        NotFound: No such migration, or one the caller may not read.
        PermissionDenied: The caller reads the migration but may not decide for its entity.
    """
    request_id = convert.request_id(request.request_id)
    problems: list[FieldViolation] = []
    convert.check_text(problems, "reason", request.reason, limit=convert.MAX_TEXT_LENGTH)
    if not problems and not request.reason.strip():
        problems.append(FieldViolation("reason", "is required: say why it is given up"))
    _raise_if(problems)
    wanted = migration_id(request.name)
    entity_id = migrations.get(wanted).plan.request.entity_id
    if not may_read(entity_id):
        # As for a migration that does not exist: a name tells a stranger nothing.
        raise NotFound(request.name)
    if not may_act_for(entity_id):
        raise PermissionDenied(
            f"name: the caller's token does not name entity {entity_id!r}, whose migration "
            f"{request.name} is"
        )
    return migration_to_pb(migrations.abandon(wanted, request_id, request.reason, caller=caller))


def upsert_covered_entity(
    migrations: Migrations,
    request: gateway_pb2.UpsertCoveredEntityRequest,
    caller: str,
    maintainer: frozenset[str] | None,
) -> gateway_pb2.CoveredEntity:
    """UpsertCoveredEntity: record the entity once per request id of ``caller``, within
    what the registries of ``maintainer`` maintain (anything, when None); answer with its
    record."""
    convert.request_id(request.request_id)
    withdraw = withdrawals_from_pb(request.withdraw_years)
    # With years to withdraw, an entity that names only its id asks for nothing else:
    # the party withdrawing a year need not know, nor restate, the rest of the record.
    only_withdraw = bool(withdraw) and request.entity == gateway_pb2.CoveredEntity(
        entity_id=request.entity.entity_id
    )
    entity = None if only_withdraw else entity_from_pb(request.entity)
    entity_id = request.entity.entity_id
    body = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
    sessions = migrations.sessions

    def record() -> bytes:
        with unit_of_work(sessions) as session:
            if entity is None:
                withdraw_entity_years(
                    session,
                    entity_id,
                    withdraw,
                    migrations.now(),
                    maintainer,
                    by=caller,
                    request_id=request.request_id,
                )
            else:
                upsert_entity(
                    session,
                    entity,
                    migrations.now(),
                    maintainer,
                    withdraw,
                    by=caller,
                    request_id=request.request_id,
                )
        with unit_of_work(sessions) as session:
            reply = convert.entity_to_pb(
                get_entity(session, entity_id), year_withdrawals(session, entity_id)
            )
        return bytes(reply.SerializeToString(deterministic=True))

    answer = answer_once(
        sessions, "UpsertCoveredEntity", request.request_id, body, record, caller=caller
    )
    return gateway_pb2.CoveredEntity.FromString(answer)
