"""Two first listings of one project at once: the later one is decided against the other's row.

A first listing reads that no row exists, then inserts one.  On PostgreSQL another caller's
first listing can commit its row in between (a row that does not exist cannot be locked),
and the insert then collides with it: ``DatabaseProjectRecords.record`` decides the listing
again, against the row that won.  Here the other listing is run, to its commit, at exactly
that moment: from inside the first one's flush, just before its INSERT.  On SQLite it
cannot commit there: the first listing's write transaction holds the database from its
read on, so the other waits for it and is then decided against the first one's row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import projects
from registry_bridge.errors import PermissionDenied
from registry_bridge.listing import ProjectListing
from registry_bridge.projects import DatabaseProjectRecords, listing_from_json
from registry_bridge.schema import ProjectListingRecord

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _listing(display_name: str) -> ProjectListing:
    return ProjectListing(program="VCS", project_id="5955", display_name=display_name)


def _stored(sessions: sessionmaker[Session]) -> tuple[str, str]:
    """The stored listing's display name and lister."""
    with sessions() as session:
        record = session.execute(sa.select(ProjectListingRecord)).scalar_one()
        return listing_from_json(record.facts).display_name, record.listed_by


@contextmanager
def _other_listing_before_insert(
    first_caller: str, other: Callable[[], None], wait_s: float
) -> Iterator[dict[str, Any]]:
    """Run ``other`` in a thread of its own just before ``first_caller``'s first INSERT of
    a listing, and wait up to ``wait_s`` for it to finish; what happened is in the dict
    yielded (``finished_first``: whether it finished before the insert went on;
    ``error``: what it raised)."""
    seen: dict[str, Any] = {"finished_first": None, "error": None}

    def run_other() -> None:
        try:
            other()
        except Exception as exc:
            seen["error"] = exc

    thread = threading.Thread(target=run_other)

    def before_insert(_mapper: Any, _connection: Any, target: ProjectListingRecord) -> None:
        # The first caller's insert only: not the other's, which may be the same caller's.
        if target.listed_by == first_caller and threading.current_thread() is not thread:
            if thread.ident is not None:
                return
            thread.start()
            thread.join(timeout=wait_s)
            seen["finished_first"] = not thread.is_alive()

    sa.event.listen(ProjectListingRecord, "before_insert", before_insert)
    try:
        yield seen
    finally:
        sa.event.remove(ProjectListingRecord, "before_insert", before_insert)
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.fixture
def decided(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The callers of each listing decision (a retried listing is decided twice)."""
    calls: list[str] = []
    decide = projects.record_listing

    def counted(session: Session, listing: ProjectListing, at: datetime, **kwargs: Any) -> None:
        calls.append(kwargs["caller"])
        decide(session, listing, at, **kwargs)

    monkeypatch.setattr(projects, "record_listing", counted)
    return calls


def _race(
    sessions: sessionmaker[Session], first: tuple[str, str], other: tuple[str, str]
) -> tuple[dict[str, Any], BaseException | None]:
    """``first`` = (caller, display name) lists the project; ``other`` lists it just
    before ``first``'s insert.  Returns what happened to the other, and what the first
    raised."""
    records = DatabaseProjectRecords(sessions)
    postgres = sessions.kw["bind"].dialect.name == "postgresql"

    def list_other() -> None:
        records.record(_listing(other[1]), AT, caller=other[0])

    # PostgreSQL: the other commits at once.  SQLite: it waits for the first's write
    # transaction, however long it is given.
    with _other_listing_before_insert(first[0], list_other, 30.0 if postgres else 0.5) as seen:
        try:
            records.record(_listing(first[1]), AT, caller=first[0])
            raised = None
        except PermissionDenied as exc:
            raised = exc
    assert seen["finished_first"] is postgres
    return seen, raised


def test_a_first_listing_beaten_by_another_issuers_is_refused_against_its_row(
    sessions: sessionmaker[Session], decided: list[str]
) -> None:
    seen, raised = _race(sessions, ("verra-desk", "Landfill gas"), ("other-desk", "Rewritten"))

    if sessions.kw["bind"].dialect.name == "postgresql":
        # The insert collided with the other's row, and the listing was decided again.
        assert decided == ["verra-desk", "other-desk", "verra-desk"]
        assert isinstance(raised, PermissionDenied)
        assert "listed by another party" in str(raised)
        assert seen["error"] is None
        assert _stored(sessions) == ("Rewritten", "other-desk")
    else:
        assert decided == ["verra-desk", "other-desk"]
        assert raised is None
        assert isinstance(seen["error"], PermissionDenied)
        assert _stored(sessions) == ("Landfill gas", "verra-desk")


def test_a_first_listing_beaten_by_the_same_issuers_replaces_its_facts(
    sessions: sessionmaker[Session], decided: list[str]
) -> None:
    seen, raised = _race(sessions, ("verra-desk", "Phase 2"), ("verra-desk", "Phase 1"))

    assert raised is None and seen["error"] is None
    if sessions.kw["bind"].dialect.name == "postgresql":
        assert decided == ["verra-desk", "verra-desk", "verra-desk"]
        # Decided last, on the other's row: its facts replace the other's.
        assert _stored(sessions) == ("Phase 2", "verra-desk")
    else:
        assert decided == ["verra-desk", "verra-desk"]
        assert _stored(sessions) == ("Phase 1", "verra-desk")
