"""The ``carbonlink.v1.LinkageGateway`` servicer: requests in, domain calls, responses out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import grpc
import structlog

from adapters import serials
from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from gateway import convert, paging
from gateway.catalog import RegistryInfo
from registry_bridge.errors import InvalidRequest, NotYetImplemented

MAX_SERIAL_LENGTH = 256

_logger = structlog.get_logger(__name__)


class LinkageGatewayServicer(gateway_pb2_grpc.LinkageGatewayServicer):
    """Serves the gateway API over the registries wired at start-up."""

    def __init__(
        self,
        registries: Sequence[RegistryInfo],
        probe_registry: Callable[[RegistryInfo], bool],
    ) -> None:
        self._registries = tuple(sorted(registries, key=lambda r: r.registry_id))
        self._probe_registry = probe_registry

    def ListRegistries(
        self, request: gateway_pb2.ListRegistriesRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListRegistriesResponse:
        size = paging.page_size(request.page_size)
        offset = paging.decode_token(request.page_token, scope="registries")
        page = self._registries[offset : offset + size]
        next_offset = offset + len(page)
        return gateway_pb2.ListRegistriesResponse(
            registries=[convert.registry_to_pb(r, self._probe_registry(r)) for r in page],
            next_page_token=(
                paging.encode_token(next_offset, scope="registries")
                if next_offset < len(self._registries)
                else ""
            ),
        )

    def ParseSerial(
        self, request: gateway_pb2.ParseSerialRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ParseSerialResponse:
        if not request.registry:
            raise InvalidRequest.field("registry", "is required")
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
        raise NotYetImplemented("ListProject (rules engine)", issue=5)

    def EvaluateTransfer(
        self, request: gateway_pb2.EvaluateTransferRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.EvaluateTransferResponse:
        raise NotYetImplemented("EvaluateTransfer (registry bridge)", issue=4)

    def SubmitTransfer(
        self, request: gateway_pb2.SubmitTransferRequest, context: grpc.ServicerContext
    ) -> model_pb2.Transfer:
        raise NotYetImplemented("SubmitTransfer (registry bridge)", issue=4)

    def SubmitTransfers(
        self, request: gateway_pb2.SubmitTransfersRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SubmitTransfersResponse:
        raise NotYetImplemented("SubmitTransfers (registry bridge)", issue=4)

    def GetTransfer(
        self, request: gateway_pb2.GetTransferRequest, context: grpc.ServicerContext
    ) -> model_pb2.Transfer:
        raise NotYetImplemented("GetTransfer (registry bridge)", issue=4)

    def ListTransfers(
        self, request: gateway_pb2.ListTransfersRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListTransfersResponse:
        raise NotYetImplemented("ListTransfers (registry bridge)", issue=4)

    def WatchTransfer(
        self, request: gateway_pb2.WatchTransferRequest, context: grpc.ServicerContext
    ) -> Iterator[model_pb2.Transfer]:
        raise NotYetImplemented("WatchTransfer (registry bridge)", issue=4)

    def Retire(
        self, request: gateway_pb2.RetireRequest, context: grpc.ServicerContext
    ) -> model_pb2.UnitUse:
        raise NotYetImplemented("Retire (registry bridge)", issue=4)

    def Surrender(
        self, request: gateway_pb2.SurrenderRequest, context: grpc.ServicerContext
    ) -> model_pb2.UnitUse:
        raise NotYetImplemented("Surrender (registry bridge)", issue=4)

    def PlanMigration(
        self, request: gateway_pb2.PlanMigrationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.MigrationPlan:
        raise NotYetImplemented("PlanMigration (national ETS migration)", issue=7)

    def ExecuteMigration(
        self, request: gateway_pb2.ExecuteMigrationRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Migration:
        raise NotYetImplemented("ExecuteMigration (national ETS migration)", issue=7)

    def TraceUnits(
        self, request: gateway_pb2.TraceUnitsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.TraceUnitsResponse:
        raise NotYetImplemented("TraceUnits (provenance log)", issue=6)

    def GetCheckpoint(
        self, request: gateway_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> model_pb2.Checkpoint:
        raise NotYetImplemented("GetCheckpoint (provenance log)", issue=6)

    def GetConsistencyProof(
        self, request: gateway_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> model_pb2.ConsistencyProof:
        raise NotYetImplemented("GetConsistencyProof (provenance log)", issue=6)

    def Reconcile(
        self, request: gateway_pb2.ReconcileRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ReconcileReport:
        raise NotYetImplemented("Reconcile (provenance and reconciliation)", issue=6)
