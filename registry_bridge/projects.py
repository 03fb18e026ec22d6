"""Listed projects' facts, stored in the ledger database for the rules to read.

A project's start and construction dates, its green-electricity-certificate status and
its registrations under other programs are carried by no serial; the issuer declares them
when listing the project (ListProject), and every later transfer of the project's units is
decided on them.  A re-listing replaces the facts (the issuer's latest declaration), but
only the caller who listed the project, or a regulator, may re-list it; who may list it
first is checked against its registry of origin (:mod:`registry_bridge.listing_proof`).

A refused listing records no facts, but the latest listing decision of a project in each
jurisdiction is read with them (:meth:`DatabaseProjectRecords.refused`): while it is a
refusal, the project's units are refused there.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.block_json import authorization_from_dict, authorization_to_dict
from registry_bridge.db import read_only, run_plain, scope_session, scoped_lookup, unit_of_work
from registry_bridge.errors import PermissionDenied
from registry_bridge.listing import OtherRegistration, ProjectListing, RefusedListing
from registry_bridge.schema import ListingDecisionRecord, ProjectListingRecord
from registry_bridge.transfers import RuleViolation, violation_from_dict


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_day(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def listing_to_json(listing: ProjectListing) -> str:
    """The canonical JSON of a project's declared facts."""
    data: dict[str, Any] = {
        "program": listing.program,
        "project_id": listing.project_id,
        "display_name": listing.display_name,
        "project_type": listing.project_type,
        "methodology": listing.methodology,
        "country": listing.country,
        "region": listing.region,
        "start_date": _day(listing.start_date),
        "construction_start": _day(listing.construction_start),
        "crediting_period_start": _day(listing.crediting_period_start),
        "crediting_period_end": _day(listing.crediting_period_end),
        "gec_status": listing.gec_status,
        "other_registrations": [
            {
                "program": r.program,
                "project_id": r.project_id,
                "issued_period_start": r.issued_period_start.isoformat(),
                "issued_period_end": r.issued_period_end.isoformat(),
            }
            for r in listing.other_registrations
        ],
        "authorization": authorization_to_dict(listing.authorization),
        "labels": sorted(listing.labels),
        "gas": listing.gas,
    }
    return json.dumps(data, sort_keys=True)


def listing_from_json(text: str) -> ProjectListing:
    """The facts of :func:`listing_to_json`."""
    data = json.loads(text)
    return ProjectListing(
        program=data["program"],
        project_id=data["project_id"],
        display_name=data["display_name"],
        project_type=data["project_type"],
        methodology=data["methodology"],
        country=data["country"],
        region=data["region"],
        start_date=_parse_day(data["start_date"]),
        construction_start=_parse_day(data["construction_start"]),
        crediting_period_start=_parse_day(data["crediting_period_start"]),
        crediting_period_end=_parse_day(data["crediting_period_end"]),
        gec_status=data["gec_status"],
        other_registrations=tuple(
            OtherRegistration(
                r["program"],
                r["project_id"],
                date.fromisoformat(r["issued_period_start"]),
                date.fromisoformat(r["issued_period_end"]),
            )
            for r in data["other_registrations"]
        ),
        authorization=authorization_from_dict(data["authorization"]),
        labels=frozenset(data["labels"]),
        gas=data["gas"],
    )


def record_listing(
    session: Session,
    listing: ProjectListing,
    at: datetime,
    *,
    caller: str,
    may_replace_any: bool = False,
) -> None:
    """Record (or replace) a listed project's declared facts, in the caller's transaction.

    Args:
        session: The transaction to record in.
        listing: The declared facts.
        at: When.
        caller: Who lists it (the token subject; ``LOCAL_CALLER`` when none is
            authenticated).
        may_replace_any: The caller may replace a listing another caller recorded (a
            regulator); the listing then stays its first lister's.

    Raises:
        PermissionDenied: The project was listed by another caller.
    """
    current = _lister_row(session, listing, caller=caller, may_replace_any=may_replace_any)
    if current is None:
        session.add(
            ProjectListingRecord(
                program=listing.program,
                project_id=listing.project_id,
                facts=listing_to_json(listing),
                listed_at=at,
                listed_by=caller,
            )
        )
        return
    current.facts = listing_to_json(listing)
    current.listed_at = at


def check_lister(
    session: Session, listing: ProjectListing, *, caller: str, may_replace_any: bool = False
) -> None:
    """Refuse a caller who may not list the project (see :func:`record_listing`), in the
    caller's transaction.

    A refused listing records no facts, but it is the project's standing in its
    jurisdiction: the project's units are refused there until a listing that is not
    refused (``rules_gate``). So only who may list the project may be refused it: its
    lister, a regulator, or anyone while no one has listed it (a caller scoped to accounts
    once the project's registry of origin proved its holding, before this transaction:
    :mod:`registry_bridge.listing_proof`).

    Raises:
        PermissionDenied: The project was listed by another caller.
    """
    _lister_row(session, listing, caller=caller, may_replace_any=may_replace_any)


def lister(sessions: sessionmaker[Session], program: str, project_id: str) -> str | None:
    """Who listed the project (the token subject of its first lister), or None when no
    one has: a project refused everywhere it was asked for has no lister either."""
    with read_only(sessions) as session:
        return session.execute(
            sa.select(ProjectListingRecord.listed_by).where(
                ProjectListingRecord.program == program,
                ProjectListingRecord.project_id == project_id,
            )
        ).scalar_one_or_none()


