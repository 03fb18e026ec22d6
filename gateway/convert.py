"""Conversions between generated protobuf messages and domain objects.

Generated types stop here: the servicer converts each request into domain values on the
way in and each domain result into a message on the way out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence, Sized
from datetime import UTC, date, datetime
from decimal import Decimal

from google.protobuf import timestamp_pb2

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serial_errors import UnknownRegistryError, unknown_registry_reason
from adapters.serials import REGISTRY_IDS
from gateway.catalog import RegistryInfo
from registry_bridge.covered_entities import ComplianceYear, CoveredEntity, YearWithdrawal
from registry_bridge.errors import FieldViolation, InvalidRequest
from registry_bridge.listing import (
    ListingOutcome,
    OtherRegistration,
    ProjectListing,
    RecordedListing,
)
from registry_bridge.model import (
    Authorization,
    BlockId,
    CorrespondingAdjustment,
    HoldingStatus,
    Program,
    UnitBlock,
    UnitKind,
    has_control_characters,
)
from registry_bridge.transfers import (
    INTENDED_USES,
    AccountRef,
    RulesDecision,
    Settlement,
    Transfer,
    TransferInstruction,
    TransferState,
    UnitUse,
    UseLegState,
    UseResolutionAction,
    UseState,
    compliance_year_problem,
)

_UNIT_KIND = {
    UnitKind.ALLOWANCE: model_pb2.UNIT_KIND_ALLOWANCE,
    UnitKind.OFFSET_CREDIT: model_pb2.UNIT_KIND_OFFSET_CREDIT,
}
_CORRESPONDING_ADJUSTMENT = {
    CorrespondingAdjustment.NOT_APPLICABLE: model_pb2.CORRESPONDING_ADJUSTMENT_NOT_APPLICABLE,
    CorrespondingAdjustment.PENDING: model_pb2.CORRESPONDING_ADJUSTMENT_PENDING,
    CorrespondingAdjustment.APPLIED: model_pb2.CORRESPONDING_ADJUSTMENT_APPLIED,
}
HOLDING_STATUS = {
    HoldingStatus.ACTIVE: model_pb2.HOLDING_STATUS_ACTIVE,
    HoldingStatus.LOCKED: model_pb2.HOLDING_STATUS_LOCKED,
    HoldingStatus.BRIDGED: model_pb2.HOLDING_STATUS_BRIDGED,
    HoldingStatus.RETIRED: model_pb2.HOLDING_STATUS_RETIRED,
    HoldingStatus.CANCELLED: model_pb2.HOLDING_STATUS_CANCELLED,
    HoldingStatus.SURRENDERED: model_pb2.HOLDING_STATUS_SURRENDERED,
    HoldingStatus.EXPORTED: model_pb2.HOLDING_STATUS_EXPORTED,
}


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


def block_id_to_pb(block_id: BlockId) -> model_pb2.BlockId:
    """A canonical block identity."""
    return model_pb2.BlockId(
        program=block_id.program.value,
        serial_series=block_id.serial_series,
        serial_start=block_id.serial_start,
        serial_end=block_id.serial_end,
    )


def unit_block_to_pb(block: UnitBlock, native_serial: str = "") -> model_pb2.UnitBlock:
    """A canonical unit block, with its serial in the originating registry's format."""
    message = model_pb2.UnitBlock(
        id=block_id_to_pb(block.id),
        quantity=block.quantity,
        unit_kind=_UNIT_KIND[block.unit_kind],
        project_id=block.project_id,
        country=block.country,
        region=block.region,
        project_type=block.project_type,
        methodology=block.methodology,
        vintage_start=block.vintage_start.isoformat(),
        vintage_end=block.vintage_end.isoformat(),
        gas=block.gas,
        gwp_basis=block.gwp_basis,
        issuance_id=block.issuance_id,
        corresponding_adjustment=_CORRESPONDING_ADJUSTMENT[block.corresponding_adjustment],
        labels=sorted(block.labels),
        native_serial=native_serial,
    )
    if block.authorization is not None:
        message.authorization.CopyFrom(
            model_pb2.Authorization(
                letter_id=block.authorization.letter_id,
                host_country=block.authorization.host_country,
                authorized_uses=sorted(block.authorization.authorized_uses),
                issued_on=block.authorization.issued_on.isoformat(),
            )
        )
    return message


