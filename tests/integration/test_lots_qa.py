"""QA release policies, QA's actions on lots, retest dates and expiry, over real gRPC, a
real database and a real nats-server. Both services share one ManualClock, so that the
lots service's own scheduler can be watched moving lots as time passes.

Every decision a test makes is replayed (ListDecisions) and must agree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from shared.clock import ManualClock
from tests.integration.test_lots import System, _count_results, running_system
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

QA = dict(reason="batch record reviewed, see DEV-12", requested_by="qa.jane")


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server, clock=ManualClock(),
                              suppliers={"expiry_check_seconds": 0.05},
                              # The lots service looks for expired lots and retest dates
                              # this often.
                              lots={"expiry_check_seconds": 0.05}) as system:
        yield system


def manual_clock(system: System) -> ManualClock:
    assert isinstance(system.clock, ManualClock)
    return system.clock


def day(system: System, days: int) -> str:
    return (system.now().date() + timedelta(days=days)).isoformat()


async def decisions(system: System, lot_id: str) -> list[pb.ExplainedDecision]:
    """Every decision of the lot; each must replay and agree."""
    reply = await system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot_id))
    for e in reply.decisions:
        assert e.replay.agrees, (e.decision.version, e.decision.cause, e.replay.difference)
    return list(reply.decisions)


async def decided_after(system: System, status: pb.ReleaseStatus) -> pb.ReleaseStatus:
    """The lot's status once a decision after `status` has been recorded (reads may show a
    date's effect before the scheduler records it)."""
    return await eventually(lambda: system.status(status.lot_id),
                            lambda s: s.version > status.version)


async def set_policy(system: System, material: str, policy: int) -> pb.MaterialReleasePolicy:
    return (await system.lots.SetReleasePolicy(pb.SetReleasePolicyRequest(
        material_code=material, policy=policy, **QA))).policy


async def all_passed(system: System, supplier_id: str, material: str, **kw) -> str:
    lot = await system.receive(supplier_id, material, **kw)
    await system.post_all_passing(lot.lot_id, material)
    return lot.lot_id


@pytest.mark.req("QA-001", "WMS-002")
async def test_under_qa_release_a_lot_waits_for_qa_and_is_not_picked_until_released(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    assert (await system.lots.GetReleasePolicy(pb.GetReleasePolicyRequest(
        material_code=material))).policy.policy == pb.RELEASE_POLICY_AUTOMATIC
    policy = await set_policy(system, material, pb.RELEASE_POLICY_QA_RELEASE)
    assert (policy.policy, policy.set_by) == (pb.RELEASE_POLICY_QA_RELEASE, "qa.jane")
    waiting = await system.receive(supplier_id, material)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await system.lots.ReleaseLot(pb.ReleaseLotRequest(lot_id=waiting.lot_id, **QA))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "QUARANTINE" in refused.value.details()

    await system.post_all_passing(waiting.lot_id, material)

    releasable = await system.wait_status(waiting.lot_id, pb.LOT_STATUS_RELEASABLE)
    assert [u.code for u in releasable.unmet] == ["QA_RELEASE_REQUIRED"]
    picked = await system.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(
        lot_ids=[waiting.lot_id]))
    assert picked.statuses[0].status != pb.LOT_STATUS_RELEASED
    released = (await system.lots.ReleaseLot(pb.ReleaseLotRequest(
        lot_id=waiting.lot_id, reason="batch record reviewed", requested_by="qa.max"))
    ).release_status
    assert (released.status, list(released.unmet)) == (pb.LOT_STATUS_RELEASED, [])
    assert (await system.status(waiting.lot_id)).status == pb.LOT_STATUS_RELEASED
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await system.lots.ReleaseLot(pb.ReleaseLotRequest(lot_id=waiting.lot_id, **QA))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "RELEASED" in again.value.details()
    history = await decisions(system, waiting.lot_id)
    assert history[-1].decision.cause == "QA release by qa.max: batch record reviewed"
    assert history[-1].decision.inputs.qa_released
    assert history[-2].decision.inputs.release_policy == pb.RELEASE_POLICY_QA_RELEASE


