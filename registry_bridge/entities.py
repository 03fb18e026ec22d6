"""Covered entities and their compliance years, stored in the ledger database.

Offsets an entity already surrendered are not stored twice: they are summed from the
surrenders the bridge recorded for that entity, jurisdiction and year, those still waiting
on a registry included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from compliance_rules import EntityYear, OffsetUse
from registry_bridge import ledger
from registry_bridge.block_json import block_id_from_dict
from registry_bridge.covered_entities import (
    MAX_ID_LENGTH,
    ComplianceYear,
    ComplianceYearRef,
    CoveredEntity,
    YearWithdrawal,
    not_its_year,
    validate_entity,
    validate_withdrawals,
)
from registry_bridge.db import read_only
from registry_bridge.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
)
from registry_bridge.idempotency import LOCAL_CALLER
from registry_bridge.model import has_control_characters
from registry_bridge.schema import (
    CoveredEntityAccountRecord,
    CoveredEntityRecord,
    EntityYearRecord,
    EntityYearWithdrawalRecord,
    MigrationRecord,
    UnitUseRecord,
)


def record_entity_year(
    session: Session,
    entity_id: str,
    jurisdiction: str,
    compliance_year: int,
    verified_emissions: int,
    allowances_due: int,
    covered_by_national_ets: bool = False,
) -> None:
    """Record (or correct) an entity's verified emissions and allowances due for a year.

    Raises:
        InvalidRequest: A figure is negative or the year is out of range.
    """
    if verified_emissions < 0:
        raise InvalidRequest.field("verified_emissions", "must not be negative")
    if allowances_due < 0:
        raise InvalidRequest.field("allowances_due", "must not be negative")
    if not 2000 <= compliance_year <= 2100:
        raise InvalidRequest.field("compliance_year", "must be between 2000 and 2100")
    session.merge(
        EntityYearRecord(
            entity_id=entity_id,
            jurisdiction=jurisdiction,
            compliance_year=compliance_year,
            verified_emissions=verified_emissions,
            allowances_due=allowances_due,
            covered_by_national_ets=covered_by_national_ets,
        )
    )


MIGRATION_ABANDONED = "abandoned"
"""A migration's final state once its failure was given up (``migration.ABANDONED``)."""

SPENDING_SURRENDER_STATES = ("pending", "completed", "failed", "resolved")
"""A surrender in one of these states may have spent units for its year: a pending one has
(its holder's leg may be done, only an origin registry still to answer), a failed one its
done legs', one an operator settled by hand (resolved) all of it.  A rejected one spent
none (nothing of it was done anywhere)."""


def _spending_surrenders(
    entity_id: str, year: tuple[str, int] | None = None
) -> tuple[sa.ColumnElement[bool], ...]:
    """The conditions that pick the entity's surrenders that may have spent units
    (:data:`SPENDING_SURRENDER_STATES`), for ``year`` (jurisdiction, compliance year) if
    given: a seek of ``ix_unit_uses_entity_year``."""
    keys = (
        ()
        if year is None
        else (
            UnitUseRecord.jurisdiction == year[0],
            UnitUseRecord.compliance_year == year[1],
        )
    )
    return (
        UnitUseRecord.entity_id == entity_id,
        *keys,
        UnitUseRecord.kind == "surrender",
        UnitUseRecord.state.in_(SPENDING_SURRENDER_STATES),
    )


def claimed_years(session: Session, entity_id: str) -> dict[str, frozenset[int]]:
    """Per jurisdiction, the compliance years the entity claimed there: it has a surrender
    for the year that may have spent units (:data:`SPENDING_SURRENDER_STATES`)."""
    claimed: dict[str, set[int]] = defaultdict(set)
    for jurisdiction, year in session.execute(
        sa.select(UnitUseRecord.jurisdiction, UnitUseRecord.compliance_year).where(
            *_spending_surrenders(entity_id)
        )
    ):
        claimed[str(jurisdiction)].add(int(year))
    return {jurisdiction: frozenset(years) for jurisdiction, years in claimed.items()}


