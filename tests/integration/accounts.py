"""The accounts the integration tests send units to, open at every emulator they start.

A registry puts units only into an account it has opened (issuance opens the account it
issues into; a credit into any other is refused ``ACCOUNT_NOT_OPEN``).  The fixtures
start every emulator with these open, as a real registry's accounts exist before units
are sent to them, so a test names its accounts as before; a test of the refusal itself
names an account outside this list.
"""

from __future__ import annotations

WELL_KNOWN_ACCOUNTS: tuple[str, ...] = (
    "ACC-1",
    "ACC-2",
    "a",
    "b",
    "c",
    "buyer",
    "sz-buyer",
    "sz-other",
    "hk-seller",
    "hk-buyer",
    "gs-buyer",
    "desk",
    "verra-desk",
    "other-desk",
    "dev-1",
    "dev-2",
    *(f"buyer-{i}" for i in range(16)),
)
"""Every emulator the integration fixtures start holds these open."""