# ----------------------------------------------------------------------------- transfers

_TRANSFER_STATE = {
    TransferState.PROPOSED: model_pb2.TRANSFER_STATE_PROPOSED,
    TransferState.CHECKED: model_pb2.TRANSFER_STATE_CHECKED,
    TransferState.SOURCE_LOCKED: model_pb2.TRANSFER_STATE_SOURCE_LOCKED,
    TransferState.DESTINATION_CREDITED: model_pb2.TRANSFER_STATE_DESTINATION_CREDITED,
    TransferState.SOURCE_FINALIZED: model_pb2.TRANSFER_STATE_SOURCE_FINALIZED,
    TransferState.COMPLETED: model_pb2.TRANSFER_STATE_COMPLETED,
    TransferState.REJECTED: model_pb2.TRANSFER_STATE_REJECTED,
    TransferState.ROLLED_BACK: model_pb2.TRANSFER_STATE_ROLLED_BACK,
}
TRANSFER_STATE_FROM_PB = {v: k for k, v in _TRANSFER_STATE.items()}

MAX_ID_LENGTH = 128
MAX_UNITS_PER_REQUEST = 1000
MAX_TEXT_LENGTH = 2000
MAX_PROGRAM_LENGTH = 16
"""A crediting program's name at most, as the ledger and the project listings store it."""
MAX_LIST_ENTRIES = 64
"""Entries of a request's list field at most (a project's labels, registrations under other
programs and authorized uses, a reconciliation's registries): far above any real request,
and a bound on the work one request asks for, and on its refusal, which names each bad
entry."""
_CURRENCIES = frozenset({"HKD", "CNY", "RMB", "MOP", "USD", "EUR"})
_GEC_STATUSES = frozenset({"", "none", "frozen", "cancelled", "active", "traded"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,2})?")
"""A settlement amount as the venues book it: no exponent (``1E+3`` reached the venue and
the transfer's record so), no sign, nothing below the currencies' minor unit."""


def _timestamp_parts(value: datetime) -> tuple[int, int]:
    """Seconds and nanoseconds since the epoch (a naive time is taken as UTC).

    Computed here rather than by ``Timestamp.FromDatetime``, which goes through a time
    tuple and ``calendar.timegm``: a batch reply carries eight times per transfer, and
    that path was about a fifth of building the reply.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    return since.days * 86_400 + since.seconds, since.microseconds * 1_000


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A UTC timestamp as a protobuf Timestamp."""
    seconds, nanos = _timestamp_parts(value)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def check_text(
    problems: list[FieldViolation],
    path: str,
    value: str,
    *,
    required: bool = True,
    limit: int = MAX_ID_LENGTH,
) -> str:
    """``value``, with what is wrong with it recorded in ``problems`` under ``path``:
    missing (when ``required``), longer than ``limit``, or holding control characters."""
    if required and not value:
        problems.append(FieldViolation(path, "is required"))
    elif len(value) > limit:
        problems.append(FieldViolation(path, f"is longer than {limit} characters"))
    elif has_control_characters(value):
        problems.append(FieldViolation(path, "contains control characters"))
    return value


def _check_country(problems: list[FieldViolation], path: str, value: str) -> None:
    """An optional ISO 3166-1 alpha-2 code, spelt as registries spell their units' host
    country (two upper-case letters, as every serial codec checks): another spelling of
    one country would never match its units' or its authorization's."""
    if value and not (len(value) == 2 and value.isascii() and value.isalpha() and value.isupper()):
        problems.append(
            FieldViolation(path, f"{value!r} is not an ISO 3166-1 alpha-2 code (e.g. BR)")
        )


