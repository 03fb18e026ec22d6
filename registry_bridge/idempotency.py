"""Request ids, scoped per caller, and idempotent answers for calls that keep no resource.

Every mutating call carries a client-chosen request id.  Ids belong to the caller that
chose them, the way a payment API scopes idempotency keys per account: the same id from
two callers names two requests, and neither can block, or be answered with, the other's.
Transfers, unit uses and migrations keep their caller and request id on their own rows;
the other mutating calls keep their first answer here.

The first answer to a request id is stored with a hash of the request body; a repeat by
the same caller with the same body gets that answer back, and a repeat with another body
is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.db import unit_of_work
from registry_bridge.errors import LedgerConflict, RequestIdConflict
from registry_bridge.schema import IdempotencyRecord

LOCAL_CALLER = ""
"""The caller when nobody is authenticated: an insecure gateway's every client (one local
party, for development) and in-process callers.  Rows recorded before request ids were
scoped carry it too.  A secure gateway's callers are token subjects, never empty, so
none of them shares this space."""


def answer_once(
    sessions: sessionmaker[Session],
    method: str,
    request_id: str,
    body_sha256: bytes,
    compute: Callable[[], bytes],
    *,
    caller: str = LOCAL_CALLER,
) -> bytes:
    """The stored answer to ``caller``'s ``(method, request_id)``, computed and stored the
    first time.

    Raises:
        RequestIdConflict: The caller used the request id with a different body.
    """
    key = (caller, method, request_id)
    with unit_of_work(sessions) as session:
        record = session.get(IdempotencyRecord, key)
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
                    caller=caller,
                    method=method,
                    request_id=request_id,
                    body_sha256=body_sha256,
                    response=response,
                )
            )
    except sa.exc.IntegrityError as exc:
        # A concurrent first answer of the same caller won the insert: answer with it.
        with unit_of_work(sessions) as session:
            record = session.get(IdempotencyRecord, key)
            if record is None:
                raise LedgerConflict(f"cannot record the answer to {request_id!r}") from exc
            if record.body_sha256 != body_sha256:
                raise RequestIdConflict(
                    f"request_id {request_id!r} was already used with a different request"
                ) from exc
            return record.response
    return response
