"""The results service over real gRPC, with a real database and a real nats-server."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import nats
import pytest
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from sqlalchemy import func, select

from lotgate.lots.v1 import events_pb2 as lots_events_pb2
from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import events_pb2
from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from services.results.tables import known_lots, results, tables
from shared.protoconv import to_timestamp
from shared.runtime import RunningService
from shared.uow import new_event_id
from tests.support.grpc_errors import field_violations
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

LOT_RECEIVED = "lotgate.lots.v1.lot_received"
RESULT_RECORDED = "lotgate.results.v1.result_recorded"


@pytest.fixture(scope="module")
async def service(databases, nats_server) -> AsyncIterator[RunningService]:
    running = await start_in_process("results", databases=databases, nats=nats_server)
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def stub(service) -> AsyncIterator[pb_grpc.ResultServiceStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield pb_grpc.ResultServiceStub(channel)


@pytest.fixture(scope="module")
async def js(nats_server) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


def lot_received(lot_id: str, material: str) -> lots_events_pb2.LotReceived:
    now = datetime.now(UTC)
    return lots_events_pb2.LotReceived(
        event_id=new_event_id(),
        lot=lots_pb2.Lot(lot_id=lot_id, material_code=material, supplier_id="SUP-1",
                         received_at=to_timestamp(now)),
        occurred_at=to_timestamp(now))


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
            await asyncio.sleep(0.05)


async def receive_lot(stub, js, material: str) -> str:
    lot_id = ref("LOT")
    await publish(js, lot_received(lot_id, material))
    await wait_until_known(stub, lot_id)
    return lot_id


async def set_spec(stub, material: str, *, lower: float | None = 98.0,
                   upper: float | None = 102.0, unit: str = "%") -> pb.Specification:
    purity = pb.RangeCriterion(unit=unit)
    if lower is not None:
        purity.lower = lower
    if upper is not None:
        purity.upper = upper
    reply = await stub.SetSpecification(pb.SetSpecificationRequest(
        material_code=material, identity=pb.IdentityCriterion(reference="IR RS-7"),
        purity=purity, sterility=pb.SterilityCriterion(method="Ph. Eur. 2.6.1"),
        approved_by="qa.jane"))
    return reply.specification


async def specified_lot(stub, js, **limits) -> tuple[str, str]:
    """(material, lot_id): a known lot of a material with a specification in force."""
    material = ref("MAT")
    await set_spec(stub, material, **limits)
    return material, await receive_lot(stub, js, material)


def purity(lot_id: str, value: float, unit: str = "%", **kw) -> pb.RecordResultRequest:
    return pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id="HPLC-01",
        idempotency_key=kw.pop("idempotency_key", ref("KEY")),
        quantity=pb.Quantity(value=value, unit=unit), **kw)


async def list_results(stub, lot_id: str) -> list[pb.Result]:
    return list((await stub.ListLotResults(pb.ListLotResultsRequest(lot_id=lot_id))).results)


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# Specifications


async def test_each_specification_change_is_a_new_version_in_force_from_now(stub) -> None:
    material = ref("MAT")
    before = datetime.now(UTC) - timedelta(seconds=1)

    first = await set_spec(stub, material, lower=98.0, upper=None)
    second = await set_spec(stub, material, lower=99.0, upper=101.0)
    current = (await stub.GetSpecification(
        pb.GetSpecificationRequest(material_code=material))).specification

    assert (first.version, second.version) == (1, 2)
    assert current == second
    assert (current.purity.lower, current.purity.upper, current.purity.unit) == (99.0, 101.0, "%")
    assert not first.purity.HasField("upper")
    assert current.approved_by == "qa.jane"
    assert before <= current.effective_from.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)


async def test_concurrent_specification_changes_never_share_a_version(stub) -> None:
    material = ref("MAT")

    outcomes = await asyncio.gather(*(set_spec(stub, material, lower=90.0 + i)
                                      for i in range(6)), return_exceptions=True)

    made = sorted(o.version for o in outcomes if isinstance(o, pb.Specification))
    lost = [o for o in outcomes if not isinstance(o, pb.Specification)]
    assert made == list(range(1, len(made) + 1))
    assert all(e.code() == grpc.StatusCode.ABORTED for e in lost)
    current = (await stub.GetSpecification(
        pb.GetSpecificationRequest(material_code=material))).specification
    assert current.version == made[-1]


async def test_a_material_without_a_specification_is_not_found(stub) -> None:
    error = await refused(stub.GetSpecification(
        pb.GetSpecificationRequest(material_code=ref("MAT"))))

    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_specification_with_bad_criteria_names_every_bad_field(stub) -> None:
    material = ref("MAT")

    error = await refused(stub.SetSpecification(pb.SetSpecificationRequest(
        material_code=material, identity=pb.IdentityCriterion(reference=" "),
        purity=pb.RangeCriterion(lower=102.0, upper=98.0))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "identity.reference", "purity.lower", "purity.unit", "sterility", "approved_by"}
    missing = await refused(stub.GetSpecification(
        pb.GetSpecificationRequest(material_code=material)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_a_purity_range_needs_a_finite_limit(stub) -> None:
    error = await refused(stub.SetSpecification(pb.SetSpecificationRequest(
        material_code=ref("MAT"), identity=pb.IdentityCriterion(reference="IR"),
        purity=pb.RangeCriterion(upper=math.nan, unit="%"), sterility=pb.SterilityCriterion(),
        approved_by="qa.jane")))
    unbounded = await refused(stub.SetSpecification(pb.SetSpecificationRequest(
        material_code=ref("MAT"), identity=pb.IdentityCriterion(reference="IR"),
        purity=pb.RangeCriterion(unit="%"), sterility=pb.SterilityCriterion(),
        approved_by="qa.jane")))

    assert set(field_violations(error)) == {"purity.upper"}
    assert set(field_violations(unbounded)) == {"purity"}


# Judging results


async def test_results_are_judged_against_the_specification_in_force(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js)

    passing = (await stub.RecordResult(purity(lot_id, 99.5))).result
    failing = (await stub.RecordResult(purity(lot_id, 97.1))).result

    assert (passing.verdict, passing.verdict_reason, passing.spec_version) == (
        pb.VERDICT_PASS, "", 1)
    assert (failing.verdict, failing.spec_version) == (pb.VERDICT_FAIL, 1)
    assert failing.verdict_reason == "purity 97.1 % is below the lower limit 98.0 %"
    assert (failing.lot_id, failing.material_code, failing.test) == (
        lot_id, material, pb.TEST_KIND_PURITY)
    assert (failing.quantity.value, failing.quantity.unit) == (97.1, "%")
    assert failing.sequence > passing.sequence > 0


async def test_identity_and_sterility_are_judged_by_their_outcome(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    def post(**measurement):
        test = pb.TEST_KIND_IDENTITY if "identity" in measurement else pb.TEST_KIND_STERILITY
        return stub.RecordResult(pb.RecordResultRequest(
            lot_id=lot_id, test=test, instrument_id="LAB-2", idempotency_key=ref("KEY"),
            **measurement))

    verdicts = [(await post(**m)).result.verdict for m in (
        {"identity": pb.IDENTITY_OUTCOME_MATCH}, {"identity": pb.IDENTITY_OUTCOME_NO_MATCH},
        {"sterility": pb.STERILITY_OUTCOME_NO_GROWTH}, {"sterility": pb.STERILITY_OUTCOME_GROWTH})]

    assert verdicts == [pb.VERDICT_PASS, pb.VERDICT_FAIL, pb.VERDICT_PASS, pb.VERDICT_FAIL]


async def test_a_new_specification_version_applies_to_later_results_only(stub, js) -> None:
    material, lot_id = await specified_lot(stub, js, lower=98.0)
    await stub.RecordResult(purity(lot_id, 98.5))

    await set_spec(stub, material, lower=99.0)
    await stub.RecordResult(purity(lot_id, 98.5))

    assert [(r.quantity.value, r.verdict, r.spec_version)
            for r in await list_results(stub, lot_id)] == [
        (98.5, pb.VERDICT_PASS, 1), (98.5, pb.VERDICT_FAIL, 2)]


async def test_measured_at_is_kept_as_sent_and_defaults_to_the_time_of_receipt(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    measured = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)

    given = (await stub.RecordResult(
        purity(lot_id, 99.0, measured_at=to_timestamp(measured)))).result
    defaulted = (await stub.RecordResult(purity(lot_id, 99.0))).result

    assert given.measured_at.ToDatetime(tzinfo=UTC) == measured
    assert defaulted.measured_at == defaulted.recorded_at


# Idempotency


async def test_a_retried_post_is_answered_with_the_original_result(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)

    first = (await stub.RecordResult(request)).result
    again = (await stub.RecordResult(request)).result

    assert again == first
    assert await list_results(stub, lot_id) == [first]


async def test_a_lots_results_are_numbered_without_gaps_and_retries_take_no_number(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    _, other_lot = await specified_lot(stub, js)
    first = purity(lot_id, 99.0)

    numbers = [(await stub.RecordResult(first)).result.lot_result_number,
               (await stub.RecordResult(purity(other_lot, 99.0))).result.lot_result_number,
               (await stub.RecordResult(first)).result.lot_result_number,
               (await stub.RecordResult(purity(lot_id, 98.5))).result.lot_result_number]
    numbers += [r.result.lot_result_number for r in await asyncio.gather(
        *(stub.RecordResult(purity(lot_id, 99.5)) for _ in range(5)))]

    assert numbers[:4] == [1, 1, 1, 2]
    assert sorted(numbers[4:]) == [3, 4, 5, 6, 7]
    assert [r.lot_result_number for r in await list_results(stub, lot_id)] == list(range(1, 8))


async def test_a_retry_after_a_new_specification_still_gets_the_original_verdict(
        stub, js) -> None:
    material, lot_id = await specified_lot(stub, js, lower=98.0)
    request = purity(lot_id, 98.5)
    first = (await stub.RecordResult(request)).result

    await set_spec(stub, material, lower=99.0, unit="% w/w")
    again = (await stub.RecordResult(request)).result

    assert again == first
    assert (again.verdict, again.spec_version) == (pb.VERDICT_PASS, 1)


async def test_a_reused_key_with_other_content_is_already_exists_and_changes_nothing(
        stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    key = ref("KEY")
    original = (await stub.RecordResult(purity(lot_id, 99.0, idempotency_key=key))).result

    error = await refused(stub.RecordResult(purity(lot_id, 97.0, idempotency_key=key)))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert original.result_id in error.details()
    assert await list_results(stub, lot_id) == [original]


async def test_the_same_key_on_another_instrument_is_another_result(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    key = ref("KEY")
    request = purity(lot_id, 99.0, idempotency_key=key)

    first = (await stub.RecordResult(request)).result
    request.instrument_id = "HPLC-02"
    second = (await stub.RecordResult(request)).result

    assert first.result_id != second.result_id
    assert len(await list_results(stub, lot_id)) == 2


async def test_concurrent_duplicates_are_recorded_once(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)

    replies = await asyncio.gather(*(stub.RecordResult(request) for _ in range(8)))

    assert len({reply.result.SerializeToString(deterministic=True) for reply in replies}) == 1
    assert len(await list_results(stub, lot_id)) == 1


# Bad requests


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_a_non_finite_quantity_is_refused(stub, js, value: float) -> None:
    _, lot_id = await specified_lot(stub, js, lower=None, upper=100.0)

    error = await refused(stub.RecordResult(purity(lot_id, value)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"quantity.value"}
    assert await list_results(stub, lot_id) == []


async def test_a_result_without_a_measurement_is_refused(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id="HPLC-01",
        idempotency_key=ref("KEY"))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"measurement"}


async def test_a_measurement_that_does_not_fit_the_test_is_refused(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id="HPLC-01",
        idempotency_key=ref("KEY"), identity=pb.IDENTITY_OUTCOME_MATCH)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == {"measurement": "a PURITY result carries quantity, "
                                                      "not identity"}
    assert await list_results(stub, lot_id) == []


@pytest.mark.parametrize("test", [pb.TEST_KIND_UNSPECIFIED, 99])
async def test_an_unspecified_or_unknown_test_is_refused(stub, js, test: int) -> None:
    _, lot_id = await specified_lot(stub, js)

    error = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=test, instrument_id="LAB-1", idempotency_key=ref("KEY"),
        sterility=pb.STERILITY_OUTCOME_NO_GROWTH)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"test"}


async def test_unspecified_outcomes_are_refused(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)

    identity = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_IDENTITY, instrument_id="LAB-1",
        idempotency_key=ref("KEY"), identity=pb.IDENTITY_OUTCOME_UNSPECIFIED)))
    sterility = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_STERILITY, instrument_id="LAB-1",
        idempotency_key=ref("KEY"), sterility=7)))

    assert set(field_violations(identity)) == {"identity"}
    assert set(field_violations(sterility)) == {"sterility"}


async def test_a_bad_result_names_every_bad_field_and_changes_nothing(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js)
    too_late = datetime.now(UTC) + timedelta(minutes=10)

    error = await refused(stub.RecordResult(pb.RecordResultRequest(
        lot_id=lot_id, test=pb.TEST_KIND_PURITY, instrument_id="bad id!",
        idempotency_key="k" * 129, quantity=pb.Quantity(value=math.nan, unit=""),
        measured_at=to_timestamp(too_late))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "instrument_id", "idempotency_key", "quantity.value", "quantity.unit", "measured_at"}
    assert await list_results(stub, lot_id) == []


async def test_a_quantity_in_another_unit_is_refused_on_quantity_unit(stub, js) -> None:
    _, lot_id = await specified_lot(stub, js, unit="%")

    error = await refused(stub.RecordResult(purity(lot_id, 0.99, unit="fraction")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"quantity.unit"}
    assert await list_results(stub, lot_id) == []


async def test_a_result_for_an_unknown_lot_is_not_found_and_may_be_retried(stub) -> None:
    error = await refused(stub.RecordResult(purity(ref("LOT"), 99.0)))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "not known to the results service yet" in error.details()
    assert set(field_violations(error)) == {"lot_id"}


async def test_a_result_for_a_material_without_a_specification_is_a_failed_precondition(
        stub, js) -> None:
    lot_id = await receive_lot(stub, js, ref("MAT"))

    error = await refused(stub.RecordResult(purity(lot_id, 99.0)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await list_results(stub, lot_id) == []


async def test_the_results_of_an_unknown_lot_are_not_found(stub) -> None:
    error = await refused(stub.ListLotResults(pb.ListLotResultsRequest(lot_id=ref("LOT"))))

    assert error.code() == grpc.StatusCode.NOT_FOUND


# Events


async def test_each_recorded_result_is_published_once_with_its_event_id(
        stub, js, nats_server) -> None:
    _, lot_id = await specified_lot(stub, js)
    nc = await nats.connect(nats_server.url)
    sub = await nc.jetstream().subscribe(RESULT_RECORDED, ordered_consumer=True)
    try:
        request = purity(lot_id, 99.0)
        first = (await stub.RecordResult(request)).result
        await stub.RecordResult(request)  # a retry: no second event
        second = (await stub.RecordResult(purity(lot_id, 90.0))).result
        seen: list[events_pb2.ResultRecorded] = []
        # Events of one lot leave in commit order, so a duplicate of the first would
        # arrive before the second's event.
        async with asyncio.timeout(10):
            while not seen or seen[-1].result.result_id != second.result_id:
                msg = await sub.next_msg(timeout=10)
                try:
                    event = events_pb2.ResultRecorded.FromString(msg.data)
                except DecodeError:
                    continue  # other tests put poison messages on this subject
                if event.result.lot_id == lot_id:
                    assert msg.headers["Nats-Msg-Id"] == event.event_id
                    seen.append(event)
    finally:
        await nc.close()

    assert [e.result for e in seen] == [first, second]
    assert len({e.event_id for e in seen}) == 2
    assert all(e.occurred_at == e.result.recorded_at for e in seen)


# The lot projection


async def test_the_same_lot_received_delivered_twice_changes_nothing(
        stub, js, service) -> None:
    material = ref("MAT")
    await set_spec(stub, material)
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
    result = (await stub.RecordResult(purity(event.lot.lot_id, 99.0))).result
    assert (result.material_code, result.verdict) == (material, pb.VERDICT_PASS)
    assert service.consumers[0].parked == 0


async def test_one_row_is_stored_per_recorded_result(stub, js, service) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)
    for _ in range(3):
        await stub.RecordResult(request)

    async with service.infra.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(results)
                                    .where(results.c.lot_id == lot_id))).scalar_one()
    assert count == 1