def check_count(
    problems: list[FieldViolation],
    path: str,
    entries: Sized,
    what: str,
    limit: int = MAX_LIST_ENTRIES,
) -> bool:
    """Whether a list field holds at most ``limit`` entries; when not, that is recorded
    in ``problems`` under ``path`` (its entries are then left unread: one violation, not
    one per entry)."""
    if len(entries) > limit:
        problems.append(FieldViolation(path, f"holds more than {limit} {what}"))
        return False
    return True


def request_id(value: str, path: str = "request_id") -> str:
    """A mutating call's request id.

    Raises:
        InvalidRequest: It is missing, too long or holds control characters, naming ``path``.
    """
    if not value:
        raise InvalidRequest.field(path, "is required on every mutating call")
    problems: list[FieldViolation] = []
    check_text(problems, path, value)
    if problems:
        raise InvalidRequest.field(path, problems[0].description)
    return value


def optional_text(path: str, value: str) -> str:
    """An optional id-like field (a filter, a series): at most MAX_ID_LENGTH characters
    and no control characters.

    Raises:
        InvalidRequest: It is too long or holds control characters, naming ``path``.
    """
    problems: list[FieldViolation] = []
    check_text(problems, path, value, required=False)
    if problems:
        raise InvalidRequest.field(path, problems[0].description)
    return value


def check_registry(
    problems: list[FieldViolation], path: str, value: str, *, required: bool = True
) -> str:
    """``value``, a registry id, with what is wrong with it recorded in ``problems`` under
    ``path``: what :func:`check_text` finds, or no registry of that id (the description
    naming it and every registry that exists)."""
    recorded = len(problems)
    check_text(problems, path, value, required=required)
    if len(problems) == recorded and value and value not in REGISTRY_IDS:
        problems.append(FieldViolation(path, unknown_registry_reason(value, REGISTRY_IDS)))
    return value


def registry_id(path: str, value: str, *, required: bool = True) -> str:
    """A request's registry id (see :func:`check_registry`).

    Raises:
        InvalidRequest: It is missing (when ``required``), too long, holds control
            characters or names no registry, naming ``path`` (and the registries that
            exist).
    """
    problems: list[FieldViolation] = []
    check_registry(problems, path, value, required=required)
    if problems:
        raise InvalidRequest.field(path, problems[0].description)
    return value


def account_from_pb(
    problems: list[FieldViolation], path: str, message: model_pb2.AccountRef
) -> AccountRef:
    """A registry account, with field violations recorded in ``problems``."""
    return AccountRef(
        check_registry(problems, f"{path}.registry", message.registry),
        check_text(problems, f"{path}.account", message.account),
    )


def units_from_pb(
    problems: list[FieldViolation],
    path: str,
    registry: str,
    selectors: Sequence[model_pb2.UnitSelector],
    parse_serial: Callable[[str, str], UnitBlock],
) -> tuple[BlockId, ...]:
    """Canonical block ids of unit selectors: serials in ``registry``'s format, or block ids."""
    if not selectors:
        problems.append(FieldViolation(path, "must name at least one block"))
    if len(selectors) > MAX_UNITS_PER_REQUEST:
        problems.append(FieldViolation(path, f"names more than {MAX_UNITS_PER_REQUEST} blocks"))
        return ()
    blocks: list[BlockId] = []
    for i, selector in enumerate(selectors):
        which = selector.WhichOneof("selector")
        if which == "serial":
            try:
                blocks.append(parse_serial(registry, selector.serial).id)
            except UnknownRegistryError:
                # The account's registry field is refused for it, once; no serial of a
                # registry that does not exist can be read, nor is any at fault.
                pass
            except InvalidRequest as exc:
                problems.append(FieldViolation(f"{path}[{i}].serial", str(exc)))
        elif which == "block":
            block = selector.block
            try:
                blocks.append(
                    BlockId(
                        Program(block.program),
                        check_text(
                            problems,
                            f"{path}[{i}].block.serial_series",
                            block.serial_series,
                            required=False,
                        ),
                        block.serial_start,
                        block.serial_end,
                    )
                )
            except ValueError as exc:
                problems.append(FieldViolation(f"{path}[{i}].block", str(exc)))
        else:
            problems.append(FieldViolation(f"{path}[{i}]", "needs a serial or a block"))
    return tuple(blocks)


