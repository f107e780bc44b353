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
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import audit_anchor, esign_interceptor, esign_signers, messaging, migrations
from shared import metrics as service_metrics
from shared.aio import sleep_or_stop
from shared.audit_api import AuditApi
from shared.audit_api import add_to_server as add_audit_api
from shared.auth import Gate, gate_from
from shared.clock import Clock, FileClock, SystemClock
from shared.config import ServiceSettings, nats_password, settings_for
from shared.db import make_engine
from shared.grpc_server import build_server
from shared.health import HealthMonitor, messaging_problems
from shared.inbox import EventConsumer, EventGate, Subscription
from shared.inbox_retention import InboxPruner
from shared.logs import configure_logging, get_logger
from shared.outbox import OutboxRelay
from shared.signing import EventSigner, EventVerifier, PublicKeyFile, SignedHere
from shared.tables import Tables
from shared.tracing import configure_tracing
from shared.uow import UnitOfWorkFactory

log = get_logger(__name__)


@dataclass
class ServiceParts:
    """What a service's bootstrap hands to the runtime."""

    tables: Tables
    # Adds the servicers to the server and returns their full service names.
    register: Callable[[grpc.aio.Server], Sequence[str]]
    subscriptions: Sequence[Subscription] = ()
    streams: Sequence[messaging.StreamSpec] = ()
    # Loops that run beside the server until the stop event is set (schedulers).
    background: Sequence[Callable[[asyncio.Event], Awaitable[None]]] = ()
    # Called with the JetStream context once messaging is ready (change feeds).
    on_messaging_ready: Sequence[Callable[[JetStreamContext], None]] = ()
    # Called when the service starts to stop, before it waits for in-flight calls: ends
    # long-lived streams, which would otherwise hold the shutdown for its whole grace.
    on_stopping: Sequence[Callable[[], None]] = ()


@dataclass
class Infrastructure:
    settings: ServiceSettings
    clock: Clock
    engine: AsyncEngine
    uow: UnitOfWorkFactory
    # Checks every consumed event's signature (shared.signing) and parks the rest.
    gate: EventGate | None = None


@dataclass
class RunningService:
    name: str
    port: int
    server: grpc.aio.Server
    infra: Infrastructure
    stop_event: asyncio.Event
    # Set once NATS is connected, the streams are safe, and the relay and consumers run.
    messaging_ready: asyncio.Event
    _stack: AsyncExitStack
    relay: OutboxRelay | None = None
    consumers: list[EventConsumer] = field(default_factory=list)
    # Why the service stopped itself, if it did.
    failed: str | None = None
    # Its Prometheus metrics (shared.metrics) and their HTTP port (0: not served).
    metrics: service_metrics.ServiceMetrics | None = None
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.infra.settings.grpc_host}:{self.port}"

    async def stop(self) -> None:
        await self._stack.aclose()


BuildParts = Callable[[Infrastructure], ServiceParts]


