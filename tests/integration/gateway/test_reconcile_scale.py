"""What a reconciliation costs the registries: its totals, then its holdings a page per
call, however large the ledger.

Phase 2 compares each registry's holdings listing with the ledger in memory, both ways;
it once asked each registry about every ledger block, one call per block, and a ledger of
some 30,000 blocks outlasted a client's two minutes.  The listing pages, so it costs one
call per page of the registry's holdings, whatever the ledger holds.  Calls are counted
by the emulators, which see every call the gateway makes, retries included.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.client_core import LISTING_PAGE_SIZE
from adapters.emulator_core import PAGE_SIZE_CAP
from adapters.serials import parse_serial
from gateway.convert import block_id_to_pb
from registry_bridge import db, ledger
from registry_bridge.model import BlockId, Program
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    linked_registries,
    running_gateway,
)

# Each wired registry's native reads of a reconciliation: its totals and its holdings.
# (The holdings weigh a few hundred bytes each: the pages' byte cap is never reached.)
PAGE = min(LISTING_PAGE_SIZE, PAGE_SIZE_CAP)
READS = {
    "verra": ("GetRegistryTotals", "ListAccountHoldings"),
    "hkmo": ("VenueTotals", "QueryPositions"),
    "shenzhen": ("Statistics", "QueryLots"),
}
START = parse_serial("verra", VERRA_SERIAL).id.serial_start


def _calls(registries: LinkedRegistries) -> dict[str, Counter[str]]:
    return {r: e.calls.snapshot() for r, e in registries.emulators.items()}


def _made_since(
    before: Mapping[str, Counter[str]], registries: LinkedRegistries
) -> dict[str, Counter[str]]:
    """Calls each emulator received since ``before``, health probes left out."""
    made = {}
    for registry, now in _calls(registries).items():
        since = now - before[registry]
        del since["Check"]
        made[registry] = since
    return made


def _reads(registries: LinkedRegistries) -> dict[str, Counter[str]]:
    """One totals read per registry, and one listing call per page of its holdings."""
    reads = {}
    for registry, (totals, listing) in READS.items():
        held = len(registries.emulators[registry].store.holdings())
        reads[registry] = Counter({totals: 1, listing: max(1, -(-held // PAGE))})
    return reads


def _pages(**listing_calls: int) -> dict[str, Counter[str]]:
    """One totals read per registry, and its listing calls."""
    return {
        registry: Counter({totals: 1, listing: listing_calls[registry]})
        for registry, (totals, listing) in READS.items()
    }


def test_a_reconciliation_reads_each_registry_once_for_totals_and_once_for_holdings(
    live_gateway: LiveGateway, registries: LinkedRegistries
) -> None:
    # Forty one-unit sales: at Hong Kong, Verra (the venue's backing, bridged) and
    # Shenzhen (the mirrors), the ledger places some eighty blocks.
    batch = gateway_pb2.SubmitTransfersRequest(
        transfers=[
            gateway_pb2.SubmitTransferRequest(
                request_id=f"sale-{n}",
                instruction=model_pb2.TransferInstruction(
                    source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                    destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                    units=[
                        model_pb2.UnitSelector(
                            block=block_id_to_pb(
                                BlockId(Program.VCS, "", START + 2 * n, START + 2 * n)
                            )
                        )
                    ],
                ),
            )
            for n in range(40)
        ]
    )
    results = live_gateway.stub.SubmitTransfers(batch, timeout=60).results
    assert all(r.transfer.state == model_pb2.TRANSFER_STATE_COMPLETED for r in results)
    with db.read_only(db.session_factory(live_gateway.server.engine)) as session:
        assert len(ledger.all_live(session)) > 80

    before = _calls(registries)
    report = live_gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
    assert report.consistent, report.discrepancies
    # Some eighty holdings: one page each.
    assert (
        _made_since(before, registries) == _reads(registries) == _pages(verra=1, hkmo=1, shenzhen=1)
    )


# Blocks bulk-loaded at Verra and in the ledger for the large reconciliation: each in one
# transaction, as the registry import and a settlement batch write theirs.
BLOCKS = 4_000
ACCOUNTS = 40
BULK_START = 10**9
ISSUED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _bulk_load(gateway: LiveGateway, registries: LinkedRegistries) -> None:
    """``BLOCKS`` Verra blocks of ten units over ``ACCOUNTS`` accounts, at Verra and in
    the gateway's ledger alike."""
    template = parse_serial("verra", VERRA_SERIAL)
    blocks = [
        dataclasses.replace(
            template,
            id=BlockId(Program.VCS, "", BULK_START + 20 * n, BULK_START + 20 * n + 9),
        )
        for n in range(BLOCKS)
    ]
    store = registries.emulators["verra"].store
    with store.batch():
        for n, block in enumerate(blocks):
            store.issue(f"bulk-{n}", f"bulk-{n % ACCOUNTS}", block)
    sessions = db.session_factory(gateway.server.engine)
    with db.unit_of_work(sessions) as session:
        ledger.defer_claims(session)
        for n, block in enumerate(blocks):
            ledger.issue(session, "verra", f"bulk-{n % ACCOUNTS}", block, ISSUED_AT)


def test_a_large_ledger_reconciles_in_a_totals_read_and_a_call_per_page_per_registry(
    database_url: str,
) -> None:
    with linked_registries() as registries:
        registries.seed_venue()
        # No periodic import: the bulk-loaded blocks are the ledger's already.
        with running_gateway(
            database_url, registries, registry_import_interval_seconds=3600.0
        ) as gateway:
            _bulk_load(gateway, registries)
            with db.read_only(db.session_factory(gateway.server.engine)) as session:
                assert len(ledger.all_live(session)) > BLOCKS

            before = _calls(registries)
            report = gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
            assert report.consistent, report.discrepancies[:5]
            made = _made_since(before, registries)
            assert made == _reads(registries)
            # Verra's thousands of holdings take a call per page; the others one.
            assert made["verra"]["ListAccountHoldings"] >= BLOCKS // PAGE > 1

            # One block retired behind the gateway's back, among thousands, is found from
            # both sides, and nothing else is.
            victim = BlockId(Program.VCS, "", BULK_START + 20 * 1234, BULK_START + 20 * 1234 + 9)
            registries.emulators["verra"].store.retire(
                "behind-the-back", f"bulk-{1234 % ACCOUNTS}", victim, ()
            )
            report = gateway.stub.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
            blocks = [d for d in report.discrepancies if d.phase == "unit_blocks"]
            assert [(d.gateway_quantity, d.registry_quantity) for d in blocks] == [(10, 0), (0, 10)]
            assert {(d.block.serial_start, d.block.serial_end) for d in blocks} == {
                (victim.serial_start, victim.serial_end)
            }
