"""The results service over real gRPC, with a real database and a real nats-server."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import JetStreamContext
from sqlalchemy import func, select

from lotgate.lots.v1 import events_pb2 as lots_events_pb2
from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from services.results.tables import known_lots, results, tables
from shared import paging
from shared.protoconv import from_timestamp, to_timestamp
from shared.runtime import RunningService
from shared.uow import new_event_id
from tests.support import auth
from tests.support.events import harness
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

LOT_RECEIVED = "lotgate.lots.v1.lot_received"
RESULT_RECORDED = "lotgate.results.v1.result_recorded"
RESULT_INVALIDATED = "lotgate.results.v1.result_invalidated"
RESULT_CONFIRMED = "lotgate.results.v1.result_confirmed"
SPECIFICATION_APPROVED = "lotgate.results.v1.specification_approved"

# Registered once for the module (see `instruments`), calibrated around today.
HPLC, FTIR, BACT, LIMS = "HPLC-01", "FTIR-01", "BACT-01", "LIMS-01"
FAILED = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
async def service(databases, nats_server) -> AsyncIterator[RunningService]:
    running = await start_in_process("results", databases=databases, nats=nats_server)
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def stub(service) -> AsyncIterator[pb_grpc.ResultServiceStub]:
    async with auth.channel(service.address) as channel:
        yield pb_grpc.ResultServiceStub(channel)


@pytest.fixture(scope="module", autouse=True)
async def instruments(stub) -> None:
    for instrument_id in (HPLC, FTIR, BACT, LIMS):
        await register(stub, instrument_id)


@pytest.fixture(scope="module")
async def js(nats_server) -> AsyncIterator[JetStreamContext]:
    events = await harness(nats_server)
    yield events.js
    await events.close()


def today() -> date:
    return datetime.now(UTC).date()


def now() -> datetime:
    return datetime.now(UTC)


# Lots, made known to the results service as the lots service does: by LotReceived.


def lot_received(lot_id: str, material: str) -> lots_events_pb2.LotReceived:
    at = now()
    return lots_events_pb2.LotReceived(
        event_id=new_event_id(),
        lot=lots_pb2.Lot(lot_id=lot_id, material_code=material, supplier_id="SUP-1",
                         received_at=to_timestamp(at)),
        occurred_at=to_timestamp(at))


async def publish(js: JetStreamContext, event: lots_events_pb2.LotReceived, *,
                  msg_id: str | None = None) -> None:
    """Publish as the lots service's relay does: Nats-Msg-Id is the event id."""
    await js.publish(LOT_RECEIVED, event.SerializeToString(),
                     headers={"Nats-Msg-Id": msg_id or event.event_id})


async def wait_until_known(stub: pb_grpc.ResultServiceStub, lot_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                await stub.ListLotResults(pb.ListLotResultsRequest(lot_id=lot_id))
                return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.02)


async def receive_lot(stub, js, material: str) -> str:
    lot_id = ref("LOT")
    await publish(js, lot_received(lot_id, material))
    await wait_until_known(stub, lot_id)
    return lot_id


# Specifications


def spec_tests(*, lower: float | None = 98.0, upper: float | None = 102.0, unit: str = "%",
               decimals: int | None = 1, min_score: float | None = None,
               assay: bool = False) -> list[pb.TestCriterion]:
    purity = pb.RangeCriterion(unit=unit)
    if lower is not None:
        purity.lower.value = lower
    if upper is not None:
        purity.upper.value = upper
    if decimals is not None:
        purity.decimals = decimals
    identity = pb.IdentityCriterion(reference="IR RS-7")
    if min_score is not None:
        identity.min_score = min_score
    tests = [
        pb.TestCriterion(test=pb.TEST_KIND_STERILITY, method="Ph. Eur. 2.6.1",
                         sterility=pb.SterilityCriterion(method="membrane filtration")),
        pb.TestCriterion(test=pb.TEST_KIND_PURITY, method="HPLC", range=purity),
        pb.TestCriterion(test=pb.TEST_KIND_IDENTITY, method="FTIR", identity=identity),
    ]
    if assay:
        tests.append(pb.TestCriterion(
            test=pb.TEST_KIND_ASSAY, method="titration",
            range=pb.RangeCriterion(lower=pb.Bound(value=95.0), unit="%")))
    return tests


async def draft(stub, material: str, *, by: str = "qa.author", **criteria) -> pb.Specification:
    return (await stub.CreateSpecificationDraft(pb.CreateSpecificationDraftRequest(
        material_code=material, tests=spec_tests(**criteria), change_reason="CC-2026-101",
        requested_by=by))).specification


async def approve(stub, material: str, version: int, *, by: str = "qa.approver",
                  effective_from: datetime | None = None) -> pb.Specification:
    return (await stub.ApproveSpecification(pb.ApproveSpecificationRequest(
        material_code=material, version=version, approved_by=by,
        effective_from=to_timestamp(effective_from)))).specification


async def specify(stub, material: str, *, effective_from: datetime | None = None,
                  **criteria) -> pb.Specification:
    """A new version of the material's specification, approved by a second person."""
    written = await draft(stub, material, **criteria)
    return await approve(stub, material, written.version, effective_from=effective_from)


async def specified_lot(stub, js, **criteria) -> tuple[str, str]:
    """(material, lot_id): a known lot of a material with a specification in force."""
    material = ref("MAT")
    await specify(stub, material, **criteria)
    return material, await receive_lot(stub, js, material)


async def current_spec(stub, material: str, **kw) -> pb.Specification:
    return (await stub.GetSpecification(
        pb.GetSpecificationRequest(material_code=material, **kw))).specification


# Instruments


async def register(stub, instrument_id: str, *, calibrated_on: date | None = None,
                   due: date | None = None, **kw) -> pb.Instrument:
    request = dict(instrument_id=instrument_id, type="HPLC", location="QC lab 2",
                   calibrated_on=(calibrated_on or today() - timedelta(days=30)).isoformat(),
                   calibration_due=(due or today() + timedelta(days=335)).isoformat(),
                   certificate_ref="CAL-0001", requested_by="qc.lead")
    request.update(kw)
    return (await stub.RegisterInstrument(pb.RegisterInstrumentRequest(**request))).instrument


