"""Prometheus metrics of one service process, served over HTTP on their own port.

Each running service has its own registry (`ServiceMetrics`), so several services in one
process (the integration tests) never count into each other. Code deep inside a service
(the lots decisions, the consumers, the dead letters) reaches its service's metrics
through a context variable the runtime binds for its tasks and the RPC interceptor binds
per call: the hooks below do nothing where no service is bound (unit tests).

What is measured (README, "Metrics, health and alerts"):
- every RPC by service, method, type and status code, with a latency histogram, and the
  server streams open (the lots watches);
- the outbox: events not yet published and the age of the oldest; events published;
- each durable consumer: messages pending and awaiting ack (JetStream consumer info),
  deliveries and redeliveries, events applied; dead letters parked and kept;
- the lots decisions by status, and the unmet reasons they name;
- the calls written together by group commit (results posts);
- the audit trail's verifications, and whether the last one found the chain intact;
- readiness and the database's reachability (shared.health).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.aio import sleep_or_stop
from shared.logs import get_logger

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from shared.clock import Clock
    from shared.inbox import Subscription
    from shared.uow import UnitOfWork

log = get_logger(__name__)

# No `_created` series beside each counter and histogram: they double what is scraped and
# no rule here uses them.
disable_created_metrics()

# Latency buckets (seconds) from a cached read (~1 ms) to a slow write under load.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Calls per shared transaction: from two to a full group (500 results).
GROUP_BUCKETS = (2, 4, 8, 16, 32, 64, 128, 256, 500)


class ServiceMetrics:
    """The metrics of one running service, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        rpc = ["grpc_service", "grpc_method", "grpc_type"]
        self.rpc_handled = Counter(
            "lotgate_grpc_server_handled", "RPCs completed, by method and status code.",
            [*rpc, "grpc_code"], registry=r)
        self.rpc_seconds = Histogram(
            "lotgate_grpc_server_handling_seconds",
            "Time from the call's arrival to its status (a stream: its whole life).",
            rpc, buckets=RPC_BUCKETS, registry=r)
        self.streams_open = Gauge(
            "lotgate_grpc_server_streams_open",
            "Server streams open now (lots: WatchLots, WatchLotStatus).",
            ["grpc_service", "grpc_method"], registry=r)
        self.outbox_backlog = Gauge(
            "lotgate_outbox_backlog_events",
            "Events committed to the outbox and not yet published and pruned.", registry=r)
        self.outbox_oldest_age = Gauge(
            "lotgate_outbox_oldest_event_age_seconds",
            "Age of the oldest event in the outbox (0 when it is empty).", registry=r)
        self.consumer_pending = Gauge(
            "lotgate_consumer_pending_messages",
            "Messages of the stream the durable consumer has not been given yet "
            "(JetStream num_pending): the consumer's lag.", ["consumer", "stream"], registry=r)
        self.consumer_ack_pending = Gauge(
            "lotgate_consumer_ack_pending_messages",
            "Messages given to the consumer and not acknowledged yet.",
            ["consumer", "stream"], registry=r)
        self.consumer_delivered = Counter(
            "lotgate_consumer_deliveries", "Messages fetched by the consumer.",
            ["consumer"], registry=r)
        self.consumer_redelivered = Counter(
            "lotgate_consumer_redeliveries",
            "Messages fetched again after a failed or unacknowledged delivery "
            "(num_delivered > 1).", ["consumer"], registry=r)
        self.dead_letters_parked = Counter(
            "lotgate_dead_letters_parked",
            "Messages parked in dead_letters (unverified, undecodable or failing).",
            ["subject"], registry=r)
        self.dead_letters = Gauge(
            "lotgate_dead_letters", "Messages kept in the dead_letters table now.", registry=r)
        self.decisions = Counter(
            "lotgate_lot_decisions", "Lot decisions recorded, by the status decided.",
            ["status"], registry=r)
        self.decision_reasons = Counter(
            "lotgate_lot_decision_reasons",
            "Unmet conditions named by the recorded decisions, by status and reason code.",
            ["status", "reason"], registry=r)
        self.group_commit_calls = Histogram(
            "lotgate_group_commit_calls",
            "Calls written together in one transaction (shared.group_commit), by group "
            "and whether it committed or its calls ran again alone.", ["group", "outcome"],
            buckets=GROUP_BUCKETS, registry=r)
        self.audit_verifications = Counter(
            "lotgate_audit_verifications", "Audit trail verifications, by result.",
            ["result"], registry=r)
        # None until a verification ran: no series then, so that no alert fires on it.
        self.audit_intact: bool | None = None
        self.ready = Gauge(
            "lotgate_ready", "1 when the service is ready (database reachable, consumers "
            "running), else 0.", registry=r)
        self.database_up = Gauge(
            "lotgate_database_up", "1 when the last health check reached the database.",
            registry=r)
        self._sources: list[Callable[[], Iterable[Any]]] = []
        r.register(_Callbacks(self._sources))
        self._sources.append(self._audit_intact)

    def _audit_intact(self) -> Iterable[Any]:
        family = GaugeMetricFamily(
            "lotgate_audit_chain_intact",
            "1 when the last verification found the audit chain intact, 0 when broken "
            "(absent before the first).")
        if self.audit_intact is not None:
            family.add_metric([], 1 if self.audit_intact else 0)
        yield family

    # --- what the hooks and the runtime call ----------------------------------------------

    def counted(self, name: str, documentation: str, labels: Sequence[str],
                values: Callable[[], Iterable[tuple[Sequence[str], float]]]) -> None:
        """A counter read at scrape time from counts kept elsewhere (relay, consumers)."""

        def collect() -> Iterable[Any]:
            family = CounterMetricFamily(name, documentation, labels=list(labels))
            for label_values, value in values():
                family.add_metric(list(label_values), value)
            yield family

        self._sources.append(collect)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        from shared.metrics_rpc import RpcMetrics

        return RpcMetrics(self)

    def bind(self) -> Token[ServiceMetrics | None]:
        """Make this the current service's metrics in this context (and tasks made in it)."""
        return current.set(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Callbacks:
    def __init__(self, sources: list[Callable[[], Iterable[Any]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Any]:
        for source in self._sources:
            yield from source()

    def describe(self) -> Iterable[Any]:
        return ()


current: ContextVar[ServiceMetrics | None] = ContextVar("lotgate_metrics", default=None)


# --- hooks called from the services' code (no-ops outside a running service) -------------

def count_decision(uow: UnitOfWork, status: Any, reasons: Iterable[Any]) -> None:
    """A lot decision recorded in `uow`: counted once the unit of work commits."""
    metrics = current.get()
    if metrics is None:
        return
    status_name = str(getattr(status, "value", status))
    codes = sorted({str(getattr(reason, "code", reason)) for reason in reasons})

    def count() -> None:
        metrics.decisions.labels(status_name).inc()
        for code in codes:
            metrics.decision_reasons.labels(status_name, code).inc()

    uow.after_commit(count)


def delivered(consumer: str, msgs: Sequence[Msg]) -> None:
    """A batch fetched by a durable consumer: deliveries, and which are redeliveries."""
    metrics = current.get()
    if metrics is None or not msgs:
        return
    metrics.consumer_delivered.labels(consumer).inc(len(msgs))
    again = 0
    for msg in msgs:
        with contextlib.suppress(Exception):
            if (msg.metadata.num_delivered or 1) > 1:
                again += 1
    if again:
        metrics.consumer_redelivered.labels(consumer).inc(again)


def parked(subject: str) -> None:
    """A message written to dead_letters."""
    metrics = current.get()
    if metrics is not None:
        metrics.dead_letters_parked.labels(subject).inc()


def group_committed(group: str, calls: int, *, committed: bool) -> None:
    """A group of `calls` of kind `group` written in one transaction: committed, or run
    again alone."""
    metrics = current.get()
    if metrics is not None:
        metrics.group_commit_calls.labels(group, "committed" if committed else "fell_back"
                                          ).observe(calls)


def audit_verified(intact: bool) -> None:
    """An audit trail verification finished: intact or broken."""
    metrics = current.get()
    if metrics is not None:
        metrics.audit_verifications.labels("intact" if intact else "broken").inc()
        metrics.audit_intact = intact


# --- what is sampled: the outbox, the dead letters, the consumers -------------------------

class Sampler:
    """Every few seconds: the outbox backlog and its oldest event, the dead letters kept,
    and each durable consumer's pending messages from JetStream.

    Read from the database and the broker, not from the relay: a relay that is stuck or
    not started (NATS down) is exactly when the backlog must show.
    """

    def __init__(self, metrics: ServiceMetrics, engine: AsyncEngine, outbox: Table,
                 dead_letters: Table, clock: Clock, *, every_seconds: float) -> None:
        self._metrics = metrics
        self._engine = engine
        self._outbox = outbox
        self._dead = dead_letters
        self._clock = clock
        self._every = every_seconds
        self._js: JetStreamContext | None = None
        self._consumers: list[tuple[str, str]] = []

    def messaging_ready(self, js: JetStreamContext, subscriptions: Iterable[Subscription]
                        ) -> None:
        self._js = js
        self._consumers = [(sub.stream, sub.durable) for sub in subscriptions]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            await sleep_or_stop(stop, self._every)

    async def sample(self) -> None:
        metrics = self._metrics
        try:
            async with self._engine.connect() as conn:
                backlog, oldest = (await conn.execute(
                    select(func.count(), func.min(self._outbox.c.created_at)))).one()
                kept = (await conn.execute(select(func.count()).select_from(self._dead))
                        ).scalar_one()
                await conn.rollback()
        except Exception as exc:
            log.debug("metrics_sample_failed", part="database", error=repr(exc))
        else:
            metrics.outbox_backlog.set(backlog)
            age = (self._clock.now() - oldest).total_seconds() if oldest is not None else 0.0
            metrics.outbox_oldest_age.set(max(age, 0.0))
            metrics.dead_letters.set(kept)
        if self._js is None:
            return
        for stream, durable in self._consumers:
            try:
                info = await self._js.consumer_info(stream, durable, timeout=2.0)
            except Exception as exc:
                log.debug("metrics_sample_failed", part="consumer", consumer=durable,
                          error=repr(exc))
                continue
            metrics.consumer_pending.labels(durable, stream).set(info.num_pending or 0)
            metrics.consumer_ack_pending.labels(durable, stream).set(info.num_ack_pending or 0)


# --- the HTTP endpoint ---------------------------------------------------------------------

class MetricsEndpoint:
    """GET /metrics (Prometheus text format), /livez and /readyz (200 or 503) on one port.

    A few lines of asyncio rather than a server thread: it lives and stops with the
    service's event loop, and its port is known once `start` returns (0 picks one).
    """

    def __init__(self, metrics: ServiceMetrics, *, host: str, port: int,
                 ready: Callable[[], bool], alive: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._ready = ready
        self._alive = alive
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self._host}:{self._port} "
                          f"(LOTGATE_METRICS_PORT): {exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = "200 OK", self._metrics.render(), CONTENT_TYPE_LATEST
            elif path in ("/livez", "/readyz"):
                ok = self._alive() if path == "/livez" else self._ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, kind = (b"ok\n" if ok else b"not ready\n"), "text/plain"
            else:
                status, body, kind = "404 Not Found", b"/metrics, /livez, /readyz\n", "text/plain"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (body if parts[:1] != ["HEAD"] else b""))
            await writer.drain()
        except Exception as exc:
            log.debug("metrics_request_failed", error=repr(exc))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def observe(metrics: ServiceMetrics, running: Any) -> None:
    """Counters kept by a running service's relay and consumers, read at scrape time."""

    def published() -> Iterable[tuple[Sequence[str], float]]:
        relay = running.relay
        return [((), relay.published)] if relay is not None else []

    def applied() -> Iterable[tuple[Sequence[str], float]]:
        return [((consumer._sub.durable,), consumer.applied) for consumer in running.consumers]

    metrics.counted("lotgate_outbox_published", "Events published by this process's relay.",
                    (), published)
    metrics.counted("lotgate_consumer_events_applied",
                    "New events applied by the consumer (duplicates not counted).",
                    ("consumer",), applied)
