"""A released lot whose retest or expiry date has come is not usable when read, even
before the lots service's scheduler has recorded the move (it runs every
LOTGATE_EXPIRY_CHECK_SECONDS, and not at all while the database is away).

Here the scheduler is set to run hourly, so that only the read path can answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from shared.clock import ManualClock
from tests.integration.test_lots import System, running_system
from tests.integration.test_lots_qa import all_passed, day, manual_clock
from tests.support.services import ref

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server, clock=ManualClock(),
                              lots={"expiry_check_seconds": 3600}) as system:
        yield system


@pytest.mark.req("WMS-002")
async def test_reads_withdraw_a_released_lot_at_its_retest_and_expiry_dates(
        system: System) -> None:
    clock = manual_clock(system)
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    retest = await all_passed(system, supplier_id, material, retest_date=day(system, 2))
    expiring = await all_passed(system, supplier_id, material, expiry_date=day(system, 3))
    released = {lot_id: await system.wait_status(lot_id, pb.LOT_STATUS_RELEASED)
                for lot_id in (retest, expiring)}

    clock.advance(timedelta(days=2))

    back = await system.status(retest)
    assert back.status == pb.LOT_STATUS_QUARANTINE
    assert [u.code for u in back.unmet] == ["RETEST_DATE_REACHED"]
    # No decision has been recorded yet: the read answers from the dates.
    assert back.version == released[retest].version
    assert (await system.status(expiring)).status == pb.LOT_STATUS_RELEASED

    clock.advance(timedelta(days=2))

    batch = (await system.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(
        lot_ids=[retest, expiring]))).statuses
    assert [(s.lot_id, s.status) for s in batch] == [
        (retest, pb.LOT_STATUS_QUARANTINE), (expiring, pb.LOT_STATUS_EXPIRED)]
    assert "LOT_EXPIRED" in [u.code for u in batch[1].unmet]
    lot = (await system.lots.GetLot(pb.GetLotRequest(lot_id=expiring))).lot
    assert lot.release_status.status == pb.LOT_STATUS_EXPIRED
    decided = await system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=expiring))
    assert decided.decisions[-1].decision.version == released[expiring].version
