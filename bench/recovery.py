"""Recovery: how long a restarted gateway takes to resolve in-flight transfers.

A first gateway settles one batch while the destination registry (Shenzhen) is out of
its reach (its endpoint is a loopback port bound by nothing that listens): every
transfer locks its source and stops at SOURCE_LOCKED, waiting for the credit.  That
gateway stops; once its lease on the transfers has run out, a second gateway starts on
the same database with Shenzhen reachable, and its recovery loop rolls every transfer
forward.  The figure is the time from the second gateway's ``start()`` until the last
transfer is COMPLETED (start-up and registry import included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Iterator

import sqlalchemy as sa

from bench import batch, stack
from bench.common import Result, Sizes, result
from registry_bridge.schema import TransferRecord
from registry_bridge.transfers import TransferState

_LEASE_SECONDS = 1.0
_DEADLINE_SECONDS = 600.0


@contextlib.contextmanager
def _refusing_address() -> Iterator[str]:
    """A loopback address that refuses connections while the block runs.

    The port stays bound (never listening) rather than released: a released port can be
    taken by another process's server meanwhile (gRPC servers bind with SO_REUSEPORT),
    and the first gateway would then credit Shenzhen units somewhere else.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _states(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            state: int(count)
            for state, count in connection.execute(
                sa.select(TransferRecord.state, sa.func.count()).group_by(TransferRecord.state)
            ).tuples()
        }


def run(sizes: Sizes, database: str) -> list[Result]:
    """One measured recovery of ``sizes.recovery_transfers`` in-flight transfers."""
    count = sizes.recovery_transfers
    with (
        stack.scratch_database(database) as url,
        stack.registries() as linked,
        _refusing_address() as refusing,
    ):
        down = stack.gateway_config(url, linked.endpoints(("shenzhen",), refusing))
        down = dataclasses.replace(
            down,
            registry_retry_attempts=1,
            registry_timeout_seconds=1.0,
            transfer_lease_seconds=_LEASE_SECONDS,
            recovery_interval_seconds=3600.0,
        )
        with stack.gateway(down) as first:
            channel, gateway = stack.stub(first.target)
            gateway.SubmitTransfers(
                batch.batch_request(count, stack.SerialCursor()), timeout=_DEADLINE_SECONDS
            )
            channel.close()
            stuck = _states(first.server.engine)
        if stuck.get(TransferState.SOURCE_LOCKED.value, 0) != count:
            raise RuntimeError(f"expected {count} transfers SOURCE_LOCKED, found {stuck}")
        time.sleep(_LEASE_SECONDS * 1.5)  # the first gateway's lease runs out
        up = dataclasses.replace(
            stack.gateway_config(url, linked.endpoints()), transfer_lease_seconds=_LEASE_SECONDS
        )
        began = time.perf_counter()
        with stack.gateway(up) as second:
            started = time.perf_counter() - began
            deadline = began + _DEADLINE_SECONDS
            while time.perf_counter() < deadline:
                states = _states(second.server.engine)
                if states.get(TransferState.COMPLETED.value, 0) == count:
                    break
                time.sleep(0.02)
            else:
                raise RuntimeError(f"recovery did not finish in {_DEADLINE_SECONDS}s: {states}")
            seconds = time.perf_counter() - began
    return [
        result(
            "recovery",
            f"resolve_in_flight.transfers_{count}",
            database,
            "s",
            [seconds],
            transfers=count,
            start_s=started,
            transfers_per_s=count / seconds,
        )
    ]
