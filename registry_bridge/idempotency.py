"""Idempotent answers for mutating calls that keep no resource of their own.

The first answer to a request id is stored with a hash of the request body; a repeat
with the same body gets that answer back, and a repeat with another body is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.db import unit_of_work
from registry_bridge.errors import LedgerConflict, RequestIdConflict
from registry_bridge.schema import IdempotencyRecord


def answer_once(
    sessions: sessionmaker[Session],
    method: str,
    request_id: str,
    body_sha256: bytes,
    compute: Callable[[], bytes],
) -> bytes:
    """The stored answer to ``(method, request_id)``, computing and storing it the first time.

    Raises:
        RequestIdConflict: The request id was used with a different body.
    """
    with unit_of_work(sessions) as session:
        record = session.get(IdempotencyRecord, (method, request_id))
        if record is not None:
            if record.body_sha256 != body_sha256:
                raise RequestIdConflict(
                    f"request_id {request_id!r} was already used with a different request"
                )
            return record.response
    response = compute()
    try:
        with unit_of_work(sessions) as session:
            session.add(
                IdempotencyRecord(
                    method=method,
                    request_id=request_id,
                    body_sha256=body_sha256,
                    response=response,
                )
            )
    except sa.exc.IntegrityError as exc:
        # A concurrent first answer won the insert: answer with it.
        with unit_of_work(sessions) as session:
            record = session.get(IdempotencyRecord, (method, request_id))
            if record is None:
                raise LedgerConflict(f"cannot record the answer to {request_id!r}") from exc
            if record.body_sha256 != body_sha256:
                raise RequestIdConflict(
                    f"request_id {request_id!r} was already used with a different request"
                ) from exc
            return record.response
    return response
