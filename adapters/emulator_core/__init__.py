"""Shared machinery of the registry emulators: store, fault injection, server runner."""

from adapters.client_core import REJECTION_CODE_KEY
from adapters.emulator_core.faults import FaultConfig, FaultInterceptor, ScriptedRefusal
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
    query_holdings,
    required_moment,
    serve_batch,
    serve_batch_into,
)
from adapters.emulator_core.store import (
    RECORD_PREFIX,
    CreditMode,
    Guard,
    OperationRecord,
    Rejection,
    Store,
    StoredHolding,
    UnitState,
    utc_now,
)

__all__ = [
    "BATCH_ITEMS_CAP",
    "RECORD_PREFIX",
    "REJECTION_CODE_KEY",
    "CallCounter",
    "CreditMode",
    "EmulatorSpec",
    "FaultConfig",
    "FaultInterceptor",
    "Guard",
    "Identified",
    "OperationRecord",
    "Rejection",
    "RunningEmulator",
    "ScriptedRefusal",
    "Store",
    "StoredHolding",
    "UnitState",
    "abort_rejected",
    "native_rules",
    "operation_id_of",
    "query_holdings",
    "required_moment",
    "serve_batch",
    "serve_batch_into",
    "start_emulator",
    "utc_now",
]
