"""What the emulator store records for an operation is what the operation answered.

A first call answers from the holding it wrote, a repeat from the op log's JSON, and the
two must be the same answer.  The op log's text must also stay what earlier stores wrote
(store files persist): a repeat is matched on the request's fingerprint text, and an
outcome is read back from its JSON.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime, timedelta

import pytest

from adapters.emulator_core import CreditMode, Rejection, Store, StoredHolding
from registry_bridge.block_json import attributes_to_json, block_to_json
from registry_bridge.model import Authorization, BlockId, Program, UnitBlock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def block(start: int, end: int, series: str = "") -> UnitBlock:
    """A CCER block over ``start..end`` with every kind of attribute set."""
    return UnitBlock(
        id=BlockId(Program.CCER, series, start, end),
        project_id="P1",
        country="CN",
        vintage_start=date(2024, 1, 1),
        vintage_end=date(2024, 12, 31),
        region="CN-GD",
        labels=frozenset({"CCB", "SD"}),
        authorization=Authorization("LoA-1", "CN", frozenset({"NDC"}), date(2024, 2, 1)),
        native_attributes=(("a", "1"), ("b", "é")),
    )


def unit(serial: int) -> BlockId:
    return BlockId(Program.CCER, "", serial, serial)


def store(mode: CreditMode) -> Store:
    opened = Store("reg", frozenset({Program.CCER}), mode, clock=lambda: NOW)
    opened.open_account("B")  # credited, never issued into
    return opened


@pytest.mark.parametrize("mode", [CreditMode.MIRROR, CreditMode.HOLD])
def test_a_first_answer_is_the_recorded_one(mode: CreditMode) -> None:
    registry = store(mode)
    details = (("reason", "r"), ("record.first", "x"))
    calls: list[tuple[str, StoredHolding]] = []

    def run(operation_id: str, holding: StoredHolding) -> None:
        calls.append((operation_id, holding))

    run("issue", registry.issue("issue", "A", block(1, 100)))
    run("lock", registry.lock("lock", "A", unit(5), LATER, "t1"))
    run("unlock", registry.unlock("unlock", "A", unit(5), "t1"))
    run("lock-2", registry.lock("lock-2", "A", unit(7), LATER, "t2"))
    run("immobilize", registry.finalize("immobilize", "A", unit(7), "t2", export=False))
    run("reactivate", registry.reactivate("reactivate", "B", unit(7), "t2", details))
    run("lock-3", registry.lock("lock-3", "A", unit(9), LATER, "t3"))
    run("export", registry.finalize("export", "A", unit(9), "t3", export=True, details=details))
    run("credit", registry.credit("credit", "B", block(3, 4, "origin"), "other", "t4", details))
    run("retire", registry.retire("retire", "A", unit(20), details))
    run("whole", registry.lock("whole", "B", unit(7), LATER, "t5"))
    with registry.batch():
        run("in-batch", registry.lock("in-batch", "A", unit(30), LATER, "t6"))
        with pytest.raises(Rejection):
            registry.lock("refused", "A", unit(30), LATER, "t7")
    for operation_id, answered in calls:
        record = registry.operation(operation_id)
        assert record is not None and record.holding == answered, operation_id
    # And a repeat answers the same again, from the op log.
    assert registry.lock("lock", "A", unit(5), LATER, "t1") == calls[1][1]


def test_the_op_log_text_is_written_as_before() -> None:
    registry = store(CreditMode.MIRROR)
    origin = block(1, 10)
    registry.issue("issue", "A", origin)
    registry.lock("lock", "A", unit(2), LATER, "t1")
    db: sqlite3.Connection = registry._db
    rows = dict(
        (r[0], (r[1], r[2]))
        for r in db.execute("SELECT operation_id, fingerprint, outcome FROM operations")
    )
    # The fingerprint: json.dumps of the request with sort_keys and default=str.
    assert rows["issue"][0] == json.dumps(
        {"method": "issue", "account": "A", "block": block_to_json(origin)},
        sort_keys=True,
        default=str,
    )
    assert rows["lock"][0] == json.dumps(
        {
            "method": "lock",
            "account": "A",
            "block": {"program": "CCER", "serial_series": "", "serial_start": 2, "serial_end": 2},
            "expires_at": LATER.isoformat(),
            "transfer": "t1",
        },
        sort_keys=True,
        default=str,
    )
    # The outcome: the holding with its block as block_to_json wrote it.
    outcome = json.loads(rows["lock"][1])["holding"]
    assert outcome["block"] == block_to_json(origin.with_range(2, 2))
    assert outcome["state"] == "locked" and outcome["lock_expires_at"] == LATER.isoformat()
    assert json.loads(outcome["block"])["attributes"] == attributes_to_json(origin)