def instruction_from_pb(
    message: model_pb2.TransferInstruction,
    parse_serial: Callable[[str, str], UnitBlock],
    path: str = "instruction",
) -> TransferInstruction:
    """A transfer instruction.

    Raises:
        InvalidRequest: Every bad field, each with its path.
    """
    problems: list[FieldViolation] = []
    source = account_from_pb(problems, f"{path}.source", message.source)
    destination = account_from_pb(problems, f"{path}.destination", message.destination)
    units = units_from_pb(problems, f"{path}.units", source.registry, message.units, parse_serial)
    use = message.intended_use or "holding"
    if use not in INTENDED_USES:
        problems.append(
            FieldViolation(
                f"{path}.intended_use", f"must be one of {', '.join(sorted(INTENDED_USES))}"
            )
        )
    year_problem = compliance_year_problem(use, message.compliance_year)
    if year_problem is not None:
        problems.append(FieldViolation(f"{path}.compliance_year", year_problem))
    settlement = None
    if message.HasField("settlement"):
        currency = message.settlement.currency
        if currency not in _CURRENCIES:
            problems.append(
                FieldViolation(
                    f"{path}.settlement.currency",
                    f"must be one of {', '.join(sorted(_CURRENCIES))}",
                )
            )
        amount = Decimal(0)
        if _AMOUNT.fullmatch(message.settlement.amount):
            amount = Decimal(message.settlement.amount)
        else:
            problems.append(
                FieldViolation(
                    f"{path}.settlement.amount",
                    "must be a non-negative decimal in plain digits, at most 15 before the "
                    "point and 2 after (the currencies' minor unit), e.g. 1250.50",
                )
            )
        settlement = Settlement(
            currency,
            amount,
            check_text(
                problems,
                f"{path}.settlement.trade_reference",
                message.settlement.trade_reference,
                required=False,
            ),
        )
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)
    return TransferInstruction(
        source, destination, units, use, settlement, compliance_year=message.compliance_year
    )


def decision_to_pb(decision: RulesDecision) -> model_pb2.Decision:
    """A rules decision with every violation."""
    return model_pb2.Decision(
        allowed=decision.allowed,
        pack_versions=list(decision.pack_versions),
        deferred_rules=list(decision.deferred_rules),
        violations=[
            model_pb2.Violation(
                rule_id=v.rule_id,
                message=v.message,
                source=v.source,
                blocks=[block_id_to_pb(b) for b in v.blocks],
                details=dict(v.details),
            )
            for v in decision.violations
        ],
    )


def transfer_to_pb(transfer: Transfer) -> model_pb2.Transfer:
    """A transfer resource."""
    instruction = transfer.instruction
    message = model_pb2.Transfer(
        name=f"transfers/{transfer.transfer_id}",
        request_id=transfer.request_id,
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(
                registry=instruction.source.registry, account=instruction.source.account
            ),
            destination=model_pb2.AccountRef(
                registry=instruction.destination.registry,
                account=instruction.destination.account,
            ),
            units=[model_pb2.UnitSelector(block=block_id_to_pb(u)) for u in instruction.units],
            intended_use=instruction.intended_use,
            compliance_year=instruction.compliance_year,
        ),
        state=_TRANSFER_STATE[transfer.state],
        failure_reason=transfer.failure_reason,
        credited_blocks=[unit_block_to_pb(b) for b in transfer.credited_blocks],
        create_time=timestamp(transfer.created_at),
        update_time=timestamp(transfer.updated_at),
    )
    for step in transfer.history:
        # Filled in place: a step built apart and then passed in is copied.
        added = message.history.add(state=_TRANSFER_STATE[step.state], reason=step.reason)
        added.time.seconds, added.time.nanos = _timestamp_parts(step.at)
    if instruction.settlement is not None:
        message.instruction.settlement.CopyFrom(
            model_pb2.Settlement(
                currency=instruction.settlement.currency,
                amount=str(instruction.settlement.amount),
                trade_reference=instruction.settlement.trade_reference,
            )
        )
    if transfer.decision is not None:
        message.decision.CopyFrom(decision_to_pb(transfer.decision))
    return message