class MigrationSplit(NamedTuple):
    """The migration whose split of an entity's years between two schemes is in force."""

    migration_id: str
    pilot: str
    national: str
    first_year: int
    """The national scheme covers this year and later; the pilot the years before."""
    claimed: Mapping[str, frozenset[int]] | None = None
    """None while the migration is not abandoned: ``first_year`` splits the years.  For an
    abandoned one, the years the entity claimed per scheme (:func:`claimed_years`), which
    decide the years from ``first_year`` on (``covered_entities.claimed_by_the_other``)."""

    def refuses(self, jurisdiction: str, year: int) -> bool:
        """Whether ``jurisdiction``'s ``year`` is not that scheme's under this split."""
        return not_its_year(
            jurisdiction, year, self.pilot, self.national, self.first_year, self.claimed
        )

    def why(self, jurisdiction: str, year: int) -> str:
        """Why :meth:`refuses` refuses ``jurisdiction``'s ``year`` (for a message)."""
        if self.claimed is None:
            return f"the entity moved from {self.pilot} to {self.national} from {self.first_year}"
        abandoned = f"migrations/{self.migration_id}, abandoned"
        if jurisdiction == self.pilot:
            return f"the entity surrendered in the {self.national} ETS for {year} ({abandoned})"
        if year < self.first_year:
            return f"{self.pilot} covers the entity until {self.first_year - 1} ({abandoned})"
        return f"the entity surrendered in {self.pilot} for {year} ({abandoned})"


def migration_splits(session: Session, entity_id: str) -> list[MigrationSplit]:
    """Per pilot the entity leaves, the migration that splits its years, oldest first.

    The one not abandoned (at most one per pilot), from the moment it is recorded,
    whatever its state, so no year slips to the wrong side while its steps run; its
    first year splits the years, as it always did.  While every one is abandoned, the
    newest of them, with the years the entity claimed in each scheme: a year from its
    first year on is then the scheme's that claimed it (the national ETS may have, while
    the migration stood), and a year neither claimed may go to either, so the entity can
    meet the obligations it keeps in the pilot and plan a move from a later year
    (``covered_entities.claimed_by_the_other`` says why, and what stays refused).
    """
    rows = session.execute(
        sa.select(
            MigrationRecord.id,
            MigrationRecord.from_jurisdiction,
            MigrationRecord.to_jurisdiction,
            MigrationRecord.first_year,
            MigrationRecord.state,
        )
        .where(MigrationRecord.entity_id == entity_id)
        # ix_migrations_entity_created: abandoned ones too, in this order.
        .order_by(MigrationRecord.created_at, MigrationRecord.id)
    ).all()
    # Per pilot: the split in force, its position in ``rows``, and whether its migration
    # is abandoned (then a newer one takes over).
    in_force: dict[str, tuple[int, MigrationSplit, bool]] = {}
    for position, (migration_id, pilot, national, first_year, state) in enumerate(rows):
        current = in_force.get(pilot)
        if current is None or current[2]:
            split = MigrationSplit(migration_id, pilot, national, first_year)
            in_force[pilot] = (position, split, state == MIGRATION_ABANDONED)
    splits = [
        (split, abandoned) for _, split, abandoned in sorted(in_force.values(), key=lambda c: c[0])
    ]
    if not any(abandoned for _, abandoned in splits):
        return [split for split, _ in splits]
    # Read only when a split needs them: every surrender of the entity's, read in full.
    claimed = claimed_years(session, entity_id)
    return [split._replace(claimed=claimed) if abandoned else split for split, abandoned in splits]