def tls_for(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC port, if configured; mutual TLS with a client CA."""
    if not settings.grpc_tls_cert_file and not settings.grpc_tls_client_ca_file:
        return None
    if not settings.grpc_tls_cert_file or not settings.grpc_tls_key_file:
        raise ValueError("TLS needs LOTGATE_GRPC_TLS_CERT_FILE and LOTGATE_GRPC_TLS_KEY_FILE")
    client_ca = (Path(settings.grpc_tls_client_ca_file).read_bytes()
                 if settings.grpc_tls_client_ca_file else None)
    return grpc.ssl_server_credentials(
        [(Path(settings.grpc_tls_key_file).read_bytes(),
          Path(settings.grpc_tls_cert_file).read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


def gate_for(settings: ServiceSettings) -> Gate:
    """The service's gate: no service answers calls without authenticating them."""
    return gate_from(jwks_file=settings.auth_jwks_file, jwks_url=settings.auth_jwks_url,
                     issuer=settings.auth_issuer, audience=settings.auth_audience,
                     leeway_seconds=settings.auth_leeway_seconds)


async def start_service(settings: ServiceSettings, build: BuildParts, *,
                        clock: Clock | None = None,
                        tables: Tables) -> RunningService:
    """Start one service; `await running.stop()` shuts it down gracefully.

    The gRPC server answers as soon as the database is ready. NATS may come later: the
    outbox keeps every event until the relay, started once NATS answers, publishes it.
    """
    if clock is None and settings.clock_file:
        # Tests only (see FileClock): say so loudly wherever it is on.
        clock = FileClock(settings.clock_file)
        log.warning("test_clock_in_use", alert=True, clock_file=settings.clock_file,
                    detail="the clock is test-controlled (LOTGATE_CLOCK_FILE); never in "
                           "production")
    clock = clock or SystemClock()
    stack = AsyncExitStack()
    metrics = service_metrics.ServiceMetrics(settings.service_name)
    metrics_bound = metrics.bind()  # for the tasks started below (consumers, loops)
    try:
        engine = make_engine(settings.database_url, pool_size=settings.database_pool_size,
                             statement_timeout_s=settings.database_timeout_seconds)
        stack.push_async_callback(engine.dispose)
        # The schema is migrated as a step of its own (`lotgate migrate`); a service only
        # checks that its database is at the head revision this build needs.
        revision = await migrations.require_head(engine, settings.service_name)
        log.info("schema_at_head", revision=revision)

        uow = UnitOfWorkFactory(engine, tables.outbox, clock)
        uow.system_actor = f"lotgate:{settings.service_name}"
        signer, verifier = _event_keys(settings)
        infra = Infrastructure(settings, clock, engine, uow,
                               EventGate(verifier, uow, tables.dead_letters))
        parts = build(infra)
        stop_event = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        connections: list[object] = []

        name = settings.service_name
        audit_api = AuditApi(name, engine, tables.metadata,
                             publish=audit_anchor.publisher(uow, tables.metadata, name))
        # Every service publishes its chain head; some keep other services' heads.
        subscriptions = [*parts.subscriptions,
                         *audit_anchor.subscriptions(name, tables.metadata)]
        streams = list(dict.fromkeys([*parts.streams, *audit_anchor.streams(name)]))
        # Electronic signatures: every service keeps its own signers (shared.esign_signers).
        signers = esign_signers.SignerStore(uow, max_failures=settings.esign_max_failures)

        async def anchors(stop: asyncio.Event) -> None:
            await audit_anchor.run_anchors(uow, tables.metadata, name, stop,
                                           every_seconds=settings.audit_anchor_seconds)

        registered: list[str] = []

        def register(grpc_server: grpc.aio.Server) -> list[str]:
            # Every service answers for its own audit trail and its own signers.
            registered[:] = [*parts.register(grpc_server),
                             *add_audit_api(grpc_server, audit_api),
                             esign_signers.register(grpc_server, signers)]
            return registered

        server, port, health_servicer = build_server(
            host=settings.grpc_host, port=settings.grpc_port, register=register,
            gate=gate_for(settings), reflection_on=settings.grpc_reflection,
            tls=tls_for(settings),
            interceptors=[esign_interceptor.SignatureInterceptor(signers)],
            outer_interceptors=[metrics.interceptor()])
        running = RunningService(settings.service_name, port, server, infra, stop_event,
                                 asyncio.Event(), stack, metrics=metrics)
        sampler = service_metrics.Sampler(
            metrics, engine, tables.outbox, tables.dead_letters, clock,
            every_seconds=settings.metrics_sample_seconds)

        async def start_messaging() -> None:
            nc = await messaging.connect(settings.nats_url,
                                         name=f"lotgate-{settings.service_name}",
                                         user=settings.nats_user,
                                         password=nats_password(settings))
            connections.append(nc)
            js = nc.jetstream(timeout=5.0)
            await _retrying(lambda: _ensure_streams(js, streams, settings), stop_event)
            relay = OutboxRelay(engine, tables.outbox, js, name=settings.service_name,
                                poll_seconds=settings.outbox_poll_seconds, signer=signer)
            uow.on_events_committed = relay.wake
            uow.handoff = relay
            running.relay = relay
            tasks.append(asyncio.create_task(relay.run(stop_event), name="outbox-relay"))
            for sub in subscriptions:
                consumer = EventConsumer(js, uow, tables.inbox, tables.dead_letters, sub,
                                         max_attempts=settings.consumer_max_attempts,
                                         ack_wait_s=settings.consumer_ack_wait_seconds,
                                         gate=infra.gate)
                running.consumers.append(consumer)
                tasks.append(asyncio.create_task(consumer.run(stop_event), name=sub.durable))
            for ready in parts.on_messaging_ready:
                ready(js)
            sampler.messaging_ready(js, subscriptions)
            running.messaging_ready.set()
            log.info("messaging_ready", nats=settings.nats_url)

        async def stop_background() -> None:
            stop_event.set()
            if running.relay is not None:
                running.relay.wake()
            _, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            # Flush what the last calls committed, so a clean stop leaves nothing pending.
            if running.relay is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running.relay.drain_once(), timeout=5)
                    await asyncio.wait_for(running.relay.prune(), timeout=5)
            for nc in connections:
                await _close_nats(nc)

        stack.push_async_callback(stop_background)
        tasks.append(asyncio.create_task(_or_stop(start_messaging(), running),
                                         name="messaging"))
        for loop in [*parts.background, anchors]:
            tasks.append(asyncio.create_task(loop(stop_event), name=loop.__name__))
        pruner = InboxPruner(engine, tables.inbox, clock,
                             retention_s=settings.inbox_retention_seconds,
                             every_seconds=settings.inbox_prune_seconds)
        tasks.append(asyncio.create_task(pruner.run(stop_event), name="inbox-retention"))

        await server.start()
        monitor = HealthMonitor(
            health_servicer, registered, engine,
            lambda: messaging_problems(running, tasks, connections),
            every_seconds=settings.health_check_seconds,
            timeout_seconds=settings.health_check_timeout_seconds, metrics=metrics)

        async def stop_server() -> None:
            monitor.stopping()
            for stopping in parts.on_stopping:
                stopping()
            await health_servicer.enter_graceful_shutdown()
            await server.stop(settings.shutdown_grace_seconds)

        stack.push_async_callback(stop_server)
        if settings.metrics_port:
            service_metrics.observe(metrics, running)
            endpoint = service_metrics.MetricsEndpoint(
                metrics, host=settings.metrics_host or settings.grpc_host,
                port=settings.metrics_port, ready=lambda: monitor.ready,
                alive=lambda: monitor.alive)
            await endpoint.start()
            stack.push_async_callback(endpoint.stop)
            running.metrics_port = endpoint.port
            log.info("metrics_serving", port=endpoint.port)
            tasks.append(asyncio.create_task(sampler.run(stop_event), name="metrics"))
        await monitor.start()
        tasks.append(asyncio.create_task(monitor.run(stop_event), name="health"))
        log.info("service_started", address=f"{settings.grpc_host}:{port}",
                 database=engine.dialect.name)
        return running
    except BaseException:
        await stack.aclose()
        raise
    finally:
        service_metrics.current.reset(metrics_bound)


