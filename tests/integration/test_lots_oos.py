"""Out-of-specification results in the lots service, over real gRPC, database and NATS.

A failing result holds its lot (ON_HOLD) until QA confirms it (REJECTED) or invalidates
it (the result no longer counts; a retest is expected). The three events of a result
(recorded, invalidated, confirmed) come on three subjects with a consumer each, so they
may arrive in any order: the lots service must end in the same state whatever it is.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2 as rpb
from services.lots import queries
from services.lots.domain.rule import LotStatus, ResultState, TestKind
from services.lots.tables import decisions, lot_results
from shared.runtime import RunningService
from tests.integration.test_lots import SUBJECTS, TESTS, System, running_system
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OOS_RULE = "21 CFR 211.192; FDA guidance on investigating OOS results (2006)"


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


def codes(status: pb.ReleaseStatus) -> list[str]:
    return [u.code for u in status.unmet]


async def lot_with_passing(system: System, material: str, *tests: int) -> str:
    """A lot from a qualified site with passing results of `tests`, once they are in."""
    supplier_id = await system.qualified_supplier(material)
    lot = await system.receive(supplier_id, material)
    for test in tests:
        await system.publish(system.result_event(lot.lot_id, material, test))
    await eventually(lambda: _states(system.lots_service, lot.lot_id),
                     lambda states: len(states) == len(tests))
    return lot.lot_id


async def _states(service: RunningService, lot_id: str) -> dict[str, str]:
    """result id -> state of every result of the lot in the lots service's projection."""
    async with service.infra.engine.connect() as conn:
        rows = await conn.execute(select(lot_results.c.result_id, lot_results.c.state)
                                  .where(lot_results.c.lot_id == lot_id))
        return {r.result_id: r.state for r in rows}


async def _decisions(service: RunningService, lot_id: str) -> list[Any]:
    async with service.infra.engine.connect() as conn:
        return list(await conn.execute(select(decisions).where(decisions.c.lot_id == lot_id)
                                       .order_by(decisions.c.version)))


async def applied(system: System, subject_of: type) -> None:
    """Wait until everything published so far on the subject of `subject_of` events is
    applied: a marker event for a lot of its own, published after them, is in."""
    marker = system.result_event(ref("LOT"), "MAT-MARK", rpb.TEST_KIND_IDENTITY)
    if subject_of is result_events.ResultInvalidated:
        event = system.invalidation(marker)
    elif subject_of is result_events.ResultConfirmed:
        event = system.confirmation(marker)
    else:
        event = marker
    await system.publish(event)
    await eventually(lambda: _states(system.lots_service, marker.result.lot_id), bool)