def _check_migrated_years(session: Session, entity: CoveredEntity) -> None:
    """A migrated (or migrating) entity's years stay on their side of its first year: a
    pilot year from then on, or a national year before it, would be a year that two
    schemes cover (the migration plan refuses the same, CL-MIGRATION-0007).  The split
    is the one surrenders are checked against (``migration_splits``), so under an
    abandoned migration a year from its first year on is refused only to the scheme that
    did not claim it: the pilot records a year the national ETS never claimed, as it
    takes surrenders for it."""
    problems = [
        FieldViolation(
            f"entity.years[{i}]",
            f"{year.jurisdiction} {year.compliance_year}: "
            f"{split.why(year.jurisdiction, year.compliance_year)}, so that year is not "
            f"{year.jurisdiction}'s",
        )
        for split in migration_splits(session, entity.entity_id)
        for i, year in enumerate(entity.years)
        if split.refuses(year.jurisdiction, year.compliance_year)
    ]
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


def _check_maintainer(
    session: Session,
    entity: CoveredEntity,
    registries: frozenset[str],
    withdraw: Sequence[ComplianceYearRef] = (),
) -> None:
    """Refuse a registry's record of what is not its own to record.

    A scheme's registry has its jurisdiction's id, and records only its own scheme's
    compliance years and its own accounts of entities already under it (a year in its
    jurisdiction or an account with it), or of an entity new to the gateway, which it
    then records under itself.  Moving an entity between schemes, as the national account
    a migration's units land in, is then the regulator's, or each registry's for its own
    side.  A year it may record is the one it may withdraw (``withdraw``): only its own
    scheme's.
    """
    if not registries:
        raise PermissionDenied(
            "the caller's token names no registry (claim 'registries'): it maintains no "
            "covered entity"
        )
    theirs = ", ".join(sorted(registries))
    for i, year in enumerate(entity.years):
        if year.jurisdiction not in registries:
            raise PermissionDenied(
                f"entity.years[{i}].jurisdiction: {year.jurisdiction!r} is not the "
                f"jurisdiction of the caller's registry ({theirs})"
            )
    for i, ref in enumerate(withdraw):
        if ref.jurisdiction not in registries:
            raise PermissionDenied(
                f"withdraw_years[{i}].jurisdiction: {ref.jurisdiction!r} is not the "
                f"jurisdiction of the caller's registry ({theirs})"
            )
    for i, registry in enumerate(entity.accounts):
        if registry not in registries:
            raise PermissionDenied(
                f"entity.accounts[{i}].registry: an account at {registry!r} is not the "
                f"caller's registry's ({theirs}) to record"
            )
    if session.get(CoveredEntityRecord, entity.entity_id) is None:
        if not entity.accounts and not entity.years:
            # Under no registry, its id would be taken and no registry could record it.
            raise PermissionDenied(
                f"entity.accounts: a registry records a new entity under itself: name its "
                f"account with the caller's registry ({theirs}) or a year of its jurisdiction"
            )
        return
    under = set(
        session.execute(
            sa.select(CoveredEntityAccountRecord.registry_id).where(
                CoveredEntityAccountRecord.entity_id == entity.entity_id
            )
        ).scalars()
    ) | set(
        session.execute(
            sa.select(EntityYearRecord.jurisdiction).where(
                EntityYearRecord.entity_id == entity.entity_id
            )
        ).scalars()
    )
    if not under & registries:
        raise PermissionDenied(
            f"entity.entity_id: {entity.entity_id!r} is recorded under "
            f"{', '.join(sorted(under)) or 'no registry'}, not the caller's registry ({theirs})"
        )


