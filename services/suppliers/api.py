"""The gRPC entrypoint: proto requests in, commands to the handlers, proto responses out."""

from __future__ import annotations

from typing import Any

import grpc

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as pb_grpc
from services.suppliers import handlers
from services.suppliers.convert import change_to_proto, qualification_to_proto, supplier_to_proto
from services.suppliers.domain import Action, ChangeQualification
from shared.errors import Violations
from shared.protoconv import from_timestamp, timestamp_is_valid
from shared.uow import UnitOfWorkFactory


class SupplierApi(pb_grpc.SupplierServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def CreateSupplier(self, request: pb.CreateSupplierRequest,
                             context: grpc.aio.ServicerContext) -> pb.CreateSupplierResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        v.text("name", request.name, max_length=200)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        row, quals = await handlers.create_supplier(
            self._uow(), supplier_id=request.supplier_id, name=request.name.strip(),
            requested_by=request.requested_by)
        return pb.CreateSupplierResponse(supplier=supplier_to_proto(row, quals))

    async def GetSupplier(self, request: pb.GetSupplierRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetSupplierResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        v.raise_if_any()
        row, quals = await handlers.get_supplier(self._uow(), supplier_id=request.supplier_id)
        return pb.GetSupplierResponse(supplier=supplier_to_proto(row, quals))

    async def QualifySupplier(self, request: pb.QualifySupplierRequest,
                              context: grpc.aio.ServicerContext) -> pb.QualifySupplierResponse:
        v = Violations()
        if not request.HasField("valid_until"):
            v.add("valid_until", "is required: the date by which the supplier must be "
                                 "requalified")
        elif not timestamp_is_valid(request.valid_until):
            v.add("valid_until", "is not a valid timestamp")
        command = self._command(request, Action.QUALIFY, v)
        q = await handlers.change_qualification(self._uow(), command)
        return pb.QualifySupplierResponse(qualification=qualification_to_proto(q))

    async def SuspendQualification(
            self, request: pb.SuspendQualificationRequest,
            context: grpc.aio.ServicerContext) -> pb.SuspendQualificationResponse:
        command = self._command(request, Action.SUSPEND, Violations())
        q = await handlers.change_qualification(self._uow(), command)
        return pb.SuspendQualificationResponse(qualification=qualification_to_proto(q))

    async def DisqualifySupplier(
            self, request: pb.DisqualifySupplierRequest,
            context: grpc.aio.ServicerContext) -> pb.DisqualifySupplierResponse:
        command = self._command(request, Action.DISQUALIFY, Violations())
        q = await handlers.change_qualification(self._uow(), command)
        return pb.DisqualifySupplierResponse(qualification=qualification_to_proto(q))

    async def ListQualificationHistory(
            self, request: pb.ListQualificationHistoryRequest,
            context: grpc.aio.ServicerContext) -> pb.ListQualificationHistoryResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        if request.material_code:
            v.code("material_code", request.material_code)
        v.raise_if_any()
        rows = await handlers.list_history(self._uow(), supplier_id=request.supplier_id,
                                           material_code=request.material_code)
        return pb.ListQualificationHistoryResponse(changes=[change_to_proto(r) for r in rows])

    @staticmethod
    def _command(request: Any, action: Action, v: Violations) -> ChangeQualification:
        v.code("supplier_id", request.supplier_id)
        v.code("material_code", request.material_code)
        v.text("reason", request.reason, max_length=2000)
        v.text("requested_by", request.requested_by, max_length=200)
        if request.HasField("expected_version") and request.expected_version < 0:
            v.add("expected_version", "must not be negative")
        v.raise_if_any()
        valid_until = None
        if action is Action.QUALIFY:
            valid_until = from_timestamp(request.valid_until)
        return ChangeQualification(
            supplier_id=request.supplier_id, material_code=request.material_code,
            action=action, reason=request.reason.strip(), requested_by=request.requested_by,
            valid_until=valid_until,
            expected_version=(request.expected_version
                              if request.HasField("expected_version") else None))