_USE_STATE = {
    UseState.PENDING: model_pb2.USE_STATE_PENDING,
    UseState.COMPLETED: model_pb2.USE_STATE_COMPLETED,
    UseState.REJECTED: model_pb2.USE_STATE_REJECTED,
    UseState.FAILED: model_pb2.USE_STATE_FAILED,
    UseState.RESOLVED: model_pb2.USE_STATE_RESOLVED,
}
USE_STATE_FROM_PB = {v: k for k, v in _USE_STATE.items()}
_USE_LEG_STATE = {
    UseLegState.OPEN: model_pb2.USE_LEG_STATE_OPEN,
    UseLegState.DONE: model_pb2.USE_LEG_STATE_DONE,
    UseLegState.REFUSED: model_pb2.USE_LEG_STATE_REFUSED,
    UseLegState.SETTLED: model_pb2.USE_LEG_STATE_SETTLED,
}
_USE_RESOLUTION_ACTION = {
    UseResolutionAction.RETRY: model_pb2.USE_RESOLUTION_ACTION_RETRY,
    UseResolutionAction.SETTLE_MANUALLY: model_pb2.USE_RESOLUTION_ACTION_SETTLE_MANUALLY,
}
USE_RESOLUTION_ACTION_FROM_PB = {v: k for k, v in _USE_RESOLUTION_ACTION.items()}


def use_to_pb(use: UnitUse) -> model_pb2.UnitUse:
    """A retirement or surrender resource."""
    request = use.request
    message = model_pb2.UnitUse(
        name=f"uses/{use.use_id}",
        request_id=use.request_id,
        kind=request.kind,
        account=model_pb2.AccountRef(
            registry=request.account.registry, account=request.account.account
        ),
        blocks=[unit_block_to_pb(b) for b in use.blocks],
        beneficiary=request.beneficiary,
        claim_text=request.claim_text,
        entity_id=request.entity_id,
        compliance_year=request.compliance_year,
        jurisdiction=request.jurisdiction,
        create_time=timestamp(use.created_at),
        state=_USE_STATE[use.state],
        refusal_reason=use.refusal,
        legs=[
            model_pb2.UseLeg(
                registry=leg.registry,
                account=leg.account,
                block=block_id_to_pb(leg.block),
                holder=leg.holder,
                state=_USE_LEG_STATE[leg.state],
                refusal_code=leg.refusal_code,
                refusal=leg.refusal,
            )
            for leg in use.legs
        ],
        resolutions=[
            model_pb2.UseResolution(
                request_id=r.request_id,
                action=_USE_RESOLUTION_ACTION[r.action],
                reason=r.reason,
                resolved_by=r.resolved_by,
                time=timestamp(r.at),
                outcome=_USE_STATE[r.outcome],
                refusal=r.refusal,
            )
            for r in use.resolutions
        ],
    )
    if use.decision is not None:
        message.decision.CopyFrom(decision_to_pb(use.decision))
    return message


# ------------------------------------------------------------------------------ listings


def iso_date(path: str, text: str) -> date:
    """An ISO 8601 date field.

    Raises:
        InvalidRequest: The text is not a date, naming the field.
    """
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest.field(path, f"{text!r} is not an ISO 8601 date (YYYY-MM-DD)") from exc


