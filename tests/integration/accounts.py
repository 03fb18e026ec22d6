"""The accounts the integration tests send units to, open at every emulator they start.

A registry puts units only into an account it has opened (issuance opens the account it
issues into; a credit into any other is refused ``ACCOUNT_NOT_OPEN``).  The fixtures
start every emulator with these open, as a real registry's accounts exist before units
are sent to them, so a test names its accounts as before; a test of the refusal itself
names an account outside this list.
"""

from __future__ import annotations

WELL_KNOWN_ACCOUNTS: tuple[str, ...] = (
    # Exchange desks, buyers and sellers.
    "a",
    "b",
    "c",
    "x",
    "buyer",
    "seller",
    "other",
    "owner",
    "holder",
    "issuer",
    "mine",
    "nobody",
    "elsewhere",
    "someone-else",
    "somebody-else",
    "desk",
    "verra-desk",
    "other-desk",
    "dev-1",
    "dev-2",
    "gs-dev",
    "gs-buyer",
    "hk-seller",
    "hk-buyer",
    "hk-back",
    "hk-stranger",
    "vs-seller",
    "sz-buyer",
    "sz-other",
    "airline",
    # The adapters' contract suite.
    "ACC-1",
    "ACC-2",
    # Covered entities' accounts.
    "entity-1",
    "steel-1",
    "steel-sz",
    "gd-cement",
    "cn-1",
    "cn-2",
    "cn-holder",
    "cn-steel",
    "cn-gd-cement",
    *(f"buyer-{i}" for i in range(64)),
    *(f"buyer-{client}" for client in ("venue", "origin", "batch", "use")),
)
"""Every emulator the integration fixtures start holds these open."""
