"""The ``carbonlink.v1.LinkageGateway`` servicer: requests in, domain calls, responses out."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

import grpc
import structlog

from adapters import serials
from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway import convert, convert_provenance, error_mapping, paging
from gateway.catalog import RegistryInfo
from gateway.migration_api import (
    abandon_migration,
    execute_migration,
    get_migration,
    plan_migration,
    upsert_covered_entity,
)
from gateway.security.policy import (
    current_caller,
    is_regulator,
    maintained_registries,
    may_act_for_entity,
    may_read_migration,
    proving_accounts,
    readable_accounts,
)
from registry_bridge import listing_decisions
from registry_bridge.bridge import Bridge
from registry_bridge.errors import (
    CarbonlinkError,
    FieldViolation,
    InvalidRequest,
    NotFound,
    NotYetImplemented,
)
from registry_bridge.idempotency import answer_once
from registry_bridge.listing import RecordedListing
from registry_bridge.listing_proof import check_first_lister
from registry_bridge.migration import Migrations
from registry_bridge.model import BlockId, Program, UnitBlock, has_control_characters
from registry_bridge.port import RegistryPort
from registry_bridge.provenance import DEFAULT_PAGE_BYTES, ProvenanceLog
from registry_bridge.reconcile import Reconciler
from registry_bridge.rules_gate import list_project
from registry_bridge.transfers import (
    AccountRef,
    Transfer,
    TransferInstruction,
    UnitUse,
    UseRequest,
)

MAX_SERIAL_LENGTH = 256


def _readable(transfer: Transfer) -> Transfer:
    """``transfer``, if the caller may read it.

    Raises:
        NotFound: The caller may not: the same answer as for a transfer that does not
            exist, so that a name tells a stranger nothing.
    """
    accounts = readable_accounts()
    if accounts is None:
        return transfer
    ends = (transfer.instruction.source, transfer.instruction.destination)
    if any(f"{end.registry}:{end.account}" in accounts for end in ends):
        return transfer
    raise NotFound(f"transfers/{transfer.transfer_id}")


def _resource_id(name: str, collection: str) -> str:
    """The id of ``name``, ``{collection}/{id}``.

    Raises:
        InvalidRequest: ``name`` is not of that form.
    """
    prefix = f"{collection}/"
    if (
        not name.startswith(prefix)
        or not name[len(prefix) :]
        or len(name) > 200
        or has_control_characters(name)
    ):
        raise InvalidRequest.field("name", f"must be {collection}/{{{collection[:-1]}_id}}")
    return name[len(prefix) :]


def _transfer_id(name: str) -> str:
    return _resource_id(name, "transfers")


def _readable_use(use: UnitUse) -> UnitUse:
    """``use``, if the caller may read it: as a transfer, by the account it used units of.

    Raises:
        NotFound: The caller may not (the answer for a use that does not exist).
    """
    accounts = readable_accounts()
    holder = use.request.account
    if accounts is None or f"{holder.registry}:{holder.account}" in accounts:
        return use
    raise NotFound(f"uses/{use.use_id}")


def _block_scope(block: BlockId) -> str:
    return f"{block.program.value}/{block.serial_series}:{block.serial_start}-{block.serial_end}"


def _listing_id(name: str) -> str:
    prefix = "listings/"
    listing_id = name[len(prefix) :]
    if (
        not name.startswith(prefix)
        or not listing_id
        or len(listing_id) > 32
        or has_control_characters(name)
    ):
        raise InvalidRequest.field("name", "must be listings/{listing_id}")
    return listing_id


def _page_key(key: tuple[str, ...] | None) -> tuple[datetime, str] | None:
    """The ``(created_at, id)`` a ListTransfers or ListUses page token resumes after.

    Raises:
        InvalidRequest: The key is not one this server wrote.
    """
    if key is None:
        return None
    created, item_id = key
    try:
        at = datetime.fromisoformat(created)
    except ValueError as exc:
        raise InvalidRequest.field("page_token", "is not a token this server issued") from exc
    if at.tzinfo is None or not item_id or len(item_id) > 64:
        raise InvalidRequest.field("page_token", "is not a token this server issued")
    return at, item_id


def _reply_when(value: int) -> gateway_pb2.ReplyWhen.ValueType:
    """REPLY_WHEN_ACCEPTED or REPLY_WHEN_SETTLED (what UNSPECIFIED means), as ``value`` asks.

    Raises:
        InvalidRequest: ``value`` is none this gateway knows (a newer client's, say).
    """
    if value == gateway_pb2.REPLY_WHEN_ACCEPTED:
        return gateway_pb2.REPLY_WHEN_ACCEPTED
    if value in (gateway_pb2.REPLY_WHEN_UNSPECIFIED, gateway_pb2.REPLY_WHEN_SETTLED):
        return gateway_pb2.REPLY_WHEN_SETTLED
    raise InvalidRequest.field("reply_when", f"{value} is not a ReplyWhen this gateway knows")


def _raise_if(problems: list[FieldViolation]) -> None:
    if problems:
        raise InvalidRequest("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


_logger = structlog.get_logger(__name__)


class LinkageGatewayServicer(gateway_pb2_grpc.LinkageGatewayServicer):
    """Serves the gateway API over the registries wired at start-up."""

    def __init__(
        self,
        registries: Sequence[RegistryInfo],
        probe_registries: Callable[[Sequence[RegistryInfo]], Sequence[bool]],
        bridge: Bridge,
        max_batch_size: int,
        reconciler: Reconciler,
        watch_fallback_seconds: float = 1.0,
        migrations: Migrations | None = None,
        provenance: ProvenanceLog | None = None,
        ports: Mapping[str, RegistryPort] | None = None,
        trace_page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        self._registries = tuple(sorted(registries, key=lambda r: r.registry_id))
        self._probe_registries = probe_registries
        self._bridge = bridge
        self._max_batch_size = max_batch_size
        self._watch_fallback_seconds = watch_fallback_seconds
        self._migrations = migrations
        self._provenance = provenance
        self._ports = dict(ports or {})
        self._reconciler = reconciler
        self._trace_page_bytes = trace_page_bytes

    def ListRegistries(
        self, request: gateway_pb2.ListRegistriesRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListRegistriesResponse:
        size = paging.page_size(request.page_size)
        offset = paging.decode_token(request.page_token, scope="registries")
        page = self._registries[offset : offset + size]
        next_offset = offset + len(page)
        return gateway_pb2.ListRegistriesResponse(
            registries=[
                convert.registry_to_pb(r, reachable)
                for r, reachable in zip(page, self._probe_registries(page), strict=True)
            ],
            next_page_token=(
                paging.encode_token(next_offset, scope="registries")
                if next_offset < len(self._registries)
                else ""
            ),
        )

    def ParseSerial(
        self, request: gateway_pb2.ParseSerialRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ParseSerialResponse:
        convert.registry_id("registry", request.registry)
        if not request.serial:
            raise InvalidRequest.field("serial", "is required")
        if len(request.serial) > MAX_SERIAL_LENGTH:
            raise InvalidRequest.field("serial", f"is longer than {MAX_SERIAL_LENGTH} characters")
        block = serials.parse_serial(request.registry, request.serial)
        return gateway_pb2.ParseSerialResponse(
            block=convert.unit_block_to_pb(block, native_serial=request.serial)
        )

    # Capabilities of later issues answer UNIMPLEMENTED until they exist: no fake answers.

    def ListProject(
        self, request: gateway_pb2.ListProjectRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListProjectResponse:
        request_id = convert.request_id(request.request_id)
        project = convert.project_from_pb(request.project)
        if not request.jurisdiction:
            raise InvalidRequest.field("jurisdiction", "is required")
        as_of = convert.iso_date("as_of", request.as_of) if request.as_of else None
        body = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()

        def decide() -> bytes:
            accounts = proving_accounts()
            if accounts is not None:
                # Asked of the project's registry before the listing's transaction, and
                # only of a caller its token scopes to accounts (listing_proof).
                check_first_lister(
                    self._bridge.sessions, self._ports, project, accounts, context.is_active
                )
            today = self._bridge.today()
            day = as_of or today
            outcome = list_project(project, request.jurisdiction, day)
            listing_id = uuid.uuid4().hex
            # Recorded under its name, so GetListing reads it back; a listed project's
            # facts with it, as they decide every later transfer of its units.
            listing_decisions.record(
                self._bridge.sessions,
                RecordedListing(
                    listing_id=listing_id,
                    project=project,
                    jurisdiction=request.jurisdiction,
                    as_of=day,
                    outcome=outcome,
                    requested_by=current_caller(),
                    created_at=datetime.now(UTC),
                    binding=day == today,
                ),
                may_replace_any=is_regulator(),
            )
            reply = convert.listing_to_pb(outcome, f"listings/{listing_id}", binding=day == today)
            return bytes(reply.SerializeToString(deterministic=True))

        answer = answer_once(
            self._bridge.sessions, "ListProject", request_id, body, decide, caller=current_caller()
        )
        return gateway_pb2.ListProjectResponse.FromString(answer)

    def GetListing(
        self, request: gateway_pb2.GetListingRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Listing:
        listing_id = _listing_id(request.name)
        listing = listing_decisions.get(self._bridge.sessions, listing_id)
        # Its requester's and the regulator's only: to anyone else, as a listing that does
        # not exist, so that a name tells a stranger nothing.
        if listing is None or not (is_regulator() or listing.requested_by == current_caller()):
            raise NotFound(f"listings/{listing_id}")
        return convert.recorded_listing_to_pb(listing)

    def EvaluateTransfer(
        self, request: gateway_pb2.EvaluateTransferRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.EvaluateTransferResponse:
        instruction = convert.instruction_from_pb(request.instruction, serials.parse_serial)
        decision = self._bridge.evaluate(instruction)
        return gateway_pb2.EvaluateTransferResponse(decision=convert.decision_to_pb(decision))

    def SubmitTransfer(
        self, request: gateway_pb2.SubmitTransferRequest, context: grpc.ServicerContext
    ) -> model_pb2.Transfer:
        request_id = convert.request_id(request.request_id)
        instruction = convert.instruction_from_pb(request.instruction, serials.parse_serial)
        if _reply_when(request.reply_when) == gateway_pb2.REPLY_WHEN_ACCEPTED:
            transfer = self._bridge.accept(request_id, instruction, caller=current_caller())
        else:
            transfer = self._bridge.submit(request_id, instruction, caller=current_caller())
        return convert.transfer_to_pb(transfer)

    def SubmitTransfers(
        self, request: gateway_pb2.SubmitTransfersRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SubmitTransfersResponse:
        # Optional (each instruction is answered once by its own), but bounded as any id.
        convert.optional_text("request_id", request.request_id)
        reply_when = _reply_when(request.reply_when)
        if not request.transfers:
            raise InvalidRequest.field("transfers", "must hold at least one instruction")
        if len(request.transfers) > self._max_batch_size:
            raise InvalidRequest.field(
                "transfers", f"holds more than the batch cap of {self._max_batch_size}"
            )
        # By position in the request: request ids may be missing or repeated, so only the
        # position tells the caller which instruction a result answers.
        results: list[tuple[int, gateway_pb2.BatchTransferResult]] = []
        parsed: list[tuple[int, str, TransferInstruction]] = []
        for i, item in enumerate(request.transfers):
            try:
                if item.reply_when not in (gateway_pb2.REPLY_WHEN_UNSPECIFIED, reply_when):
                    # One answer for the whole batch: an instruction cannot have its own.
                    raise InvalidRequest.field(
                        f"transfers[{i}].reply_when",
                        "is the batch's to say: leave it unset, or set "
                        "SubmitTransfersRequest.reply_when",
                    )
                parsed.append(
                    (
                        i,
                        convert.request_id(item.request_id, f"transfers[{i}].request_id"),
                        convert.instruction_from_pb(
                            item.instruction, serials.parse_serial, f"transfers[{i}].instruction"
                        ),
                    )
                )
            except CarbonlinkError as exc:
                results.append(
                    (
                        i,
                        gateway_pb2.BatchTransferResult(
                            request_id=item.request_id, error=error_mapping.to_rpc_status(exc)
                        ),
                    )
                )
        answer = (
            self._bridge.accept_many
            if reply_when == gateway_pb2.REPLY_WHEN_ACCEPTED
            else self._bridge.submit_many
        )
        outcomes = answer([(rid, ins) for _, rid, ins in parsed], caller=current_caller())
        for (i, request_id, _), outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, CarbonlinkError):
                result = gateway_pb2.BatchTransferResult(
                    request_id=request_id, error=error_mapping.to_rpc_status(outcome)
                )
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                result = gateway_pb2.BatchTransferResult(
                    request_id=request_id, transfer=convert.transfer_to_pb(outcome)
                )
            results.append((i, result))
        results.sort(key=lambda pair: pair[0])
        return gateway_pb2.SubmitTransfersResponse(results=[r for _, r in results])

    def GetTransfer(
        self, request: gateway_pb2.GetTransferRequest, context: grpc.ServicerContext
    ) -> model_pb2.Transfer:
        return convert.transfer_to_pb(_readable(self._bridge.get(_transfer_id(request.name))))

    def ListTransfers(
        self, request: gateway_pb2.ListTransfersRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListTransfersResponse:
        size = paging.page_size(request.page_size)
        state = None
        if request.state:
            state = convert.TRANSFER_STATE_FROM_PB.get(request.state)
            if state is None:
                raise InvalidRequest.field("state", f"unknown transfer state {request.state}")
        # A registry that does not exist is refused by name: as a filter it would answer
        # an empty list, as if the registry had no transfers.
        convert.registry_id("registry", request.registry, required=False)
        accounts = readable_accounts()
        readable = "*" if accounts is None else ",".join(sorted(accounts))
        scope = f"transfers:{request.state}:{request.registry}:{readable}"
        after = _page_key(paging.decode_key_token(request.page_token, scope, 2))
        transfers, more = self._bridge.list_transfers(
            after, size, state, request.registry, accounts
        )
        next_token = ""
        if more:
            last = transfers[-1]
            next_token = paging.encode_key_token(
                (last.created_at.isoformat(), last.transfer_id), scope
            )
        return gateway_pb2.ListTransfersResponse(
            transfers=[convert.transfer_to_pb(t) for t in transfers],
            next_page_token=next_token,
        )

    def WatchTransfer(
        self, request: gateway_pb2.WatchTransferRequest, context: grpc.ServicerContext
    ) -> Iterator[model_pb2.Transfer]:
        transfer_id = _transfer_id(request.name)
        _readable(self._bridge.get(transfer_id))
        last: tuple[str, int] | None = None
        with self._bridge.changes.watch(transfer_id) as watch:
            # A client gone (cancelled, past its deadline, or cut off by a stopping server)
            # wakes the wait at once: it would otherwise hold a worker until the fallback
            # read came round.
            if not context.add_callback(watch.cancel):
                return
            while context.is_active():
                # Taken before the read: a step committed after it is announced after
                # this, and the wait below returns at once (no wake-up lost in between).
                seen = watch.version
                transfer = self._bridge.get(transfer_id)
                at = (transfer.state.value, len(transfer.history))
                if at != last:
                    last = at
                    yield convert.transfer_to_pb(transfer)
                if transfer.state.is_final:
                    return
                # Woken by this gateway's steps; another gateway's are seen at the
                # fallback read.
                watch.wait(seen, self._watch_fallback_seconds)

    def Retire(
        self, request: gateway_pb2.RetireRequest, context: grpc.ServicerContext
    ) -> model_pb2.UnitUse:
        request_id = convert.request_id(request.request_id)
        problems: list[FieldViolation] = []
        account = convert.account_from_pb(problems, "account", request.account)
        units = convert.units_from_pb(
            problems, "units", account.registry, request.units, serials.parse_serial
        )
        if not request.beneficiary:
            problems.append(FieldViolation("beneficiary", "is required for a retirement"))
        elif not request.beneficiary.strip():
            # A retirement is final: one for no one would stand as the claim for good.
            problems.append(
                FieldViolation("beneficiary", "is blank: name on whose behalf units retire")
            )
        else:
            # Length, and control characters: the name is printed wherever the use is read.
            convert.check_text(problems, "beneficiary", request.beneficiary)
        if len(request.claim_text) > convert.MAX_TEXT_LENGTH:
            problems.append(FieldViolation("claim_text", "is too long"))
        _raise_if(problems)
        use = self._bridge.use(
            request_id,
            UseRequest(
                "retirement",
                account,
                units,
                beneficiary=request.beneficiary,
                claim_text=request.claim_text,
            ),
            caller=current_caller(),
        )
        return convert.use_to_pb(use)

    def Surrender(
        self, request: gateway_pb2.SurrenderRequest, context: grpc.ServicerContext
    ) -> model_pb2.UnitUse:
        request_id = convert.request_id(request.request_id)
        problems: list[FieldViolation] = []
        account = convert.account_from_pb(problems, "account", request.account)
        units = convert.units_from_pb(
            problems, "units", account.registry, request.units, serials.parse_serial
        )
        convert.check_text(problems, "entity_id", request.entity_id)
        if not 2000 <= request.compliance_year <= 2100:
            problems.append(FieldViolation("compliance_year", "must be between 2000 and 2100"))
        if request.jurisdiction not in ("shenzhen", "guangdong", "national"):
            problems.append(
                FieldViolation("jurisdiction", "must be shenzhen, guangdong or national")
            )
        _raise_if(problems)
        use = self._bridge.use(
            request_id,
            UseRequest(
                "surrender",
                account,
                units,
                entity_id=request.entity_id,
                compliance_year=request.compliance_year,
                jurisdiction=request.jurisdiction,
            ),
            caller=current_caller(),
        )
        return convert.use_to_pb(use)

    def GetUse(
        self, request: gateway_pb2.GetUseRequest, context: grpc.ServicerContext
    ) -> model_pb2.UnitUse:
        use_id = _resource_id(request.name, "uses")
        return convert.use_to_pb(_readable_use(self._bridge.get_use(use_id)))

    def ResolveUse(
        self, request: gateway_pb2.ResolveUseRequest, context: grpc.ServicerContext
    ) -> model_pb2.UnitUse:
        request_id = convert.request_id(request.request_id)
        use_id = _resource_id(request.name, "uses")
        problems: list[FieldViolation] = []
        action = convert.USE_RESOLUTION_ACTION_FROM_PB.get(request.action)
        if action is None:
            problems.append(
                FieldViolation(
                    "action",
                    "must be USE_RESOLUTION_ACTION_RETRY or USE_RESOLUTION_ACTION_SETTLE_MANUALLY",
                )
            )
        # Required to settle manually: the bridge says so, with what the words are for.
        convert.check_text(
            problems, "reason", request.reason, required=False, limit=convert.MAX_TEXT_LENGTH
        )
        if action is None or problems:
            raise InvalidRequest(
                "; ".join(f"{p.field}: {p.description}" for p in problems), problems
            )
        # An operator resolves the uses of the accounts its token names; to it any other
        # does not exist, as for GetUse.
        _readable_use(self._bridge.get_use(use_id))
        use = self._bridge.resolve_use(
            request_id, use_id, action, request.reason, caller=current_caller()
        )
        return convert.use_to_pb(use)

    def ListUses(
        self, request: gateway_pb2.ListUsesRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListUsesResponse:
        size = paging.page_size(request.page_size)
        problems: list[FieldViolation] = []
        if request.kind not in ("", "retirement", "surrender"):
            problems.append(FieldViolation("kind", "must be retirement or surrender, or unset"))
        state = None
        if request.state:
            state = convert.USE_STATE_FROM_PB.get(request.state)
            if state is None:
                problems.append(FieldViolation("state", f"unknown use state {request.state}"))
        holder = None
        if request.HasField("holder"):
            # A registry that does not exist is refused by name, as ListTransfers' is: as a
            # filter it would answer an empty list, as if no one had used units there.
            holder = AccountRef(
                convert.check_registry(problems, "holder.registry", request.holder.registry),
                convert.check_text(
                    problems, "holder.account", request.holder.account, required=False
                ),
            )
        _raise_if(problems)
        accounts = readable_accounts()
        readable = "*" if accounts is None else ",".join(sorted(accounts))
        holding = "" if holder is None else f"{holder.registry}:{holder.account}"
        scope = f"uses:{request.kind}:{request.state}:{holding}:{readable}"
        after = _page_key(paging.decode_key_token(request.page_token, scope, 2))
        uses, more = self._bridge.list_uses(
            after, size, kind=request.kind, holder=holder, state=state, accounts=accounts
        )
        next_token = ""
        if more:
            last = uses[-1]
            next_token = paging.encode_key_token((last.created_at.isoformat(), last.use_id), scope)
        return gateway_pb2.ListUsesResponse(
            uses=[convert.use_to_pb(u) for u in uses], next_page_token=next_token
        )

    def PlanMigration(
        self, request: gateway_pb2.PlanMigrationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.MigrationPlan:
        return plan_migration(self._migration_service(), request)

    def ExecuteMigration(
        self, request: gateway_pb2.ExecuteMigrationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Migration:
        return execute_migration(self._migration_service(), request, current_caller())

    def GetMigration(
        self, request: gateway_pb2.GetMigrationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Migration:
        migration = get_migration(self._migration_service(), request)
        if not may_read_migration(migration.plan.entity_id):
            # As for a migration that does not exist: a name tells a stranger nothing.
            raise NotFound(migration.name)
        return migration

    def AbandonMigration(
        self, request: gateway_pb2.AbandonMigrationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Migration:
        return abandon_migration(
            self._migration_service(),
            request,
            current_caller(),
            may_read_migration,
            may_act_for_entity,
        )

    def UpsertCoveredEntity(
        self, request: gateway_pb2.UpsertCoveredEntityRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CoveredEntity:
        return upsert_covered_entity(
            self._migration_service(), request, current_caller(), maintained_registries()
        )

    def _migration_service(self) -> Migrations:
        if self._migrations is None:
            raise NotYetImplemented("migrations (not wired in this server)", issue=7)
        return self._migrations

    def _log(self) -> ProvenanceLog:
        if self._provenance is None:
            raise NotYetImplemented("the provenance log (not wired in this server)", issue=6)
        return self._provenance

    def TraceUnits(
        self, request: gateway_pb2.TraceUnitsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.TraceUnitsResponse:
        claim: tuple[str, UnitBlock] | None = None
        if request.HasField("block"):
            if request.registry or request.serial:
                raise InvalidRequest.field("block", "give either registry and serial, or block")
            try:
                query = BlockId(
                    Program(request.block.program),
                    convert.optional_text("block.serial_series", request.block.serial_series),
                    request.block.serial_start,
                    request.block.serial_end,
                )
            except ValueError as exc:
                raise InvalidRequest.field("block", str(exc)) from exc
            scope = f"trace:block:{_block_scope(query)}"
        else:
            if not request.registry:
                raise InvalidRequest.field("registry", "is required with a serial")
            convert.registry_id("registry", request.registry)
            if not request.serial or len(request.serial) > MAX_SERIAL_LENGTH:
                raise InvalidRequest.field(
                    "serial", f"is required (at most {MAX_SERIAL_LENGTH} characters)"
                )
            claimed = serials.parse_serial(request.registry, request.serial)
            query, claim = claimed.id, (request.serial, claimed)
            scope = f"trace:serial:{request.registry}:{request.serial}"
        limit = paging.trace_page_size(request.page_size)
        log = self._log()
        # The token pins the first page's tree size and says where to resume: every page
        # is proven against that one checkpoint, however the log grows meanwhile.
        # It also carries the serial ranges the first page found answering the query, so
        # that a page reads the log from where the last ended and not every event of the
        # units again: a long history is read once, not once per page.
        resume = paging.TraceResume(0, 0, None)
        if request.page_token:
            resume = paging.decode_trace_token(request.page_token, scope, log.page_token_key)
        page = log.trace_page(
            query,
            limit=limit,
            pinned_size=resume.pinned_size if request.page_token else None,
            start=resume.start,
            max_bytes=self._trace_page_bytes,
            claim=claim,
            ranges=resume.ranges,
        )
        response = convert_provenance.trace_page_to_pb(page)
        if page.next_start is not None:
            response.next_page_token = paging.encode_trace_token(
                paging.TraceResume(page.checkpoint.checkpoint.size, page.next_start, page.ranges),
                scope,
                log.page_token_key,
            )
        return response

    def GetCheckpoint(
        self, request: gateway_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> model_pb2.Checkpoint:
        return convert_provenance.checkpoint_to_pb(self._log().checkpoint())

    def GetConsistencyProof(
        self, request: gateway_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> model_pb2.ConsistencyProof:
        proof = self._log().consistency(request.first_size, request.second_size)
        return convert_provenance.consistency_to_pb(request.first_size, proof)

    def Reconcile(
        self, request: gateway_pb2.ReconcileRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ReconcileReport:
        # Read-only: request_id is accepted for symmetry with the ITL's reconciliation
        # id, but a reconciliation changes nothing, so it is not answered once-only.
        problems: list[FieldViolation] = []
        convert.check_text(problems, "request_id", request.request_id, required=False)
        registries: Sequence[str] = ()
        if convert.check_count(problems, "registries", request.registries, "registries"):
            registries = request.registries
        for i, registry in enumerate(registries):
            path = f"registries[{i}]"
            recorded = len(problems)
            convert.check_registry(problems, path, registry)
            if len(problems) == recorded and registry not in self._ports:
                problems.append(
                    FieldViolation(
                        path,
                        f"registry {registry!r} is not wired in this gateway; wired "
                        f"registries: {', '.join(sorted(self._ports))}",
                    )
                )
        _raise_if(problems)
        # A caller gone (cancelled, past its deadline, or cut off by a stopping server)
        # stops it, the registry read under way cancelled: it would otherwise hold a
        # worker, and the server's shutdown, until every registry had answered.
        run = self._reconciler.run(
            request.registries, still_wanted=context.is_active, requested_by=current_caller()
        )
        assert run.report is not None  # a run returned has completed
        return convert_provenance.report_to_pb(run.report, reconciliation_id=run.id)

    def ListReconciliations(
        self, request: gateway_pb2.ListReconciliationsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListReconciliationsResponse:
        size = paging.page_size(request.page_size)
        scope = f"reconciliations:{request.trigger}"
        # The token holds the id the next page's runs are below: runs recorded while a
        # client pages (newest first) never shift the pages it has not read yet.
        before = paging.decode_token(request.page_token, scope) or None
        runs = self._reconciler.runs(before_id=before, limit=size + 1, trigger=request.trigger)
        more = len(runs) > size
        page = runs[:size]
        return gateway_pb2.ListReconciliationsResponse(
            reconciliations=[convert_provenance.reconciliation_to_pb(r) for r in page],
            next_page_token=paging.encode_token(page[-1].id, scope) if more else "",
        )
