"""Delivery troubles show in a service's metrics: an event that fails every attempt is
redelivered, then parked as a dead letter; with NATS down, the outbox backlog grows and
ages, and drains once NATS is up."""

from __future__ import annotations

import pytest

from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as spb_grpc
from lotgate_tools.stack import NatsServer, free_port
from services.suppliers import bootstrap as suppliers_bootstrap
from shared import messaging, migrations
from shared.config import settings_for
from tests.integration.test_lots import System
from tests.integration.test_suppliers import new_qa
from tests.support import auth
from tests.support.events import harness
from tests.support.scraping import Scrape, get, scrape
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


async def test_while_nats_is_down_the_outbox_backlog_and_its_age_show_and_readiness_is_lost(
        databases, workdir) -> None:
    broker = NatsServer(workdir / f"nats-{ref('late')}", port=free_port())
    port = free_port()
    database_url = await databases.create("suppliers")
    await migrations.migrate("suppliers", database_url)
    settings = settings_for("suppliers", database_url=database_url,
                            nats_url=broker.url, grpc_host="127.0.0.1", grpc_port=0,
                            outbox_poll_seconds=0.2, metrics_port=port,
                            metrics_sample_seconds=0.2, health_check_seconds=0.2,
                            **auth.settings_overrides(),
                            **broker.secrets.service_settings("suppliers"))
    running = await suppliers_bootstrap.start(settings)  # no broker is listening yet
    try:
        async with auth.channel(running.address) as channel:
            qa = await new_qa(spb_grpc.SupplierServiceStub(channel))
            await qa.approved()
        waiting = await eventually(
            lambda: scrape(port),
            lambda s: (s.value("lotgate_outbox_backlog_events") or 0) >= 2
            and (s.value("lotgate_outbox_oldest_event_age_seconds") or 0) > 0,
            within=30, every=0.2)
        assert waiting.value("lotgate_ready") == 0
        assert (await get(port, "/readyz"))[0] == 503

        await broker.start()
        published = await eventually(
            lambda: scrape(port),
            lambda s: s.value("lotgate_outbox_backlog_events") == 0
            and s.value("lotgate_ready") == 1, within=30, every=0.2)
    finally:
        await running.stop()
        await broker.stop()

    assert published.value("lotgate_outbox_oldest_event_age_seconds") == 0
    assert published.value("lotgate_outbox_published_total") >= waiting.value(
        "lotgate_outbox_backlog_events")
