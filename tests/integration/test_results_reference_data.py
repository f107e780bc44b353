"""Posting serves specifications and instruments from memory while they are unchanged:
whoever changes them, through this replica, another one, or by hand in the database, the
next post sees the change."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from tests.support import auth
from tests.support import results as support
from tests.support.results import (
    FAILED,
    new_instrument,
    post,
    purity,
    refused,
    specified_lot,
    specify,
)
from tests.support.services import RunningService, start_in_process

pytestmark = pytest.mark.integration

service = support.service
stub = support.stub
instruments = support.instruments
js = support.js


@pytest.fixture(scope="module")
async def replica(databases, nats_server, service) -> AsyncIterator[RunningService]:
    """A second results process on the same database."""
    running = await start_in_process("results", databases=databases, nats=nats_server,
                                     database_url=service.infra.settings.database_url)
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def other(replica) -> AsyncIterator[pb_grpc.ResultServiceStub]:
    async with auth.channel(replica.address) as channel:
        yield pb_grpc.ResultServiceStub(channel)


@contextlib.contextmanager
def reference_reads(running: RunningService) -> Iterator[list[str]]:
    """The statements of the process that read specifications or instruments."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if re.search(r"FROM (specifications|instruments)\b", statement):
            seen.append(statement)

    engine = running.infra.engine.sync_engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def test_posts_read_the_reference_data_once_until_it_changes(stub, js, service) -> None:
    _, lot_id = await specified_lot(stub, js)
    instrument = await new_instrument(stub)
    await post(stub, purity(lot_id, 99.0, instrument=instrument))

    with reference_reads(service) as unchanged:
        for value in (99.1, 99.2, 99.3):
            await post(stub, purity(lot_id, value, instrument=instrument))
    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=instrument, status=pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
        reason="lamp failure", requested_by="qc.lead"))
    error = await refused(post(stub, purity(lot_id, 99.4, instrument=instrument)))

    assert unchanged == []
    assert error.code() == FAILED
    assert "OUT_OF_SERVICE" in error.details()


async def test_a_change_made_through_another_replica_reaches_the_next_post(
        stub, other, js) -> None:
    material, lot_id = await specified_lot(stub, js)
    instrument = await new_instrument(stub)
    first = await post(other, purity(lot_id, 99.0, instrument=instrument))

    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=instrument, status=pb.INSTRUMENT_STATUS_OUT_OF_SERVICE,
        reason="lamp failure", requested_by="qc.lead"))
    out_of_service = await refused(post(other, purity(lot_id, 99.1, instrument=instrument)))
    await stub.SetInstrumentStatus(pb.SetInstrumentStatusRequest(
        instrument_id=instrument, status=pb.INSTRUMENT_STATUS_ACTIVE,
        reason="lamp replaced", requested_by="qc.lead"))
    tighter = await specify(stub, material, lower=99.5, upper=100.5)
    judged = await post(other, purity(lot_id, 99.2, instrument=instrument))

    assert (first.spec_version, first.verdict) == (tighter.version - 1, pb.VERDICT_PASS)
    assert out_of_service.code() == FAILED
    assert (judged.spec_version, judged.verdict) == (tighter.version, pb.VERDICT_FAIL)


async def test_a_change_written_straight_into_the_database_reaches_the_next_post(
        stub, js, service) -> None:
    """The database raises the reference version itself (triggers), whatever the writer:
    here a correction made by hand."""
    _, lot_id = await specified_lot(stub, js)
    instrument = await new_instrument(stub)
    await post(stub, purity(lot_id, 99.0, instrument=instrument))

    async with service.infra.engine.begin() as conn:
        await conn.execute(text("UPDATE instruments SET status = 'RETIRED' "
                                "WHERE instrument_id = :i"), {"i": instrument})
    error = await refused(post(stub, purity(lot_id, 99.1, instrument=instrument)))

    assert error.code() == FAILED
    assert "RETIRED" in error.details()
