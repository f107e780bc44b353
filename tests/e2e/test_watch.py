"""WatchReleaseStatus against the running system, and two lots replicas on one database."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate.results.v1 import results_pb2 as rpb
from lotgate_tools.client import Lotgate, identity, purity, sterility
from lotgate_tools.stack import ServiceProcess, Stack, free_port
from tests.support import auth
from tests.support.services import ref
from tests.support.waiting import eventually
from tests.support.watching import Watch

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)


def codes(status: pb.ReleaseStatus) -> list[str]:
    return [u.code for u in status.unmet]


async def settled(lg: Lotgate, lot_id: str, expected: list[str]) -> pb.ReleaseStatus:
    return await eventually(lambda: lg.status(lot_id), lambda s: codes(s) == expected,
                            within=30)


async def decisions(lots: pb_grpc.LotServiceStub, lot_id: str) -> list[pb.Decision]:
    reply = await lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot_id))
    return [d.decision for d in reply.decisions]


async def material_with_supplier(lg: Lotgate) -> tuple[str, str]:
    material, supplier = ref("MAT"), ref("SUP")
    await lg.specify(material)
    await lg.qualify(supplier, "Acme Biologicals", material, NEXT_YEAR)
    return material, supplier


@pytest.mark.req("WAT-002")
async def test_a_watcher_that_disconnects_and_resumes_sees_every_change_once(
        lotgate: Lotgate) -> None:
    material, supplier = await material_with_supplier(lotgate)
    watch = Watch(lotgate.lots, material_code=material)
    lot = ref("LOT")
    await lotgate.receive(lot, material, supplier)
    first = await watch.next()
    assert (first.release_status.lot_id, first.release_status.version, first.snapshot) == (
        lot, 1, True)

    await lotgate.post(identity(lot, "FTIR-1", ref("K")))
    oos = await lotgate.post(purity(lot, "HPLC-1", ref("K"), 96.0))
    await watch.until(lambda r: r.release_status.status == pb.LOT_STATUS_ON_HOLD)
    watch.call.cancel()

    # Away: QA invalidates the out-of-specification result (back to QUARANTINE) and the
    # sterility result arrives.
    await lotgate.results.InvalidateResult(rpb.InvalidateResultRequest(
        result_id=oos.result_id, reason="sample diluted twice (lab error, OOS-2026-17)",
        requested_by="qa.jane"))
    await settled(lotgate, lot, ["PURITY_RETEST_REQUIRED", "STERILITY_MISSING"])
    await lotgate.post(sterility(lot, "BACT-1", ref("K")))
    await settled(lotgate, lot, ["PURITY_RETEST_REQUIRED"])

    resumed = Watch(lotgate.lots, material_code=material, resume_from=watch.resume_from())
    retest = purity(lot, "HPLC-1", ref("K"), 99.6)
    retest.retest_of = oos.result_id
    await lotgate.post(retest)
    await resumed.until(lambda r: r.release_status.status == pb.LOT_STATUS_RELEASED)
    resumed.call.cancel()

    assert not any(r.snapshot for r in resumed.seen)
    seen = watch.versions(lot) + resumed.versions(lot)
    decided = await decisions(lotgate.lots, lot)
    assert seen == [d.version for d in decided] == list(range(1, len(decided) + 1))
    statuses = [d.status for d in decided]
    assert pb.LOT_STATUS_ON_HOLD in statuses and statuses[-1] == pb.LOT_STATUS_RELEASED
    assert len(decided) > len(watch.seen)  # part of it happened while the watcher was away


@pytest.fixture(scope="module")
async def second_lots(stack: Stack) -> AsyncIterator[pb_grpc.LotServiceStub]:
    """Another lots process with the same settings (database, NATS) as the stack's one."""
    lots = stack.services["lots"]
    port = free_port()
    replica = ServiceProcess("lots", port, {**lots.env, "LOTGATE_GRPC_PORT": str(port)},
                             stack.workdir / "lots-replica.log")
    await replica.start()
    try:
        async with auth.channel(replica.address) as channel:
            yield pb_grpc.LotServiceStub(channel)
    finally:
        await replica.stop()


@pytest.mark.req("WAT-004")
async def test_two_replicas_decide_as_one_and_both_serve_reads_and_watches(
        lotgate: Lotgate, second_lots: pb_grpc.LotServiceStub) -> None:
    replicas = [lotgate.lots, second_lots]
    material, supplier = await material_with_supplier(lotgate)
    watches = [Watch(stub, material_code=material) for stub in replicas]
    # Both watches are in place once they have shown a lot received now: from then on
    # they must see every lot from its first version (a watch that started later would
    # rightly begin with a lot's status at that moment, as it may for this marker, whose
    # qualification can reach the lots service after it and decide it again).
    marker = ref("LOT")
    await lotgate.receive(marker, material, supplier)
    for watch in watches:
        await watch.until(lambda r: r.release_status.lot_id == marker)
    lots = [ref("LOT") for _ in range(24)]

    async def drive(i: int, lot: str) -> None:
        receiver = replicas[i % 2]
        await receiver.ReceiveLot(pb.ReceiveLotRequest(
            lot_id=lot, material_code=material, supplier_id=supplier, supplier_site_id="MAIN",
            supplier_lot_number=f"S-{lot}", quantity=pb.Quantity(value=25.0, unit="kg"),
            container_count=4, expiry_date="2030-12-31", requested_by="wms"))
        await asyncio.gather(lotgate.post(identity(lot, "FTIR-1", ref("K"))),
                             lotgate.post(purity(lot, "HPLC-1", ref("K"), 99.5)),
                             lotgate.post(sterility(lot, "BACT-1", ref("K"))))

    await asyncio.gather(*(drive(i, lot) for i, lot in enumerate(lots)))

    async def statuses(stub: pb_grpc.LotServiceStub) -> list[pb.ReleaseStatus]:
        return list((await stub.GetReleaseStatuses(
            pb.GetReleaseStatusesRequest(lot_ids=lots))).statuses)

    released = await eventually(lambda: statuses(replicas[0]), lambda got: all(
        s.status == pb.LOT_STATUS_RELEASED for s in got), within=60)
    # Both replicas answer every lot identically (each learns the other's decisions).
    await eventually(lambda: statuses(replicas[1]), lambda got: got == released, within=30)

    final: dict[str, int] = {}
    for lot in lots:
        decided = await decisions(lotgate.lots, lot)
        assert [d.version for d in decided] == list(range(1, len(decided) + 1)), lot
        # Never released twice.
        assert Counter(d.status for d in decided)[pb.LOT_STATUS_RELEASED] == 1, lot
        assert decided == await decisions(second_lots, lot)
        final[lot] = decided[-1].version
    assert {s.lot_id: s.version for s in released} == final

    for watch in watches:
        await watch.until_versions(final)
        watch.call.cancel()
        for lot in lots:  # every version exactly once, the first as the snapshot
            assert watch.versions(lot) == list(range(1, final[lot] + 1)), lot
        driven = [r for r in watch.seen if r.release_status.lot_id in final]
        assert [r.release_status.lot_id for r in driven if r.snapshot] == [
            r.release_status.lot_id for r in driven if r.release_status.version == 1]
    # Replica 2's watch saw the lots replica 1 received (and decided first).
    assert all(watches[1].versions(lot)[0] == 1 for lot in lots[0::2])