async def new_instrument(stub, **kw) -> str:
    instrument_id = ref("INS")
    await register(stub, instrument_id, **kw)
    return instrument_id


# Results


def purity(lot_id: str, value: float, unit: str = "%", *, instrument: str = HPLC,
           key: str | None = None, measured_at: datetime | None = None,
           retest_of: str = "") -> pb.RecordResultRequest:
    return pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id=instrument,
        instrument_result_id=key or ref("RUN"), quantity=pb.Quantity(value=value, unit=unit),
        measured_at=to_timestamp(measured_at or now()), retest_of=retest_of)


def sterility(lot_id: str, *, growth: bool = False, instrument: str = BACT,
              retest_of: str = "") -> pb.RecordResultRequest:
    return pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_STERILITY, instrument_id=instrument,
        instrument_result_id=ref("RUN"), measured_at=to_timestamp(now()),
        sterility=pb.STERILITY_OUTCOME_GROWTH if growth else pb.STERILITY_OUTCOME_NO_GROWTH,
        retest_of=retest_of)


def identity(lot_id: str, *, match: bool = True, instrument: str = FTIR,
             measured_at: datetime | None = None) -> pb.RecordResultRequest:
    return pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_IDENTITY, instrument_id=instrument,
        instrument_result_id=ref("RUN"), measured_at=to_timestamp(measured_at or now()),
        identity=pb.IDENTITY_OUTCOME_MATCH if match else pb.IDENTITY_OUTCOME_NO_MATCH)


async def post(stub, request: pb.RecordResultRequest, **kw) -> pb.Result:
    return (await stub.RecordResult(request, **kw)).result


async def post_all(stub, *requests: pb.RecordResultRequest) -> list[pb.Result]:
    return list((await stub.RecordResults(pb.RecordResultsRequest(results=requests))).results)


async def list_results(stub, lot_id: str) -> list[pb.Result]:
    return list((await stub.ListLotResults(pb.ListLotResultsRequest(lot_id=lot_id))).results)


async def invalidate(stub, result_id: str, *, reason: str = "wrong dilution (LIR-7)",
                     by: str = "qa.jane") -> pb.Result:
    return (await stub.InvalidateResult(pb.InvalidateResultRequest(
        result_id=result_id, reason=reason, requested_by=by))).result


async def confirm(stub, result_id: str, *, reason: str = "OOS confirmed (INV-3)",
                  by: str = "qa.jane") -> pb.Result:
    return (await stub.ConfirmResult(pb.ConfirmResultRequest(
        result_id=result_id, reason=reason, requested_by=by))).result


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def precondition(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(type, subject) of the PreconditionFailure detail of a failed call."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            found = error_details_pb2.PreconditionFailure()
            detail.Unpack(found)
            return found.violations[0].type, found.violations[0].subject
    raise AssertionError("no PreconditionFailure detail")


async def events_until(nats_server, subjects: dict[str, type[Message]],
                       wanted: Callable[[Any], bool], last: Callable[[Any], bool]
                       ) -> list[tuple[str, Any]]:
    """(subject, event) of every wanted event on `subjects`, read from the start of the
    stream with an ordered consumer, up to and including the first one `last` accepts.

    The relay publishes the events of one aggregate (a lot) in commit order, so an event
    that should not exist would come before the last one."""
    nc = await nats_server.connect()
    seen: list[tuple[str, Any]] = []
    try:
        sub = await nc.jetstream().subscribe("lotgate.results.v1.>", ordered_consumer=True)
        async with asyncio.timeout(10):
            while True:
                msg = await sub.next_msg(timeout=10)
                if msg.subject not in subjects:
                    continue
                try:
                    event = subjects[msg.subject].FromString(msg.data)
                except DecodeError:
                    continue  # other tests put poison messages on these subjects
                if not wanted(event):
                    continue
                assert msg.headers["Nats-Msg-Id"] == event.event_id
                seen.append((msg.subject, event))
                if last(event):
                    return seen
    finally:
        await nc.close()


# Specifications: drafts, four eyes, versions


@pytest.mark.req("SPEC-001")
async def test_a_draft_judges_nothing_until_a_second_person_approves_it(stub, js) -> None:
    material = ref("MAT")
    before = now()

    written = await draft(stub, material, by="qa.author")
    lot_id = await receive_lot(stub, js, material)
    missing = await refused(current_spec(stub, material))
    too_early = await refused(post(stub, purity(lot_id, 99.0)))
    approved = await approve(stub, material, written.version, by="qa.approver")

    assert (written.version, written.status, written.created_by) == (
        1, pb.SPECIFICATION_STATUS_DRAFT, "qa.author")
    assert not written.HasField("effective_from")
    assert [t.test for t in written.tests] == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY]
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert set(field_violations(missing)) == {"material_code"}
    assert too_early.code() == FAILED
    assert precondition(too_early)[0] == "SPECIFICATION"
    assert (approved.status, approved.approved_by, approved.change_reason) == (
        pb.SPECIFICATION_STATUS_EFFECTIVE, "qa.approver", "CC-2026-101")
    assert before <= from_timestamp(approved.effective_from) <= now()
    assert approved.effective_from == approved.approved_at
    assert await current_spec(stub, material) == approved
    assert (await post(stub, purity(lot_id, 99.0))).spec_version == 1


@pytest.mark.req("SPEC-001")
async def test_the_author_of_a_draft_cannot_approve_it(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material, by="qa.author")

    error = await refused(approve(stub, material, written.version, by="qa.author"))

    assert error.code() == FAILED
    assert "four eyes" in error.details()
    assert precondition(error) == ("APPROVER", f"materials/{material}/specifications/1")
    assert (await current_spec(stub, material, version=1)).status == (
        pb.SPECIFICATION_STATUS_DRAFT)


@pytest.mark.req("SPEC-001")
async def test_whoever_changed_a_draft_cannot_approve_it_either(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material, by="qa.author")
    await stub.UpdateSpecificationDraft(pb.UpdateSpecificationDraftRequest(
        material_code=material, version=written.version, tests=spec_tests(lower=99.0),
        change_reason="tighter purity", requested_by="qa.editor"))

    error = await refused(approve(stub, material, written.version, by="qa.editor"))
    approved = await approve(stub, material, written.version, by="qa.approver")

    assert error.code() == FAILED
    assert precondition(error)[0] == "APPROVER"
    assert approved.tests[1].range.lower.value == 99.0
    assert approved.created_by == "qa.author"


