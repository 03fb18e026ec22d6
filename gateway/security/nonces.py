"""The database's memory of instruction nonces: the primary key refuses a replay.

A nonce is inserted in its own short transaction; a duplicate (same key id and nonce)
violates the primary key on every backend, and several gateways sharing one database
therefore refuse a replay whichever of them it reaches.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.db import unit_of_work
from registry_bridge.schema import InstructionNonce


class DatabaseNonces:
    """:class:`gateway.security.instructions.NonceStore` on the gateway's database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def claim(self, key_id: str, nonce: str, now: datetime, forget_after: datetime) -> bool:
        """Record the nonce; False when the key already used it."""
        try:
            with unit_of_work(self._sessions) as session:
                session.add(
                    InstructionNonce(
                        key_id=key_id, nonce=nonce, seen_at=now, forget_after=forget_after
                    )
                )
                session.flush()
        except sa.exc.IntegrityError:
            return False
        with unit_of_work(self._sessions) as session:
            session.execute(sa.delete(InstructionNonce).where(InstructionNonce.forget_after < now))
        return True
