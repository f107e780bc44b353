"""Each service process serves Prometheus metrics and meaningful health, scraped as an
operator's Prometheus and Kubernetes' probes would after a real flow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.results.v1 import results_pb2_grpc as rpb_grpc
from lotgate_tools.client import Lotgate, identity, purity, sterility
from lotgate_tools.stack import SERVICES, Stack, free_port
from shared import messaging
from tests.support import auth
from tests.support.auth import TEST_KEYS
from tests.support.databases import Databases
from tests.support.scraping import Scrape, get, scrape
from tests.support.services import ref
from tests.support.waiting import eventually, until_lot

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)
SERVICE_NAMES = {"suppliers": "lotgate.suppliers.v1.SupplierService",
                 "lots": "lotgate.lots.v1.LotService",
                 "results": "lotgate.results.v1.ResultService"}


@pytest.fixture(scope="module")
async def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Stack]:
    """The e2e stack, each service with a metrics port, sampling and checking often."""
    workdir: Path = tmp_path_factory.mktemp("stack")
    urls = {name: await databases.create(f"e2e_{name}") for name in SERVICES}
    running = Stack(workdir, database_urls=urls, ports={n: free_port() for n in SERVICES},
                    metrics_ports={n: free_port() for n in SERVICES},
                    extra_env={"LOTGATE_OUTBOX_POLL_SECONDS": "0.2",
                               "LOTGATE_METRICS_SAMPLE_SECONDS": "0.3",
                               "LOTGATE_HEALTH_CHECK_SECONDS": "0.3"}, keys=TEST_KEYS)
    await running.start()
    yield running
    await running.stop()


async def metrics_of(stack: Stack, service: str) -> Scrape:
    return await scrape(stack.metrics_ports[service])


async def until_metric(stack: Stack, service: str, name: str, wanted: float,
                       **labels: str) -> Scrape:
    """The service's metrics once `name{labels}` is `wanted` (gauges are sampled)."""
    return await eventually(lambda: metrics_of(stack, service),
                            lambda s: s.value(name, **labels) == wanted, within=30, every=0.2)