@pytest.mark.req("SPEC-002")
async def test_an_effective_version_is_never_edited(stub) -> None:
    material = ref("MAT")
    effective = await specify(stub, material)

    error = await refused(stub.UpdateSpecificationDraft(pb.UpdateSpecificationDraftRequest(
        material_code=material, version=effective.version, tests=spec_tests(lower=90.0),
        change_reason="loosen", requested_by="qa.author")))

    assert error.code() == FAILED
    assert "never be edited" in error.details()
    assert await current_spec(stub, material, version=effective.version) == effective


@pytest.mark.req("SPEC-002")
async def test_a_draft_can_be_changed_until_it_is_approved(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material)

    changed = (await stub.UpdateSpecificationDraft(pb.UpdateSpecificationDraftRequest(
        material_code=material, version=written.version, tests=spec_tests(assay=True),
        change_reason="CC-2026-102: add an assay", requested_by="qa.author"))).specification

    assert changed.status == pb.SPECIFICATION_STATUS_DRAFT
    assert [t.test for t in changed.tests] == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY, pb.TEST_KIND_ASSAY]
    assert changed.change_reason == "CC-2026-102: add an assay"
    assert await current_spec(stub, material, version=written.version) == changed


@pytest.mark.req("SPEC-002")
async def test_versions_count_up_and_only_one_draft_may_be_open(stub) -> None:
    material = ref("MAT")
    first = await specify(stub, material)
    second = await draft(stub, material, lower=99.0)

    error = await refused(draft(stub, material, lower=97.0))
    versions = (await stub.ListSpecificationVersions(pb.ListSpecificationVersionsRequest(
        material_code=material))).specifications

    assert (first.version, second.version) == (1, 2)
    assert error.code() == FAILED
    assert "version 2 is an open DRAFT" in error.details()
    assert precondition(error)[1] == f"materials/{material}/specifications/2"
    assert list(versions) == [first, second]


@pytest.mark.req("SPEC-002")
async def test_concurrent_drafts_never_share_a_version(stub) -> None:
    material = ref("MAT")
    await specify(stub, material)

    outcomes = await asyncio.gather(*(draft(stub, material, lower=90.0 + i) for i in range(6)),
                                    return_exceptions=True)

    made = [o for o in outcomes if isinstance(o, pb.Specification)]
    lost = [o for o in outcomes if not isinstance(o, pb.Specification)]
    assert [s.version for s in made] == [2]
    assert {e.code() for e in lost} <= {FAILED, grpc.StatusCode.ABORTED}


@pytest.mark.req("SPEC-003")
async def test_the_version_in_force_depends_on_the_instant_asked_about(stub) -> None:
    material = ref("MAT")
    first = await specify(stub, material)
    later = from_timestamp(first.effective_from) + timedelta(hours=1)
    second = await specify(stub, material, lower=99.0, effective_from=later)

    assert await current_spec(stub, material) == first
    assert await current_spec(stub, material, as_of=to_timestamp(later)) == second
    assert await current_spec(stub, material, version=2) == second
    too_early = await refused(current_spec(
        stub, material, as_of=to_timestamp(from_timestamp(first.effective_from)
                                           - timedelta(seconds=1))))
    no_version = await refused(current_spec(stub, material, version=3))
    assert (too_early.code(), set(field_violations(too_early))) == (
        grpc.StatusCode.NOT_FOUND, {"as_of"})
    assert (no_version.code(), set(field_violations(no_version))) == (
        grpc.StatusCode.NOT_FOUND, {"version"})


@pytest.mark.req("DAT-003")
async def test_a_version_cannot_take_effect_in_the_past(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material)

    error = await refused(approve(stub, material, written.version,
                                  effective_from=now() - timedelta(hours=1)))

    assert error.code() == FAILED
    assert precondition(error)[0] == "DATE"
    assert (await current_spec(stub, material, version=1)).status == (
        pb.SPECIFICATION_STATUS_DRAFT)


@pytest.mark.req("SPEC-001", "DEL-005")
async def test_an_approval_retried_is_answered_with_the_effective_version(stub) -> None:
    material = ref("MAT")
    written = await draft(stub, material)
    approved = await approve(stub, material, written.version)

    again = await approve(stub, material, written.version)
    other = await refused(approve(stub, material, written.version, by="qa.someone.else"))

    assert again == approved
    assert other.code() == FAILED
    assert "already EFFECTIVE" in other.details()