def project_from_pb(message: model_pb2.Project) -> ProjectListing:
    """A project as an issuer presents it for listing.

    Raises:
        InvalidRequest: Every bad field, each with its path.
    """
    problems: list[FieldViolation] = []
    check_text(problems, "project.program", message.program, limit=MAX_PROGRAM_LENGTH)
    check_text(problems, "project.project_id", message.project_id)
    # Stored with the listing and shown to whoever reads it: bounded, and no control
    # characters (a NUL cannot be stored on PostgreSQL; a newline forges lines in a log).
    for name in ("project_type", "methodology", "region", "gas"):
        check_text(problems, f"project.{name}", getattr(message, name), required=False)
    check_text(
        problems,
        "project.display_name",
        message.display_name,
        required=False,
        limit=MAX_TEXT_LENGTH,
    )
    if check_count(problems, "project.labels", message.labels, "labels"):
        for i, label in enumerate(message.labels):
            check_text(problems, f"project.labels[{i}]", label)
    if message.gec_status not in _GEC_STATUSES:
        problems.append(
            FieldViolation(
                "project.gec_status", f"must be one of {', '.join(sorted(_GEC_STATUSES - {''}))}"
            )
        )
    _check_country(problems, "project.country", message.country)

    def optional_date(path: str, text: str) -> date | None:
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            problems.append(FieldViolation(path, f"{text!r} is not an ISO 8601 date"))
            return None

    registrations = []
    others: Sequence[model_pb2.ProjectRegistration] = ()
    if check_count(
        problems, "project.other_registrations", message.other_registrations, "registrations"
    ):
        others = message.other_registrations
    for i, other in enumerate(others):
        start = optional_date(
            f"project.other_registrations[{i}].issued_period_start", other.issued_period_start
        )
        end = optional_date(
            f"project.other_registrations[{i}].issued_period_end", other.issued_period_end
        )
        if start is None or end is None:
            problems.append(
                FieldViolation(f"project.other_registrations[{i}]", "needs both period dates")
            )
            continue
        check_text(problems, f"project.other_registrations[{i}].program", other.program)
        check_text(problems, f"project.other_registrations[{i}].project_id", other.project_id)
        registrations.append(OtherRegistration(other.program, other.project_id, start, end))
    authorization = None
    if message.HasField("authorization"):
        issued = optional_date("project.authorization.issued_on", message.authorization.issued_on)
        check_text(
            problems,
            "project.authorization.letter_id",
            message.authorization.letter_id,
            required=False,
        )
        _check_country(
            problems, "project.authorization.host_country", message.authorization.host_country
        )
        uses = message.authorization.authorized_uses
        if check_count(problems, "project.authorization.authorized_uses", uses, "uses"):
            for i, use in enumerate(uses):
                check_text(problems, f"project.authorization.authorized_uses[{i}]", use)
        authorization = Authorization(
            letter_id=message.authorization.letter_id,
            host_country=message.authorization.host_country,
            authorized_uses=frozenset(message.authorization.authorized_uses),
            issued_on=issued or date.min,
        )
    listing = ProjectListing(
        program=message.program,
        project_id=message.project_id,
        display_name=message.display_name,
        project_type=message.project_type,
        methodology=message.methodology,
        country=message.country,
        region=message.region,
        start_date=optional_date("project.start_date", message.start_date),
        construction_start=optional_date("project.construction_start", message.construction_start),
        gec_status=message.gec_status,
        crediting_period_start=optional_date(
            "project.crediting_period_start", message.crediting_period_start
        ),
        crediting_period_end=optional_date(
            "project.crediting_period_end", message.crediting_period_end
        ),
        other_registrations=tuple(registrations),
        authorization=authorization,
        labels=frozenset(message.labels),
        gas=message.gas or "CO2",
    )
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)
    return listing


