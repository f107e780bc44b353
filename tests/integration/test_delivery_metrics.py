"""A consumer's troubles show in its service's metrics: an event that fails every attempt
is redelivered, then parked as a dead letter, and the lag drains."""

from __future__ import annotations

import pytest

from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate.results.v1 import results_pb2 as rpb
from shared import messaging
from shared.stack import NatsServer, free_port
from tests.integration.test_lots import System
from tests.support import auth
from tests.support.events import harness
from tests.support.scraping import Scrape, scrape
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CONSUMER = "lots-result-recorded"


async def test_a_failing_event_shows_as_redeliveries_then_a_dead_letter(
        databases, workdir) -> None:
    broker = NatsServer(workdir / f"nats-{ref('metrics')}")
    await broker.start()
    lots = await start_in_process("lots", databases=databases, nats=broker,
                                  consumer_max_attempts=3, metrics_port=free_port(),
                                  metrics_sample_seconds=0.2)
    events = await harness(broker)
    try:
        async with auth.channel(lots.address) as channel:
            system = System(pb_grpc.LotServiceStub(channel), None, lots, events.js)
            lot = await system.receive(ref("SUP"), "MAT-M")
            # No test kind: the lots service cannot apply it, whatever the attempt.
            await system.publish(system.result_event(lot.lot_id, "MAT-M",
                                                     rpb.TEST_KIND_UNSPECIFIED))

            def drained(s: Scrape) -> bool:
                return (s.value("lotgate_dead_letters") == 1
                        and s.value("lotgate_consumer_pending_messages", consumer=CONSUMER) == 0
                        and s.value("lotgate_consumer_ack_pending_messages",
                                    consumer=CONSUMER) == 0)

            scraped = await eventually(lambda: scrape(lots.metrics_port), drained,
                                       within=30, every=0.2)
    finally:
        await events.close()
        await lots.stop()
        await broker.stop()

    assert scraped.value("lotgate_dead_letters_parked_total",
                         subject=messaging.RESULT_RECORDED) == 1
    # Delivered three times (the last attempt parks it): twice again after a failure.
    assert scraped.value("lotgate_consumer_deliveries_total", consumer=CONSUMER) >= 3
    assert scraped.value("lotgate_consumer_redeliveries_total", consumer=CONSUMER) >= 2
    assert scraped.value("lotgate_consumer_events_applied_total", consumer=CONSUMER) == 0
