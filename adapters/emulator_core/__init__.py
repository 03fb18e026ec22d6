"""Shared machinery of the registry emulators: store, fault injection, server runner."""

from adapters.client_core import REJECTION_CODE_KEY
from adapters.emulator_core.faults import FaultConfig, FaultInterceptor, ScriptedRefusal
from adapters.emulator_core.paging import PAGE_BYTES_CAP, PageAsked, serve_page
from adapters.emulator_core.server import (
    CallCounter,
    EmulatorSpec,
    RunningEmulator,
    abort_rejected,
    native_rules,
    start_emulator,
)
from adapters.emulator_core.servicing import (
    BATCH_ITEMS_CAP,
    Identified,
    operation_id_of,
    required_moment,
    serve_batch,
    serve_batch_into,
)
from adapters.emulator_core.store import (
    INVALID_ACCOUNT,
    PAGE_SIZE_CAP,
    RECORD_PREFIX,
    Account,
    CreditMode,
    Guard,
    ListingKey,
    OperationRecord,
    Rejection,
    Store,
    StoredHolding,
    UnitState,
    utc_now,
)
from registry_bridge.errors import ACCOUNT_NOT_OPEN

__all__ = [
    "ACCOUNT_NOT_OPEN",
    "BATCH_ITEMS_CAP",
    "INVALID_ACCOUNT",
    "PAGE_BYTES_CAP",
    "PAGE_SIZE_CAP",
    "RECORD_PREFIX",
    "REJECTION_CODE_KEY",
    "Account",
    "CallCounter",
    "CreditMode",
    "EmulatorSpec",
    "FaultConfig",
    "FaultInterceptor",
    "Guard",
    "Identified",
    "ListingKey",
    "OperationRecord",
    "PageAsked",
    "Rejection",
    "RunningEmulator",
    "ScriptedRefusal",
    "Store",
    "StoredHolding",
    "UnitState",
    "abort_rejected",
    "native_rules",
    "operation_id_of",
    "required_moment",
    "serve_batch",
    "serve_batch_into",
    "serve_page",
    "start_emulator",
    "utc_now",
]
