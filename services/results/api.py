"""The gRPC entrypoint: proto requests in, commands to the handlers and reads to the
queries, proto responses out (with the signatures of the records they show)."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import Any

import grpc

from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from services.results import handlers, posting, queries
from services.results.commands import (
    ApproveSpecification,
    CalibrationReport,
    HandleResult,
    RecordCalibration,
    RecordResult,
    RegisterInstrument,
    SetInstrumentStatus,
    SpecificationDraft,
)
from services.results.convert import (
    INSTRUMENT_STATUS_FROM_PROTO,
    RESULT,
    SPECIFICATION,
    TEST_FROM_PROTO,
    calibration_to_proto,
    check_measurement,
    criteria_from_proto,
    instrument_to_proto,
    measurement_from_proto,
    result_content,
    result_to_proto,
    specification_content,
    specification_record,
    specification_to_proto,
)
from services.results.domain.instruments import calibration_record_problems
from services.results.domain.results import Result
from services.results.domain.specifications import Specification, TestCriterion, check_tests
from shared import paging
from shared.contract import ResultState
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


class ResultApi(pb_grpc.ResultServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory, *, group_commit: bool = True) -> None:
        self._uow = uow
        # Posts arriving while one is written go together in the next transaction.
        self.posting = posting.Posting(uow, group_commit=group_commit, max_items=MAX_BATCH)

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
        spec = await handlers.approve_specification(self._uow(), ApproveSpecification(
            material_code=request.material_code, version=request.version,
            effective_from=effective_from, approved_by=request.approved_by))
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
        spec = await queries.get_specification(
            self._uow(), material_code=request.material_code, version=request.version,
            as_of=as_of)
        return pb.GetSpecificationResponse(specification=await self._spec(spec))

    async def ListSpecificationVersions(
            self, request: pb.ListSpecificationVersionsRequest,
            context: grpc.aio.ServicerContext) -> pb.ListSpecificationVersionsResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        v.raise_if_any()
        found = await queries.list_specification_versions(
            self._uow(), material_code=request.material_code)
        return pb.ListSpecificationVersionsResponse(specifications=await self._specs(found))

    async def _spec(self, spec: Specification) -> pb.Specification:
        return (await self._specs([spec]))[0]

    async def _specs(self, specs: list[Specification]) -> list[pb.Specification]:
        """The versions as shown, each with its signatures."""
        shown = [specification_to_proto(s) for s in specs]
        found = await queries.signatures_of(
            self._uow(), record_type=SPECIFICATION,
            contents={specification_record(s): specification_content(s) for s in shown})
        for s in shown:
            s.signatures.extend(found[specification_record(s)])
        return shown

    async def _results(self, results: list[Result]) -> list[pb.Result]:
        """The results as shown, each with its signatures."""
        shown = [result_to_proto(r) for r in results]
        found = await queries.signatures_of(
            self._uow(), record_type=RESULT,
            contents={r.result_id: result_content(r) for r in shown})
        for r in shown:
            r.signatures.extend(found[r.result_id])
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
        saved = await handlers.register_instrument(self._uow(), RegisterInstrument(
            instrument_id=request.instrument_id, type=request.type.strip(),
            location=request.location.strip(), first=calibration,
            requested_by=request.requested_by))
        return pb.RegisterInstrumentResponse(instrument=instrument_to_proto(saved))

    async def RecordCalibration(
            self, request: pb.RecordCalibrationRequest,
            context: grpc.aio.ServicerContext) -> pb.RecordCalibrationResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        calibration = self._calibration(request, v)
        v.raise_if_any()
        assert calibration is not None
        saved = await handlers.record_calibration(self._uow(), RecordCalibration(
            instrument_id=request.instrument_id, calibration=calibration,
            requested_by=request.requested_by))
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
        saved = await handlers.set_instrument_status(self._uow(), SetInstrumentStatus(
            instrument_id=request.instrument_id, status=status, reason=request.reason.strip(),
            requested_by=request.requested_by))
        return pb.SetInstrumentStatusResponse(instrument=instrument_to_proto(saved))

    async def GetInstrument(self, request: pb.GetInstrumentRequest,
                            context: grpc.aio.ServicerContext) -> pb.GetInstrumentResponse:
        v = Violations()
        v.code("instrument_id", request.instrument_id)
        v.raise_if_any()
        instrument, history = await queries.get_instrument(
            self._uow(), instrument_id=request.instrument_id)
        return pb.GetInstrumentResponse(instrument=instrument_to_proto(instrument),
                                        calibrations=[calibration_to_proto(c) for c in history])

    def _calibration(self, request: Any, v: Violations) -> CalibrationReport | None:
        """The calibration a Register/RecordCalibration request carries; None when it is
        not valid (and noted)."""
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
        return CalibrationReport(calibrated_on=calibrated_on, calibration_due=due,
                                 certificate_ref=request.certificate_ref.strip())

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
        (result,) = await self.posting.post(posting.Post([command]))
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
        found = await self.posting.post(
            posting.Post([c for c in commands if c is not None], batch=True))
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
        ok = check_measurement(request, test, v, where)
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
        result = await handlers.handle_result(
            self._uow(), _handling(request, ResultState.INVALIDATED))
        return pb.InvalidateResultResponse(result=(await self._results([result]))[0])

    async def ConfirmResult(self, request: pb.ConfirmResultRequest,
                            context: grpc.aio.ServicerContext) -> pb.ConfirmResultResponse:
        result = await handlers.handle_result(
            self._uow(), _handling(request, ResultState.CONFIRMED))
        return pb.ConfirmResultResponse(result=(await self._results([result]))[0])

    async def ListLotResults(self, request: pb.ListLotResultsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListLotResultsResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        v.raise_if_any()
        results = await queries.list_lot_results(self._uow(), lot_id=request.lot_id)
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
        found = await queries.instrument_results_page(
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


def _handling(request: pb.InvalidateResultRequest | pb.ConfirmResultRequest,
              target: ResultState) -> HandleResult:
    v = Violations()
    v.code("result_id", request.result_id)
    v.text("reason", request.reason, max_length=2000, prose=True)
    v.text("requested_by", request.requested_by, max_length=200)
    v.raise_if_any()
    return HandleResult(result_id=request.result_id, target=target,
                        reason=request.reason.strip(), requested_by=request.requested_by)


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