def project_to_pb(project: ProjectListing) -> model_pb2.Project:
    """A project's declared facts, as the issuer sent them (:func:`project_from_pb`)."""

    def day(value: date | None) -> str:
        return "" if value is None else value.isoformat()

    message = model_pb2.Project(
        program=project.program,
        project_id=project.project_id,
        display_name=project.display_name,
        project_type=project.project_type,
        methodology=project.methodology,
        country=project.country,
        region=project.region,
        start_date=day(project.start_date),
        crediting_period_start=day(project.crediting_period_start),
        crediting_period_end=day(project.crediting_period_end),
        other_registrations=[
            model_pb2.ProjectRegistration(
                program=r.program,
                project_id=r.project_id,
                issued_period_start=r.issued_period_start.isoformat(),
                issued_period_end=r.issued_period_end.isoformat(),
            )
            for r in project.other_registrations
        ],
        labels=sorted(project.labels),
        # The default project_from_pb gave an undeclared gas is given back as undeclared.
        gas="" if project.gas == "CO2" else project.gas,
        construction_start=day(project.construction_start),
        gec_status=project.gec_status,
    )
    auth = project.authorization
    if auth is not None:
        message.authorization.CopyFrom(
            model_pb2.Authorization(
                letter_id=auth.letter_id,
                host_country=auth.host_country,
                authorized_uses=sorted(auth.authorized_uses),
                # date.min stands for an undeclared date (project_from_pb).
                issued_on="" if auth.issued_on == date.min else auth.issued_on.isoformat(),
            )
        )
    return message


def recorded_listing_to_pb(listing: RecordedListing) -> gateway_pb2.Listing:
    """A listing read back (GetListing)."""
    answer = listing_to_pb(listing.outcome, f"listings/{listing.listing_id}", listing.binding)
    return gateway_pb2.Listing(
        name=answer.name,
        project=project_to_pb(listing.project),
        jurisdiction=listing.jurisdiction,
        as_of=listing.as_of.isoformat(),
        listed=answer.listed,
        eligibility=answer.eligibility,
        refusals=answer.refusals,
        pack_versions=listing.outcome.pack_versions,
        requested_by=listing.requested_by,
        create_time=timestamp(listing.created_at),
        binding=listing.binding,
    )


def listing_to_pb(
    outcome: ListingOutcome, name: str, binding: bool
) -> gateway_pb2.ListProjectResponse:
    """The answer to ListProject."""
    return gateway_pb2.ListProjectResponse(
        name=name,
        listed=outcome.listed,
        binding=binding,
        eligibility=[
            gateway_pb2.UseEligibility(
                use=e.use,
                decision=decision_to_pb(e.decision),
                conditions=[
                    gateway_pb2.ListingCondition(
                        rule_id=c.rule_id, message=c.message, source=c.source
                    )
                    for c in e.conditions
                ],
            )
            for e in outcome.eligibility
        ],
        refusals=[
            model_pb2.Violation(
                rule_id=v.rule_id,
                message=v.message,
                source=v.source,
                blocks=[block_id_to_pb(b) for b in v.blocks],
                details=dict(v.details),
            )
            for v in outcome.refusals
        ],
    )


def compliance_year_to_pb(year: ComplianceYear) -> gateway_pb2.ComplianceYear:
    """One compliance year's message."""
    return gateway_pb2.ComplianceYear(
        jurisdiction=year.jurisdiction,
        compliance_year=year.compliance_year,
        verified_emissions=year.verified_emissions,
        allowances_due=year.allowances_due,
    )


def entity_to_pb(
    entity: CoveredEntity, withdrawals: Sequence[YearWithdrawal] = ()
) -> gateway_pb2.CoveredEntity:
    """A covered entity resource, with every recorded year and every withdrawn one."""
    return gateway_pb2.CoveredEntity(
        entity_id=entity.entity_id,
        display_name=entity.display_name,
        sector=entity.sector,
        gases=list(entity.gases),
        accounts=[
            model_pb2.AccountRef(registry=r, account=a) for r, a in sorted(entity.accounts.items())
        ],
        years=[compliance_year_to_pb(y) for y in entity.years],
        withdrawn_years=[
            gateway_pb2.YearWithdrawal(
                year=compliance_year_to_pb(w.year),
                withdrawn_by=w.withdrawn_by,
                withdrawn_at=timestamp(w.withdrawn_at),
            )
            for w in withdrawals
        ],
    )