def _lister_row(
    session: Session, listing: ProjectListing, *, caller: str, may_replace_any: bool
) -> ProjectListingRecord | None:
    # Locked where the database can: two callers listing one project at once are decided
    # one after the other (on SQLite a write transaction holds the database already).
    current = session.execute(
        sa.select(ProjectListingRecord)
        .where(
            ProjectListingRecord.program == listing.program,
            ProjectListingRecord.project_id == listing.project_id,
        )
        .with_for_update()
    ).scalar_one_or_none()
    if current is not None and current.listed_by != caller and not may_replace_any:
        # Whose it is stays unsaid: the caller learns only that it is not theirs.
        raise PermissionDenied(
            f"project {listing.program} {listing.project_id} was listed by another party: "
            "only they, or a regulator, may list it or replace its facts"
        )
    return current


# Built once and run as plain text (db.run_plain): every transfer check reads its
# projects' listings, and SQLAlchemy's per-execution work cost more than the lookup (0.13
# ms of a single transfer's ~5 ms of gateway CPU, against 0.02 ms). One statement answers
# both questions a check asks of a project, in one round trip: its recorded facts, and its
# latest binding listing decision in each jurisdiction (the facts row has no
# jurisdiction). A decision is the latest of its jurisdiction when no binding one there
# was made after it (by time, then id), found through the decisions' (program,
# project_id) index: a project has a handful. A decision asked for another day than the
# gateway's today binds nothing: it would let anyone set a project's standing by the
# rules of a day of their choosing.
_LATER = sa.orm.aliased(ListingDecisionRecord)
_LISTING: sa.CompoundSelect[tuple[str | None, str | None, str]] = sa.union_all(
    sa.select(
        sa.literal_column("NULL").label("jurisdiction"),
        sa.literal_column("NULL").label("listing_id"),
        ProjectListingRecord.facts.label("body"),
    ).where(
        ProjectListingRecord.program == sa.bindparam("program"),
        ProjectListingRecord.project_id == sa.bindparam("project_id"),
    ),
    sa.select(
        ListingDecisionRecord.jurisdiction,
        ListingDecisionRecord.id,
        ListingDecisionRecord.outcome,
    ).where(
        ListingDecisionRecord.program == sa.bindparam("program"),
        ListingDecisionRecord.project_id == sa.bindparam("project_id"),
        ListingDecisionRecord.binding,
        ~sa.exists().where(
            _LATER.program == ListingDecisionRecord.program,
            _LATER.project_id == ListingDecisionRecord.project_id,
            _LATER.jurisdiction == ListingDecisionRecord.jurisdiction,
            _LATER.binding,
            sa.or_(
                _LATER.created_at > ListingDecisionRecord.created_at,
                sa.and_(
                    _LATER.created_at == ListingDecisionRecord.created_at,
                    _LATER.id > ListingDecisionRecord.id,
                ),
            ),
        ),
    ),
)


@dataclass(frozen=True)
class _Standing:
    """What a transfer check reads of a project: its facts and its refused jurisdictions."""

    facts: ProjectListing | None
    refused: Mapping[str, RefusedListing]


@functools.lru_cache(maxsize=4096)
def _refusals(outcome: str) -> tuple[bool, tuple[RuleViolation, ...]]:
    # A decision is never changed once recorded: its outcome is parsed once, not per check.
    data = json.loads(outcome)
    return bool(data["listed"]), tuple(violation_from_dict(v) for v in data["refusals"])


def _read_standing(session: Session, program: str, project_id: str) -> _Standing:
    # A plain read does not flush: listings are recorded in transactions of their own, so
    # nothing the caller's transaction holds unwritten can change the answer, and a flush
    # here would write its new rows early, and then again as they change.
    facts: ProjectListing | None = None
    refused: dict[str, RefusedListing] = {}
    for jurisdiction, listing_id, body in run_plain(
        session, _LISTING, {"program": program, "project_id": project_id}
    ):
        if jurisdiction is None:
            facts = listing_from_json(body)
            continue
        listed, refusals = _refusals(body)
        if not listed:
            refused[jurisdiction] = RefusedListing(listing_id, jurisdiction, refusals)
    return _Standing(facts, refused)


class DatabaseProjectRecords:
    """``ProjectRecords`` over the ledger database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def get(self, program: str, project_id: str) -> ProjectListing | None:
        """The project's listed facts, or None when it was never listed."""
        return self._standing(program, project_id).facts

    def refused(self, program: str, project_id: str, jurisdiction: str) -> RefusedListing | None:
        """The project's latest listing decision in ``jurisdiction`` if it refused the
        project; None when it listed it, or the project was never listed there."""
        return self._standing(program, project_id).refused.get(jurisdiction)

    def _standing(self, program: str, project_id: str) -> _Standing:
        def load() -> _Standing:
            # Inside a transaction that checks transfers, read in it: a transaction of
            # its own per lookup cost more than the lookup.
            session = scope_session(self._sessions.kw.get("bind"))
            if session is not None:
                return _read_standing(session, program, project_id)
            with read_only(self._sessions) as session:
                return _read_standing(session, program, project_id)

        # One read per project and check transaction (a batch's included), whichever of
        # facts and refusals the rules ask first.
        return scoped_lookup(("project_listing", program, project_id), load)

    def record(
        self, listing: ProjectListing, at: datetime, *, caller: str, may_replace_any: bool = False
    ) -> None:
        """Record a listing in a transaction of its own (see :func:`record_listing`).

        Raises:
            PermissionDenied: The project was listed by another caller.
        """
        try:
            with unit_of_work(self._sessions) as session:
                record_listing(session, listing, at, caller=caller, may_replace_any=may_replace_any)
        except sa.exc.IntegrityError:
            # Another caller listed the project first, between our read and our insert:
            # decided again, now against their row.
            with unit_of_work(self._sessions) as session:
                record_listing(session, listing, at, caller=caller, may_replace_any=may_replace_any)
