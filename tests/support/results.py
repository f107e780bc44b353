"""The results service as an instrument and QA meet it in integration tests: a running
service with its instruments registered, lots made known as the lots service does,
specifications, posts, QA's decisions and the events they publish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import JetStreamContext

from lotgate.lots.v1 import events_pb2 as lots_events_pb2
from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from shared.uow import new_event_id
from tests.support import auth
from tests.support.events import harness
from tests.support.services import ref, start_in_process

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
