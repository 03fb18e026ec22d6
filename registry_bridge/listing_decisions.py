"""Every answer to ListProject, recorded so that it can be read back (GetListing).

A listing's answer names it ``listings/{listing_id}``; the record under that id keeps the
facts the issuer declared, the outcome exactly as answered, who asked and when.  A listed
project's facts are also recorded, in the same transaction, where the rules read them for
its transfers (:mod:`registry_bridge.projects`); a refused one's are not, but the
jurisdiction's latest decision is the project's standing there: while it is a refusal,
its units are refused there (``rules_gate``). Either is recorded only for a caller who
may list the project (its lister, a regulator, or anyone while no one has listed it: an
issuer once the project's registry of origin proved its holding, ``listing_proof``).
Only a decision taken for the gateway's today binds so: one asked for another day is
recorded as answered, and neither records facts nor counts as the standing.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.db import read_only, unit_of_work
from registry_bridge.listing import (
    ListingCondition,
    ListingEligibility,
    ListingOutcome,
    RecordedListing,
)
from registry_bridge.projects import (
    check_lister,
    listing_from_json,
    listing_to_json,
    record_listing,
)
from registry_bridge.schema import ListingDecisionRecord
from registry_bridge.transfers import (
    decision_from_dict,
    decision_to_dict,
    violation_from_dict,
    violation_to_dict,
)


def outcome_to_json(outcome: ListingOutcome) -> str:
    """The canonical JSON of a listing's outcome."""
    return json.dumps(
        {
            "listed": outcome.listed,
            "pack_versions": list(outcome.pack_versions),
            "refusals": [violation_to_dict(v) for v in outcome.refusals],
            "eligibility": [
                {
                    **decision_to_dict(e.decision),
                    "use": e.use,
                    "conditions": [[c.rule_id, c.message, c.source] for c in e.conditions],
                }
                for e in outcome.eligibility
            ],
        },
        sort_keys=True,
    )


def outcome_from_json(text: str) -> ListingOutcome:
    """The outcome of :func:`outcome_to_json`."""
    data = json.loads(text)
    return ListingOutcome(
        listed=data["listed"],
        pack_versions=tuple(data["pack_versions"]),
        refusals=tuple(violation_from_dict(v) for v in data["refusals"]),
        eligibility=tuple(
            ListingEligibility(
                use=e["use"],
                decision=decision_from_dict(e),
                conditions=tuple(ListingCondition(*c) for c in e["conditions"]),
            )
            for e in data["eligibility"]
        ),
    )


def _record(session: Session, listing: RecordedListing, may_replace_any: bool) -> None:
    if listing.binding and listing.outcome.listed:
        record_listing(
            session,
            listing.project,
            listing.created_at,
            caller=listing.requested_by,
            may_replace_any=may_replace_any,
        )
    else:
        check_lister(
            session,
            listing.project,
            caller=listing.requested_by,
            may_replace_any=may_replace_any,
        )
    session.add(
        ListingDecisionRecord(
            id=listing.listing_id,
            program=listing.project.program,
            project_id=listing.project.project_id,
            jurisdiction=listing.jurisdiction,
            as_of=listing.as_of,
            facts=listing_to_json(listing.project),
            outcome=outcome_to_json(listing.outcome),
            requested_by=listing.requested_by,
            created_at=listing.created_at,
            binding=listing.binding,
        )
    )


def record(
    sessions: sessionmaker[Session], listing: RecordedListing, *, may_replace_any: bool = False
) -> None:
    """Record a ListProject answer, and a binding listed project's facts, in one transaction.

    Args:
        sessions: The ledger database.
        listing: The answer, under its id.
        may_replace_any: The caller may replace facts another caller listed (a regulator).

    Raises:
        PermissionDenied: The project was listed by another caller: nothing is recorded.
    """
    try:
        with unit_of_work(sessions) as session:
            _record(session, listing, may_replace_any)
    except sa.exc.IntegrityError:
        # Another caller listed the project first, between our read and our insert:
        # decided again, now against their row.
        with unit_of_work(sessions) as session:
            _record(session, listing, may_replace_any)


def get(sessions: sessionmaker[Session], listing_id: str) -> RecordedListing | None:
    """The recorded listing, or None when no listing has that id."""
    with read_only(sessions) as session:
        row = session.get(ListingDecisionRecord, listing_id)
        if row is None:
            return None
        return RecordedListing(
            listing_id=row.id,
            project=listing_from_json(row.facts),
            jurisdiction=row.jurisdiction,
            as_of=row.as_of,
            outcome=outcome_from_json(row.outcome),
            requested_by=row.requested_by,
            created_at=row.created_at,
            binding=row.binding,
        )
