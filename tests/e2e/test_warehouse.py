"""The warehouse asks about a whole pick list at once, over the running processes."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate_tools.client import Lotgate, identity, purity, sterility
from tests.support.services import ref
from tests.support.waiting import until_lot

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)


def codes(status: pb.ReleaseStatus) -> list[str]:
    return [u.code for u in status.unmet]


async def receive_all(lg: Lotgate, lot_ids: list[str], material: str, supplier: str) -> None:
    for start in range(0, len(lot_ids), 50):
        await asyncio.gather(*(lg.receive(lot_id, material, supplier)
                               for lot_id in lot_ids[start:start + 50]))


@pytest.mark.req("WMS-001")
async def test_a_pick_list_of_a_thousand_lots_is_answered_in_one_call_in_order(
        lotgate: Lotgate) -> None:
    material, supplier, unqualified = ref("MAT"), ref("SUP"), ref("SUP")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme Biologicals", material, NEXT_YEAR)
    released = [ref("LOT") for _ in range(5)]
    held = ref("LOT")
    waiting = [ref("LOT") for _ in range(990)]
    not_approved = [ref("LOT") for _ in range(3)]
    await receive_all(lotgate, [*released, held, *waiting], material, supplier)
    await receive_all(lotgate, not_approved, material, unqualified)
    for lot in released:
        await lotgate.post(identity(lot, "FTIR-1", ref("K")))
        await lotgate.post(purity(lot, "HPLC-1", ref("K"), 99.5))
        await lotgate.post(sterility(lot, "BACT-1", ref("K")))
    for request in (identity(held, "FTIR-1", ref("K")), purity(held, "HPLC-1", ref("K"), 99.5),
                    sterility(held, "BACT-1", ref("K"), growth=True)):
        await lotgate.post(request)
    for lot in released:
        await until_lot(lotgate.lots, lot, pb.LOT_STATUS_RELEASED, [])
    await until_lot(lotgate.lots, held, pb.LOT_STATUS_ON_HOLD, ["STERILITY_OUT_OF_SPECIFICATION"])
    unknown = ref("LOT")
    pick_list = [*released, held, *waiting, *not_approved, unknown]
    random.Random(11).shuffle(pick_list)
    assert len(pick_list) == 1000

    reply = await lotgate.lots.GetReleaseStatuses(
        pb.GetReleaseStatusesRequest(lot_ids=pick_list))

    assert [s.lot_id for s in reply.statuses] == pick_list
    by_id = {s.lot_id: s for s in reply.statuses}
    pickable = {lot_id for lot_id, s in by_id.items() if s.status == pb.LOT_STATUS_RELEASED}
    assert pickable == set(released)
    assert all(list(by_id[lot].unmet) == [] for lot in released)
    assert by_id[held].status == pb.LOT_STATUS_ON_HOLD
    assert codes(by_id[held]) == ["STERILITY_OUT_OF_SPECIFICATION"]
    assert {by_id[lot].status for lot in waiting + not_approved} == {pb.LOT_STATUS_QUARANTINE}
    assert all(codes(by_id[lot])[-3:] == ["IDENTITY_MISSING", "PURITY_MISSING",
                                          "STERILITY_MISSING"] for lot in waiting)
    assert all(codes(by_id[lot])[0] == "SUPPLIER_NOT_QUALIFIED" for lot in not_approved)
    missing = by_id[unknown]
    assert (missing.status, missing.version) == (pb.LOT_STATUS_UNSPECIFIED, 0)
    assert [(u.code, u.message) for u in missing.unmet] == [("LOT_NOT_FOUND",
                                                              f"no lot {unknown}")]
    # The same answers as one call per lot.
    for lot in (released[0], held, waiting[0], not_approved[0]):
        assert by_id[lot] == await lotgate.status(lot)
