"""SubmitTransfers batch settlement against a raw loop writing the same rows.

The gateway settles batches of one-unit transfers over gRPC.  The storage limit is a
plain DB-API loop (``sqlite3``, or ``psycopg`` on PostgreSQL) that writes, in one
transaction per batch, as many rows per transfer into each table as the gateway wrote
(counted from the gateway's own database, same schema and indexes, same SQLite pragmas),
copied from the gateway's own rows, plus one UPDATE of the transfer per state change.
It does no reads, no rules and no registry calls: the rate no transfer path can beat.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

import psycopg
import sqlalchemy as sa

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from bench import stack
from bench.common import CpuMeter, CpuShares, Result, Sizes, median_shares, per_second, result
from registry_bridge import db

# Tables a transfer writes rows to, with the column that orders them (newest last).
_TABLES = {
    "transfers": "created_at",
    "transfer_steps": "at",
    "ledger_blocks": "id",
    "ledger_events": "idx",
    "event_blocks": "event_idx",
}


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in _TABLES
        }


def _templates(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """The newest row of each table, as the driver returns it."""
    with engine.connect() as connection:
        return {
            table: dict(
                connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order} DESC LIMIT 1"))
                .one()
                ._mapping
            )
            for table, order in _TABLES.items()
        }


class RawWriter:
    """Writes a transfer's rows with plain DB-API statements, one transaction per batch."""

    def __init__(
        self,
        url: str,
        per_transfer: dict[str, int],
        templates: dict[str, dict[str, Any]],
    ) -> None:
        """Connect to the (migrated, empty) database at ``url``."""
        self.sqlite = db.is_sqlite(url)
        if self.sqlite:
            path = sa.make_url(url).database or ""
            self._connection: Any = sqlite3.connect(path, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                self._connection.execute(f"PRAGMA {pragma}")
        else:
            parsed = sa.make_url(url)
            self._connection = psycopg.connect(
                host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
            )
        self._per_transfer = per_transfer
        self._templates = templates
        self._next = 0
        mark = "?" if self.sqlite else "%s"
        self._insert = {
            table: (
                [c for c in row if not (table == "ledger_blocks" and c == "id")],
                f"INSERT INTO {table} ({{}}) VALUES ({{}})",
            )
            for table, row in templates.items()
        }
        self._sql = {
            table: template.format(", ".join(columns), ", ".join(mark for _ in columns))
            for table, (columns, template) in self._insert.items()
        }
        self._update = f"UPDATE transfers SET state = {mark} WHERE id = {mark}"

    def write_batch(self, count: int) -> None:
        """Write the rows of ``count`` transfers in one transaction."""
        cursor = self._connection.cursor()
        if self.sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        for _ in range(count):
            self._next += 1
            n = self._next
            transfer_id = f"raw{n:029d}"
            for table, times in self._per_transfer.items():
                columns, _ = self._insert[table]
                for k in range(times):
                    row = dict(self._templates[table])
                    self._vary(table, row, transfer_id, n, k)
                    cursor.execute(self._sql[table], [row[c] for c in columns])
            for _ in range(max(0, self._per_transfer.get("transfer_steps", 1) - 1)):
                cursor.execute(self._update, ("CHECKED", transfer_id))
        self._connection.commit() if not self.sqlite else cursor.execute("COMMIT")

    def _vary(self, table: str, row: dict[str, Any], transfer_id: str, n: int, k: int) -> None:
        """Give a copied row the keys that make it new (unique ids, disjoint serials)."""
        if table == "transfers":
            row["id"] = transfer_id
            row["request_id"] = transfer_id
        elif table == "transfer_steps":
            row["transfer_id"] = transfer_id
            row["seq"] = k
        elif table == "ledger_blocks":
            # Disjoint live ranges: PostgreSQL's exclusion constraint checks them.
            start = 10**12 + (n * 16 + k) * 10
            row["serial_start"], row["serial_end"] = start, start
            row["origin_start"] = start
            row["lock_transfer_id"] = transfer_id
        elif table in ("ledger_events", "event_blocks"):
            index = 10**12 + n * 16 + k
            row["idx" if table == "ledger_events" else "event_idx"] = index
            if table == "event_blocks":
                row["seq"] = 0
            else:
                row["transfer_id"] = transfer_id

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def batch_request(size: int, cursor: stack.SerialCursor) -> gateway_pb2.SubmitTransfersRequest:
    return gateway_pb2.SubmitTransfersRequest(
        request_id=uuid.uuid4().hex,
        transfers=[stack.transfer_request(uuid.uuid4().hex, cursor.take()) for _ in range(size)],
    )


def run(sizes: Sizes, database: str) -> list[Result]:
    """Batches of each size through the gateway, then the raw loop; with their ratio."""
    out: list[Result] = []
    cursor = stack.SerialCursor()
    with stack.scratch_database(database) as url, stack.registries() as linked:
        config = stack.gateway_config(url, linked.endpoints())
        with stack.gateway(config) as running:
            channel, gateway = stack.stub(running.target)
            engine = running.server.engine
            rows: dict[str, float] = {}
            meter = CpuMeter(linked.pid)
            for size in sizes.batch_sizes:
                rates: list[float] = []
                shares: list[CpuShares] = []
                for position in range(sizes.runs + 1):
                    # The warm-up batch is small: it warms caches and connections, and
                    # a full-size one would double the run time of the slowest figure.
                    request = batch_request(size if position else min(size, 100), cursor)
                    before = _counts(engine)
                    meter.start()
                    client_cpu = time.thread_time()
                    began = time.perf_counter()
                    reply = gateway.SubmitTransfers(request, timeout=600)
                    seconds = time.perf_counter() - began
                    used = meter.shares(len(request.transfers), time.thread_time() - client_cpu)
                    done = sum(
                        1
                        for r in reply.results
                        if r.transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
                    )
                    if done != len(request.transfers):
                        raise RuntimeError(
                            f"{len(request.transfers) - done} batch transfers failed"
                        )
                    if position:  # the first batch of each size is the warm-up
                        rates.append(per_second(size, seconds))
                        shares.append(used)
                    after = _counts(engine)
                    rows = {t: (after[t] - before[t]) / len(request.transfers) for t in _TABLES}
                out.append(
                    result(
                        "batch",
                        f"submit_transfers.batch_{size}",
                        database,
                        "ops/s",
                        rates,
                        **median_shares(shares),
                    )
                )
            templates = _templates(engine)
            channel.close()
    per_transfer = {t: round(n) for t, n in rows.items()}
    with stack.scratch_database(database) as raw_url:
        engine = db.create_engine(raw_url)
        db.upgrade(engine)
        engine.dispose()
        writer = RawWriter(raw_url, per_transfer, templates)
        try:
            for size, gateway_result in zip(sizes.batch_sizes, list(out), strict=True):
                rates = []
                for position in range(sizes.runs + 1):
                    began = time.perf_counter()
                    writer.write_batch(size)
                    if position:
                        rates.append(per_second(size, time.perf_counter() - began))
                raw = result(
                    "batch",
                    f"raw_rows.batch_{size}",
                    database,
                    "ops/s",
                    rates,
                    rows_per_transfer=per_transfer,
                    driver="sqlite3" if writer.sqlite else "psycopg",
                )
                gateway_result.extra["ratio_to_raw"] = gateway_result.median / raw.median
                gateway_result.extra["rows_per_transfer"] = rows
                out.append(raw)
        finally:
            writer.close()
    return out
