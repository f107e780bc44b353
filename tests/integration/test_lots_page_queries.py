"""ListLots answers a page from its page query alone: the page's rows carry each lot's
status, so a cold status cache costs no query per lot (it took 103 index scans for a
page of 100 before)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from shared.runtime import RunningService
from tests.support import auth
from tests.support.lot_rows import add_lot_rows, lot_rows
from tests.support.services import start_in_process

pytestmark = pytest.mark.integration

# Background loops kept quiet, so that what is counted is the call's own statements.
QUIET = {"expiry_check_seconds": 3600,
         "audit_anchor_seconds": 3600, "metrics_sample_seconds": 3600,
         "inbox_prune_seconds": 3600}
ON_LOTS = re.compile(r"\blots\b")


@pytest.fixture(scope="module")
async def lots_service(databases, nats_server) -> AsyncIterator[RunningService]:
    service = await start_in_process("lots", databases=databases, nats=nats_server, **QUIET)
    # Written to the database, never read through the service: its cache knows none.
    await add_lot_rows(service.infra.engine,
                       lot_rows(5, prefix="FEW", material="MAT-FEW")
                       + lot_rows(100, prefix="MANY", material="MAT-MANY")
                       + lot_rows(100, prefix="HELD", material="MAT-HELD",
                                  status="QUARANTINE"))
    yield service
    await service.stop()


@contextmanager
def statements_on_lots(service: RunningService) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if ON_LOTS.search(statement):
            seen.append(statement)

    engine = service.infra.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def test_a_page_of_lots_costs_one_query_however_many_lots_it_holds(
        lots_service: RunningService) -> None:
    async with auth.channel(lots_service.address) as channel:
        stub = pb_grpc.LotServiceStub(channel)
        with statements_on_lots(lots_service) as few:
            small = await stub.ListLots(pb.ListLotsRequest(material_code="MAT-FEW",
                                                           page_size=5))
        with statements_on_lots(lots_service) as many:
            large = await stub.ListLots(pb.ListLotsRequest(material_code="MAT-MANY",
                                                           page_size=100))
        with statements_on_lots(lots_service) as held:
            quarantined = await stub.ListLots(pb.ListLotsRequest(material_code="MAT-HELD",
                                                                 page_size=100))

    assert len(small.lots) == 5
    assert len(large.lots) == 100
    assert len(few) == len(many) == len(held) == 1
    # Each status comes from the page's own row.
    assert {lot.release_status.status for lot in large.lots} == {pb.LOT_STATUS_RELEASED}
    assert all(lot.release_status.version == 2 for lot in large.lots)
    assert {lot.release_status.status for lot in quarantined.lots} == {pb.LOT_STATUS_QUARANTINE}
    assert {tuple(u.code for u in lot.release_status.unmet) for lot in quarantined.lots} == {
        ("RESULTS_MISSING",)}


async def test_the_status_a_page_answers_is_the_one_the_single_read_answers(
        lots_service: RunningService) -> None:
    async with auth.channel(lots_service.address) as channel:
        stub = pb_grpc.LotServiceStub(channel)
        page = await stub.ListLots(pb.ListLotsRequest(material_code="MAT-HELD", page_size=3))
        for lot in page.lots:
            single = await stub.GetReleaseStatus(pb.GetReleaseStatusRequest(lot_id=lot.lot_id))
            assert single.release_status == lot.release_status
