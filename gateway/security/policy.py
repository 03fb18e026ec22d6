"""Who may call what: the one table of roles per RPC, and per-account scoping.

Each RPC of ``carbonlink.v1.LinkageGateway`` names the roles it accepts; an RPC missing
from the table is refused to everyone (fail closed), and a test pins the table to the
service's methods. Roles that move units (exchange operator, covered entity, issuer)
move them only out of the accounts their token names (``accounts: ["hkmo:hk-seller"]``),
and a covered entity executes, or abandons once failed, only its own migration
(``entities: ["steelco"]``; a regulator abandons any, :func:`may_act_for_entity`); a
surrender counts only for an entity the token names.  An issuer lists (or has refused) a
project no one has listed only when the project's registry of origin answers that one of
the accounts its token names there holds or held the project's units
(:func:`proving_accounts`, ``registry_bridge.listing_proof``).  A registry records the
covered entities of its own jurisdiction only, those of the registries its token names
(``registries: ["shenzhen"]``, :func:`maintained_registries`).
The auditor's role appears only on reads and audits; the regulator's also on what it
supervises: project listings, covered entities' records, and giving up a failed migration.

Transfers are also read by account: an exchange operator's or a covered entity's trades
and their settlement amounts are its own business, not its competitors'.  A caller sees
the transfers whose source or destination is an account its token names, the
retirements and surrenders of units those accounts held, and the
migrations of the entities its token names (a plan shows an entity's holdings and
obligations); the auditor and the regulator see all of them, and they alone trace a unit's
history, which names every account that held the units.  The servicer asks
:func:`readable_accounts` and :func:`may_read_migration`, which the security interceptor
sets for the call (:func:`acting_as`).

Request ids are scoped per caller, the token subject: the servicer asks
:func:`current_caller` whose space a call's request ids are in, so one party's ids never
block another's, nor answer another's repeat with its own result.  Tokens of one subject
are one caller, whatever roles or accounts each names.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from google.protobuf.message import Message

from adapters._pb.carbonlink.v1 import gateway_pb2
from gateway.security.tokens import Principal
from registry_bridge.errors import PermissionDenied
from registry_bridge.idempotency import LOCAL_CALLER

_EVERYONE = frozenset(
    {"exchange_operator", "issuer", "covered_entity", "auditor", "regulator", "registry"}
)
_MOVERS = frozenset({"exchange_operator", "covered_entity"})

RPC_ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # Reads: every authenticated role.
        "ListRegistries": _EVERYONE,
        "ParseSerial": _EVERYONE,
        "EvaluateTransfer": _EVERYONE,
        "GetTransfer": _EVERYONE,
        "ListTransfers": _EVERYONE,
        "WatchTransfer": _EVERYONE,
        # Read as transfers are: the servicer keeps each caller to its own accounts' uses.
        "GetUse": _EVERYONE,
        "ListUses": _EVERYONE,
        "GetMigration": _EVERYONE,
        # A unit's history names every account that held it and every move between them:
        # the auditor's and the regulator's to read, as every transfer is (READ_EVERYTHING).
        "TraceUnits": frozenset({"auditor", "regulator"}),
        "GetCheckpoint": _EVERYONE,
        "GetConsistencyProof": _EVERYONE,
        # Dry runs and audits that change nothing.
        "PlanMigration": frozenset({"covered_entity", "regulator", "auditor"}),
        "Reconcile": frozenset({"auditor", "regulator"}),
        "ListReconciliations": frozenset({"auditor", "regulator"}),
        # Writes.
        "ListProject": frozenset({"issuer", "regulator"}),
        # A read, but of what only its requester and regulators may see (the servicer
        # answers anyone else NOT_FOUND): no role that cannot list a project reads one.
        "GetListing": frozenset({"issuer", "regulator"}),
        "SubmitTransfer": _MOVERS,
        "SubmitTransfers": _MOVERS,
        "Retire": _MOVERS | {"issuer"},
        "Surrender": _MOVERS,
        "ExecuteMigration": frozenset({"covered_entity"}),
        # Giving a failed migration up: the entity's own decision (the servicer keeps it
        # to the entities its token names), or its regulator's, who supervises the move
        # and may end one the entity cannot carry on; never an auditor, who only reads.
        "AbandonMigration": frozenset({"covered_entity", "regulator"}),
        # Settling a use one registry did and another refused: the exchange operator's
        # job, on the accounts its token names (the servicer answers any other use
        # NOT_FOUND); never the holders' own (a covered entity or issuer), who could
        # otherwise mark their own units used.  Auditors and regulators read it (GetUse).
        "ResolveUse": frozenset({"exchange_operator"}),
        "UpsertCoveredEntity": frozenset({"regulator", "registry"}),
    }
)
"""Roles accepted by each RPC of the gateway service (by method name)."""


READ_EVERYTHING = frozenset({"auditor", "regulator"})
"""Roles that read every transfer and migration; the others only their own accounts' and
entities'."""


def _accounts_moved(method: str, request: Message) -> list[tuple[str, str]]:
    """``(field path, registry:account)`` of every account the request moves units out of."""
    if isinstance(request, gateway_pb2.SubmitTransferRequest):
        source = request.instruction.source
        return [("instruction.source", f"{source.registry}:{source.account}")]
    if isinstance(request, gateway_pb2.SubmitTransfersRequest):
        return [
            (
                f"transfers[{i}].instruction.source",
                f"{t.instruction.source.registry}:{t.instruction.source.account}",
            )
            for i, t in enumerate(request.transfers)
        ]
    if isinstance(request, gateway_pb2.RetireRequest | gateway_pb2.SurrenderRequest):
        return [("account", f"{request.account.registry}:{request.account.account}")]
    return []