def upsert_entity(
    session: Session,
    entity: CoveredEntity,
    at: datetime,
    maintainer: frozenset[str] | None = None,
    withdraw: Sequence[ComplianceYearRef] = (),
    by: str = LOCAL_CALLER,
    request_id: str = "",
) -> None:
    """Record (or correct) a covered entity, its accounts and the years it gives, and
    withdraw the recorded years ``withdraw`` names.

    Accounts and years not given are left as they are: a correction names what it
    corrects, and a withdrawal the years it withdraws (see :func:`withdraw_entity_years`).
    The caller owns the transaction.

    Args:
        session: The caller's transaction.
        entity: The record.
        at: When it is recorded.
        maintainer: The registries a registry that records it stands for; None for a
            regulator (or a local import), who records any entity.
        withdraw: Recorded years of the entity to withdraw; none of ``entity.years``.
        by: The caller, kept with each withdrawal.
        request_id: The caller's request id, kept with each withdrawal.

    Raises:
        InvalidRequest: A field is missing or out of range (every problem listed), a
            year falls on the wrong side of the entity's migration, or a year is both
            recorded and withdrawn.
        PermissionDenied: A registry records or withdraws a year of another jurisdiction,
            records an account at another registry, or an entity under other registries
            only.
        NotFound: A year to withdraw is not recorded, or the entity is not.
        FailedPrecondition: The entity surrendered for a year to withdraw.
    """
    validate_entity(entity)
    _update(session, entity.entity_id, entity, withdraw, at, maintainer, by, request_id)


def withdraw_entity_years(
    session: Session,
    entity_id: str,
    withdraw: Sequence[ComplianceYearRef],
    at: datetime,
    maintainer: frozenset[str] | None = None,
    by: str = LOCAL_CALLER,
    request_id: str = "",
) -> None:
    """Withdraw recorded compliance years of an entity, its record otherwise left as is.

    A withdrawn year is deleted from the years recorded (so a migration plan, the rules
    gate and a surrender no longer see it) and kept, with its figures, who withdrew it
    and when, among the entity's withdrawals (:func:`year_withdrawals`).  Only a year
    nothing claims is withdrawn: a surrender for it that may have spent units
    (``SPENDING_SURRENDER_STATES``) keeps it.  Under the entity's row lock, which a
    surrender takes first too, so a surrender and the withdrawal of its year are decided
    one after the other: the surrender's rules check then finds no year recorded, or the
    withdrawal finds the surrender.  The caller owns the transaction.

    Raises:
        InvalidRequest: The entity id or a year to withdraw is malformed, or a year is
            named twice.
        PermissionDenied: A registry withdraws a year of another jurisdiction.
        NotFound: The entity or a year to withdraw is not recorded.
        FailedPrecondition: The entity surrendered for a year to withdraw.
    """
    if not entity_id or len(entity_id) > MAX_ID_LENGTH or has_control_characters(entity_id):
        raise InvalidRequest.field(
            "entity.entity_id", "is required (at most 128 characters, no control characters)"
        )
    if not withdraw:
        raise InvalidRequest.field("withdraw_years", "must name at least one year")
    _update(session, entity_id, None, withdraw, at, maintainer, by, request_id)


def _update(
    session: Session,
    entity_id: str,
    entity: CoveredEntity | None,
    withdraw: Sequence[ComplianceYearRef],
    at: datetime,
    maintainer: frozenset[str] | None,
    by: str,
    request_id: str,
) -> None:
    """Record ``entity`` (None: leave the record as it is) and withdraw ``withdraw``."""
    validate_withdrawals(withdraw, entity.years if entity is not None else ())
    # Locked before anything is checked, as a surrender and the recording of a migration
    # lock it: a migration recorded meanwhile is then seen by the check of the years, or
    # sees them; a surrender for a year to withdraw is seen, or sees the year withdrawn.
    record = session.get(CoveredEntityRecord, entity_id, with_for_update=True)
    if withdraw and record is None:
        raise NotFound(f"entities/{entity_id}")
    if maintainer is not None:
        _check_maintainer(
            session, entity or CoveredEntity(entity_id, "", "", (), {}), maintainer, withdraw
        )
    if entity is not None:
        _check_migrated_years(session, entity)
    withdrawn = _withdrawable(session, entity_id, withdraw)
    if entity is not None:
        session.merge(
            CoveredEntityRecord(
                entity_id=entity.entity_id,
                display_name=entity.display_name,
                sector=entity.sector,
                gases=json.dumps(sorted(set(entity.gases))),
                updated_at=at,
            )
        )
        session.flush()
        for registry, account in sorted(entity.accounts.items()):
            session.merge(
                CoveredEntityAccountRecord(
                    entity_id=entity.entity_id, registry_id=registry, account=account
                )
            )
        for year in entity.years:
            record_entity_year(
                session,
                entity.entity_id,
                year.jurisdiction,
                year.compliance_year,
                year.verified_emissions,
                year.allowances_due,
            )
    elif record is not None:
        record.updated_at = at
    for year_record in withdrawn:
        session.add(
            EntityYearWithdrawalRecord(
                entity_id=entity_id,
                jurisdiction=year_record.jurisdiction,
                compliance_year=year_record.compliance_year,
                verified_emissions=year_record.verified_emissions,
                allowances_due=year_record.allowances_due,
                covered_by_national_ets=year_record.covered_by_national_ets,
                withdrawn_by=by,
                request_id=request_id,
                withdrawn_at=at,
            )
        )
        session.delete(year_record)
    session.flush()


