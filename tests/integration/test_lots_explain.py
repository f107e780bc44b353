"""Decisions explained and replayed, the warehouse's batch status call and the received
range of ListLots: the lots service over real gRPC, a real database and a real nats-server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import event, update

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from services.lots import convert, queries, tables
from services.lots.domain.rule import Decision
from services.lots.read_model import StatusCache
from shared.protoconv import from_timestamp, to_timestamp
from tests.integration.test_lots import System, running_system
from tests.support.first_format import first_format
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


def codes(unmet: Any) -> list[str]:
    return [u.code for u in unmet]


async def explain(system: System, lot_id: str, version: int = 0) -> pb.ExplainedDecision:
    return (await system.lots.ExplainDecision(
        pb.ExplainDecisionRequest(lot_id=lot_id, version=version))).explained


async def decisions(system: System, lot_id: str) -> list[pb.ExplainedDecision]:
    return list((await system.lots.ListDecisions(
        pb.ListDecisionsRequest(lot_id=lot_id))).decisions)


async def oos_retested_lot(system: System, material: str) -> dict[str, Any]:
    """A lot that went QUARANTINE -> ON_HOLD (purity OOS) -> QUARANTINE (invalidated) ->
    RELEASED (retest); what was published for it."""
    qualification = await system.qualify(ref("SUP"), material)
    lot = await system.receive(qualification.supplier_id, material)
    await system.wait_unmet(lot.lot_id, ["IDENTITY_MISSING", "PURITY_MISSING",
                                         "STERILITY_MISSING"])
    identity = system.result_event(lot.lot_id, material, rpb.TEST_KIND_IDENTITY)
    failure = system.result_event(lot.lot_id, material, rpb.TEST_KIND_PURITY, rpb.VERDICT_FAIL,
                                  spec_version=2)
    sterility = system.result_event(lot.lot_id, material, rpb.TEST_KIND_STERILITY)
    for recorded in (identity, failure, sterility):
        await system.publish(recorded)
    await system.wait_unmet(lot.lot_id, ["PURITY_OUT_OF_SPECIFICATION"])
    await system.publish(system.invalidation(failure, reason="sample diluted twice"))
    await system.wait_unmet(lot.lot_id, ["PURITY_RETEST_REQUIRED"])
    retest = system.result_event(lot.lot_id, material, rpb.TEST_KIND_PURITY, spec_version=2,
                                 retest_of=failure.result.result_id)
    await system.publish(retest)
    released = await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
    return {"lot_id": lot.lot_id, "qualification": qualification, "released": released,
            "identity": identity.result, "failure": failure.result,
            "sterility": sterility.result, "retest": retest.result}


@pytest.mark.req("DEC-001", "DEC-002")
async def test_the_latest_decision_is_explained_with_its_inputs_and_replay_agrees(
        system: System) -> None:
    lot = await oos_retested_lot(system, ref("MAT"))

    explained = await explain(system, lot["lot_id"])

    decision = explained.decision
    assert (decision.lot_id, decision.version) == (lot["lot_id"], lot["released"].version)
    assert (decision.previous_status, decision.status) == (pb.LOT_STATUS_QUARANTINE,
                                                           pb.LOT_STATUS_RELEASED)
    assert list(decision.unmet) == []
    assert decision.cause == f"results {lot['retest'].result_id}"
    inputs = decision.inputs
    assert inputs.now == decision.decided_at == lot["released"].decided_at
    assert inputs.qualification.status == "QUALIFIED"
    assert inputs.qualification.version == lot["qualification"].version
    assert inputs.qualification.valid_until == lot["qualification"].valid_until
    assert (inputs.supplier_id, inputs.supplier_site_id, inputs.material_code,
            inputs.expiry_date) == (lot["qualification"].supplier_id, "MAIN",
                                    lot["qualification"].material_code, "2030-01-31")
    shown = {r.result_id: (r.test, r.verdict, r.state, r.spec_version, r.number, r.retest_of)
             for r in inputs.results}
    assert shown == {
        lot["identity"].result_id: ("IDENTITY", "PASS", "VALID", 1, 1, ""),
        lot["failure"].result_id: ("PURITY", "FAIL", "INVALIDATED", 2, 2, ""),
        lot["sterility"].result_id: ("STERILITY", "PASS", "VALID", 1, 3, ""),
        lot["retest"].result_id: ("PURITY", "PASS", "VALID", 2, 4, lot["failure"].result_id),
    }
    [failure] = [r for r in inputs.results if r.result_id == lot["failure"].result_id]
    assert failure.state_reason == "sample diluted twice"
    assert list(failure.required_tests) == ["IDENTITY", "PURITY", "STERILITY"]
    assert inputs.rule_status == pb.LOT_STATUS_RELEASED
    assert list(inputs.required_tests) == ["IDENTITY", "PURITY", "STERILITY"]
    assert set(inputs.counted_result_ids) == {lot["identity"].result_id,
                                              lot["sterility"].result_id,
                                              lot["retest"].result_id}
    assert explained.replay.agrees, explained.replay.difference
    assert (explained.replay.status, explained.replay.difference) == (pb.LOT_STATUS_RELEASED, "")


@pytest.mark.req("DEC-002")
async def test_a_decision_by_version_is_explained_and_agrees(system: System) -> None:
    lot = await oos_retested_lot(system, ref("MAT"))
    every = await decisions(system, lot["lot_id"])
    # The last decision ON_HOLD (results may have arrived one by one before it).
    held = [e.decision for e in every if e.decision.status == pb.LOT_STATUS_ON_HOLD][-1]

    first = await explain(system, lot["lot_id"], version=1)
    on_hold = await explain(system, lot["lot_id"], version=held.version)

    assert first.decision.previous_status == pb.LOT_STATUS_UNSPECIFIED
    assert first.decision.status == pb.LOT_STATUS_QUARANTINE
    # (SUPPLIER_NOT_QUALIFIED too when the qualification had not arrived yet)
    assert codes(first.decision.unmet)[-3:] == ["IDENTITY_MISSING", "PURITY_MISSING",
                                                "STERILITY_MISSING"]
    assert first.decision.cause == "received by wms"
    assert list(first.decision.inputs.results) == []
    assert first.replay.agrees, first.replay.difference
    assert on_hold.decision == held
    assert codes(on_hold.decision.unmet) == ["PURITY_OUT_OF_SPECIFICATION"]
    assert on_hold.decision.inputs.rule_status == pb.LOT_STATUS_ON_HOLD
    assert {(r.result_id, r.verdict, r.state) for r in on_hold.decision.inputs.results
            if r.test == "PURITY"} == {(lot["failure"].result_id, "FAIL", "VALID")}
    assert on_hold.replay.agrees, on_hold.replay.difference
    assert list(on_hold.replay.unmet) == list(on_hold.decision.unmet)


@pytest.mark.req("DEC-001", "DEC-002")
async def test_list_decisions_gives_every_decision_oldest_first_and_all_agree(
        system: System) -> None:
    lot = await oos_retested_lot(system, ref("MAT"))

    every = await decisions(system, lot["lot_id"])

    assert [e.decision.version for e in every] == list(range(1, len(every) + 1))
    assert every[-1].decision.version == lot["released"].version
    statuses = [e.decision.status for e in every]
    assert statuses[0] == pb.LOT_STATUS_QUARANTINE and statuses[-1] == pb.LOT_STATUS_RELEASED
    assert pb.LOT_STATUS_ON_HOLD in statuses
    assert [e.decision.previous_status for e in every] == [pb.LOT_STATUS_UNSPECIFIED,
                                                           *statuses[:-1]]
    assert [e.decision.decided_at.ToDatetime() for e in every] == sorted(
        e.decision.decided_at.ToDatetime() for e in every)
    for e in every:
        assert e.replay.agrees, (e.decision.version, e.replay.difference)


@pytest.mark.req("DEC-001", "DEC-002")
async def test_decisions_stored_in_the_first_format_explain_and_replay_as_they_did(
        system: System) -> None:
    lot = await oos_retested_lot(system, ref("MAT"))
    by_reference = await decisions(system, lot["lot_id"])
    # The same decisions as the first format stored them: every result's facts copied.
    async with system.lots_service.infra.engine.begin() as conn:
        for e in await queries.list_decisions(conn, lot_id=lot["lot_id"]):
            stored = e.stored
            by_id = {r.result_id: r for r in stored.inputs.results}
            rule = Decision(stored.rule_status, (), tuple(by_id[c] for c in stored.counted),
                            stored.required_tests)
            await conn.execute(update(tables.decisions).where(
                tables.decisions.c.lot_id == lot["lot_id"],
                tables.decisions.c.version == e.record.version).values(
                inputs=first_format(stored.inputs, rule)))
        rows = await queries.decisions_of(conn, lot_id=lot["lot_id"])
        assert all('"results":[' in r.inputs and '"v":' not in r.inputs for r in rows)

    copied = await decisions(system, lot["lot_id"])

    assert copied == by_reference
    assert all(e.replay.agrees for e in copied)
    assert await explain(system, lot["lot_id"]) == by_reference[-1]


@pytest.mark.req("DEC-002", "REL-010")
async def test_a_released_lot_kept_released_for_a_suspension_replays_and_agrees(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lot = await system.receive(supplier_id, material)
    recorded = [system.result_event(lot.lot_id, material, test) for test in (
        rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY, rpb.TEST_KIND_STERILITY)]
    for event_ in recorded:
        await system.publish(event_)
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
    await system.suspend(supplier_id, material)
    # Still released: QA reviews it. Once the suspension is in, the invalidation of a
    # result pulls it back.
    await eventually(lambda: system.lots.ListLotReviews(pb.ListLotReviewsRequest(
        supplier_id=supplier_id)), lambda reply: len(reply.reviews) == 1)
    assert (await system.status(lot.lot_id)).status == pb.LOT_STATUS_RELEASED
    await system.publish(system.invalidation(recorded[1]))

    pulled = await system.wait_unmet(lot.lot_id, ["SUPPLIER_SUSPENDED",
                                                  "PURITY_RETEST_REQUIRED"])

    assert pulled.status == pb.LOT_STATUS_QUARANTINE
    last = await explain(system, lot.lot_id)
    assert last.decision.previous_status == pb.LOT_STATUS_RELEASED
    assert last.decision.inputs.qualification.status == "SUSPENDED"
    for e in await decisions(system, lot.lot_id):
        assert e.replay.agrees, (e.decision.version, e.replay.difference)


@pytest.mark.req("INP-001")
async def test_an_unknown_lot_or_version_is_not_found_and_bad_requests_are_refused(
        system: System) -> None:
    lot = await system.receive(ref("SUP"), "MAT-A")
    unknown = ref("LOT")

    for call in (explain(system, unknown), explain(system, unknown, 3),
                 decisions(system, unknown)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert field_violations(caught.value) == {"lot_id": f"no lot {unknown}"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await explain(system, lot.lot_id, 2)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert field_violations(caught.value) == {"version": f"lot {lot.lot_id} has no decision 2"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await explain(system, "LOT 1", -1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"lot_id", "version"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await decisions(system, "")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"lot_id"}


async def receive_many(system: System, supplier_id: str, material: str, count: int,
                       *, chunk: int = 100) -> list[str]:
    """Receive `count` lots, `chunk` calls at a time."""
    ids = [ref("LOT") for _ in range(count)]
    for start in range(0, count, chunk):
        await asyncio.gather(*(system.receive(supplier_id, material, lot_id=lot_id)
                               for lot_id in ids[start:start + chunk]))
    return ids


@pytest.mark.req("WMS-001")
async def test_the_statuses_of_a_thousand_lots_come_in_one_call_in_the_order_asked(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = [await system.released_lot(supplier_id, material) for _ in range(3)]
    held = (await system.receive(supplier_id, material)).lot_id
    await system.publish(system.result_event(held, material, rpb.TEST_KIND_STERILITY,
                                              rpb.VERDICT_FAIL))
    await system.wait_status(held, pb.LOT_STATUS_ON_HOLD)
    waiting = await receive_many(system, supplier_id, material, 995)
    unknown = ref("LOT")
    asked = [*released, held, *waiting, unknown]
    random.Random(7).shuffle(asked)
    assert len(asked) == 1000

    reply = await system.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(lot_ids=asked))

    assert [s.lot_id for s in reply.statuses] == asked
    by_id = {s.lot_id: s for s in reply.statuses}
    assert {by_id[i].status for i in released} == {pb.LOT_STATUS_RELEASED}
    assert by_id[held].status == pb.LOT_STATUS_ON_HOLD
    assert {by_id[i].status for i in waiting} == {pb.LOT_STATUS_QUARANTINE}
    assert {tuple(codes(by_id[i].unmet)) for i in waiting} == {
        ("IDENTITY_MISSING", "PURITY_MISSING", "STERILITY_MISSING")}
    missing = by_id[unknown]
    assert (missing.status, missing.version) == (pb.LOT_STATUS_UNSPECIFIED, 0)
    assert [(u.code, u.message) for u in missing.unmet] == [
        ("LOT_NOT_FOUND", f"no lot {unknown}")]
    for lot_id in (released[0], held, waiting[0]):
        assert by_id[lot_id] == await system.status(lot_id)


@pytest.mark.req("WMS-001", "WMS-002")
async def test_lots_not_in_memory_are_read_in_one_query_and_expiry_applies_on_read(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = await system.released_lot(supplier_id, material)
    waiting = await receive_many(system, supplier_id, material, 20, chunk=20)
    unknown = [ref("LOT") for _ in range(3)]
    asked = [unknown[0], released, *waiting, *unknown[1:]]
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE (shared/db.py)
            statements.append(statement)

    async with system.lots_service.infra.engine.connect() as conn:
        event.listen(conn.sync_connection, "before_cursor_execute", seen)
        now = datetime.now(UTC)
        found = await queries.get_statuses(conn, lot_ids=asked, cache=StatusCache())
        cold = convert.release_statuses(found, asked, now)
        # Past the lots' expiry date (2030-01-31), a released lot reads as EXPIRED.
        later = datetime(2030, 2, 1, tzinfo=UTC)
        found = await queries.get_statuses(conn, lot_ids=[released], cache=StatusCache())
        expired = convert.release_statuses(found, [released], later)

    assert len(statements) == 2  # one per call, whatever the number of lots
    assert [s.lot_id for s in cold] == asked
    assert [s.status for s in cold] == [
        pb.LOT_STATUS_UNSPECIFIED, pb.LOT_STATUS_RELEASED,
        *[pb.LOT_STATUS_QUARANTINE] * 20, pb.LOT_STATUS_UNSPECIFIED, pb.LOT_STATUS_UNSPECIFIED]
    assert cold[1] == await system.status(released)
    assert [codes(s.unmet) for s in cold if s.lot_id in unknown] == [["LOT_NOT_FOUND"]] * 3
    [after_expiry] = expired
    assert after_expiry.status == pb.LOT_STATUS_EXPIRED
    assert codes(after_expiry.unmet) == ["LOT_EXPIRED"]


@pytest.mark.req("WMS-001")
async def test_a_batch_that_is_empty_too_long_repeated_or_malformed_is_refused(
        system: System) -> None:
    async def refused(lot_ids: list[str]) -> dict[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await system.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(lot_ids=lot_ids))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return field_violations(caught.value)

    assert set(await refused([])) == {"lot_ids"}
    assert set(await refused([f"LOT-{n}" for n in range(1001)])) == {"lot_ids"}
    assert await refused(["LOT-1", "LOT-2", "LOT-1", "LOT-3", "LOT-2"]) == {
        "lot_ids[2]": "repeats lot_ids[0] (LOT-1)", "lot_ids[4]": "repeats lot_ids[1] (LOT-2)"}
    assert set(await refused(["LOT-1", "", "LOT 3"])) == {"lot_ids[1]", "lot_ids[2]"}
    # Exactly 1,000 distinct ids are answered.
    reply = await system.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(
        lot_ids=[f"NO-SUCH-{n}" for n in range(1000)]))
    assert {(s.status, s.unmet[0].code) for s in reply.statuses} == {
        (pb.LOT_STATUS_UNSPECIFIED, "LOT_NOT_FOUND")}


@pytest.mark.req("WMS-004")
async def test_list_lots_filters_by_the_received_range_half_open(system: System) -> None:
    supplier_id = ref("SUP")
    first = await system.receive(supplier_id, "MAT-A")
    second = await system.receive(supplier_id, "MAT-A")
    third = await system.receive(supplier_id, "MAT-A")
    at = [from_timestamp(lot.received_at) for lot in (first, second, third)]
    assert at[0] < at[1] < at[2]

    async def received(**window: datetime) -> list[str]:
        return await system.lots_where(supplier_id=supplier_id, **{
            name: to_timestamp(value) for name, value in window.items()})

    assert await received(received_from=at[0], received_before=at[1]) == [first.lot_id]
    assert await received(received_from=at[1]) == sorted([second.lot_id, third.lot_id])
    assert await received(received_before=at[2]) == sorted([first.lot_id, second.lot_id])
    assert await received(received_from=at[2] + timedelta(microseconds=1)) == []
    everything = await received(received_from=at[0], received_before=at[2] + timedelta(days=1))
    assert everything == sorted(lot.lot_id for lot in (first, second, third))
    # Paging by lot id still works inside the range.
    page = await system.lots.ListLots(pb.ListLotsRequest(
        supplier_id=supplier_id, received_from=to_timestamp(at[0]), page_size=2))
    assert [lot.lot_id for lot in page.lots] == everything[:2] and page.next_page_token
    rest = await system.lots.ListLots(pb.ListLotsRequest(
        supplier_id=supplier_id, received_from=to_timestamp(at[0]), page_size=2,
        page_token=page.next_page_token))
    assert [lot.lot_id for lot in rest.lots] == everything[2:]


@pytest.mark.req("WMS-004")
async def test_list_lots_refuses_a_bad_received_range(system: System) -> None:
    now = to_timestamp(datetime.now(UTC))
    bad = pb.ListLotsRequest(received_from=now, received_before=now)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.ListLots(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {
        "received_before": "must lie after received_from"}

    invalid = pb.ListLotsRequest()
    invalid.received_from.seconds = 253_402_300_800  # after 9999-12-31
    invalid.received_before.nanos = -1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.ListLots(invalid)
    assert set(field_violations(caught.value)) == {"received_from", "received_before"}


@pytest.mark.req("DEC-002")
async def test_decisions_taken_while_results_race_all_replay(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lots = await receive_many(system, supplier_id, material, 10, chunk=10)
    events = [system.result_event(lot_id, material, test, verdict)
              for lot_id in lots
              for test, verdict in ((rpb.TEST_KIND_IDENTITY, rpb.VERDICT_PASS),
                                    (rpb.TEST_KIND_PURITY, rpb.VERDICT_PASS),
                                    (rpb.TEST_KIND_STERILITY, rpb.VERDICT_FAIL))]
    random.Random(3).shuffle(events)
    await asyncio.gather(*(system.publish(e) for e in events))

    for lot_id in lots:
        await system.wait_status(lot_id, pb.LOT_STATUS_ON_HOLD)
    every = await eventually(
        lambda: asyncio.gather(*(decisions(system, lot_id) for lot_id in lots)),
        lambda found: all(d[-1].decision.status == pb.LOT_STATUS_ON_HOLD for d in found))
    for lot_decisions in every:
        for e in lot_decisions:
            assert e.replay.agrees, (e.decision.lot_id, e.decision.version,
                                     e.replay.difference)
