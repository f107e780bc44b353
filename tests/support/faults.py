"""Fault injection around the real things: a JetStream context, an engine, units of work.

Each wrapper passes every call through to the real object (a real nats-server, a real
database) and fails only the calls a test arms it to fail, the way the real thing fails:
a publish whose acknowledgement never comes, a fetch the broker answers with 503, a
database connection refused or lost at commit. Nothing here fakes a success; a failed call
has no effect on the server (unless a test asks for the ack to be lost after the publish).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from sqlalchemy import Table
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import Clock
from shared.errors import Unavailable
from shared.uow import UnitOfWork, UnitOfWorkFactory


def connection_lost() -> OperationalError:
    """What the driver raises when the database goes away under an open transaction."""
    return OperationalError("COMMIT", None,
                            ConnectionResetError("server closed the connection unexpectedly"))


@dataclass
class Faults:
    """A count of calls still to fail, optionally only those a predicate picks."""

    remaining: int = 0
    when: Callable[..., bool] | None = None
    fired: int = 0

    def arm(self, times: int = 1, when: Callable[..., bool] | None = None) -> None:
        self.remaining, self.when = times, when

    def take(self, *args: Any) -> bool:
        """True (and one fewer to go) when this call is to fail."""
        if self.remaining <= 0 or (self.when is not None and not self.when(*args)):
            return False
        self.remaining -= 1
        self.fired += 1
        return True


@dataclass
class Publish:
    """One publish the relay attempted, and whether it reached the stream."""

    msg_id: str
    subject: str
    failed: bool


class FaultyJetStream:
    """A real JetStream context whose publish, subscribe and fetch can be made to fail.

    `publish_fails.arm(when=lambda msg_id: ...)` fails matching publishes with the
    timeout a lost acknowledgement gives (the message never reaches the stream);
    `lose_ack_after_publish` publishes for real and then raises the same timeout.
    `subscribe_fails` and `fetch_fails` raise the broker's 503 (no JetStream answering).
    """

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.publish_fails = Faults()
        self.lose_ack_after_publish = Faults()
        self.subscribe_fails = Faults()
        self.fetch_fails = Faults()
        self.publishes: list[Publish] = []
        self.subscribes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)

    async def publish(self, subject: str, payload: bytes = b"", *,
                      headers: dict[str, str] | None = None, **kw: Any) -> Any:
        msg_id = (headers or {}).get("Nats-Msg-Id", "")
        if self.publish_fails.take(msg_id):
            self.publishes.append(Publish(msg_id, subject, failed=True))
            raise nats.errors.TimeoutError
        ack = await self._js.publish(subject, payload, headers=headers, **kw)
        if self.lose_ack_after_publish.take(msg_id):
            self.publishes.append(Publish(msg_id, subject, failed=True))
            raise nats.errors.TimeoutError
        self.publishes.append(Publish(msg_id, subject, failed=False))
        return ack

    async def pull_subscribe(self, *args: Any, **kw: Any) -> Any:
        self.subscribes += 1
        if self.subscribe_fails.take():
            raise nats.js.errors.ServiceUnavailableError
        return _FaultyPullSubscription(await self._js.pull_subscribe(*args, **kw),
                                       self.fetch_fails)


class _FaultyPullSubscription:
    def __init__(self, psub: Any, fetch_fails: Faults) -> None:
        self._psub = psub
        self._fetch_fails = fetch_fails

    def __getattr__(self, name: str) -> Any:
        return getattr(self._psub, name)

    async def fetch(self, *args: Any, **kw: Any) -> Any:
        if self._fetch_fails.take():
            raise nats.js.errors.ServiceUnavailableError
        return await self._psub.fetch(*args, **kw)


class _Refused:
    """What `engine.connect()` / `engine.begin()` give while the database refuses connections:
    awaiting it or entering it raises."""

    def __await__(self) -> Any:
        raise connection_refused()
        yield  # pragma: no cover (makes this a generator, as __await__ must be)

    async def __aenter__(self) -> Any:
        raise connection_refused()

    async def __aexit__(self, *exc: object) -> None:
        return None


def connection_refused() -> OperationalError:
    return OperationalError("connect", None, ConnectionRefusedError("connection refused"))


class FaultyEngine:
    """A real AsyncEngine whose next connections can be refused (`refuse.arm(times)`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.refuse = Faults()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def connect(self) -> Any:
        return _Refused() if self.refuse.take() else self._engine.connect()

    def begin(self) -> Any:
        return _Refused() if self.refuse.take() else self._engine.begin()


class FaultyUnitOfWorkFactory(UnitOfWorkFactory):
    """Units of work on the real database whose start or commit can be made to fail.

    `commit_fails` raises a lost connection in `commit` before anything is committed:
    everything the handler did in the transaction is rolled back, as when the database
    dies between the handler and the commit. `begin_fails` refuses the unit of work
    (the database cannot be reached).
    """

    def __init__(self, engine: AsyncEngine, outbox: Table, clock: Clock) -> None:
        super().__init__(engine, outbox, clock)
        self.commit_fails = Faults()
        self.begin_fails = Faults()

    def __call__(self) -> UnitOfWork:
        return _FaultyUnitOfWork(self, self.engine, self.outbox, self.clock,
                                 self.on_events_committed, self.handoff)


class _FaultyUnitOfWork(UnitOfWork):
    def __init__(self, factory: FaultyUnitOfWorkFactory, *args: Any) -> None:
        super().__init__(*args)
        self._factory = factory

    async def __aenter__(self) -> UnitOfWork:
        if self._factory.begin_fails.take():
            raise Unavailable("the database cannot be reached; nothing was changed")
        return await super().__aenter__()

    async def commit(self) -> None:
        if self._factory.commit_fails.take():
            raise connection_lost()
        await super().commit()