@pytest.mark.req("QA-001")
async def test_switching_a_material_back_to_automatic_decides_its_releasable_lots(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = await system.released_lot(supplier_id, material)
    await set_policy(system, material, pb.RELEASE_POLICY_QA_RELEASE)
    waiting = await all_passed(system, supplier_id, material)
    await system.wait_status(waiting, pb.LOT_STATUS_RELEASABLE)
    assert (await system.status(released)).status == pb.LOT_STATUS_RELEASED

    await set_policy(system, material, pb.RELEASE_POLICY_AUTOMATIC)

    assert (await system.status(waiting)).status == pb.LOT_STATUS_RELEASED
    assert (await decisions(system, waiting))[-1].decision.cause.startswith(
        f"release policy of {material} set to AUTOMATIC by qa.jane")


@pytest.mark.req("QA-002", "DEC-001")
async def test_qa_holds_releases_the_hold_and_rejects_with_causes_recorded(
        system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lot_id = await system.released_lot(supplier_id, material)
    with pytest.raises(grpc.aio.AioRpcError) as not_held:
        await system.lots.ReleaseHold(pb.ReleaseHoldRequest(lot_id=lot_id, **QA))
    assert not_held.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    hold = pb.HoldLotRequest(lot_id=lot_id, reason="label mix-up", requested_by="qa.jane")
    held = (await system.lots.HoldLot(hold)).release_status
    assert held.status == pb.LOT_STATUS_ON_HOLD
    assert [(u.code, u.message) for u in held.unmet] == [("QA_HOLD", "held by QA: label mix-up")]
    again = (await system.lots.HoldLot(hold)).release_status  # a retry changes nothing
    assert again.version == held.version
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await system.lots.HoldLot(pb.HoldLotRequest(lot_id=lot_id, reason="another", **{
            "requested_by": "qa.jane"}))
    assert other.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    lifted = (await system.lots.ReleaseHold(pb.ReleaseHoldRequest(
        lot_id=lot_id, reason="labels checked", requested_by="qa.max"))).release_status
    assert lifted.status == pb.LOT_STATUS_RELEASED
    rejected = (await system.lots.RejectLot(pb.RejectLotRequest(
        lot_id=lot_id, reason="container damaged", requested_by="qa.jane"))).release_status
    assert rejected.status == pb.LOT_STATUS_REJECTED
    assert [u.code for u in rejected.unmet] == ["QA_REJECTED"]
    for refused in (system.lots.HoldLot(pb.HoldLotRequest(lot_id=lot_id, **QA)),
                    system.lots.RejectLot(pb.RejectLotRequest(lot_id=lot_id, **QA))):
        with pytest.raises(grpc.aio.AioRpcError) as final:
            await refused
        assert final.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "REJECTED" in final.value.details()

    history = await decisions(system, lot_id)
    assert [(e.decision.status, e.decision.cause) for e in history[-3:]] == [
        (pb.LOT_STATUS_ON_HOLD, "QA hold by qa.jane: label mix-up"),
        (pb.LOT_STATUS_RELEASED, "QA hold released by qa.max: labels checked"),
        (pb.LOT_STATUS_REJECTED, "QA rejection by qa.jane: container damaged")]
    assert history[-3].decision.inputs.qa_hold_reason == "label mix-up"
    assert history[-1].decision.inputs.qa_rejection_reason == "container damaged"


@pytest.mark.req("QA-002")
async def test_a_qa_release_must_be_given_again_after_the_lot_was_held(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    await set_policy(system, material, pb.RELEASE_POLICY_QA_RELEASE)
    lot_id = await all_passed(system, supplier_id, material)
    await system.wait_status(lot_id, pb.LOT_STATUS_RELEASABLE)
    await system.lots.ReleaseLot(pb.ReleaseLotRequest(lot_id=lot_id, **QA))

    await system.lots.HoldLot(pb.HoldLotRequest(lot_id=lot_id, **QA))
    lifted = (await system.lots.ReleaseHold(pb.ReleaseHoldRequest(lot_id=lot_id, **QA))
              ).release_status

    assert lifted.status == pb.LOT_STATUS_RELEASABLE
    history = await decisions(system, lot_id)
    assert [e.decision.inputs.qa_released for e in history[-3:]] == [True, True, False]


@pytest.mark.req("QA-003")
async def test_a_passing_retest_date_quarantines_a_released_lot_until_a_new_one_is_set(
        system: System) -> None:
    clock = manual_clock(system)
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    lot_id = await all_passed(system, supplier_id, material, retest_date=day(system, 2))
    released = await system.wait_status(lot_id, pb.LOT_STATUS_RELEASED)
    lot = (await system.lots.GetLot(pb.GetLotRequest(lot_id=lot_id))).lot
    assert lot.retest_date == day(system, 2)

    clock.advance(timedelta(days=2))

    back = await decided_after(system, released)
    assert back.status == pb.LOT_STATUS_QUARANTINE
    assert [u.code for u in back.unmet] == ["RETEST_DATE_REACHED"]
    assert (await decisions(system, lot_id))[-1].decision.cause == "retest date reached"
    for wrong, says in ((day(system, 0), "after today"), ("2031-01-01", "expiry date"),
                        ("soon", "YYYY-MM-DD")):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await system.lots.SetRetestDate(pb.SetRetestDateRequest(
                lot_id=lot_id, retest_date=wrong, **QA))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in field_violations(invalid.value)["retest_date"]
    retested = (await system.lots.SetRetestDate(pb.SetRetestDateRequest(
        lot_id=lot_id, retest_date=day(system, 180), reason="re-tested, see QC-7",
        requested_by="qa.jane"))).release_status

    assert retested.status == pb.LOT_STATUS_RELEASED
    last = (await decisions(system, lot_id))[-1].decision
    assert last.cause == f"retest date set to {day(system, 180)} by qa.jane: re-tested, see QC-7"
    assert last.inputs.retest_date == day(system, 180)


@pytest.mark.req("QA-003", "REL-009")
async def test_a_lot_past_its_expiry_date_expires_for_good(system: System) -> None:
    clock = manual_clock(system)
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = await all_passed(system, supplier_id, material, expiry_date=day(system, 1))
    waiting = await system.receive(supplier_id, material, expiry_date=day(system, 1))
    before = [await system.wait_status(released, pb.LOT_STATUS_RELEASED),
              waiting.release_status]

    clock.advance(timedelta(days=2))

    for status in before:
        expired = await decided_after(system, status)
        assert expired.status == pb.LOT_STATUS_EXPIRED
        assert "LOT_EXPIRED" in [u.code for u in expired.unmet]
        last = (await decisions(system, status.lot_id))[-1].decision
        assert last.cause == "expiry date passed"
    with pytest.raises(grpc.aio.AioRpcError) as final:
        await system.lots.HoldLot(pb.HoldLotRequest(lot_id=released, **QA))
    assert "EXPIRED" in final.value.details()
    # Nothing brings it back: results that arrive later change nothing.
    await system.post_all_passing(waiting.lot_id, material)
    await eventually(lambda: _count_results(system.lots_service, waiting.lot_id),
                     lambda n: n == 3)
    assert (await system.status(waiting.lot_id)).status == pb.LOT_STATUS_EXPIRED


@pytest.mark.req("QA-002", "ACC-003")
@pytest.mark.parametrize("call,request_", [
    ("ReleaseLot", pb.ReleaseLotRequest(lot_id="LOT-1", reason="", requested_by="")),
    ("HoldLot", pb.HoldLotRequest(lot_id="LOT-1", reason=" ", requested_by="")),
    ("ReleaseHold", pb.ReleaseHoldRequest(lot_id="LOT-1")),
    ("RejectLot", pb.RejectLotRequest(lot_id="LOT-1")),
    ("SetRetestDate", pb.SetRetestDateRequest(lot_id="LOT-1", retest_date="2030-01-01")),
    ("SetReleasePolicy", pb.SetReleasePolicyRequest(material_code="MAT-1",
                                                    policy=pb.RELEASE_POLICY_AUTOMATIC)),
])
async def test_qa_calls_need_a_reason(system: System, call: str, request_) -> None:
    """Who is the caller: an empty requested_by is the authenticated subject."""
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await getattr(system.lots, call)(request_)

    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason" in field_violations(invalid.value)


@pytest.mark.req("QA-002", "INP-001")
async def test_a_policy_must_be_named_and_a_lot_must_exist(system: System) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await system.lots.SetReleasePolicy(pb.SetReleasePolicyRequest(material_code="MAT-1",
                                                                      **QA))
    assert "policy" in field_violations(invalid.value)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await system.lots.HoldLot(pb.HoldLotRequest(lot_id=ref("LOT"), **QA))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as after_expiry:
        await system.receive(ref("SUP"), "MAT-1", expiry_date="2030-01-31",
                             retest_date="2030-02-01")
    assert "retest_date" in field_violations(after_expiry.value)
