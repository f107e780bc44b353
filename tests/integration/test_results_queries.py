"""Reading results over real gRPC: an instrument's results a page at a time, a lot's
results; and the lots the service knows from the lots service's LotReceived.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from lotgate.results.v1 import results_pb2 as pb
from services.results.tables import known_lots, results, tables
from shared import paging
from shared.protoconv import from_timestamp, to_timestamp
from shared.uow import new_event_id
from tests.support import results as support
from tests.support.grpc_errors import field_violations
from tests.support.results import (
    HPLC,
    identity,
    lot_received,
    new_instrument,
    now,
    post,
    publish,
    purity,
    receive_lot,
    refused,
    specified_lot,
    specify,
    wait_until_known,
)
from tests.support.services import ref

pytestmark = pytest.mark.integration

# The fixtures of tests/support/results.py: the running service, a stub for it, its
# instruments (registered for the module) and JetStream.
service = support.service
stub = support.stub
instruments = support.instruments
js = support.js


# Queries


@pytest.mark.req("RES-003")
async def test_an_instruments_results_come_by_measurement_time_a_page_at_a_time(
        stub, js) -> None:
    instrument_id = await new_instrument(stub)
    _, lot_id = await specified_lot(stub, js)
    base = now()
    offsets = [30, 10, 50, 20, 40, 20]  # seconds after base, posted in this order
    posted = [await post(stub, identity(lot_id, instrument=instrument_id,
                                        measured_at=base + timedelta(seconds=s)))
              for s in offsets]
    in_order = sorted(posted, key=lambda r: (r.measured_at.ToDatetime(), r.sequence))

    def ask(**kw) -> Any:
        return stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
            instrument_id=instrument_id, **kw))

    pages, token = [], ""
    while True:
        page = await ask(page_size=4, page_token=token)
        pages.append(list(page.results))
        token = page.next_page_token
        if not token:
            break
    window = await ask(measured_from=to_timestamp(base + timedelta(seconds=20)),
                       measured_before=to_timestamp(base + timedelta(seconds=50)))

    assert [len(p) for p in pages] == [4, 2]
    assert [r for p in pages for r in p] == in_order
    assert [from_timestamp(r.measured_at) - base for r in window.results] == [
        timedelta(seconds=s) for s in (20, 20, 30, 40)]
    assert window.next_page_token == ""


@pytest.mark.req("INP-001")
async def test_listing_an_instruments_results_checks_the_request(stub) -> None:
    base = now()
    backwards = await refused(stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
        instrument_id=HPLC, measured_from=to_timestamp(base),
        measured_before=to_timestamp(base - timedelta(seconds=1)), page_size=5000,
        page_token="not a token")))
    stale = await refused(stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
        instrument_id=HPLC, page_token=paging.encode_position(99_999_999))))
    unknown = await refused(stub.ListInstrumentResults(pb.ListInstrumentResultsRequest(
        instrument_id=ref("INS"))))

    assert set(field_violations(backwards)) == {"measured_before", "page_size", "page_token"}
    assert set(field_violations(stale)) == {"page_token"}
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("RES-005")
async def test_the_results_of_an_unknown_lot_are_not_found(stub) -> None:
    error = await refused(stub.ListLotResults(pb.ListLotResultsRequest(lot_id=ref("LOT"))))

    assert error.code() == grpc.StatusCode.NOT_FOUND


# The lot projection


@pytest.mark.req("RES-005", "DEL-002")
async def test_the_same_lot_received_delivered_twice_changes_nothing(
        stub, js, service) -> None:
    material = ref("MAT")
    await specify(stub, material)
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
    result = await post(stub, purity(event.lot.lot_id, 99.0))
    assert (result.material_code, result.verdict) == (material, pb.VERDICT_PASS)
    assert service.consumers[0].parked == 0


@pytest.mark.req("RES-001")
async def test_one_row_is_stored_per_recorded_result(stub, js, service) -> None:
    _, lot_id = await specified_lot(stub, js)
    request = purity(lot_id, 99.0)
    for _ in range(3):
        await post(stub, request)

    async with service.infra.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(results)
                                    .where(results.c.lot_id == lot_id))).scalar_one()
    assert count == 1
