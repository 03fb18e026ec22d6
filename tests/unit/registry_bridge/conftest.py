"""Fixtures of the registry_bridge unit tests that touch a database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh, migrated database of each supported kind."""
    yield from _migrated(database_url)


@pytest.fixture
def postgres_sessions(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh, migrated PostgreSQL database only."""
    yield from _migrated(postgres_url)


def _migrated(url: str) -> Iterator[sessionmaker[Session]]:
    engine = db.create_engine(url)
    try:
        db.upgrade(engine)
        yield db.session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The COPY statements psycopg is asked to run."""
    seen: list[str] = []
    copy = psycopg.Cursor.copy

    def counted(self: psycopg.Cursor[Any], statement: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(statement))
        return copy(self, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "copy", counted)
    return seen
