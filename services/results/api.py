"""The gRPC entrypoint: proto requests in, commands to the handlers, proto responses out."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc

from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from services.results import handlers, signatures
from services.results.convert import (
    IDENTITY_FROM_PROTO,
    INSTRUMENT_STATUS_FROM_PROTO,
    MAX_UNIT_LENGTH,
    MEASUREMENT_FIELDS,
    STERILITY_FROM_PROTO,
    TEST_FROM_PROTO,
    calibration_to_proto,
    criteria_from_proto,
    instrument_to_proto,
    measurement_from_proto,
    result_to_proto,
    specification_to_proto,
)
from services.results.domain import (
    InstrumentStatus,
    TestCriterion,
    calibration_record_problems,
    check_tests,
)
from services.results.records import Calibration, Instrument, RecordResult, SpecificationDraft
from shared import paging
from shared.dates import EPOCH, bounds_problem
from shared.errors import PermissionDenied, Violations
from shared.protoconv import fingerprint, from_timestamp, timestamp_is_valid
from shared.uow import UnitOfWorkFactory

# Instrument clocks drift; a result measured further ahead than this is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_BATCH = 500
MAX_TESTS = 20
# The instrument a call comes from, when the caller says so (see RecordResult).
INSTRUMENT_HEADER = "x-lotgate-instrument"
_UNSET = datetime.min.replace(tzinfo=UTC)  # set by the handler


class ResultApi(pb_grpc.ResultServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    # Specifications

    async def CreateSpecificationDraft(
            self, request: pb.CreateSpecificationDraftRequest,
            context: grpc.aio.ServicerContext) -> pb.CreateSpecificationDraftResponse:
        v = Violations()
        command = _draft(request, v)
        v.raise_if_any()
        spec = await handlers.create_specification_draft(self._uow(), command)
        return pb.CreateSpecificationDraftResponse(specification=specification_to_proto(spec))

    async def UpdateSpecificationDraft(
            self, request: pb.UpdateSpecificationDraftRequest,
            context: grpc.aio.ServicerContext) -> pb.UpdateSpecificationDraftResponse:
        v = Violations()
        command = _draft(request, v)
        _version(v, request.version)
        v.raise_if_any()
        spec = await handlers.update_specification_draft(self._uow(), command,
                                                         version=request.version)
        return pb.UpdateSpecificationDraftResponse(specification=specification_to_proto(spec))

    async def ApproveSpecification(
            self, request: pb.ApproveSpecificationRequest,
            context: grpc.aio.ServicerContext) -> pb.ApproveSpecificationResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        _version(v, request.version)
        effective_from = v.instant(request, "effective_from")
        v.text("approved_by", request.approved_by, max_length=200)
        v.raise_if_any()
        spec = await handlers.approve_specification(
            self._uow(), material_code=request.material_code, version=request.version,
            effective_from=effective_from, approved_by=request.approved_by)
        return pb.ApproveSpecificationResponse(specification=await self._spec(spec))

    async def GetSpecification(self, request: pb.GetSpecificationRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetSpecificationResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        if request.version < 0:
            v.add("version", "must not be negative")
        as_of = v.instant(request, "as_of")
        if request.version and request.HasField("as_of"):
            v.add("as_of", "give either as_of or version, not both")
        v.raise_if_any()
        spec = await handlers.get_specification(
            self._uow(), material_code=request.material_code, version=request.version,
            as_of=as_of)
        return pb.GetSpecificationResponse(specification=await self._spec(spec))

    async def ListSpecificationVersions(
            self, request: pb.ListSpecificationVersionsRequest,
            context: grpc.aio.ServicerContext) -> pb.ListSpecificationVersionsResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        v.raise_if_any()
        found = await handlers.list_specification_versions(
            self._uow(), material_code=request.material_code)
        shown = [specification_to_proto(s) for s in found]
        await signatures.show_specifications(self._uow(), shown)
        return pb.ListSpecificationVersionsResponse(specifications=shown)

    async def _spec(self, spec: Any) -> pb.Specification:
        shown = specification_to_proto(spec)
        await signatures.show_specifications(self._uow(), [shown])
        return shown

    async def _results(self, found: Any) -> list[pb.Result]:
        shown = [result_to_proto(r) for r in found]
        await signatures.show_results(self._uow(), shown)
        return shown

    # Instruments

    async def RegisterInstrument(
            self, request: pb.RegisterInstrumentRequest,
            context: grpc.aio.ServicerContext) -> pb.RegisterInstrumentResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        v.text("type", request.type, max_length=100)
        v.text("location", request.location, max_length=200, required=False)
        calibration = self._calibration(request, v)
        v.raise_if_any()
        assert calibration is not None
        instrument = Instrument(
            instrument_id=request.instrument_id, type=request.type.strip(),
            location=request.location.strip(), status=InstrumentStatus.ACTIVE,
            status_reason="registered", calibration_due=calibration.calibration_due,
            registered_by=request.requested_by, registered_at=_UNSET)
        saved = await handlers.register_instrument(self._uow(), instrument, calibration)
        return pb.RegisterInstrumentResponse(instrument=instrument_to_proto(saved))

    async def RecordCalibration(
            self, request: pb.RecordCalibrationRequest,
            context: grpc.aio.ServicerContext) -> pb.RecordCalibrationResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        calibration = self._calibration(request, v)
        v.raise_if_any()
        assert calibration is not None
        saved = await handlers.record_calibration(
            self._uow(), instrument_id=request.instrument_id, calibration=calibration)
        return pb.RecordCalibrationResponse(instrument=instrument_to_proto(saved))

    async def SetInstrumentStatus(
            self, request: pb.SetInstrumentStatusRequest,
            context: grpc.aio.ServicerContext) -> pb.SetInstrumentStatusResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        status = INSTRUMENT_STATUS_FROM_PROTO.get(request.status)
        if status is None:
            v.add("status", "must be ACTIVE, OUT_OF_SERVICE or RETIRED")
        v.text("reason", request.reason, max_length=2000, prose=True)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        assert status is not None
        saved = await handlers.set_instrument_status(
            self._uow(), instrument_id=request.instrument_id, status=status,
            reason=request.reason.strip(), requested_by=request.requested_by)
        return pb.SetInstrumentStatusResponse(instrument=instrument_to_proto(saved))

    async def GetInstrument(self, request: pb.GetInstrumentRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetInstrumentResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        v.raise_if_any()
        instrument, history = await handlers.get_instrument(
            self._uow(), instrument_id=request.instrument_id)
        return pb.GetInstrumentResponse(instrument=instrument_to_proto(instrument),
                                        calibrations=[calibration_to_proto(c) for c in history])

    def _calibration(self, request: Any, v: Violations) -> Calibration | None:
        """The calibration a Register/RecordCalibration request carries (`recorded_at` is
        set by the handler); None when it is not valid (and noted)."""
        calibrated_on = v.day_between("calibrated_on", request.calibrated_on)
        due = v.day_between("calibration_due", request.calibration_due)
        if calibrated_on is not None and due is not None:
            for field, problem in calibration_record_problems(calibrated_on, due,
                                                              self._today()):
                v.add(field, problem)
        v.text("certificate_ref", request.certificate_ref, max_length=200)
        v.text("requested_by", request.requested_by, max_length=200)
        if calibrated_on is None or due is None:
            return None
        return Calibration(calibrated_on=calibrated_on, calibration_due=due,
                           certificate_ref=request.certificate_ref.strip(),
                           recorded_by=request.requested_by, recorded_at=_UNSET)

    def _today(self) -> date:
        return self._uow.clock.now().astimezone(UTC).date()

    # Results

    async def RecordResult(self, request: pb.RecordResultRequest,
                           context: grpc.aio.ServicerContext) -> pb.RecordResultResponse:
        """Record one result.

        An instrument may post only as itself: the gate (shared.auth) checks the
        instrument_id against the caller's token. The older `x-lotgate-instrument`
        metadata is still accepted, and must then name the same instrument_id.
        """
        _check_caller(context, request.instrument_id)
        v = Violations()
        command = self._entry(request, v, "")
        v.raise_if_any()
        assert command is not None
        (result,) = await handlers.record_results(self._uow(), [command])
        return pb.RecordResultResponse(result=result_to_proto(result))

    async def RecordResults(self, request: pb.RecordResultsRequest,
                            context: grpc.aio.ServicerContext) -> pb.RecordResultsResponse:
        """Record up to 500 results of one instrument in one transaction: all or none.

        The same rule as RecordResult holds for `x-lotgate-instrument`.
        """
        v = Violations()
        entries = request.results
        if not 1 <= len(entries) <= MAX_BATCH:
            v.add("results", f"must hold from 1 to {MAX_BATCH} results")
            v.raise_if_any()
        instrument_id = entries[0].instrument_id
        _check_caller(context, instrument_id)
        commands: list[RecordResult | None] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            where = f"results[{i}]."
            if i and entry.instrument_id != instrument_id:
                v.add(f"{where}instrument_id",
                      f"must be {instrument_id}, like results[0]: a batch comes from one "
                      "instrument")
            if entry.instrument_result_id in seen:
                v.add(f"{where}instrument_result_id",
                      f"repeats results[{seen[entry.instrument_result_id]}]")
            seen.setdefault(entry.instrument_result_id, i)
            commands.append(self._entry(entry, v, where))
        v.raise_if_any()
        found = await handlers.record_results(
            self._uow(), [c for c in commands if c is not None], batch=True)
        return pb.RecordResultsResponse(results=[result_to_proto(r) for r in found])

    def _entry(self, request: pb.RecordResultRequest, v: Violations,
               where: str) -> RecordResult | None:
        """The command for one posted result; None when it is not valid (and noted)."""
        v.code(f"{where}lot_id", request.lot_id)
        v.code(f"{where}instrument_id", request.instrument_id)
        v.code(f"{where}instrument_result_id", request.instrument_result_id, max_length=128)
        if request.retest_of:
            v.code(f"{where}retest_of", request.retest_of, max_length=36)
        test = TEST_FROM_PROTO.get(request.test)
        if test is None:
            v.add(f"{where}test", "must be IDENTITY, PURITY, STERILITY, ASSAY or BIOBURDEN")
        ok = _check_measurement(request, test, v, where)
        measured_at = None
        if not request.HasField("measured_at"):
            v.add(f"{where}measured_at", "is required: when the instrument measured")
        elif not timestamp_is_valid(request.measured_at):
            v.add(f"{where}measured_at", "is not a valid timestamp")
        else:
            measured_at = from_timestamp(request.measured_at)
            if measured_at > self._uow.clock.now() + MAX_CLOCK_SKEW:
                v.add(f"{where}measured_at", "lies more than 5 minutes in the future")
            elif before_epoch := bounds_problem(measured_at.date(), EPOCH, None):
                v.add(f"{where}measured_at", before_epoch)
        if test is None or measured_at is None or not ok:
            return None
        return RecordResult(
            lot_id=request.lot_id, test=test, instrument_id=request.instrument_id,
            instrument_result_id=request.instrument_result_id,
            measurement=measurement_from_proto(request), measured_at=measured_at,
            retest_of=request.retest_of, fingerprint=fingerprint(request))

    async def InvalidateResult(self, request: pb.InvalidateResultRequest,
                               context: grpc.aio.ServicerContext) -> pb.InvalidateResultResponse:
        _check_handling(request)
        result = await handlers.invalidate_result(
            self._uow(), result_id=request.result_id, reason=request.reason.strip(),
            requested_by=request.requested_by)
        return pb.InvalidateResultResponse(result=(await self._results([result]))[0])

    async def ConfirmResult(self, request: pb.ConfirmResultRequest,
                            context: grpc.aio.ServicerContext) -> pb.ConfirmResultResponse:
        _check_handling(request)
        result = await handlers.confirm_result(
            self._uow(), result_id=request.result_id, reason=request.reason.strip(),
            requested_by=request.requested_by)
        return pb.ConfirmResultResponse(result=(await self._results([result]))[0])

    async def ListLotResults(self, request: pb.ListLotResultsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListLotResultsResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        v.raise_if_any()
        results = await handlers.list_lot_results(self._uow(), lot_id=request.lot_id)
        return pb.ListLotResultsResponse(results=await self._results(results))

    async def ListInstrumentResults(
            self, request: pb.ListInstrumentResultsRequest,
            context: grpc.aio.ServicerContext) -> pb.ListInstrumentResultsResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        measured_from = v.instant(request, "measured_from")
        measured_before = v.instant(request, "measured_before")
        if measured_from and measured_before and measured_before <= measured_from:
            v.add("measured_before", "must lie after measured_from")
        limit = paging.page_size(v, request.page_size)
        after = paging.decode_position(v, request.page_token)
        v.raise_if_any()
        found = await handlers.instrument_results_page(
            self._uow(), instrument_id=request.instrument_id, measured_from=measured_from,
            measured_before=measured_before, after_sequence=after, limit=limit)
        # The token names the last result given; its (measured_at, sequence) never change.
        token = paging.encode_position(found[-1].sequence) if len(found) == limit else ""
        return pb.ListInstrumentResultsResponse(results=await self._results(found),
                                                next_page_token=token)


def _check_caller(context: grpc.aio.ServicerContext, instrument_id: str) -> None:
    """The x-lotgate-instrument metadata, when a caller still sends it, must agree (the
    token's instrument_id is checked by the gate before this)."""
    for key, value in context.invocation_metadata() or ():
        if key == INSTRUMENT_HEADER and value != instrument_id:
            raise PermissionDenied(f"this call comes from instrument {value!s:.64}; it may "
                                   f"not post results as {instrument_id}")


def _check_measurement(request: pb.RecordResultRequest, test: Any, v: Violations,
                       where: str) -> bool:
    which = request.WhichOneof("measurement")
    if which is None:
        v.add(f"{where}measurement",
              "is required: identity, identity_score, quantity or sterility")
        return False
    allowed = MEASUREMENT_FIELDS.get(test, ()) if test else ()
    if test is not None and which not in allowed:
        v.add(f"{where}measurement", f"a {test} result carries {' or '.join(allowed)}, "
                                     f"not {which}")
        return False
    if which == "identity" and request.identity not in IDENTITY_FROM_PROTO:
        v.add(f"{where}identity", "must be MATCH or NO_MATCH")
        return False
    if which == "sterility" and request.sterility not in STERILITY_FROM_PROTO:
        v.add(f"{where}sterility", "must be NO_GROWTH or GROWTH")
        return False
    if which == "identity_score" and not math.isfinite(request.identity_score):
        v.add(f"{where}identity_score", "must be a finite number")
        return False
    if which == "quantity":
        before = len(v)
        if not math.isfinite(request.quantity.value):
            v.add(f"{where}quantity.value", "must be a finite number")
        v.text(f"{where}quantity.unit", request.quantity.unit, max_length=MAX_UNIT_LENGTH)
        return len(v) == before
    return True


def _check_handling(request: pb.InvalidateResultRequest | pb.ConfirmResultRequest) -> None:
    v = Violations()
    v.code("result_id", request.result_id)
    v.text("reason", request.reason, max_length=2000, prose=True)
    v.text("requested_by", request.requested_by, max_length=200)
    v.raise_if_any()


def _draft(request: pb.CreateSpecificationDraftRequest | pb.UpdateSpecificationDraftRequest,
           v: Violations) -> SpecificationDraft:
    v.code("material_code", request.material_code)
    tests: list[TestCriterion] = []
    if len(request.tests) > MAX_TESTS:
        v.add("tests", f"must hold at most {MAX_TESTS} tests")
    else:
        before = len(v)
        tests = criteria_from_proto(request.tests, v)
        if len(v) == before:
            for field, problem in check_tests(tests):
                v.add(field, problem)
    v.text("change_reason", request.change_reason, max_length=2000, prose=True)
    v.text("requested_by", request.requested_by, max_length=200)
    return SpecificationDraft(material_code=request.material_code, tests=tuple(tests),
                              change_reason=request.change_reason.strip(),
                              requested_by=request.requested_by)


def _version(v: Violations, version: int) -> None:
    if version <= 0:
        v.add("version", "is required: the version's number (1, 2, ...)")