def _event_keys(settings: ServiceSettings) -> tuple[EventSigner, EventVerifier]:
    """This service's signing key and the producers' public keys; both are required, so
    that a service never publishes an unsigned event nor applies an unverified one."""
    missing = [name for name, value in (("LOTGATE_SIGNING_KEY_FILE", settings.signing_key_file),
                                        ("LOTGATE_EVENT_PUBLIC_KEYS_FILE",
                                         settings.event_public_keys_file)) if not value]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not set: every event is signed and "
                           "verified (`lotgate run` writes development keys to "
                           ".lotgate/secrets/)")
    signed_here = SignedHere()
    signer = EventSigner.from_file(settings.service_name, settings.signing_key_file,
                                   signed_here=signed_here)
    verifier = EventVerifier(PublicKeyFile(settings.event_public_keys_file),
                             signed_here=signed_here)
    log.info("event_signing_ready", key_id=signer.key_id)
    return signer, verifier


async def _ensure_streams(js: JetStreamContext, specs: Sequence[messaging.StreamSpec],
                          settings: ServiceSettings) -> None:
    for spec in specs:
        await messaging.ensure_stream(
            js, spec, duplicate_window_s=settings.stream_duplicate_window_seconds,
            replicas=settings.stream_replicas)


async def _retrying(step: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run `step` until it succeeds; a stream that cannot be made safe is not retried."""
    delay = 0.2
    while True:
        try:
            return await step()
        except messaging.UnsafeStreamError:
            raise
        except Exception as exc:
            if stop.is_set():
                raise
            log.warning("messaging_setup_retry", error=repr(exc), retry_in=delay)
            await sleep_or_stop(stop, delay)
            delay = min(delay * 2, 5.0)


async def _or_stop(work: Awaitable[None], running: RunningService) -> None:
    """Stop the service (and its process) when its streams would lose events."""
    try:
        await work
    except messaging.UnsafeStreamError as exc:
        log.error("unsafe_stream", alert=True, error=str(exc))
        running.failed = str(exc)
        running.stop_event.set()


async def _close_nats(nc: object) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), timeout=5)  # type: ignore[attr-defined]


def run_service(name: str, start: Callable[..., Awaitable[RunningService]]) -> None:
    """The `python -m services.<name>` entrypoint: settings, logs, run until a signal."""
    settings = settings_for(name)
    configure_logging(name, settings.log_level)
    provider = configure_tracing(name, endpoint=settings.otlp_endpoint, environ=os.environ)
    try:
        run_until_signal(lambda: start(settings))
    finally:
        if provider is not None:
            provider.shutdown()  # exports the spans still batched


def run_until_signal(start: Callable[[], Awaitable[RunningService]]) -> None:
    """Run a service process: start it, wait for SIGTERM or SIGINT, stop it gracefully."""

    async def main() -> None:
        try:
            running = await start()
        except migrations.SchemaNotAtHead as behind:
            log.error("schema_not_at_head", alert=True, database_revision=behind.current,
                      head=behind.head, detail=str(behind))
            raise SystemExit(migrations.EXIT_SCHEMA_NOT_AT_HEAD) from None
        # Everything built so far lives as long as the process: keep it out of the
        # collector's sweeps (a full collection over it took ~60 ms here).
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        signalled = asyncio.ensure_future(stop.wait())
        stopped_itself = asyncio.ensure_future(running.stop_event.wait())
        await asyncio.wait({signalled, stopped_itself}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        stopped_itself.cancel()
        log.info("service_stopping")
        await running.stop()
        log.info("service_stopped")
        if running.failed:
            raise SystemExit(f"stopped: {running.failed}")

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