@pytest.mark.req("OOS-001", "OOS-003")
async def test_an_oos_result_holds_the_lot_its_invalidation_asks_for_a_retest_which_releases(
        system: System) -> None:
    lot_id = await lot_with_passing(system, "MAT-O1", rpb.TEST_KIND_IDENTITY,
                                    rpb.TEST_KIND_PURITY)
    failure = system.result_event(lot_id, "MAT-O1", rpb.TEST_KIND_STERILITY, rpb.VERDICT_FAIL)
    failure_id = failure.result.result_id

    await system.publish(failure)
    held = await system.wait_status(lot_id, pb.LOT_STATUS_ON_HOLD)
    assert [(u.code, u.message, u.rule) for u in held.unmet] == [(
        "STERILITY_OUT_OF_SPECIFICATION",
        f"sterility result {failure_id} is out of specification and under investigation",
        OOS_RULE)]

    await system.publish(system.invalidation(failure, reason="media contaminated in the lab"))
    waiting = await system.wait_status(lot_id, pb.LOT_STATUS_QUARANTINE)
    assert [(u.code, u.message) for u in waiting.unmet] == [(
        "STERILITY_RETEST_REQUIRED",
        f"sterility result {failure_id} was invalidated (media contaminated in the lab); "
        "a retest is expected")]
    assert waiting.unmet[0].rule == "21 CFR 211.84(d)(6)"

    retest = system.result_event(lot_id, "MAT-O1", rpb.TEST_KIND_STERILITY,
                                 retest_of=failure_id)
    await system.publish(retest)
    released = await system.wait_status(lot_id, pb.LOT_STATUS_RELEASED)
    assert list(released.unmet) == []

    # Each step is on record with the state of every result it used: the record names
    # the results, with QA's state of each then, and their facts are the lot's results.
    records = await _decisions(system.lots_service, lot_id)
    assert [r.status for r in records][-3:] == ["ON_HOLD", "QUARANTINE", "RELEASED"]
    assert failure_id in json.loads(records[-3].inputs)["r"]  # VALID: named only
    assert [failure_id, "INVALIDATED", "media contaminated in the lab"] in json.loads(
        records[-1].inputs)["r"]
    async with system.lots_service.infra.engine.connect() as conn:
        history = await queries.list_decisions(conn, lot_id=lot_id)
    inputs = history[-1].stored.inputs
    by_id = {r.result_id: r for r in inputs.results}
    assert by_id[failure_id].state is ResultState.INVALIDATED
    assert by_id[failure_id].state_reason == "media contaminated in the lab"
    assert by_id[retest.result.result_id].retest_of == failure_id
    assert by_id[retest.result.result_id].required_tests == (
        TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY)
    assert failure_id not in history[-1].stored.counted
    assert retest.result.result_id in history[-1].stored.counted
    assert history[-3].stored.rule_status is LotStatus.ON_HOLD
    assert {r.result_id: r.state for r in history[-3].stored.inputs.results}[
        failure_id] is ResultState.VALID
    assert all(e.replayed and not e.problems for e in history)


@pytest.mark.req("OOS-002", "REL-009")
async def test_a_confirmed_oos_result_rejects_the_lot_for_good(system: System) -> None:
    lot_id = await lot_with_passing(system, "MAT-O2", rpb.TEST_KIND_IDENTITY,
                                    rpb.TEST_KIND_STERILITY)
    failure = system.result_event(lot_id, "MAT-O2", rpb.TEST_KIND_PURITY, rpb.VERDICT_FAIL,
                                  spec_version=4)
    await system.publish(failure)
    await system.wait_status(lot_id, pb.LOT_STATUS_ON_HOLD)

    await system.publish(system.confirmation(failure))

    rejected = await system.wait_status(lot_id, pb.LOT_STATUS_REJECTED)
    assert [(u.code, u.message) for u in rejected.unmet] == [(
        "PURITY_FAILED", f"purity result {failure.result.result_id} fails its specification "
                         "(version 4); confirmed by QA")]
    assert rejected.unmet[0].rule == "21 CFR 211.84(d)(2); 21 CFR 211.84(e)"
    # A later passing result changes nothing: REJECTED is final.
    await system.publish(system.result_event(lot_id, "MAT-O2", rpb.TEST_KIND_PURITY))
    await applied(system, result_events.ResultRecorded)
    assert await system.status(lot_id) == rejected


@pytest.mark.req("DEL-004")
@pytest.mark.parametrize("qa", ["invalidation", "confirmation"])
async def test_qa_s_event_arriving_before_the_result_s_own_still_converges(
        system: System, qa: str) -> None:
    material = ref("MAT")
    lot_id = await lot_with_passing(system, material, rpb.TEST_KIND_IDENTITY,
                                    rpb.TEST_KIND_PURITY)
    failure = system.result_event(lot_id, material, rpb.TEST_KIND_STERILITY, rpb.VERDICT_FAIL)
    handled = getattr(system, qa)(failure)

    await system.publish(handled)  # its ResultRecorded is still on its way
    if qa == "invalidation":
        settled = await system.wait_unmet(lot_id, ["STERILITY_RETEST_REQUIRED"])
        assert settled.status == pb.LOT_STATUS_QUARANTINE
    else:
        settled = await system.wait_unmet(lot_id, ["STERILITY_FAILED"])
        assert settled.status == pb.LOT_STATUS_REJECTED
    await system.publish(failure)  # late, and VALID: it must not bring the result back
    await applied(system, result_events.ResultRecorded)

    assert await system.status(lot_id) == settled
    state = "INVALIDATED" if qa == "invalidation" else "CONFIRMED"
    assert (await _states(system.lots_service, lot_id))[failure.result.result_id] == state


