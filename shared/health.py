"""Health that means something: liveness apart from readiness, checked every few seconds.

grpc.health.v1 names a service answers (README, "Metrics, health and alerts"):
- "" and "liveness": SERVING while the process runs and takes calls (NOT_SERVING once it
  is stopping). A liveness probe restarts only a process that is stuck or gone.
- "readiness" and each of the service's own gRPC services (e.g.
  "lotgate.lots.v1.LotService"): SERVING only while the database answers `SELECT 1`, the
  NATS connection is up, and the consumers, the outbox relay and the background loops run.
  A readiness probe takes the replica out of its Service until it recovers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.aio import sleep_or_stop
from shared.db import make_engine
from shared.logs import get_logger
from shared.metrics import ServiceMetrics

log = get_logger(__name__)

LIVENESS = "liveness"
READINESS = "readiness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    """Sets the health servicer's statuses from a periodic check.

    `problems` returns why the service's messaging is not ready (empty when it is): the
    runtime knows its NATS connections and tasks.
    """

    def __init__(self, servicer: health.aio.HealthServicer, names: Sequence[str],
                 engine: AsyncEngine, problems: Callable[[], list[str]], *,
                 every_seconds: float, timeout_seconds: float,
                 metrics: ServiceMetrics | None = None) -> None:
        self._servicer = servicer
        self._names = [READINESS, *names]
        # PostgreSQL is probed on a connection of its own: a pool busy with calls is
        # load, not an outage, and must not take the replica out of its Service.
        self._own_engine = engine.dialect.name == "postgresql"
        self._engine = (make_engine(engine.url.render_as_string(hide_password=False),
                                    pool_size=1, statement_timeout_s=timeout_seconds)
                        if self._own_engine else engine)
        self._problems = problems
        self._every = every_seconds
        self._timeout = timeout_seconds
        self._metrics = metrics
        self._sqlite_file = _sqlite_file(engine)
        self.alive = False
        self.ready = False
        self.why_not: list[str] = ["not checked yet"]
        self._was_ready = False

    async def start(self) -> None:
        """Live at once; ready once the first check passes."""
        self.alive = True
        for name in ("", LIVENESS):
            await self._servicer.set(name, SERVING)
        await self.check()

    def stopping(self) -> None:
        self.alive = False
        self.ready = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                # Not ready: look again soon, so that a recovery shows within half a second.
                await sleep_or_stop(stop, self._every if self.ready else min(self._every, 0.5))
                if not stop.is_set():
                    await self.check()
        finally:
            if self._own_engine:
                await self._engine.dispose()

    async def check(self) -> bool:
        database = await self._database_problem()
        if self._metrics is not None:
            self._metrics.database_up.set(0 if database else 1)
        why_not = ([database] if database else []) + self._problems()
        ready = not why_not
        if ready != self.ready or _kinds(why_not) != _kinds(self.why_not):
            if ready:
                log.info("service_ready")
            elif self._was_ready:
                log.warning("service_not_ready", reasons=why_not)
            else:  # still starting (NATS may come later)
                log.info("service_not_ready_yet", reasons=why_not)
        self.ready, self.why_not = ready, why_not
        self._was_ready = self._was_ready or ready
        if self._metrics is not None:
            self._metrics.ready.set(1 if ready else 0)
        for name in self._names:
            await self._servicer.set(name, SERVING if ready else NOT_SERVING)
        return ready

    async def _database_problem(self) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                if self._sqlite_file is not None:
                    # The engine keeps its SQLite file open: a file moved away or made
                    # unreadable shows only when it is opened again.
                    await asyncio.to_thread(_open_sqlite, self._sqlite_file)
                async with self._engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                    await conn.rollback()
        except Exception as exc:
            return f"database unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        return ""


def _kinds(reasons: list[str]) -> list[str]:
    """The reasons without their details (an error's text changes from check to check)."""
    return [reason.split(":")[0] for reason in reasons]


def _sqlite_file(engine: AsyncEngine) -> Path | None:
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _open_sqlite(path: Path) -> None:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=1.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()


def messaging_problems(running: Any, tasks: Sequence[asyncio.Task[None]],
                       connections: Sequence[Any]) -> list[str]:
    """Why a running service's messaging is not ready (shared.runtime's parts)."""
    if running.failed:
        return [f"stopped: {running.failed}"]
    if running.stop_event.is_set():
        return ["stopping"]
    if not running.messaging_ready.is_set():
        return ["messaging not ready: NATS not reached or streams not set up yet"]
    problems = ["NATS connection is down" for nc in connections
                if not getattr(nc, "is_connected", True)]
    # The relay, the consumers and the background loops run until the service stops;
    # the one-shot messaging set-up is the only task that ends before.
    problems += [f"{task.get_name()} is not running" for task in tasks
                 if task.done() and task.get_name() != "messaging"]
    return problems
