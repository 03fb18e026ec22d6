"""ListTransfers' pages for accounts hold exactly the transfers that touch one of them.

A page for an account reads two indexes, one per side of a transfer, and merges them
(see ``Bridge.list_transfers``): these tests hold the merge to what the filter means,
the transfers whose source or destination is one of the accounts, each once, oldest
first, whatever the page size, the other filters, and transfers touching the accounts on
both sides.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.bridge import Bridge
from registry_bridge.schema import TransferRecord
from registry_bridge.transfers import TransferState
from tests.integration.bridge.conftest import PermitAllRules

AT = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
ACCOUNTS = ("hkmo:a", "hkmo:b", "shenzhen:a", "shenzhen:c", "macau:a")


@dataclass(frozen=True)
class Row:
    """What the filters read of one transfer."""

    transfer_id: str
    created_at: datetime
    source: str
    destination: str
    state: TransferState


def transfer_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """``rows`` as ``transfers`` rows a bridge can show."""

    def ref(account: str) -> dict[str, str]:
        registry, name = account.split(":", 1)
        return {"registry": registry, "account": name}

    return [
        {
            "id": r.transfer_id,
            "request_id": f"request-{r.transfer_id}",
            "caller": "",
            "body_sha256": hashlib.sha256(r.transfer_id.encode()).digest(),
            "state": r.state.value,
            "kind": "bridge_out",
            "source_registry": r.source.split(":", 1)[0],
            "source_account": r.source.split(":", 1)[1],
            "destination_registry": r.destination.split(":", 1)[0],
            "destination_account": r.destination.split(":", 1)[1],
            "instruction": json.dumps(
                {
                    "source": ref(r.source),
                    "destination": ref(r.destination),
                    "units": [],
                    "intended_use": "compliance",
                    "settlement": None,
                }
            ),
            "plan": "",
            "decision": "",
            "failure_reason": "",
            "lease_owner": "",
            "created_at": r.created_at,
            "updated_at": r.created_at,
        }
        for r in rows
    ]


def _history(seed: int) -> list[Row]:
    """Transfers among ``ACCOUNTS`` (some from an account to itself), many created in
    the same instant so that the id decides their order, in a shuffled id order."""
    pick = random.Random(seed)
    ids = [f"t-{pick.randrange(16**8):08x}-{i:03d}" for i in range(90)]
    pick.shuffle(ids)
    states = (TransferState.COMPLETED, TransferState.PROPOSED, TransferState.ROLLED_BACK)
    return [
        Row(
            transfer_id,
            AT + timedelta(seconds=pick.randrange(12)),
            pick.choice(ACCOUNTS),
            pick.choice(ACCOUNTS),
            pick.choice(states),
        )
        for transfer_id in ids
    ]


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> Iterator[tuple[Bridge, list[Row]]]:
    rows = _history(7)
    with sessions.begin() as session:
        session.execute(sa.insert(TransferRecord), transfer_rows(rows))
    yield Bridge(sessions, {}, PermitAllRules(), clock=lambda: AT), rows


def _all_pages(
    bridge: Bridge,
    size: int,
    state: TransferState | None,
    registry: str,
    accounts: frozenset[str] | None,
) -> list[str]:
    seen: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        page, more = bridge.list_transfers(after, size, state, registry, accounts)
        assert len(page) <= size
        seen.extend(t.transfer_id for t in page)
        if not more:
            return seen
        assert len(page) == size
        after = (page[-1].created_at, page[-1].transfer_id)


@pytest.mark.parametrize(
    "accounts",
    [
        frozenset({"hkmo:a"}),
        frozenset({"hkmo:a", "shenzhen:a"}),
        frozenset({"hkmo:b", "shenzhen:c", "macau:a"}),
        frozenset(ACCOUNTS),
        frozenset({"hkmo:nobody"}),
        frozenset({"not-an-account", "shenzhen:c"}),
        frozenset(),
    ],
    ids=["one", "two", "three", "all", "unknown", "malformed", "none"],
)
@pytest.mark.parametrize(
    ("state", "registry"),
    [(None, ""), (TransferState.PROPOSED, ""), (None, "macau"), (TransferState.COMPLETED, "hkmo")],
    ids=["unfiltered", "state", "registry", "state-and-registry"],
)
def test_pages_for_accounts_hold_each_transfer_touching_them_once_in_order(
    history: tuple[Bridge, list[Row]],
    accounts: frozenset[str],
    state: TransferState | None,
    registry: str,
) -> None:
    bridge, rows = history
    expected = [
        r.transfer_id
        for r in sorted(rows, key=lambda r: (r.created_at, r.transfer_id))
        if (r.source in accounts or r.destination in accounts)
        and (state is None or r.state is state)
        and (not registry or registry in (r.source.split(":")[0], r.destination.split(":")[0]))
    ]
    for size in (1, 4, 50):
        assert _all_pages(bridge, size, state, registry, accounts) == expected


@pytest.mark.parametrize("registry", ["hkmo", "shenzhen", "macau", "nowhere"])
@pytest.mark.parametrize(
    "state",
    [None, TransferState.PROPOSED, TransferState.COMPLETED],
    ids=["unfiltered", "proposed", "completed"],
)
def test_pages_for_a_registry_hold_each_transfer_touching_it_once_in_order(
    history: tuple[Bridge, list[Row]], registry: str, state: TransferState | None
) -> None:
    """A page for a registry alone (no accounts) merges a read of each side's registry
    index: each transfer from or to the registry once, a transfer within it too, in
    page order."""
    bridge, rows = history
    expected = [
        r.transfer_id
        for r in sorted(rows, key=lambda r: (r.created_at, r.transfer_id))
        if registry in (r.source.split(":")[0], r.destination.split(":")[0])
        and (state is None or r.state is state)
    ]
    # Transfers within one registry are in the history, found by both sides' reads.
    assert any(r.source.startswith("hkmo:") and r.destination.startswith("hkmo:") for r in rows)
    for size in (1, 4, 50):
        assert _all_pages(bridge, size, state, registry, None) == expected


def test_a_transfer_between_two_of_the_accounts_fills_one_place_of_a_page(
    history: tuple[Bridge, list[Row]],
) -> None:
    """A transfer found by both its sides is one item: it takes one place of the page,
    which still holds as many transfers as asked."""
    bridge, rows = history
    accounts = frozenset({"hkmo:a", "shenzhen:a"})
    both = [r for r in rows if r.source in accounts and r.destination in accounts]
    assert len(both) >= 3  # the history has some for this test to mean anything
    page, more = bridge.list_transfers(None, 20, accounts=accounts)
    ids = [t.transfer_id for t in page]
    assert more and len(ids) == len(set(ids)) == 20


def test_a_caller_of_many_accounts_pages_as_one_of_a_few(
    sessions: sessionmaker[Session],
) -> None:
    """A bearer token may name 256 accounts: two index reads each is more than SQLite
    takes in one compound statement (500), and the page is still one answer."""
    accounts = [f"hkmo:acct-{i:03d}" for i in range(256)]
    rows = [
        Row(
            f"t-{i:04d}",
            AT + timedelta(seconds=i),
            accounts[i % 256],
            f"shenzhen:acct-{i:03d}",
            TransferState.COMPLETED,
        )
        for i in range(600)
    ]
    with sessions.begin() as session:
        session.execute(sa.insert(TransferRecord), transfer_rows(rows))
    bridge = Bridge(sessions, {}, PermitAllRules(), clock=lambda: AT)
    wanted = frozenset(accounts[::2]) | {"shenzhen:acct-001"}
    expected = [r.transfer_id for r in rows if r.source in wanted or r.destination in wanted]
    assert _all_pages(bridge, 50, None, "", wanted) == expected
