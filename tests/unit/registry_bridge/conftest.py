"""Fixtures of the registry_bridge unit tests that touch a database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge import db


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh, migrated database of each supported kind."""
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()
