"""Qualification expiry with a controllable clock: both services share one ManualClock.

The lots service never counts a qualification past its valid_until, whether or not the
suppliers service has announced the expiry yet; once it has, the lots released from
that site for that material are put up for review.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from shared import messaging
from shared.clock import ManualClock
from shared.protoconv import to_timestamp
from tests.integration.test_lot_reviews import reviews, wait_reviews
from tests.integration.test_lots import SITE, System, running_system
from tests.support.services import ref

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    # The suppliers service looks for lapsed approvals this often (by the shared clock).
    async with running_system(databases, nats_server, clock=ManualClock(),
                              suppliers={"expiry_check_seconds": 0.05}) as system:
        yield system


def manual_clock(system: System) -> ManualClock:
    assert isinstance(system.clock, ManualClock)
    return system.clock


async def about_to_be_released(system: System, supplier_id: str, material: str) -> str:
    """A lot with identity and purity passed, waiting only for its sterility result."""
    lot = await system.receive(supplier_id, material)
    for test in (rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY):
        await system.publish(system.result_event(lot.lot_id, material, test))
    await system.wait_unmet(lot.lot_id, ["STERILITY_MISSING"])
    return lot.lot_id


@pytest.mark.req("REL-005")
async def test_a_lapsed_qualification_does_not_release_a_lot_even_with_no_expiry_announced(
        system: System) -> None:
    clock = manual_clock(system)
    supplier_id, material = ref("SUP"), ref("MAT")
    # Announced the way the suppliers service announces it; nobody will announce the
    # expiry of this one, so only the lots service's own check can stop the release.
    valid_until = clock.now() + timedelta(days=1)
    qualified = supplier_events.QualificationChanged(
        event_id=str(uuid.uuid4()), previous_status=spb.QUALIFICATION_STATUS_PENDING,
        occurred_at=to_timestamp(clock.now()),
        qualification=spb.Qualification(
            supplier_id=supplier_id, site_id=SITE, material_code=material,
            status=spb.QUALIFICATION_STATUS_QUALIFIED, valid_until=to_timestamp(valid_until),
            version=2, reason="audit passed", changed_by="qa.jane",
            changed_at=to_timestamp(clock.now())))
    await system.js.publish(messaging.QUALIFICATION_CHANGED, qualified.SerializeToString(),
                            headers={"Nats-Msg-Id": qualified.event_id})
    lot_id = await about_to_be_released(system, supplier_id, material)

    clock.advance(timedelta(days=1, seconds=1))
    await system.publish(system.result_event(lot_id, material, rpb.TEST_KIND_STERILITY))

    status = await system.wait_unmet(lot_id, ["QUALIFICATION_EXPIRED"])
    assert status.status == pb.LOT_STATUS_QUARANTINE
    assert valid_until.isoformat() in status.unmet[0].message


@pytest.mark.req("REL-005", "REL-010")
async def test_an_expiry_stops_the_next_release_and_puts_released_lots_up_for_review(
        system: System) -> None:
    clock = manual_clock(system)
    material = ref("MAT")
    supplier_id = ref("SUP")
    qualification = await system.qualify(supplier_id, material,
                                         valid_until=clock.now() + timedelta(days=1))
    released = await system.released_lot(supplier_id, material)
    waiting = await about_to_be_released(system, supplier_id, material)

    clock.advance(timedelta(days=2))
    await system.publish(system.result_event(waiting, material, rpb.TEST_KIND_STERILITY))

    status = await system.wait_unmet(waiting, ["QUALIFICATION_EXPIRED"])
    assert status.status == pb.LOT_STATUS_QUARANTINE
    # The suppliers service announces the expiry on its own; the released lot stays
    # released and is put up for review.
    [review] = await wait_reviews(system, 1, supplier_id=supplier_id)
    assert (review.lot_id, review.qualification_status, review.supplier_site_id) == (
        released, "EXPIRED", SITE)
    assert review.qualification_version > qualification.version
    assert review.reason
    assert (await system.status(released)).status == pb.LOT_STATUS_RELEASED
    assert (await system.wait_unmet(waiting, ["QUALIFICATION_EXPIRED"])).status == (
        pb.LOT_STATUS_QUARANTINE)
    assert [r.lot_id for r in await reviews(system, material_code=material)] == [released]
