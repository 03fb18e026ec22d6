"""Answers kept once per caller's request id (listings, entity records)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.errors import RequestIdConflict
from registry_bridge.idempotency import LOCAL_CALLER, answer_once

BODY = hashlib.sha256(b"list VCS 5955 in shenzhen").digest()
OTHER_BODY = hashlib.sha256(b"list VCS 5956 in shenzhen").digest()


class _Answers:
    """Computes a new answer each time it is asked, and counts the times."""

    def __init__(self) -> None:
        self.computed = 0

    def __call__(self) -> bytes:
        self.computed += 1
        return f"answer {self.computed}".encode()


def test_each_caller_gets_its_own_answer_to_one_request_id(
    sessions: sessionmaker[Session],
) -> None:
    answers = _Answers()

    def ask(caller: str, body: bytes = BODY) -> bytes:
        return answer_once(sessions, "ListProject", "listing-1", body, answers, caller=caller)

    assert ask("verra-desk") == b"answer 1"
    # Another caller, the same id and body: its own request, answered afresh.
    assert ask("gold-standard-desk") == b"answer 2"
    assert ask(LOCAL_CALLER) == b"answer 3"
    # Each caller's repeat: its own first answer, nothing computed.
    assert [ask("verra-desk"), ask("gold-standard-desk"), ask(LOCAL_CALLER)] == [
        b"answer 1",
        b"answer 2",
        b"answer 3",
    ]
    assert answers.computed == 3
    with pytest.raises(RequestIdConflict, match="'listing-1' was already used"):
        ask("verra-desk", OTHER_BODY)
    # The method is part of the key, as before.
    other_method = answer_once(
        sessions, "UpsertCoveredEntity", "listing-1", OTHER_BODY, answers, caller="verra-desk"
    )
    assert other_method == b"answer 4"
