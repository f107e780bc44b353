"""WatchReleaseStatus over real gRPC, a real database and a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from tests.integration.test_lots import System, running_system
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.waiting import eventually, until_lot
from tests.support.watching import READ_WITHIN_S, Watch

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


async def qualified_lot(system: System, supplier: str, material: str) -> str:
    """A lot received from a qualified site, once the lots service knows of that
    qualification (it arrives as an event, possibly after the lot)."""
    lot_id = (await system.receive(supplier, material)).lot_id
    await eventually(lambda: system.status(lot_id),
                     lambda s: not any(u.code.startswith("SUPPLIER") for u in s.unmet))
    return lot_id


async def decided_versions(system: System, lot_id: str) -> list[int]:
    reply = await system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot_id))
    return [d.decision.version for d in reply.decisions]


@pytest.mark.req("WAT-001")
async def test_a_lot_set_watch_sends_the_snapshot_then_every_change(system: System) -> None:
    material = ref("MAT")
    supplier = await system.qualified_supplier(material)
    first = await qualified_lot(system, supplier, material)
    second = (await system.receive(supplier, material)).lot_id
    watch = Watch(system.lots, lot_ids=[first, second])

    snapshot = [await watch.next(), await watch.next()]
    assert [(r.release_status.lot_id, r.snapshot) for r in snapshot] == [
        (first, True), (second, True)]
    assert snapshot[0].release_status == await system.status(first)
    assert snapshot[0].release_status.status == pb.LOT_STATUS_QUARANTINE

    await system.post_all_passing(first, material)
    changes = await watch.until(lambda r: r.release_status.status == pb.LOT_STATUS_RELEASED)
    watch.cancel()

    assert not any(r.snapshot for r in changes)
    assert {r.release_status.lot_id for r in changes} == {first}
    decided = await decided_versions(system, first)
    assert watch.versions(first) == decided[snapshot[0].release_status.version - 1:]
    assert changes[-1].release_status == await system.status(first)


@pytest.mark.req("WAT-001")
async def test_a_material_watch_sees_a_lot_received_after_it_started(system: System) -> None:
    material = ref("MAT")
    supplier = await system.qualified_supplier(material)
    before = await qualified_lot(system, supplier, material)
    other_material = ref("MAT")
    watch = Watch(system.lots, material_code=material)
    assert (await watch.next()).release_status.lot_id == before

    await system.receive(await system.qualified_supplier(other_material), other_material)
    later = (await system.receive(supplier, material)).lot_id
    await watch.until(lambda r: r.release_status.lot_id == later)
    arrived = watch.seen[-1]
    assert arrived.snapshot
    assert {r.release_status.lot_id for r in watch.seen} == {before, later}

    await system.post_all_passing(later, material)
    changes = await watch.until(lambda r: r.release_status.status == pb.LOT_STATUS_RELEASED)
    watch.cancel()
    assert {r.release_status.lot_id for r in changes} == {later}
    decided = await decided_versions(system, later)
    assert watch.versions(later) == decided[arrived.release_status.version - 1:]


@pytest.mark.req("WAT-002")
async def test_a_watcher_that_reconnects_gets_exactly_the_changes_it_missed(
        system: System) -> None:
    material = ref("MAT")
    supplier = await system.qualified_supplier(material)
    lot_id = await qualified_lot(system, supplier, material)
    identity = system.result_event(lot_id, material, rpb.TEST_KIND_IDENTITY)
    purity = system.result_event(lot_id, material, rpb.TEST_KIND_PURITY, rpb.VERDICT_FAIL)
    sterility = system.result_event(lot_id, material, rpb.TEST_KIND_STERILITY)

    watch = Watch(system.lots, lot_ids=[lot_id])
    assert (await watch.next()).snapshot
    await system.publish(identity)
    await watch.next()
    watch.cancel()  # the client goes away after one change

    # While it is away: an out-of-specification purity result (ON_HOLD), its
    # invalidation (back to QUARANTINE, a retest required), the retest and sterility.
    await system.publish(purity)
    await system.wait_status(lot_id, pb.LOT_STATUS_ON_HOLD)
    await system.publish(system.invalidation(purity))
    await system.wait_unmet(lot_id, ["PURITY_RETEST_REQUIRED", "STERILITY_MISSING"])
    away = await decided_versions(system, lot_id)

    resumed = Watch(system.lots, lot_ids=[lot_id], resume_from=watch.resume_from())
    last_seen = watch.seen[-1].release_status.version
    missed = [await resumed.next() for _ in range(len(away) - last_seen)]
    assert [r.release_status.version for r in missed] == away[last_seen:]
    assert not any(r.snapshot for r in missed)
    assert missed[-1].release_status.status == pb.LOT_STATUS_QUARANTINE

    # Then live changes, continuing the versions.
    await system.publish(system.result_event(lot_id, material, rpb.TEST_KIND_PURITY,
                                             retest_of=purity.result.result_id))
    await system.publish(sterility)
    await resumed.until(lambda r: r.release_status.status == pb.LOT_STATUS_RELEASED)
    resumed.cancel()
    seen = watch.versions(lot_id) + resumed.versions(lot_id)
    decided = await decided_versions(system, lot_id)
    assert seen == decided[seen[0] - 1:]


@pytest.mark.req("WAT-002")
async def test_a_material_watch_resumes_some_lots_and_snapshots_the_others(
        system: System) -> None:
    material = ref("MAT")
    supplier = await system.qualified_supplier(material)
    resumed_lot = (await system.receive(supplier, material)).lot_id
    fresh_lot = (await system.receive(supplier, material)).lot_id
    await system.post_all_passing(resumed_lot, material)
    await system.wait_status(resumed_lot, pb.LOT_STATUS_RELEASED)
    decided = await decided_versions(system, resumed_lot)

    watch = Watch(system.lots, material_code=material,
                  resume_from=[pb.LotVersion(lot_id=resumed_lot, version=1)])
    got = [await watch.next() for _ in range(len(decided))]  # decided[1:] and one snapshot
    watch.cancel()
    assert [r.release_status.version for r in got
            if r.release_status.lot_id == resumed_lot] == decided[1:]
    assert [(r.release_status.lot_id, r.snapshot) for r in got
            if r.release_status.lot_id == fresh_lot] == [(fresh_lot, True)]


async def _error(system: System, **request) -> grpc.aio.AioRpcError:
    call = system.lots.WatchReleaseStatus(pb.WatchReleaseStatusRequest(**request))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), READ_WITHIN_S)
    return caught.value


@pytest.mark.req("WAT-003")
async def test_bad_watch_requests_are_refused_with_field_violations(system: System) -> None:
    material = ref("MAT")
    supplier = await system.qualified_supplier(material)
    lot_id = (await system.receive(supplier, material)).lot_id
    unknown = ref("LOT")

    error = await _error(system)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lot_ids" in field_violations(error)

    error = await _error(system, lot_ids=[lot_id], material_code=material)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "material_code" in field_violations(error)

    error = await _error(system, lot_ids=[lot_id, lot_id, "bad id!"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"lot_ids[1]", "lot_ids[2]"}

    error = await _error(system, lot_ids=[f"L{i}" for i in range(1001)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lot_ids" in field_violations(error)

    error = await _error(system, lot_ids=[lot_id, unknown])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "lot_ids[1]" in field_violations(error)
    assert unknown in error.details()

    error = await _error(system, lot_ids=[lot_id],
                         resume_from=[pb.LotVersion(lot_id=unknown, version=1)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resume_from[0].lot_id" in field_violations(error)

    error = await _error(system, lot_ids=[lot_id],
                         resume_from=[pb.LotVersion(lot_id=lot_id, version=99)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resume_from[0].version" in field_violations(error)

    error = await _error(system, material_code=material,
                         resume_from=[pb.LotVersion(lot_id=unknown, version=1)])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "resume_from[0].lot_id" in field_violations(error)


async def test_until_lot_fails_naming_the_last_status_when_the_lot_does_not_get_there(
        system: System) -> None:
    """The wait the e2e tests use: it returns the awaited status, and when the lot never
    gets there it fails saying what the lot was instead of handing back whatever it saw."""
    lot_id = (await system.receive(ref("SUP"), ref("MAT"))).lot_id
    unmet = ["SUPPLIER_NOT_QUALIFIED", "IDENTITY_MISSING", "PURITY_MISSING",
             "STERILITY_MISSING"]

    reached = await until_lot(system.lots, lot_id, pb.LOT_STATUS_QUARANTINE, unmet)
    with pytest.raises(AssertionError) as missed:
        await until_lot(system.lots, lot_id, pb.LOT_STATUS_RELEASED, [], within=1.0)

    assert reached == await system.status(lot_id)
    assert str(missed.value) == (
        f"lot {lot_id} did not become RELEASED [] within 1.0s; last seen: QUARANTINE "
        f"{unmet} (version {reached.version})")
