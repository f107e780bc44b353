"""What every service process runs: database, NATS, outbox relay, consumers, gRPC server.

A service's bootstrap describes its parts in a `ServiceParts`; `start_service` wires them
in an AsyncExitStack and `run_until_signal` waits for SIGTERM/SIGINT, then shuts down in
order: stop taking calls, let in-flight calls finish, stop consumers, flush the outbox,
drain NATS, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2
from nats.js import JetStreamContext
from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import messaging
from shared.clock import Clock, SystemClock
from shared.config import ServiceSettings, settings_for
from shared.db import create_schema, make_engine
from shared.grpc_server import build_server
from shared.inbox import EventConsumer, Subscription, dead_letter_table, inbox_table
from shared.logs import configure_logging, get_logger
from shared.outbox import OutboxRelay, outbox_table
from shared.uow import UnitOfWorkFactory

log = get_logger(__name__)


@dataclass
class Tables:
    metadata: MetaData
    outbox: Table
    inbox: Table
    dead_letters: Table


@dataclass
class ServiceParts:
    """What a service's bootstrap hands to the runtime."""

    tables: Tables
    # Adds the servicers to the server and returns their full service names.
    register: Callable[[grpc.aio.Server], Sequence[str]]
    subscriptions: Sequence[Subscription] = ()
    streams: Sequence[messaging.StreamSpec] = ()


@dataclass
class Infrastructure:
    settings: ServiceSettings
    clock: Clock
    engine: AsyncEngine
    js: JetStreamContext
    uow: UnitOfWorkFactory


@dataclass
class RunningService:
    name: str
    port: int
    server: grpc.aio.Server
    infra: Infrastructure
    relay: OutboxRelay
    consumers: list[EventConsumer]
    stop_event: asyncio.Event
    _stack: AsyncExitStack
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.infra.settings.grpc_host}:{self.port}"

    async def stop(self) -> None:
        await self._stack.aclose()


BuildParts = Callable[[Infrastructure], ServiceParts]


async def start_service(settings: ServiceSettings, build: BuildParts, *,
                        clock: Clock | None = None,
                        tables: Tables) -> RunningService:
    """Start one service; `await running.stop()` shuts it down gracefully."""
    clock = clock or SystemClock()
    stack = AsyncExitStack()
    try:
        engine = make_engine(settings.database_url, pool_size=settings.database_pool_size,
                             statement_timeout_s=settings.database_timeout_seconds)
        stack.push_async_callback(engine.dispose)
        await create_schema(engine, tables.metadata)

        nc = await messaging.connect(settings.nats_url, name=f"lotgate-{settings.service_name}")
        stack.push_async_callback(_close_nats, nc)
        js = nc.jetstream(timeout=5.0)

        uow = UnitOfWorkFactory(engine, tables.outbox, clock)
        infra = Infrastructure(settings, clock, engine, js, uow)
        parts = build(infra)
        for spec in parts.streams:
            await messaging.ensure_stream(
                js, spec, duplicate_window_s=settings.stream_duplicate_window_seconds,
                replicas=settings.stream_replicas)

        stop_event = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        relay = OutboxRelay(engine, tables.outbox, js, poll_seconds=settings.outbox_poll_seconds)
        uow.on_events_committed = relay.wake
        consumers = [
            EventConsumer(js, uow, tables.inbox, tables.dead_letters, sub,
                          max_attempts=settings.consumer_max_attempts,
                          ack_wait_s=settings.consumer_ack_wait_seconds)
            for sub in parts.subscriptions
        ]

        async def stop_background() -> None:
            stop_event.set()
            relay.wake()
            _, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            # Flush what the last calls committed, so a clean stop leaves nothing pending.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay.drain_once(), timeout=5)
                await asyncio.wait_for(relay.prune(), timeout=5)

        stack.push_async_callback(stop_background)
        tasks.append(asyncio.create_task(relay.run(stop_event), name="outbox-relay"))
        for consumer, sub in zip(consumers, parts.subscriptions, strict=True):
            tasks.append(asyncio.create_task(consumer.run(stop_event), name=sub.durable))

        server, port, health_servicer = build_server(
            host=settings.grpc_host, port=settings.grpc_port, register=parts.register)
        await server.start()

        async def stop_server() -> None:
            await health_servicer.enter_graceful_shutdown()
            await server.stop(settings.shutdown_grace_seconds)

        stack.push_async_callback(stop_server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("service_started", address=f"{settings.grpc_host}:{port}",
                 database=engine.dialect.name, nats=settings.nats_url)
        return RunningService(settings.service_name, port, server, infra, relay, consumers,
                              stop_event, stack, tasks)
    except BaseException:
        await stack.aclose()
        raise


async def _close_nats(nc: object) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), timeout=5)  # type: ignore[attr-defined]


def run_service(name: str, start: Callable[..., Awaitable[RunningService]]) -> None:
    """The `python -m services.<name>` entrypoint: settings, logs, run until a signal."""
    settings = settings_for(name)
    configure_logging(name, settings.log_level)
    run_until_signal(lambda: start(settings))


def run_until_signal(start: Callable[[], Awaitable[RunningService]]) -> None:
    """Run a service process: start it, wait for SIGTERM or SIGINT, stop it gracefully."""

    async def main() -> None:
        running = await start()
        # Everything built so far lives as long as the process: keep it out of the
        # collector's sweeps (a full collection over it took ~60 ms here).
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("service_stopping")
        await running.stop()
        log.info("service_stopped")

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def make_tables(metadata: MetaData) -> Tables:
    """The outbox, inbox and dead-letter tables every service has beside its own."""
    return Tables(metadata, outbox_table(metadata), inbox_table(metadata),
                  dead_letter_table(metadata))