def authorize(method: str, principal: Principal, request: Message) -> None:
    """Refuse the call unless the principal's roles and accounts allow it.

    Args:
        method: The RPC's method name, e.g. ``SubmitTransfer``.
        principal: The authenticated caller.
        request: The request message.

    Raises:
        PermissionDenied: No role of the caller is accepted by the RPC, or the request
            moves units out of an account (or dry-runs such a move, or migrates, or
            surrenders for, an entity) the token does not name.
    """
    accepted = RPC_ROLES.get(method)
    if accepted is None or not principal.roles & accepted:
        raise PermissionDenied(
            f"{method} needs one of the roles {', '.join(sorted(accepted or ()))}; "
            f"the caller has {', '.join(sorted(principal.roles))}"
        )
    for path, account in _accounts_moved(method, request):
        if account not in principal.accounts:
            raise PermissionDenied(f"{path}: the caller's token does not name account {account!r}")
    if isinstance(request, gateway_pb2.EvaluateTransferRequest) and not (
        principal.roles & READ_EVERYTHING
    ):
        # A dry run answers from the ledger (who holds the units, what became of them):
        # only who could submit the transfer, or reads everything, may ask.
        source = request.instruction.source
        if f"{source.registry}:{source.account}" not in principal.accounts:
            raise PermissionDenied(
                "instruction.source: the caller's token does not name account "
                f"{source.registry + ':' + source.account!r}"
            )
    entity: tuple[str, str] | None = None
    if isinstance(request, gateway_pb2.ExecuteMigrationRequest):
        entity = ("plan.entity_id", request.plan.entity_id)
    elif isinstance(request, gateway_pb2.SurrenderRequest):
        # A surrender counts for the entity it names, and spends that entity's offset
        # limit for the year: only the entity's own parties may name it.
        entity = ("entity_id", request.entity_id)
    elif isinstance(request, gateway_pb2.PlanMigrationRequest) and not (
        principal.roles & READ_EVERYTHING
    ):
        entity = ("entity_id", request.entity_id)
    if entity is not None and entity[1] not in principal.entities:
        raise PermissionDenied(
            f"{entity[0]}: the caller's token does not name entity {entity[1]!r}"
        )


_readable: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "readable_accounts", default=None
)
_readable_entities: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "readable_entities", default=None
)
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default=LOCAL_CALLER)
_regulator: contextvars.ContextVar[bool] = contextvars.ContextVar("regulator", default=False)
_acting_entities: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "acting_entities", default=None
)
_proving: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "proving_accounts", default=None
)
_maintained: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "maintained_registries", default=None
)


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Scope the block's transfer reads to what ``principal`` may see, and its request ids
    to ``principal``'s own."""
    everything = bool(principal.roles & READ_EVERYTHING)
    token = _readable.set(None if everything else frozenset(principal.accounts))
    entities = _readable_entities.set(None if everything else frozenset(principal.entities))
    caller = _caller.set(principal.subject)
    is_regulator = "regulator" in principal.roles
    regulator = _regulator.set(is_regulator)
    acting = _acting_entities.set(None if is_regulator else frozenset(principal.entities))
    proving = _proving.set(None if is_regulator else frozenset(principal.accounts))
    maintained = _maintained.set(None if is_regulator else principal.registries)
    try:
        yield
    finally:
        _maintained.reset(maintained)
        _proving.reset(proving)
        _acting_entities.reset(acting)
        _regulator.reset(regulator)
        _caller.reset(caller)
        _readable_entities.reset(entities)
        _readable.reset(token)


def current_caller() -> str:
    """Whose request-id space the current call's request ids are in: the token subject.

    The local caller when no caller is authenticated: the gateway runs insecure, for local
    development only, and all its clients are one party.
    """
    return _caller.get()


def is_regulator() -> bool:
    """Whether the current caller acts as a regulator (who may, for one, correct any
    project's listed facts).  False when no caller is authenticated: an insecure gateway's
    clients are one caller, who owns every listing they made."""
    return _regulator.get()


def proving_accounts() -> frozenset[str] | None:
    """``registry:account`` whose holdings may prove the current caller's claim to a project
    no one has listed (``registry_bridge.listing_proof``); None when it need prove nothing.

    None for a regulator, who lists any project in its supervision, and when no caller is
    authenticated: the gateway runs insecure, for local development only, and its one
    local party has no accounts to scope it to (as :func:`readable_accounts`).
    """
    return _proving.get()


def maintained_registries() -> frozenset[str] | None:
    """Registry ids whose covered entities the current caller records (a registry's token
    names them, ``registries``); None for any entity.

    None for a regulator, who supervises every scheme, and when no caller is
    authenticated: the gateway runs insecure, for local development only, and its one
    local party imports any registry's export (as :func:`proving_accounts`).
    """
    return _maintained.get()


def readable_accounts() -> frozenset[str] | None:
    """``registry:account`` whose transfers the current caller may read; None for all.

    None also when no caller is authenticated: the gateway runs insecure, for local
    development only.
    """
    return _readable.get()


def may_act_for_entity(entity_id: str) -> bool:
    """Whether the current caller may decide for ``entity_id``'s migrations (abandon one):
    a regulator for any entity, another caller for the entities its token names. True
    when no caller is authenticated: the gateway runs insecure."""
    entities = _acting_entities.get()
    return entities is None or entity_id in entities


def may_read_migration(entity_id: str) -> bool:
    """Whether the current caller may read the migrations of ``entity_id`` (any, when no
    caller is authenticated: the gateway runs insecure)."""
    entities = _readable_entities.get()
    return entities is None or entity_id in entities
