"""The gRPC entrypoint: proto requests in, commands to the handlers, proto responses out."""

from __future__ import annotations

import math
from datetime import timedelta

import grpc

from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from services.results import handlers
from services.results.convert import (
    IDENTITY_FROM_PROTO,
    MEASUREMENT_FIELD,
    STERILITY_FROM_PROTO,
    TEST_FROM_PROTO,
    measurement_from_proto,
    result_to_proto,
    specification_to_proto,
)
from services.results.domain import (
    Range,
    RecordResult,
    SetSpecification,
    TestKind,
    range_problems,
)
from shared.errors import Violations
from shared.protoconv import fingerprint, from_timestamp, timestamp_is_valid
from shared.uow import UnitOfWorkFactory

# Instrument clocks drift; a result measured further ahead than this is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_UNIT_LENGTH = 32


class ResultApi(pb_grpc.ResultServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def SetSpecification(self, request: pb.SetSpecificationRequest,
                               context: grpc.aio.ServicerContext) -> pb.SetSpecificationResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        if not request.HasField("identity"):
            v.add("identity", "is required: the reference the sample must match")
        else:
            v.text("identity.reference", request.identity.reference, max_length=500)
        purity = request.purity
        lower = purity.lower if purity.HasField("lower") else None
        upper = purity.upper if purity.HasField("upper") else None
        if not request.HasField("purity"):
            v.add("purity", "is required: the accepted range and its unit")
        else:
            for limit, problem in range_problems(lower, upper):
                v.add(f"purity.{limit}" if limit else "purity", problem)
            v.text("purity.unit", purity.unit, max_length=MAX_UNIT_LENGTH)
        if not request.HasField("sterility"):
            v.add("sterility", "is required: results must show no growth")
        else:
            v.text("sterility.method", request.sterility.method, max_length=500,
                   required=False)
        v.text("approved_by", request.approved_by, max_length=200)
        v.raise_if_any()
        spec = await handlers.set_specification(self._uow(), SetSpecification(
            material_code=request.material_code,
            identity_reference=request.identity.reference.strip(),
            purity=Range(lower=lower, upper=upper, unit=purity.unit.strip()),
            sterility_method=request.sterility.method.strip(),
            approved_by=request.approved_by))
        return pb.SetSpecificationResponse(specification=specification_to_proto(spec))

    async def GetSpecification(self, request: pb.GetSpecificationRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetSpecificationResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        v.raise_if_any()
        spec = await handlers.get_specification(self._uow(),
                                                material_code=request.material_code)
        return pb.GetSpecificationResponse(specification=specification_to_proto(spec))

    async def RecordResult(self, request: pb.RecordResultRequest,
                           context: grpc.aio.ServicerContext) -> pb.RecordResultResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        v.code("instrument_id", request.instrument_id)
        v.code("idempotency_key", request.idempotency_key, max_length=128)
        test = TEST_FROM_PROTO.get(request.test)
        if test is None:
            v.add("test", "must be IDENTITY, PURITY or STERILITY")
        self._check_measurement(request, test, v)
        measured_at = None
        if request.HasField("measured_at"):
            if not timestamp_is_valid(request.measured_at):
                v.add("measured_at", "is not a valid timestamp")
            else:
                measured_at = from_timestamp(request.measured_at)
                if measured_at > self._uow.clock.now() + MAX_CLOCK_SKEW:
                    v.add("measured_at", "lies more than 5 minutes in the future")
        v.raise_if_any()
        assert test is not None
        result = await handlers.record_result(self._uow(), RecordResult(
            lot_id=request.lot_id, test=test, instrument_id=request.instrument_id,
            idempotency_key=request.idempotency_key,
            measurement=measurement_from_proto(request), measured_at=measured_at,
            fingerprint=fingerprint(request)))
        return pb.RecordResultResponse(result=result_to_proto(result))

    async def ListLotResults(self, request: pb.ListLotResultsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListLotResultsResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        v.raise_if_any()
        results = await handlers.list_lot_results(self._uow(), lot_id=request.lot_id)
        return pb.ListLotResultsResponse(results=[result_to_proto(r) for r in results])

    @staticmethod
    def _check_measurement(request: pb.RecordResultRequest, test: TestKind | None,
                           v: Violations) -> None:
        which = request.WhichOneof("measurement")
        if which is None:
            v.add("measurement", "is required: identity, quantity or sterility")
            return
        expected = MEASUREMENT_FIELD[test] if test else None
        if expected is not None and which != expected:
            v.add("measurement", f"a {test} result carries {expected}, not {which}")
            return
        if which == "identity" and request.identity not in IDENTITY_FROM_PROTO:
            v.add("identity", "must be MATCH or NO_MATCH")
        elif which == "sterility" and request.sterility not in STERILITY_FROM_PROTO:
            v.add("sterility", "must be NO_GROWTH or GROWTH")
        elif which == "quantity":
            if not math.isfinite(request.quantity.value):
                v.add("quantity.value", "must be a finite number")
            v.text("quantity.unit", request.quantity.unit, max_length=MAX_UNIT_LENGTH)
