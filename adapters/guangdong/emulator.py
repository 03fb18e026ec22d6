"""An emulated Guangdong pilot registry: GDEA allowances and PHCER carbon-inclusive units.

Every application is decided at once and answered by a receipt: approved with the batch,
or refused (不予通过) with the refusal code and reason; the store's operation log keeps
each decision, so ``GetReceipt`` answers it again later.  Units arriving from other
registries become mirror batches with Guangdong numbers.  Guangdong's own rules besides
the common ones: compliance clearing (履约清缴) takes GDEA, PHCER and CCER (the offsets
the Guangdong pilot accepts) and names the entity and the year; a neutrality
cancellation (碳中和注销) names its beneficiary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpc

from adapters._pb.registries.guangdong.v1 import guangdong_pb2 as pb
from adapters._pb.registries.guangdong.v1 import guangdong_pb2_grpc as pb_grpc
from adapters.client_core import from_rfc3339, to_rfc3339
from adapters.emulator_core import (
    CreditMode,
    EmulatorSpec,
    PageAsked,
    Rejection,
    Store,
    StoredHolding,
    UnitState,
    native_rules,
    required_moment,
    serve_batch,
    serve_page,
)
from adapters.guangdong.client import (
    REGISTRY_ID,
    batch_from_native,
    batch_to_native,
    range_from_native,
    range_to_native,
)
from registry_bridge.model import Program

PROGRAMS = frozenset({Program.GDEA, Program.GD_PHCER})
"""What Guangdong issues: its allowances and its carbon-inclusive units."""

COMPLIANCE_VARIETIES = frozenset({Program.GDEA, Program.GD_PHCER, Program.CCER})
"""What a Guangdong covered entity may clear for compliance (CCER as a mirror batch)."""


class _Numbered(Protocol):
    """Any application: each carries its application number."""

    @property
    def application_no(self) -> str: ...


Application = TypeVar("Application", bound=_Numbered)

_STATUS: dict[UnitState, int] = {
    UnitState.ACTIVE: pb.BATCH_STATUS_NORMAL,
    UnitState.LOCKED: pb.BATCH_STATUS_RESTRICTED,
    UnitState.IMMOBILIZED: pb.BATCH_STATUS_ESCROWED,
    UnitState.RETIRED: pb.BATCH_STATUS_NEUTRALITY_CANCELLED,
    UnitState.CANCELLED: pb.BATCH_STATUS_CANCELLED,
    UnitState.SURRENDERED: pb.BATCH_STATUS_CLEARED,
    UnitState.EXPORTED: pb.BATCH_STATUS_TRANSFERRED_OUT,
}


def _held(held: StoredHolding) -> pb.HeldBatch:
    return pb.HeldBatch(
        batch=batch_to_native(held.block),
        holder_code=held.account,
        status=_STATUS[held.state],  # type: ignore[arg-type]
        # NOTE(registry-adapters): mypy-protobuf types enum fields as a NewType of int.
        restricted_until=to_rfc3339(held.lock_expires_at),
        transfer_no=held.lock_transfer or held.detail("transfer_no"),
        mirror_of=None if held.mirror_of is None else range_to_native(held.mirror_of),
        mirror_registry=held.mirror_registry if held.mirror_of is not None else "",
        remarks=[pb.Attribute(key=k, value=v) for k, v in held.details],
    )


class GuangdongServicer(pb_grpc.GuangdongRegistryServicer):
    """Guangdong's applications, decided against the emulator store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _decide(self, application_no: str, apply: Callable[[], StoredHolding]) -> pb.Receipt:
        """Run one application and answer its receipt, approved or refused."""
        try:
            held = apply()
        except Rejection as rejection:
            return self._refused(application_no, rejection)
        except ValueError as exc:
            # A field that does not translate is refused like any other application.
            return self._refused(application_no, Rejection("INVALID_REQUEST", str(exc)))
        return pb.Receipt(
            application_no=application_no,
            outcome=pb.OUTCOME_APPROVED,
            batch=_held(held),
            decided_at=self._decided_at(application_no),
        )

    def _refused(self, application_no: str, rejection: Rejection) -> pb.Receipt:
        return pb.Receipt(
            application_no=application_no,
            outcome=pb.OUTCOME_REFUSED,
            refusal_code=rejection.code,
            refusal_reason=rejection.message,
            decided_at=self._decided_at(application_no),
        )

    def _decided_at(self, application_no: str) -> str:
        record = self._store.operation(application_no) if application_no else None
        return "" if record is None else to_rfc3339(record.recorded_at)

    def Issue(self, request: pb.IssueApplication, context: grpc.ServicerContext) -> pb.Receipt:
        """核发: issue a batch to a holder."""
        return self._decide(
            request.application_no,
            lambda: self._store.issue(
                request.application_no, request.holder_code, batch_from_native(request.batch)
            ),
        )

    def Restrict(
        self, request: pb.RestrictApplication, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """限制: restrict units for a transfer until a time."""
        return self._restrict(request)

    def _restrict(self, request: pb.RestrictApplication) -> pb.Receipt:
        def apply() -> StoredHolding:
            until = required_moment(
                request.restricted_until, "restricted_until is required to restrict units"
            )
            return self._store.lock(
                request.application_no,
                request.holder_code,
                range_from_native(request.range),
                until,
                request.transfer_no,
            )

        return self._decide(request.application_no, apply)

    def LiftRestriction(
        self, request: pb.LiftRestrictionApplication, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """解除限制: lift a transfer's restriction."""
        return self._decide(
            request.application_no,
            lambda: self._store.unlock(
                request.application_no,
                request.holder_code,
                range_from_native(request.range),
                request.transfer_no,
            ),
        )

    def ConcludeTransferOut(
        self, request: pb.ConcludeTransferOutApplication, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """转出办结: escrow the restricted units, or transfer them out."""
        return self._conclude(request)

    def _conclude(self, request: pb.ConcludeTransferOutApplication) -> pb.Receipt:
        def apply() -> StoredHolding:
            if request.conclusion == pb.CONCLUSION_UNSPECIFIED:
                raise ValueError("conclusion is required")
            return self._store.finalize(
                request.application_no,
                request.holder_code,
                range_from_native(request.range),
                request.transfer_no,
                export=request.conclusion == pb.CONCLUSION_TRANSFER_OUT,
                details=(
                    ("transfer_no", request.transfer_no),
                    ("receiving_registry", request.receiving_registry),
                ),
            )

        return self._decide(request.application_no, apply)

    def ReceiveTransferIn(
        self, request: pb.ReceiveTransferInApplication, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """转入: receive units from another registry, before the acceptance deadline."""
        return self._receive(request)

    def _receive(self, request: pb.ReceiveTransferInApplication) -> pb.Receipt:
        return self._decide(
            request.application_no,
            lambda: self._store.credit(
                request.application_no,
                request.holder_code,
                batch_from_native(request.batch),
                request.sending_registry,
                request.transfer_no,
                details=(("transfer_no", request.transfer_no),),
                deadline=from_rfc3339(request.accept_before),
            ),
        )

    def _batch(
        self,
        context: grpc.ServicerContext,
        applications: Sequence[Application],
        decide: Callable[[Application], pb.Receipt],
    ) -> pb.ReceiptList:
        # decide() answers every refusal with a receipt itself; the refusal answer below
        # is serve_batch's contract, kept the same in case a refusal ever escapes it.
        with native_rules(context):
            receipts = serve_batch(
                self._store,
                applications,
                decide,
                lambda application, rejection: self._refused(application.application_no, rejection),
            )
            return pb.ReceiptList(receipts=receipts)

    def RestrictBatch(
        self, request: pb.RestrictBatchApplication, context: grpc.ServicerContext
    ) -> pb.ReceiptList:
        """批量限制: many restrictions, each decided as ``Restrict``, in one transaction."""
        return self._batch(context, request.applications, self._restrict)

    def ConcludeTransferOutBatch(
        self, request: pb.ConcludeTransferOutBatchApplication, context: grpc.ServicerContext
    ) -> pb.ReceiptList:
        """批量转出办结: many conclusions, each as ``ConcludeTransferOut``, in one transaction."""
        return self._batch(context, request.applications, self._conclude)

    def ReceiveTransferInBatch(
        self, request: pb.ReceiveTransferInBatchApplication, context: grpc.ServicerContext
    ) -> pb.ReceiptList:
        """批量转入: many transfers-in, each as ``ReceiveTransferIn``, in one transaction."""
        return self._batch(context, request.applications, self._receive)

    def ClearForCompliance(
        self, request: pb.ClearForComplianceApplication, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """履约清缴: clear units for an entity's compliance year."""

        def apply() -> StoredHolding:
            block_id = range_from_native(request.range)
            if not request.entity_code or request.compliance_year <= 0:
                raise ValueError("a compliance clearing names the entity and the year")
            if block_id.program not in COMPLIANCE_VARIETIES:
                raise Rejection(
                    "NOT_ELIGIBLE_FOR_COMPLIANCE",
                    f"{block_id.program.value} units do not count towards Guangdong compliance",
                )
            return self._store.surrender(
                request.application_no,
                request.holder_code,
                block_id,
                (("entity", request.entity_code), ("year", str(request.compliance_year))),
            )

        return self._decide(request.application_no, apply)

    def CancelForNeutrality(
        self, request: pb.CancelForNeutralityApplication, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """碳中和注销: cancel units for a beneficiary's neutrality claim."""

        def apply() -> StoredHolding:
            if not request.beneficiary:
                raise Rejection(
                    "BENEFICIARY_REQUIRED", "a neutrality cancellation names its beneficiary"
                )
            return self._store.retire(
                request.application_no,
                request.holder_code,
                range_from_native(request.range),
                (("beneficiary", request.beneficiary), ("claim", request.claim)),
            )

        return self._decide(request.application_no, apply)

    def Cancel(self, request: pb.CancelApplication, context: grpc.ServicerContext) -> pb.Receipt:
        """注销: cancel units."""
        return self._decide(
            request.application_no,
            lambda: self._store.cancel(
                request.application_no,
                request.holder_code,
                range_from_native(request.range),
                (("reason", request.reason),),
            ),
        )

    def GetReceipt(
        self, request: pb.GetReceiptRequest, context: grpc.ServicerContext
    ) -> pb.Receipt:
        """回执查询: the receipt of an application (NOT_FOUND if never received)."""
        with native_rules(context):
            record = self._store.operation(request.application_no)
            if record is None:
                raise Rejection("UNITS_NOT_FOUND", f"no application {request.application_no}")
            if record.rejection is not None:
                return self._refused(record.operation_id, record.rejection)
            assert record.holding is not None
            return pb.Receipt(
                application_no=record.operation_id,
                outcome=pb.OUTCOME_APPROVED,
                batch=_held(record.holding),
                decided_at=to_rfc3339(record.recorded_at),
            )

    def ListBatches(
        self, request: pb.ListBatchesRequest, context: grpc.ServicerContext
    ) -> pb.BatchList:
        """持仓查询: a page of the batches of a holder, or overlapping a range."""
        with native_rules(context):
            overlapping = (
                range_from_native(request.overlapping) if request.HasField("overlapping") else None
            )
            asked = PageAsked(
                request.rows_per_page, "rows_per_page", request.resume_key, "resume_key"
            )
            batches, resume_key = serve_page(
                self._store,
                asked,
                _held,
                account=request.holder_code,
                overlapping=overlapping,
            )
            return pb.BatchList(batches=batches, next_resume_key=resume_key)

    def Summarize(self, request: pb.SummarizeRequest, context: grpc.ServicerContext) -> pb.Summary:
        """汇总: quantities per variety and batch status."""
        with native_rules(context):
            return pb.Summary(
                totals=[
                    pb.VarietyTotal(
                        variety=program.value,
                        status=_STATUS[state],  # type: ignore[arg-type]
                        # NOTE(registry-adapters): enum NewType, as above.
                        quantity=quantity,
                    )
                    for program, state, quantity in self._store.totals()
                ]
            )


def _add_servicer(server: grpc.Server, store: Store) -> None:
    pb_grpc.add_GuangdongRegistryServicer_to_server(GuangdongServicer(store), server)


SPEC = EmulatorSpec(
    registry_id=REGISTRY_ID,
    programs=PROGRAMS,
    credit_mode=CreditMode.MIRROR,
    add_servicer=_add_servicer,
)
"""The emulated Guangdong registry (see :func:`adapters.emulator_core.start_emulator`)."""
