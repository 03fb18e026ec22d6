"""The ledger's tables (SQLAlchemy 2.0 typed models); Alembic migrations create them.

Timestamps default on the server (``func.now()``) rather than in Python, so every writer
agrees on the clock of record.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    metadata = metadata


class IdempotencyRecord(Base):
    """The first answer to each mutating request, keyed by the client's request id."""

    __tablename__ = "idempotency_records"

    method: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    """Full gRPC method name: request ids are scoped per method."""
    request_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    """Client-chosen id of the request."""
    body_sha256: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    """Hash of the canonical request body, to refuse a reused id with another body."""
    response: Mapped[bytes] = mapped_column(sa.LargeBinary)
    """The serialized first response, returned again for a repeat."""
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
