"""Readiness follows the database and the broker; liveness does not.

A service in this process runs against a real database and a nats-server of the test's
own. The database is made unreachable (PostgreSQL: the connections behind a proxy are
reset and refused; SQLite: the file is moved away) and the broker is stopped; readiness
and the service's own health name must say NOT_SERVING meanwhile, and SERVING again once
each is back, while liveness stays SERVING throughout.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate_tools.stack import NatsServer, free_port
from shared import migrations
from shared.runtime import RunningService
from tests.support import auth
from tests.support.databases import Databases
from tests.support.scraping import get, scrape
from tests.support.services import ref, start_in_process
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READY_NAMES = ("readiness", "lotgate.lots.v1.LotService", "lotgate.audit.v1.AuditService")
LIVE_NAMES = ("", "liveness")


class Outage:
    """Makes the service's database unreachable and reachable again."""

    def __init__(self, databases: Databases, url: str) -> None:
        self._url = make_url(url)
        self.proxy: TcpProxy | None = None
        if databases.kind == "postgresql":
            self.proxy = TcpProxy(self._url.host or "127.0.0.1", self._url.port or 5432)

    async def start(self) -> str:
        """The URL the service is to use."""
        if self.proxy is None:
            return self._url.render_as_string(hide_password=False)
        await self.proxy.start()
        return self._url.set(host="127.0.0.1", port=self.proxy.port).render_as_string(
            hide_password=False)

    @property
    def _file(self) -> Path:
        return Path(self._url.database or "")

    async def begin(self) -> None:
        if self.proxy is not None:
            await self.proxy.cut()
        else:
            self._file.rename(self._file.with_suffix(".away"))

    async def end(self) -> None:
        if self.proxy is not None:
            await self.proxy.restore()
        else:
            self._file.with_suffix(".away").rename(self._file)


@pytest.fixture
async def broker(workdir: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(workdir / f"nats-{ref('health')}", port=free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def outage(databases: Databases) -> AsyncIterator[Outage]:
    made = Outage(databases, await databases.create("health"))
    yield made
    if made.proxy is not None:
        await made.proxy.cut()


@pytest.fixture
async def lots(databases: Databases, broker: NatsServer, outage: Outage
               ) -> AsyncIterator[RunningService]:
    url = await outage.start()
    await migrations.migrate("lots", url)  # as `lotgate migrate` does before a deployment
    running = await start_in_process(
        "lots", databases=databases, nats=broker, database_url=url,
        metrics_port=free_port(), health_check_seconds=0.2, health_check_timeout_seconds=1.0)
    yield running
    await running.stop()


async def statuses(running: RunningService) -> dict[str, int]:
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {name: (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
                for name in (*LIVE_NAMES, *READY_NAMES)}


async def until_ready(running: RunningService, ready: bool) -> dict[str, int]:
    wanted = {**dict.fromkeys(LIVE_NAMES, SERVING),
              **dict.fromkeys(READY_NAMES, SERVING if ready else NOT_SERVING)}
    return await eventually(lambda: statuses(running), lambda got: got == wanted,
                            within=30, every=0.1)


async def test_readiness_is_lost_while_the_database_is_unreachable_and_comes_back(
        lots: RunningService, outage: Outage) -> None:
    await until_ready(lots, True)
    assert (await get(lots.metrics_port, "/readyz"))[0] == 200

    await outage.begin()
    await until_ready(lots, False)
    assert (await get(lots.metrics_port, "/readyz"))[0] == 503
    assert (await get(lots.metrics_port, "/livez"))[0] == 200
    down = await scrape(lots.metrics_port)
    assert down.value("lotgate_database_up") == 0
    assert down.value("lotgate_ready") == 0

    await outage.end()
    await until_ready(lots, True)
    up = await scrape(lots.metrics_port)
    assert up.value("lotgate_database_up") == 1
    assert up.value("lotgate_ready") == 1
    # And the service answers from its database again.
    async with auth.channel(lots.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await pb_grpc.LotServiceStub(channel).GetLot(pb.GetLotRequest(lot_id=ref("LOT")))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_readiness_is_lost_while_the_broker_is_down_and_comes_back(
        lots: RunningService, broker: NatsServer) -> None:
    await until_ready(lots, True)
    await broker.stop()
    await until_ready(lots, False)
    await broker.start()
    await until_ready(lots, True)


async def test_a_taken_metrics_port_stops_the_start_naming_the_setting(
        databases: Databases, broker: NatsServer) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError, match="LOTGATE_METRICS_PORT"):
            await start_in_process("lots", databases=databases, nats=broker,
                                   metrics_port=taken.getsockname()[1])
    finally:
        taken.close()