@pytest.mark.req("DEL-004", "REL-007")
async def test_every_order_of_the_three_subjects_ends_in_the_same_state(
        system: System) -> None:
    material = ref("MAT")
    finals: dict[str, pb.LotStatus] = {}
    invalidated = ["fail", "invalidation", "retest"]
    confirmed = ["fail", "confirmation"]
    for expected, names in ((pb.LOT_STATUS_RELEASED, invalidated),
                            (pb.LOT_STATUS_REJECTED, confirmed)):
        for order in itertools.permutations(names):
            lot_id = await lot_with_passing(system, material, rpb.TEST_KIND_IDENTITY,
                                            rpb.TEST_KIND_PURITY)
            fail = system.result_event(lot_id, material, rpb.TEST_KIND_PURITY,
                                       rpb.VERDICT_FAIL)
            events = {"fail": fail}
            if "retest" in names:
                events["invalidation"] = system.invalidation(fail)
                events["retest"] = system.result_event(lot_id, material, rpb.TEST_KIND_PURITY,
                                                       retest_of=fail.result.result_id)
            else:
                events["confirmation"] = system.confirmation(fail)
            for name in order:
                await system.publish(events[name])
            finals[lot_id] = expected
    # The sterility results come last, on the subject of the purity results: no lot can
    # be released before its failing purity result is in.
    for lot_id in finals:
        await system.publish(system.result_event(lot_id, material, rpb.TEST_KIND_STERILITY))

    for lot_id, expected in finals.items():
        unmet = [] if expected == pb.LOT_STATUS_RELEASED else ["PURITY_FAILED"]
        status = await system.wait_unmet(lot_id, unmet)
        assert status.status == expected


@pytest.mark.req("DEL-002")
async def test_redelivered_qa_events_change_nothing(system: System) -> None:
    lot_id = await lot_with_passing(system, "MAT-O3", *TESTS[:2])
    failure = system.result_event(lot_id, "MAT-O3", rpb.TEST_KIND_STERILITY, rpb.VERDICT_FAIL)
    invalidation = system.invalidation(failure)
    await system.publish(failure)
    await system.publish(invalidation)
    settled = await system.wait_unmet(lot_id, ["STERILITY_RETEST_REQUIRED"])
    decided = len(await _decisions(system.lots_service, lot_id))

    # The same event again (JetStream drops it), and a copy with a new Nats-Msg-Id (the
    # consumer's inbox absorbs it); then both events of the result once more.
    await system.publish(invalidation)
    await system.js.publish(SUBJECTS[type(invalidation)], invalidation.SerializeToString(),
                            headers={"Nats-Msg-Id": "republished-" + invalidation.event_id})
    await system.publish(failure)
    await applied(system, result_events.ResultInvalidated)
    await applied(system, result_events.ResultRecorded)

    assert await system.status(lot_id) == settled
    assert len(await _decisions(system.lots_service, lot_id)) == decided