async def test_a_flow_shows_in_every_process_metrics(stack: Stack, lotgate: Lotgate) -> None:
    material, supplier, lot = ref("MAT"), ref("SUP"), ref("LOT")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme Biologicals", material, NEXT_YEAR)
    await lotgate.receive(lot, material, supplier)
    await lotgate.post(identity(lot, "FTIR-1", ref("K")))
    await until_lot(lotgate.lots, lot, pb.LOT_STATUS_QUARANTINE,
                    ["PURITY_MISSING", "STERILITY_MISSING"])
    await lotgate.post(purity(lot, "HPLC-1", ref("K"), 99.5))
    await lotgate.post(sterility(lot, "BACT-1", ref("K")))
    await until_lot(lotgate.lots, lot, pb.LOT_STATUS_RELEASED, [])
    # A call the gate refuses is counted with its code too.
    async with grpc.aio.insecure_channel(stack.address("results")) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rpb_grpc.ResultServiceStub(anonymous).RecordResult(rpb.RecordResultRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    results = await metrics_of(stack, "results")
    record = {"grpc_service": SERVICE_NAMES["results"], "grpc_method": "RecordResult"}
    assert results.value("lotgate_grpc_server_handled_total", **record, grpc_code="OK") >= 3
    assert results.value("lotgate_grpc_server_handled_total", **record,
                         grpc_code="UNAUTHENTICATED") == 1
    assert results.value("lotgate_grpc_server_handling_seconds_count", **record) >= 4
    assert results.value("lotgate_grpc_server_handling_seconds_bucket", **record,
                         le="+Inf") >= 4
    # Every result's event left the outbox: published, and nothing is waiting.
    assert results.value("lotgate_outbox_published_total") >= 3
    await until_metric(stack, "results", "lotgate_outbox_backlog_events", 0)
    await until_metric(stack, "results", "lotgate_outbox_oldest_event_age_seconds", 0)

    # The lag drains: nothing left to deliver, nothing delivered waiting for its ack (an
    # ack follows the commit that the status watch already saw).
    consumer = {"consumer": "lots-result-recorded"}
    lots = await eventually(
        lambda: metrics_of(stack, "lots"),
        lambda s: (s.value("lotgate_consumer_pending_messages", **consumer) == 0
                   and s.value("lotgate_consumer_ack_pending_messages", **consumer) == 0),
        within=30, every=0.2)
    assert lots.value("lotgate_lot_decisions_total", status="QUARANTINE") >= 2
    assert lots.value("lotgate_lot_decisions_total", status="RELEASED") >= 1
    assert lots.value("lotgate_lot_decision_reasons_total", status="QUARANTINE",
                      reason="PURITY_MISSING") >= 1
    assert lots.value("lotgate_lot_decision_reasons_total", status="RELEASED") is None
    assert lots.value("lotgate_consumer_deliveries_total", **consumer) >= 3
    assert lots.value("lotgate_consumer_events_applied_total", **consumer) >= 3
    assert lots.value("lotgate_dead_letters") is not None
    # The audit chain: no verdict before a verification, then the verification's.
    assert lots.value("lotgate_audit_chain_intact") is None
    async with auth.channel(stack.address("lots"), "auditor", sub="auditor.max") as channel:
        verdict = await apb_grpc.AuditServiceStub(channel).VerifyAuditTrail(
            apb.VerifyAuditTrailRequest())
    assert verdict.ok
    verified = await metrics_of(stack, "lots")
    assert verified.value("lotgate_audit_chain_intact") == 1
    assert verified.value("lotgate_audit_verifications_total", result="intact") == 1
    for service in SERVICES:
        scraped = await metrics_of(stack, service)
        assert scraped.value("lotgate_ready") == 1, service
        assert scraped.value("lotgate_database_up") == 1, service
        assert {"lotgate_grpc_server_handled_total", "lotgate_outbox_backlog_events",
                "lotgate_outbox_oldest_event_age_seconds", "lotgate_dead_letters",
                "lotgate_outbox_published_total"} <= scraped.names(), service


async def test_open_watches_are_counted_while_they_last(stack: Stack, lotgate: Lotgate) -> None:
    watched = {"grpc_method": "WatchReleaseStatus"}
    before = (await metrics_of(stack, "lots")).value("lotgate_grpc_server_streams_open",
                                                     **watched) or 0
    # Every lot of a material no lot is of yet: the watch waits for one.
    call = lotgate.lots.WatchReleaseStatus(
        pb.WatchReleaseStatusRequest(material_code=ref("MAT")))
    await until_metric(stack, "lots", "lotgate_grpc_server_streams_open", before + 1,
                       **watched)
    call.cancel()
    scraped = await until_metric(stack, "lots", "lotgate_grpc_server_streams_open", before,
                                 **watched)
    assert scraped.value("lotgate_grpc_server_handled_total", **watched,
                         grpc_type="server_stream", grpc_code="CANCELLED") >= 1


async def test_an_event_that_cannot_be_verified_is_counted_as_a_dead_letter(
        stack: Stack) -> None:
    assert stack.nats is not None
    before = await metrics_of(stack, "lots")
    parked = {"subject": messaging.RESULT_RECORDED}
    kept = before.value("lotgate_dead_letters") or 0
    nc = await stack.nats.connect()
    try:
        # Not signed by the results service: the lots consumer must park it.
        await nc.jetstream().publish(messaging.RESULT_RECORDED, b"forged",
                                     headers={"Nats-Msg-Id": ref("forged")})
    finally:
        await nc.close()
    lots = await until_metric(stack, "lots", "lotgate_dead_letters", kept + 1)
    assert lots.value("lotgate_dead_letters_parked_total", **parked) == (
        before.value("lotgate_dead_letters_parked_total", **parked) or 0) + 1
    assert lots.value("lotgate_consumer_deliveries_total",
                      consumer="lots-result-recorded") >= 1


async def test_every_process_answers_liveness_readiness_and_its_service_names(
        stack: Stack) -> None:
    for service in SERVICES:
        async with grpc.aio.insecure_channel(stack.address(service)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "liveness", "readiness", SERVICE_NAMES[service]):
                reply = await eventually(
                    lambda n=name, h=health: h.Check(health_pb2.HealthCheckRequest(service=n)),
                    lambda r: r.status == health_pb2.HealthCheckResponse.SERVING)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, name)
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        port = stack.metrics_ports[service]
        assert (await get(port, "/livez"))[0] == 200
        assert (await get(port, "/readyz"))[0] == 200
        assert (await get(port, "/nothing"))[0] == 404
