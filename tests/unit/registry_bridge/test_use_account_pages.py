"""ListUses' pages for accounts hold exactly the uses of one of them.

A page for accounts reads each account's uses from the holder index and merges them (see
``Bridge.list_uses``): these tests hold the merge to what the filter means, the uses
whose holder is one of the accounts, each once, oldest first, whatever the page size and
the other filters.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.bridge import Bridge
from registry_bridge.schema import UnitUseRecord
from registry_bridge.transfers import AccountRef, UseState
from tests.integration.bridge.conftest import PermitAllRules

AT = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
ACCOUNTS = ("hkmo:a", "hkmo:b", "shenzhen:a", "shenzhen:c", "macau:a")


@dataclass(frozen=True)
class Use:
    """What the filters read of one use."""

    use_id: str
    created_at: datetime
    holder: str
    kind: str
    state: UseState


def use_rows(uses: list[Use]) -> list[dict[str, Any]]:
    """``uses`` as ``unit_uses`` rows a bridge can show (no legs: no ledger to read)."""
    rows = []
    for u in uses:
        registry, account = u.holder.split(":", 1)
        request = {
            "kind": u.kind,
            "account": {"registry": registry, "account": account},
            "units": [],
            "beneficiary": "",
            "claim_text": "",
            "entity_id": "",
            "compliance_year": 0,
            "jurisdiction": "",
        }
        rows.append(
            {
                "id": u.use_id,
                "request_id": f"request-{u.use_id}",
                "caller": "",
                "body_sha256": hashlib.sha256(u.use_id.encode()).digest(),
                "kind": u.kind,
                "state": u.state.value,
                "registry_id": registry,
                "account": account,
                "detail": json.dumps({"request": request, "legs": []}),
                "decision": "",
                "created_at": u.created_at,
            }
        )
    return rows


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> Iterator[tuple[Bridge, list[Use]]]:
    """Uses of ``ACCOUNTS``, many created in the same instant so that the id decides their
    order, in a shuffled id order."""
    pick = random.Random(11)
    ids = [f"u-{pick.randrange(16**8):08x}-{i:03d}" for i in range(90)]
    pick.shuffle(ids)
    uses = [
        Use(
            use_id,
            AT + timedelta(seconds=pick.randrange(12)),
            pick.choice(ACCOUNTS),
            pick.choice(("retirement", "surrender")),
            pick.choice((UseState.COMPLETED, UseState.PENDING, UseState.REJECTED)),
        )
        for use_id in ids
    ]
    with sessions.begin() as session:
        session.execute(sa.insert(UnitUseRecord), use_rows(uses))
    yield Bridge(sessions, {}, PermitAllRules(), clock=lambda: AT), uses


def _all_pages(
    bridge: Bridge, size: int, accounts: frozenset[str] | None, **filters: Any
) -> list[str]:
    seen: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        page, more = bridge.list_uses(after, size, accounts=accounts, **filters)
        assert len(page) <= size
        seen.extend(u.use_id for u in page)
        if not more:
            return seen
        assert len(page) == size
        after = (page[-1].created_at, page[-1].use_id)


@pytest.mark.parametrize(
    "accounts",
    [
        frozenset({"hkmo:a"}),
        frozenset({"hkmo:a", "shenzhen:a"}),
        frozenset(ACCOUNTS),
        frozenset({"hkmo:nobody"}),
        frozenset({"not-an-account", "shenzhen:c"}),
        frozenset(),
    ],
    ids=["one", "two", "all", "unknown", "malformed", "none"],
)
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"kind": "surrender"},
        {"state": UseState.PENDING},
        {"holder": AccountRef("hkmo", "")},
        {"holder": AccountRef("hkmo", "a"), "kind": "retirement"},
    ],
    ids=["unfiltered", "kind", "state", "holder-registry", "holder-and-kind"],
)
def test_pages_for_accounts_hold_each_use_of_them_once_in_order(
    history: tuple[Bridge, list[Use]], accounts: frozenset[str], filters: dict[str, Any]
) -> None:
    bridge, uses = history
    holder: AccountRef | None = filters.get("holder")

    def held(use: Use) -> bool:
        if holder is None:
            return True
        registry, account = use.holder.split(":", 1)
        return registry == holder.registry and holder.account in ("", account)

    expected = [
        u.use_id
        for u in sorted(uses, key=lambda u: (u.created_at, u.use_id))
        if u.holder in accounts
        and u.kind == filters.get("kind", u.kind)
        and u.state is filters.get("state", u.state)
        and held(u)
    ]
    for size in (1, 4, 50):
        assert _all_pages(bridge, size, accounts, **filters) == expected


@pytest.mark.parametrize("registry", ["hkmo", "shenzhen", "nowhere"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"kind": "surrender"}, {"state": UseState.PENDING}],
    ids=["unfiltered", "kind", "state"],
)
def test_pages_for_a_holder_registry_hold_each_use_of_its_accounts_once_in_order(
    history: tuple[Bridge, list[Use]], registry: str, filters: dict[str, Any]
) -> None:
    """A page for a holder registry with no account (and no accounts) holds the uses of
    every account of the registry, in page order."""
    bridge, uses = history
    expected = [
        u.use_id
        for u in sorted(uses, key=lambda u: (u.created_at, u.use_id))
        if u.holder.split(":", 1)[0] == registry
        and u.kind == filters.get("kind", u.kind)
        and u.state is filters.get("state", u.state)
    ]
    for size in (1, 4, 50):
        assert (
            _all_pages(bridge, size, None, holder=AccountRef(registry, ""), **filters) == expected
        )