@pytest.mark.req("SPEC-006")
async def test_a_bad_specification_names_every_bad_field(stub) -> None:
    tests = [
        pb.TestCriterion(test=pb.TEST_KIND_IDENTITY,
                         range=pb.RangeCriterion(lower=pb.Bound(value=1.0), unit="%")),
        pb.TestCriterion(test=pb.TEST_KIND_PURITY, range=pb.RangeCriterion(
            lower=pb.Bound(value=102.0), upper=pb.Bound(value=98.0), unit="%")),
        pb.TestCriterion(test=pb.TEST_KIND_PURITY, range=pb.RangeCriterion(
            upper=pb.Bound(value=math.nan), unit="furlongs")),
    ]

    error = await refused(stub.CreateSpecificationDraft(pb.CreateSpecificationDraftRequest(
        material_code="bad code!", tests=tests)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "material_code", "tests[0]", "tests[1].range.lower.value", "tests[2].test",
        "tests[2].range.upper.value", "tests[2].range.unit", "tests", "change_reason"}
    assert "STERILITY" in field_violations(error)["tests"]


@pytest.mark.req("SPEC-006")
async def test_a_criterion_of_an_unknown_test_or_without_a_kind_is_refused(stub) -> None:
    error = await refused(stub.CreateSpecificationDraft(pb.CreateSpecificationDraftRequest(
        material_code=ref("MAT"), change_reason="x", requested_by="qa.author",
        tests=[pb.TestCriterion(test=99, sterility=pb.SterilityCriterion()),
               pb.TestCriterion(test=pb.TEST_KIND_PURITY)])))

    assert set(field_violations(error)) == {"tests[0].test", "tests[1]"}


@pytest.mark.req("SPEC-001")
async def test_approval_is_announced_with_the_effective_version(stub, nats_server) -> None:
    material = ref("MAT")
    approved = await specify(stub, material)

    seen = await events_until(
        nats_server, {SPECIFICATION_APPROVED: events_pb2.SpecificationApproved},
        lambda e: e.specification.material_code == material, lambda e: True)

    assert [e.specification for _, e in seen] == [approved]


# Instruments and calibrations


@pytest.mark.req("INS-002")
async def test_an_instrument_is_registered_once_with_its_first_calibration(stub) -> None:
    instrument_id = ref("INS")
    first = await register(stub, instrument_id)

    again = await register(stub, instrument_id)
    other = await refused(register(stub, instrument_id, location="another lab"))
    found = await stub.GetInstrument(pb.GetInstrumentRequest(instrument_id=instrument_id))

    assert again == first
    assert (first.status, first.type, first.registered_by) == (
        pb.INSTRUMENT_STATUS_ACTIVE, "HPLC", "qc.lead")
    assert first.calibration_due == (today() + timedelta(days=335)).isoformat()
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS
    assert found.instrument == first
    assert [(c.calibrated_on, c.certificate_ref) for c in found.calibrations] == [
        ((today() - timedelta(days=30)).isoformat(), "CAL-0001")]


@pytest.mark.req("INS-002")
async def test_calibrations_are_kept_and_the_latest_sets_the_due_date(stub) -> None:
    instrument_id = await new_instrument(stub, calibrated_on=today() - timedelta(days=300),
                                         due=today() + timedelta(days=65))
    calibration = pb.RecordCalibrationRequest(
        instrument_id=instrument_id, calibrated_on=today().isoformat(),
        calibration_due=(today() + timedelta(days=365)).isoformat(),
        certificate_ref="CAL-0002", requested_by="qc.lead")

    updated = (await stub.RecordCalibration(calibration)).instrument
    await stub.RecordCalibration(calibration)  # a retry: recorded once
    history = (await stub.GetInstrument(pb.GetInstrumentRequest(
        instrument_id=instrument_id))).calibrations

    assert updated.calibration_due == (today() + timedelta(days=365)).isoformat()
    assert [c.certificate_ref for c in history] == ["CAL-0001", "CAL-0002"]
    assert history[1].recorded_by == "qc.lead"


@pytest.mark.req("INS-002", "DAT-001")
async def test_impossible_calibration_dates_are_refused(stub) -> None:
    error = await refused(register(stub, ref("INS"), calibrated_on=today() + timedelta(days=1),
                                   due=today()))
    malformed = await refused(stub.RecordCalibration(pb.RecordCalibrationRequest(
        instrument_id=HPLC, calibrated_on="2026-13-01", calibration_due="soon",
        requested_by="qc.lead")))

    assert set(field_violations(error)) == {"calibrated_on", "calibration_due"}
    assert set(field_violations(malformed)) == {"calibrated_on", "calibration_due",
                                                "certificate_ref"}


@pytest.mark.req("INS-001")
async def test_a_retired_instrument_stays_retired(stub) -> None:
    instrument_id = await new_instrument(stub)

    def status(value: int, reason: str) -> Any:
        return stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
            instrument_id=instrument_id, status=value, reason=reason, requested_by="qc.lead"))

    out = (await status(pb.INSTRUMENT_STATUS_OUT_OF_SERVICE, "lamp failure")).instrument
    back = (await status(pb.INSTRUMENT_STATUS_ACTIVE, "lamp replaced")).instrument
    retired = (await status(pb.INSTRUMENT_STATUS_RETIRED, "end of life")).instrument
    error = await refused(status(pb.INSTRUMENT_STATUS_ACTIVE, "oops"))

    assert (out.status, out.status_reason) == (pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
                                               "lamp failure")
    assert back.status == pb.INSTRUMENT_STATUS_ACTIVE
    assert retired.status == pb.INSTRUMENT_STATUS_RETIRED
    assert error.code() == FAILED
    assert "RETIRED" in error.details()


@pytest.mark.req("INS-001")
async def test_an_unregistered_instrument_is_not_found(stub) -> None:
    error = await refused(stub.GetInstrument(pb.GetInstrumentRequest(instrument_id=ref("INS"))))

    assert (error.code(), set(field_violations(error))) == (grpc.StatusCode.NOT_FOUND,
                                                             {"instrument_id"})


# Posting: which instrument may post


