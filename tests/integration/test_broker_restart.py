"""The broker dies in the middle of a flow and comes back: nothing acknowledged is lost.

The three services run in this process on real databases against a nats-server of the
test's own, which the test kills (SIGKILL: no flush, no goodbye) while lots are being
decided, and starts again on the same port and store. Every result the results service
acknowledged must reach the lots service and count exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from lotgate_tools.client import Lotgate, identity, purity, sterility
from lotgate_tools.stack import NatsServer, free_port
from shared.runtime import RunningService
from tests.support.auth import acting
from tests.support.services import ref, start_in_process
from tests.support.waiting import until_lot

pytestmark = pytest.mark.integration

LOTS = 4
# Redelivery of a batch the lots consumer had fetched when the broker died waits for the
# consumer's ack wait; the bound below leaves room for that.
SETTLE_WITHIN_S = 60.0


@pytest.fixture
async def broker(workdir) -> AsyncIterator[NatsServer]:
    server = NatsServer(workdir / f"nats-{ref('restart')}", port=free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def lotgate(databases, broker) -> AsyncIterator[Lotgate]:
    services: list[RunningService] = []
    try:
        for name in ("suppliers", "results", "lots"):
            services.append(await start_in_process(name, databases=databases, nats=broker,
                                                   consumer_ack_wait_seconds=2.0))
        async with Lotgate.connect({s.name: s.address for s in services}, acting()) as client:
            for instrument, kind in (("FTIR-1", "FTIR"), ("HPLC-1", "HPLC"),
                                     ("BACT-1", "BacT/ALERT")):
                await client.register_instrument(instrument, type=kind)
            yield client
    finally:
        for service in reversed(services):
            await service.stop()


@pytest.mark.req("DEL-001", "DEL-002")
async def test_results_posted_across_a_broker_kill_and_restart_all_count_once(
        lotgate, broker) -> None:
    material, supplier = ref("MAT"), ref("SUP")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme", material, datetime.now(UTC) + timedelta(days=365))
    lots = [ref("LOT") for _ in range(LOTS)]
    for lot in lots:
        await lotgate.receive(lot, material, supplier)
    await asyncio.gather(*(lotgate.post(identity(lot, "FTIR-1", ref("K"))) for lot in lots))
    for lot in lots:
        await until_lot(lotgate.lots, lot, pb.LOT_STATUS_QUARANTINE,
                        ["PURITY_MISSING", "STERILITY_MISSING"])

    # Purity results are on their way through the outbox, relay and consumer when the
    # broker is killed; the ones posted after it are acknowledged into the outbox only.
    posting = asyncio.gather(*(lotgate.post(purity(lot, "HPLC-1", ref("K"), 99.5))
                               for lot in lots))
    await broker.kill()
    acknowledged = await posting
    acknowledged += await asyncio.gather(*(lotgate.post(sterility(lot, "BACT-1", ref("K")))
                                           for lot in lots[:2]))
    await broker.start()
    acknowledged += await asyncio.gather(*(lotgate.post(sterility(lot, "BACT-1", ref("K")))
                                           for lot in lots[2:]))

    for lot in lots:
        await until_lot(lotgate.lots, lot, pb.LOT_STATUS_RELEASED, [],
                        within=SETTLE_WITHIN_S)
    assert len(acknowledged) == 2 * LOTS
    for lot in lots:
        explained = await lotgate.lots.ExplainDecision(pb.ExplainDecisionRequest(lot_id=lot))
        used = sorted(r.result_id for r in explained.explained.decision.inputs.results)
        listed = await lotgate.results.ListLotResults(rpb.ListLotResultsRequest(lot_id=lot))
        assert used == sorted(r.result_id for r in listed.results), lot
        assert len(used) == 3, lot


async def test_a_broker_on_a_taken_port_fails_rather_than_pass_off_the_other_one(
        nats_server: NatsServer, workdir) -> None:
    """The port answers (the session's broker listens there), but this nats-server could
    not bind it and exited: its start fails, so nobody is sent to the other broker."""
    second = NatsServer(workdir / f"nats-{ref('second')}", port=nats_server.port)

    with pytest.raises(RuntimeError, match="nats-server exited with status 1") as failure:
        await second.start()

    assert "address already in use" in str(failure.value)
    assert second.process is None
    connection = await nats_server.connect()  # the other broker is left as it was
    await connection.close()