@pytest.mark.req("OOS-001", "REL-010")
async def test_a_released_lot_is_held_by_an_oos_result_and_released_again_when_invalidated(
        system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-O4")
    lot_id = await system.released_lot(supplier_id, "MAT-O4")
    failure = system.result_event(lot_id, "MAT-O4", rpb.TEST_KIND_PURITY, rpb.VERDICT_FAIL)

    await system.publish(failure)
    held = await system.wait_status(lot_id, pb.LOT_STATUS_ON_HOLD)
    assert codes(held) == ["PURITY_OUT_OF_SPECIFICATION"]
    await system.publish(system.invalidation(failure))

    # The earlier passing purity result counts again.
    released = await system.wait_status(lot_id, pb.LOT_STATUS_RELEASED)
    assert list(released.unmet) == []
    assert [r.status for r in await _decisions(system.lots_service, lot_id)][-2:] == [
        "ON_HOLD", "RELEASED"]


@pytest.mark.req("OOS-003", "REL-010")
async def test_a_released_lot_whose_result_is_invalidated_goes_back_to_quarantine(
        system: System) -> None:
    supplier_id = await system.qualified_supplier("MAT-O7")
    lot = await system.receive(supplier_id, "MAT-O7")
    passes = [system.result_event(lot.lot_id, "MAT-O7", test)
              for test in (rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY, rpb.TEST_KIND_STERILITY)]
    for event in passes:
        await system.publish(event)
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)

    # The investigation of a lab error finds the purity result that released it invalid.
    await system.publish(system.invalidation(passes[1]))

    pulled_back = await system.wait_status(lot.lot_id, pb.LOT_STATUS_QUARANTINE)
    assert codes(pulled_back) == ["PURITY_RETEST_REQUIRED"]


@pytest.mark.req("DEL-004")
async def test_a_qualification_change_re_decides_lots_on_hold(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lot = await system.receive(supplier_id, material)
    await system.publish(system.result_event(lot.lot_id, material, rpb.TEST_KIND_IDENTITY,
                                             rpb.VERDICT_FAIL))
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_ON_HOLD)

    await system.suspend(supplier_id, material)

    held = await system.wait_unmet(lot.lot_id, ["SUPPLIER_SUSPENDED",
                                                "IDENTITY_OUT_OF_SPECIFICATION",
                                                "PURITY_MISSING", "STERILITY_MISSING"])
    assert held.status == pb.LOT_STATUS_ON_HOLD


@pytest.mark.req("REL-006")
async def test_a_test_the_specification_adds_is_required_for_release(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lot = await system.receive(supplier_id, material)
    spec = (*TESTS, rpb.TEST_KIND_ASSAY)
    for test in TESTS:
        await system.publish(system.result_event(lot.lot_id, material, test,
                                                 required_tests=spec, spec_version=2))

    waiting = await system.wait_unmet(lot.lot_id, ["ASSAY_MISSING"])
    assert waiting.status == pb.LOT_STATUS_QUARANTINE
    assert waiting.unmet[0].rule == "21 CFR 211.84(d)(2)"
    assay = system.result_event(lot.lot_id, material, rpb.TEST_KIND_ASSAY, rpb.VERDICT_FAIL,
                                required_tests=spec, spec_version=2)
    await system.publish(assay)
    await system.wait_unmet(lot.lot_id, ["ASSAY_OUT_OF_SPECIFICATION"])
    await system.publish(system.invalidation(assay))
    await system.wait_unmet(lot.lot_id, ["ASSAY_RETEST_REQUIRED"])
    await system.publish(system.result_event(lot.lot_id, material, rpb.TEST_KIND_ASSAY,
                                             required_tests=spec, spec_version=2,
                                             retest_of=assay.result.result_id))

    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)


@pytest.mark.req("WMS-004")
async def test_list_lots_finds_the_lots_on_hold(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    held, other = (await system.receive(supplier_id, material),
                   await system.receive(supplier_id, material))
    await system.publish(system.result_event(held.lot_id, material, rpb.TEST_KIND_PURITY,
                                             rpb.VERDICT_FAIL))
    await system.wait_status(held.lot_id, pb.LOT_STATUS_ON_HOLD)

    assert await system.lots_where(material_code=material, status=pb.LOT_STATUS_ON_HOLD) == [
        held.lot_id]
    assert await system.lots_where(material_code=material,
                                   status=pb.LOT_STATUS_QUARANTINE) == [other.lot_id]
    [listed] = (await system.lots.ListLots(pb.ListLotsRequest(
        material_code=material, status=pb.LOT_STATUS_ON_HOLD))).lots
    assert listed.release_status.status == pb.LOT_STATUS_ON_HOLD