def _withdrawable(
    session: Session, entity_id: str, withdraw: Sequence[ComplianceYearRef]
) -> list[EntityYearRecord]:
    """The year records ``withdraw`` names, each recorded and claimed by no surrender.

    Raises:
        NotFound: A year is not recorded (the first such is named).
        FailedPrecondition: The entity surrendered for some of them (each named with its
            uses).
    """
    records: list[EntityYearRecord] = []
    for i, ref in enumerate(withdraw):
        found = session.get(EntityYearRecord, (entity_id, ref.jurisdiction, ref.compliance_year))
        if found is None:
            # As for the entity: a withdrawal is the delete of the year's record, and
            # what is not there is not found (AIP-135), whatever else the request does.
            raise NotFound(
                f"withdraw_years[{i}]: the {ref.jurisdiction} year {ref.compliance_year} "
                f"of entities/{entity_id}"
            )
        records.append(found)
    claims: list[tuple[int, ComplianceYearRef, list[tuple[str, str]]]] = []
    for i, ref in enumerate(withdraw):
        uses = [
            (str(use_id), str(state))
            for use_id, state in session.execute(
                sa.select(UnitUseRecord.id, UnitUseRecord.state)
                .where(*_spending_surrenders(entity_id, (ref.jurisdiction, ref.compliance_year)))
                .order_by(UnitUseRecord.created_at, UnitUseRecord.id)
            )
        ]
        if uses:
            claims.append((i, ref, uses))
    if claims:
        raise FailedPrecondition(
            "; ".join(
                f"withdraw_years[{i}]: entities/{entity_id} surrendered for {ref.jurisdiction} "
                f"{ref.compliance_year} ({', '.join(f'uses/{u}' for u, _ in uses)}), so the "
                "year stays recorded"
                for i, ref, uses in claims
            ),
            [
                PreconditionViolation(
                    "SURRENDERED",
                    f"uses/{use_id}",
                    f"withdraw_years[{i}]: a {state} surrender for {ref.jurisdiction} "
                    f"{ref.compliance_year}",
                )
                for i, ref, uses in claims
                for use_id, state in uses
            ],
        )
    return records


def year_withdrawals(session: Session, entity_id: str) -> tuple[YearWithdrawal, ...]:
    """Every year withdrawn from the entity's record, oldest first."""
    return tuple(
        YearWithdrawal(
            ComplianceYear(
                w.jurisdiction, w.compliance_year, w.verified_emissions, w.allowances_due
            ),
            w.withdrawn_by,
            w.withdrawn_at,
        )
        for w in session.execute(
            sa.select(EntityYearWithdrawalRecord)
            .where(EntityYearWithdrawalRecord.entity_id == entity_id)
            # ix_entity_year_withdrawals_entity_at
            .order_by(EntityYearWithdrawalRecord.withdrawn_at, EntityYearWithdrawalRecord.id)
        ).scalars()
    )