@pytest.mark.req("INS-001")
async def test_only_a_registered_active_calibrated_instrument_may_post(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    unregistered = ref("INS")
    out_of_service = await new_instrument(stub)
    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=out_of_service, status=pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
        reason="leak", requested_by="qc.lead"))
    lapsed = await new_instrument(stub, calibrated_on=today() - timedelta(days=400),
                                  due=today() - timedelta(days=35))

    errors = [await refused(post(stub, purity(lot_id, 99.0, instrument=i)))
              for i in (unregistered, out_of_service, lapsed)]

    assert [e.code() for e in errors] == [FAILED] * 3
    assert [precondition(e)[0] for e in errors] == ["INSTRUMENT"] * 3
    assert f"instrument {unregistered} is not registered" in errors[0].details()
    assert "OUT_OF_SERVICE" in errors[1].details()
    assert "was not within calibration" in errors[2].details()
    assert (today() - timedelta(days=35)).isoformat() in errors[2].details()
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("INS-001", "INS-002")
async def test_an_instrument_calibrated_again_may_post_again(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    lapsed = await new_instrument(stub, calibrated_on=today() - timedelta(days=400),
                                  due=today() - timedelta(days=35))
    await refused(post(stub, purity(lot_id, 99.0, instrument=lapsed)))

    await stub.RecordCalibration(pb.RecordCalibrationRequest(
        instrument_id=lapsed, calibrated_on=today().isoformat(),
        calibration_due=(today() + timedelta(days=30)).isoformat(),
        certificate_ref="CAL-0002", requested_by="qc.lead"))

    assert (await post(stub, purity(lot_id, 99.0, instrument=lapsed))).verdict == (
        pb.VERDICT_PASS)


@pytest.mark.req("INS-003")
async def test_an_instrument_may_post_only_as_itself(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(post(stub, purity(lot_id, 99.0, instrument=HPLC),
                               metadata=(("x-lotgate-instrument", "HPLC-99"),)))
    batch = await refused(stub.RecordResults(
        pb.RecordResultsRequest(results=[purity(lot_id, 99.0, instrument=HPLC)]),
        metadata=(("x-lotgate-instrument", "HPLC-99"),)))
    itself = await post(stub, purity(lot_id, 99.0, instrument=HPLC),
                        metadata=(("x-lotgate-instrument", HPLC),))

    assert error.code() == batch.code() == grpc.StatusCode.PERMISSION_DENIED
    assert itself.instrument_id == HPLC
    assert len(await list_results(stub, lot_id)) == 1


# Posting: judging


@pytest.mark.req("SPEC-003")
async def test_a_result_is_judged_against_the_version_in_force_when_it_was_measured(
        stub, js) -> None:
    material, lot_id = await specified_lot(stub, js, lower=98.0, upper=102.0)
    first = await post(stub, purity(lot_id, 98.5))

    second_version = await specify(stub, material, lower=99.0, upper=101.0, assay=True)
    measured_before = await post(stub, purity(lot_id, 98.5, measured_at=from_timestamp(
        first.measured_at)))
    measured_after = await post(stub, purity(lot_id, 98.5))
    retried = await post(stub, purity(lot_id, 98.5, key=first.instrument_result_id,
                                      measured_at=from_timestamp(first.measured_at)))

    assert first.measured_at.ToDatetime(tzinfo=UTC) < from_timestamp(
        second_version.effective_from)
    assert [(r.spec_version, r.verdict) for r in (first, measured_before, measured_after)] == [
        (1, pb.VERDICT_PASS), (1, pb.VERDICT_PASS), (2, pb.VERDICT_FAIL)]
    assert list(first.required_tests) == [
        pb.TEST_KIND_IDENTITY, pb.TEST_KIND_PURITY, pb.TEST_KIND_STERILITY]
    assert pb.TEST_KIND_ASSAY in measured_after.required_tests
    assert measured_after.verdict_reason == (
        "purity 98.5 % is below the lower limit [99, 101] %")
    assert retried == first
    assert [r.result_id for r in await list_results(stub, lot_id)] == [
        first.result_id, measured_before.result_id, measured_after.result_id]


@pytest.mark.req("SPEC-003")
async def test_a_result_measured_before_any_effective_version_is_refused(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)
    effective = from_timestamp((await current_spec(stub, material)).effective_from)

    error = await refused(post(stub, purity(lot_id, 99.0,
                                            measured_at=effective - timedelta(seconds=1))))

    assert error.code() == FAILED
    assert precondition(error) == ("SPECIFICATION", f"materials/{material}")
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-003", "SPEC-005")
async def test_a_result_keeps_what_was_measured_and_what_was_judged(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)
    measured = now() - timedelta(milliseconds=1)

    result = await post(stub, purity(lot_id, 99.46, measured_at=measured))

    assert (result.lot_id, result.material_code, result.test, result.instrument_id) == (
        lot_id, material, pb.TEST_KIND_PURITY, HPLC)
    assert (result.quantity.value, result.quantity.unit) == (99.46, "%")
    assert (result.judged.value, result.judged.unit) == (99.5, "%")
    assert from_timestamp(result.measured_at) == measured
    assert result.recorded_at.ToDatetime(tzinfo=UTC) >= measured
    assert (result.state, result.retest_of, result.lot_result_number) == (
        pb.RESULT_STATE_VALID, "", 1)
    assert result.sequence > 0


@pytest.mark.req("SPEC-005")
async def test_a_quantity_in_another_unit_is_converted_to_the_specifications(
        stub, js) -> None:
    _, passing_lot = await specified_lot(stub, js, lower=98.0, upper=102.0, unit="%")
    _, failing_lot = await specified_lot(stub, js, lower=98.0, upper=102.0, unit="%")

    passing = await post(stub, purity(passing_lot, 995.4, "mg/g"))
    failing = await post(stub, purity(failing_lot, 979.4, "mg/g"))

    assert (passing.verdict, passing.judged.value, passing.judged.unit) == (
        pb.VERDICT_PASS, 99.5, "%")
    assert (passing.quantity.value, passing.quantity.unit) == (995.4, "mg/g")
    assert (failing.verdict, failing.judged.value) == (pb.VERDICT_FAIL, 97.9)
    assert "97.9 %" in failing.verdict_reason


@pytest.mark.req("SPEC-005")
async def test_a_unit_that_cannot_be_converted_is_refused_on_quantity_unit(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js, unit="%")

    error = await refused(post(stub, purity(lot_id, 0.99, unit="CFU/g")))
    unknown = await refused(post(stub, purity(lot_id, 0.99, unit="fraction")))

    assert error.code() == unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == set(field_violations(unknown)) == {"quantity.unit"}
    assert f"specification version 1 of {material}" in field_violations(error)["quantity.unit"]
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("SPEC-004")
async def test_identity_and_sterility_are_judged_by_their_outcome(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    verdicts = [(await post(stub, request)).verdict for request in (
        identity(lot_id), sterility(lot_id))]
    _, failing_lot = await specified_lot(stub, js)
    failing = [(await post(stub, request)).verdict for request in (
        identity(failing_lot, match=False), sterility(failing_lot, growth=True))]

    assert verdicts == [pb.VERDICT_PASS, pb.VERDICT_PASS]
    assert failing == [pb.VERDICT_FAIL, pb.VERDICT_FAIL]


@pytest.mark.req("SPEC-004")
async def test_a_match_score_is_judged_when_the_specification_asks_for_one(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js, min_score=95.0)
    scored = pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_IDENTITY, instrument_id=FTIR,
        instrument_result_id=ref("RUN"), measured_at=to_timestamp(now()), identity_score=97.5)

    outcome_only = await refused(post(stub, identity(lot_id)))
    result = await post(stub, scored)

    assert set(field_violations(outcome_only)) == {"measurement"}
    assert (result.verdict, result.identity_score) == (pb.VERDICT_PASS, 97.5)


@pytest.mark.req("RES-004")
async def test_a_test_that_the_specification_does_not_have_is_refused(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)

    error = await refused(post(stub, pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_ASSAY, instrument_id=HPLC,
        instrument_result_id=ref("RUN"), measured_at=to_timestamp(now()),
        quantity=pb.Quantity(value=99.0, unit="%"))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"test"}
    assert f"specification version 1 of {material}" in field_violations(error)["test"]


# Posting: bad requests


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_a_non_finite_quantity_is_refused(stub, js, value: float) -> None:
    _, lot_id = await specified_lot(stub, js, lower=None, upper=100.0)

    error = await refused(post(stub, purity(lot_id, value)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"quantity.value"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-004", "INP-001")
async def test_an_empty_result_names_every_missing_field(stub) -> None:
    error = await refused(stub.RecordResult(pb.RecordResultRequest()))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "lot_id", "instrument_id", "instrument_result_id", "test", "measurement",
        "measured_at"}


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("test", [pb.TEST_KIND_UNSPECIFIED, 99])
async def test_an_unspecified_or_unknown_test_is_refused(stub, js, test: int) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = sterility(lot_id)
    request.test = test

    error = await refused(post(stub, request))

    assert set(field_violations(error)) == {"test"}


@pytest.mark.req("RES-004")
async def test_a_measurement_that_does_not_fit_the_test_is_refused(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = sterility(lot_id)
    request.test = pb.TEST_KIND_PURITY

    error = await refused(post(stub, request))

    assert field_violations(error) == {"measurement": "a PURITY result carries quantity, "
                                                      "not sterility"}


@pytest.mark.req("RES-004", "INP-001")
async def test_a_bad_result_names_every_bad_field_and_changes_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id="bad id!",
        instrument_result_id="k" * 129, quantity=pb.Quantity(value=math.nan, unit=""),
        measured_at=to_timestamp(now() + timedelta(minutes=10)), retest_of="not a result!")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "instrument_id", "instrument_result_id", "quantity.value", "quantity.unit",
        "measured_at", "retest_of"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-005")
async def test_a_result_for_an_unknown_lot_is_not_found_and_may_be_retried(stub) -> None:
    error = await refused(post(stub, purity(ref("LOT"), 99.0)))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "not known to the results service yet" in error.details()
    assert set(field_violations(error)) == {"lot_id"}


# Idempotency


@pytest.mark.req("RES-001")
async def test_a_retried_post_is_answered_identically_and_published_once(
        stub, js, nats_server) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)

    first = await post(stub, request)
    again = await post(stub, request)
    second = await post(stub, purity(lot_id, 99.2))
    seen = await events_until(nats_server, {RESULT_RECORDED: events_pb2.ResultRecorded},
                              lambda e: e.result.lot_id == lot_id,
                              lambda e: e.result.result_id == second.result_id)

    assert again == first
    assert await list_results(stub, lot_id) == [first, second]
    assert [e.result for _, e in seen] == [first, second]
    assert all(e.occurred_at == e.result.recorded_at for _, e in seen)


@pytest.mark.req("RES-001")
async def test_a_conflicting_retry_is_already_exists_and_changes_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)
    original = await post(stub, request)
    changed = pb.RecordResultRequest()
    changed.CopyFrom(request)
    changed.quantity.value = 97.0

    error = await refused(post(stub, changed))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert original.result_id in error.details()
    assert await list_results(stub, lot_id) == [original]


@pytest.mark.req("RES-001")
async def test_the_same_id_from_another_instrument_is_another_result(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0, instrument=HPLC)

    first = await post(stub, request)
    request.instrument_id = LIMS
    second = await post(stub, request)

    assert first.result_id != second.result_id
    assert len(await list_results(stub, lot_id)) == 2


@pytest.mark.req("RES-001")
async def test_concurrent_duplicates_are_recorded_once(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)

    replies = await asyncio.gather(*(post(stub, request) for _ in range(8)))

    assert len({reply.SerializeToString(deterministic=True) for reply in replies}) == 1
    assert len(await list_results(stub, lot_id)) == 1


@pytest.mark.req("RES-003")
async def test_a_lots_results_are_numbered_without_gaps_and_retries_take_no_number(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    _, other_lot = await specified_lot(stub, js)
    first = purity(lot_id, 99.0)

    numbers = [(await post(stub, first)).lot_result_number,
               (await post(stub, purity(other_lot, 99.0))).lot_result_number,
               (await post(stub, first)).lot_result_number,
               (await post(stub, purity(lot_id, 98.5))).lot_result_number]
    numbers += [r.lot_result_number for r in await asyncio.gather(
        *(post(stub, purity(lot_id, 99.5)) for _ in range(5)))]

    assert numbers[:4] == [1, 1, 1, 2]
    assert sorted(numbers[4:]) == [3, 4, 5, 6, 7]
    assert [r.lot_result_number for r in await list_results(stub, lot_id)] == list(range(1, 8))


# Posting many at once


@pytest.mark.req("RES-002")
async def test_a_batch_is_stored_whole_and_answered_in_request_order(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    _, other_lot = await specified_lot(stub, js)
    batch = [identity(lot_id, instrument=LIMS), purity(other_lot, 99.0, instrument=LIMS),
             purity(lot_id, 99.5, instrument=LIMS), sterility(lot_id, instrument=LIMS)]

    stored = await post_all(stub, *batch)
    again = await post_all(stub, *batch)

    assert [r.instrument_result_id for r in stored] == [e.instrument_result_id for e in batch]
    assert [(r.lot_id, r.lot_result_number) for r in stored] == [
        (lot_id, 1), (other_lot, 1), (lot_id, 2), (lot_id, 3)]
    assert [r.sequence for r in stored] == sorted(r.sequence for r in stored)
    assert again == stored
    assert await list_results(stub, lot_id) == [stored[0], stored[2], stored[3]]


@pytest.mark.req("RES-002")
async def test_one_entry_refused_refuses_the_whole_batch(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    assay = purity(lot_id, 99.0, instrument=LIMS)
    assay.test = pb.TEST_KIND_ASSAY

    error = await refused(post_all(stub, identity(lot_id, instrument=LIMS),
                                   purity(lot_id, 99.0, "CFU/g", instrument=LIMS), assay))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"results[1].quantity.unit", "results[2].test"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-002")
async def test_a_batch_names_every_bad_entry(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    good = purity(lot_id, 99.0, instrument=LIMS)
    missing_time = purity(lot_id, 99.0, instrument=LIMS)
    missing_time.ClearField("measured_at")

    error = await refused(post_all(
        stub, good, purity(lot_id, math.nan, instrument=LIMS), missing_time,
        purity(lot_id, 99.0, instrument=HPLC), good))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "results[1].quantity.value", "results[2].measured_at", "results[3].instrument_id",
        "results[4].instrument_result_id"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-002")
async def test_a_batch_refused_for_one_entry_stores_none_of_it(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    unknown_lot = ref("LOT")

    not_found = await refused(post_all(stub, purity(lot_id, 99.0, instrument=LIMS),
                                       purity(unknown_lot, 99.0, instrument=LIMS)))

    assert not_found.code() == grpc.StatusCode.NOT_FOUND
    assert set(field_violations(not_found)) == {"results[1].lot_id"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("RES-002", "RES-001")
async def test_a_batch_with_a_conflicting_retry_stores_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    stored = await post(stub, purity(lot_id, 99.0, instrument=LIMS, key="RUN-1"))

    error = await refused(post_all(stub, purity(lot_id, 99.5, instrument=LIMS),
                                   purity(lot_id, 99.9, instrument=LIMS, key="RUN-1")))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "results[1]" in error.details()
    assert await list_results(stub, lot_id) == [stored]


@pytest.mark.req("RES-002")
async def test_a_batch_holds_one_to_five_hundred_results(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    empty = await refused(post_all(stub))
    too_many = await refused(post_all(stub, *(identity(lot_id, instrument=LIMS)
                                               for _ in range(501))))
    most = await post_all(stub, *(identity(lot_id, instrument=LIMS) for _ in range(500)))

    assert set(field_violations(empty)) == set(field_violations(too_many)) == {"results"}
    assert [r.lot_result_number for r in most] == list(range(1, 501))


# Out-of-specification results


@pytest.mark.req("OOS-004")
async def test_an_out_of_specification_result_blocks_further_tests_until_qa_decides(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, purity(lot_id, 97.0))

    error = await refused(post(stub, purity(lot_id, 99.5)))
    other_test = await post(stub, sterility(lot_id))

    assert failing.verdict == pb.VERDICT_FAIL
    assert error.code() == FAILED
    assert precondition(error) == ("INVESTIGATION", f"results/{failing.result_id}")
    assert "under investigation" in error.details()
    assert other_test.verdict == pb.VERDICT_PASS
    assert [r.result_id for r in await list_results(stub, lot_id)] == [
        failing.result_id, other_test.result_id]


@pytest.mark.req("OOS-003")
async def test_an_invalidated_result_is_kept_and_its_retest_must_name_it(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, purity(lot_id, 97.0))

    invalidated = await invalidate(stub, failing.result_id, reason="wrong dilution (LIR-7)")
    unnamed = await refused(post(stub, purity(lot_id, 99.5)))
    retest = await post(stub, purity(lot_id, 99.5, retest_of=failing.result_id))
    twice = await refused(post(stub, purity(lot_id, 99.6, retest_of=failing.result_id)))

    assert (invalidated.state, invalidated.state_reason, invalidated.state_changed_by) == (
        pb.RESULT_STATE_INVALIDATED, "wrong dilution (LIR-7)", "qa.jane")
    assert invalidated.HasField("state_changed_at")
    # The original measurement and verdict stay as they were.
    assert (invalidated.quantity, invalidated.verdict, invalidated.verdict_reason) == (
        failing.quantity, failing.verdict, failing.verdict_reason)
    assert precondition(unnamed) == ("RETEST", f"results/{failing.result_id}")
    assert (retest.retest_of, retest.verdict, retest.state) == (
        failing.result_id, pb.VERDICT_PASS, pb.RESULT_STATE_VALID)
    assert twice.code() == FAILED
    assert "retested already" in twice.details()
    assert await list_results(stub, lot_id) == [invalidated, retest]


@pytest.mark.req("OOS-003")
async def test_a_retest_must_name_an_invalidated_result_of_the_same_lot_and_test(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    passing = await post(stub, purity(lot_id, 99.0))
    other = await post(stub, sterility(lot_id))
    await invalidate(stub, other.result_id)

    not_invalidated = await refused(post(stub, purity(lot_id, 99.0,
                                                      retest_of=passing.result_id)))
    other_test = await refused(post(stub, purity(lot_id, 99.0, retest_of=other.result_id)))

    assert [precondition(e)[0] for e in (not_invalidated, other_test)] == ["RETEST", "RETEST"]
    assert "only an invalidated result is retested" in not_invalidated.details()
    assert "is not a PURITY result of this lot" in other_test.details()


@pytest.mark.req("OOS-004")
async def test_testing_into_compliance_is_refused_within_a_batch_too(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(post_all(stub, sterility(lot_id, growth=True, instrument=LIMS),
                                   sterility(lot_id, instrument=LIMS)))

    assert error.code() == FAILED
    assert precondition(error)[0] == "INVESTIGATION"
    assert "results[1]" in error.details()
    assert await list_results(stub, lot_id) == []


@pytest.mark.req("OOS-002")
async def test_a_confirmed_result_stays_confirmed(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, sterility(lot_id, growth=True))
    passing = await post(stub, identity(lot_id))

    confirmed = await confirm(stub, failing.result_id, reason="OOS confirmed (INV-3)")
    again = await confirm(stub, failing.result_id, reason="OOS confirmed (INV-3)")
    other_reason = await refused(confirm(stub, failing.result_id, reason="changed my mind"))
    invalidating = await refused(invalidate(stub, failing.result_id))
    confirming_a_pass = await refused(confirm(stub, passing.result_id))

    assert (confirmed.state, confirmed.state_reason) == (pb.RESULT_STATE_CONFIRMED,
                                                         "OOS confirmed (INV-3)")
    assert again == confirmed
    assert [e.code() for e in (other_reason, invalidating, confirming_a_pass)] == [FAILED] * 3
    assert "is CONFIRMED" in other_reason.details()
    assert "is CONFIRMED" in invalidating.details()
    assert "passes its specification" in confirming_a_pass.details()
    assert await list_results(stub, lot_id) == [confirmed, passing]


@pytest.mark.req("OOS-003", "DEL-005")
async def test_an_invalidation_retried_is_answered_with_the_result(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    result = await post(stub, purity(lot_id, 97.0))

    first = await invalidate(stub, result.result_id, reason="wrong dilution", by="qa.jane")
    again = await invalidate(stub, result.result_id, reason="wrong dilution", by="qa.jane")
    other = await refused(invalidate(stub, result.result_id, reason="wrong dilution",
                                     by="qa.john"))

    assert again == first
    assert other.code() == FAILED
    assert "is INVALIDATED" in other.details()


@pytest.mark.req("OOS-003", "INP-001")
async def test_handling_a_result_needs_a_reason_and_a_known_result(stub) -> None:
    no_reason = await refused(stub.InvalidateResult(pb.InvalidateResultRequest(
        result_id=ref("R"), reason=" ", requested_by="qa.jane")))
    unknown = await refused(invalidate(stub, ref("R")))

    assert set(field_violations(no_reason)) == {"reason"}
    assert (unknown.code(), set(field_violations(unknown))) == (grpc.StatusCode.NOT_FOUND,
                                                                 {"result_id"})


@pytest.mark.req("OOS-002", "OOS-003")
async def test_invalidations_and_confirmations_are_published_with_the_result(
        stub, js, nats_server) -> None:
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, purity(lot_id, 97.0))
    invalidated = await invalidate(stub, failing.result_id)
    retest = await post(stub, purity(lot_id, 96.0, retest_of=failing.result_id))
    confirmed = await confirm(stub, retest.result_id)

    seen = await events_until(
        nats_server, {RESULT_RECORDED: events_pb2.ResultRecorded,
                      RESULT_INVALIDATED: events_pb2.ResultInvalidated,
                      RESULT_CONFIRMED: events_pb2.ResultConfirmed},
        lambda e: e.result.lot_id == lot_id,
        lambda e: e.result.state == pb.RESULT_STATE_CONFIRMED)

    assert [(subject, e.result) for subject, e in seen] == [
        (RESULT_RECORDED, failing), (RESULT_INVALIDATED, invalidated),
        (RESULT_RECORDED, retest), (RESULT_CONFIRMED, confirmed)]
    assert seen[1][1].occurred_at == invalidated.state_changed_at


# Queries


@pytest.mark.req("RES-003")
async def test_an_instruments_results_come_by_measurement_time_a_page_at_a_time(
        stub, js) -> None:
    instrument_id = await new_instrument(stub)
    _, lot_id = await specified_lot(stub, js)
    base = now()
    offsets = [30, 10, 50, 20, 40, 20]  # seconds after base, posted in this order
    posted = [await post(stub, identity(lot_id, instrument=instrument_id,
                                        measured_at=base + timedelta(seconds=s)))
              for s in offsets]
    in_order = sorted(posted, key=lambda r: (r.measured_at.ToDatetime(), r.sequence))

    def ask(**kw) -> Any:
        return stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
            instrument_id=instrument_id, **kw))

    pages, token = [], ""
    while True:
        page = await ask(page_size=4, page_token=token)
        pages.append(list(page.results))
        token = page.next_page_token
        if not token:
            break
    window = await ask(measured_from=to_timestamp(base + timedelta(seconds=20)),
                       measured_before=to_timestamp(base + timedelta(seconds=50)))

    assert [len(p) for p in pages] == [4, 2]
    assert [r for p in pages for r in p] == in_order
    assert [from_timestamp(r.measured_at) - base for r in window.results] == [
        timedelta(seconds=s) for s in (20, 20, 30, 40)]
    assert window.next_page_token == ""


@pytest.mark.req("INP-001")
async def test_listing_an_instruments_results_checks_the_request(stub) -> None:
    base = now()
    backwards = await refused(stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
        instrument_id=HPLC, measured_from=to_timestamp(base),
        measured_before=to_timestamp(base - timedelta(seconds=1)), page_size=5000,
        page_token="not a token")))
    stale = await refused(stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
        instrument_id=HPLC, page_token=paging.encode_position(99_999_999))))
    unknown = await refused(stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
        instrument_id=ref("INS"))))

    assert set(field_violations(backwards)) == {"measured_before", "page_size", "page_token"}
    assert set(field_violations(stale)) == {"page_token"}
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("RES-005")
async def test_the_results_of_an_unknown_lot_are_not_found(stub) -> None:
    error = await refused(stub.ListLotResults(pb.ListLotResultsRequest(lot_id=ref("LOT"))))

    assert error.code() == grpc.StatusCode.NOT_FOUND


# The lot projection


@pytest.mark.req("RES-005", "DEL-002")
async def test_the_same_lot_received_delivered_twice_changes_nothing(
        stub, js, service) -> None:
    material = ref("MAT")
    await specify(stub, material)
    event = lot_received(ref("LOT"), material)
    await publish(js, event)
    await wait_until_known(stub, event.lot.lot_id)

    # Delivered again after the broker's duplicate window (another Nats-Msg-Id), and
    # re-published under a new event id with another material: the first one stands.
    await publish(js, event, msg_id=new_event_id())
    republished = lot_received(event.lot.lot_id, ref("OTHER"))
    await publish(js, republished)
    await receive_lot(stub, js, material)  # consumed in order: the copies are done

    inbox = tables.inbox
    async with service.infra.engine.connect() as conn:
        rows = (await conn.execute(select(known_lots.c.material_code)
                                   .where(known_lots.c.lot_id == event.lot.lot_id))).all()
        applied = (await conn.execute(select(inbox.c.event_id).where(
            inbox.c.event_id.in_([event.event_id, republished.event_id])))).scalars().all()
    assert [row.material_code for row in rows] == [material]
    assert sorted(applied) == sorted([event.event_id, republished.event_id])
    result = await post(stub, purity(event.lot.lot_id, 99.0))
    assert (result.material_code, result.verdict) == (material, pb.VERDICT_PASS)
    assert service.consumers[0].parked == 0


@pytest.mark.req("RES-001")
async def test_one_row_is_stored_per_recorded_result(stub, js, service) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)
    for _ in range(3):
        await post(stub, request)

    async with service.infra.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(results)
                                    .where(results.c.lot_id == lot_id))).scalar_one()
    assert count == 1
