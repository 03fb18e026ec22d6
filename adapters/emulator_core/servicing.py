"""Small steps every emulated registry's servicer takes the same way.

Each takes the native values a servicer has read from its own messages, so the native
vocabulary (field names, refusal wording) stays in the registry's ``emulator.py``.
"""

from __future__ import annotations

from datetime import datetime

from adapters.client_core import from_rfc3339
from adapters.emulator_core.store import Store, StoredHolding
from registry_bridge.model import BlockId


def query_holdings(store: Store, overlapping: BlockId | None, account: str) -> list[StoredHolding]:
    """A holdings query: rows overlapping a block (exported included), or an account's rows.

    Args:
        store: The registry's store.
        overlapping: The block asked about, or ``None`` to list by account.
        account: With ``overlapping``, keeps only this account's rows ('' keeps all);
            without, the account to list ('' lists all, exported left out).

    Returns:
        The matching rows.
    """
    if overlapping is None:
        return store.holdings(account)
    found = store.find(overlapping)
    if account:
        found = [h for h in found if h.account == account]
    return found


def required_moment(text: str, message: str) -> datetime:
    """The RFC 3339 moment a native request must carry.

    Args:
        text: The native field's value.
        message: The refusal, in the registry's own words, when it is empty.

    Raises:
        ValueError: The field is empty (answered as ``INVALID_REQUEST``) or malformed.
    """
    moment = from_rfc3339(text)
    if moment is None:
        raise ValueError(message)
    return moment