def get_entity(session: Session, entity_id: str) -> CoveredEntity:
    """A covered entity with its accounts and every recorded year.

    Raises:
        NotFound: No such entity.
    """
    record = session.get(CoveredEntityRecord, entity_id)
    if record is None:
        raise NotFound(f"entities/{entity_id}")
    accounts = session.execute(
        sa.select(CoveredEntityAccountRecord).where(
            CoveredEntityAccountRecord.entity_id == entity_id
        )
    ).scalars()
    years = session.execute(
        sa.select(EntityYearRecord)
        .where(EntityYearRecord.entity_id == entity_id)
        .order_by(EntityYearRecord.jurisdiction, EntityYearRecord.compliance_year)
    ).scalars()
    return CoveredEntity(
        entity_id=record.entity_id,
        display_name=record.display_name,
        sector=record.sector,
        gases=tuple(json.loads(record.gases)),
        accounts={a.registry_id: a.account for a in accounts},
        years=tuple(
            ComplianceYear(
                y.jurisdiction, y.compliance_year, y.verified_emissions, y.allowances_due
            )
            for y in years
        ),
    )


class DatabaseEntityRecords:
    """``EntityRecords`` over the ledger database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def get(self, entity_id: str, jurisdiction: str, year: int) -> EntityYear | None:
        """The entity's year with the offsets it already surrendered, or None."""
        # Read-only: the gate asks while the bridge's surrender transaction is open.  One
        # snapshot: a pending surrender's record and the rows it locked are read by two
        # statements, and its completion committed between them would leave its units in
        # neither (a concurrent surrender then overspending the offset limit).
        with read_only(self._sessions, one_snapshot=True) as session:
            record = session.get(EntityYearRecord, (entity_id, jurisdiction, year))
            if record is None:
                return None
            used: dict[tuple[str, str, str], int] = defaultdict(int)
            # A pending surrender has spent its units as surely as a completed one: its
            # holder's leg may be done and only an origin registry, down, still to answer.
            # A failed one (refused part-way) spent what its done legs surrendered; one an
            # operator settled by hand (resolved), all of it.  A failed one retried is
            # pending again, and has spent its done legs' units and those it locked again.
            uses = session.execute(
                sa.select(UnitUseRecord.id, UnitUseRecord.state, UnitUseRecord.detail).where(
                    *_spending_surrenders(entity_id, (jurisdiction, year))
                )
            ).all()
            for use_id, state, raw in uses:
                detail = json.loads(raw)
                spending = detail.get("surrendered", []) + (
                    _locked_for(session, use_id, detail["legs"]) if state == "pending" else []
                )
                for spent in spending:
                    if spent["offset"]:
                        used[(spent["program"], spent["country"], spent["region"])] += spent[
                            "quantity"
                        ]
            return EntityYear(
                entity_id=entity_id,
                compliance_year=year,
                verified_emissions=record.verified_emissions,
                allowances_due=record.allowances_due,
                offsets_surrendered=tuple(
                    OffsetUse(program=p, quantity=q, country=c, region=r)
                    for (p, c, r), q in sorted(used.items())
                ),
                covered_by_national_ets=record.covered_by_national_ets,
            )


def _locked_for(session: Session, use_id: str, legs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a pending surrender spends, in the form its record takes once it completes:
    the holder's rows it locked (an origin's leg holds no row of the holder)."""
    spent: list[dict[str, Any]] = []
    for leg in legs:
        if leg["origin"] is None:
            continue
        block = block_id_from_dict(leg["block"])
        for row in ledger.locked_by(session, leg["registry"], leg["account"], block, use_id):
            spent.append(
                {
                    "program": row.origin.program.value,
                    "quantity": row.block.quantity,
                    "country": row.block.country,
                    "region": row.block.region,
                    "offset": row.block.unit_kind.value == "offset_credit",
                }
            )
    return spent
