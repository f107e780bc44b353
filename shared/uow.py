"""The unit of work: one database transaction that holds a state change and its events."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from sqlalchemy import Insert, MetaData, Table, insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import audit, tracing
from shared.clock import Clock
from shared.crash import crash_point
from shared.errors import Aborted, Unavailable
from shared.logs import request_context

T = TypeVar("T")


def new_event_id() -> str:
    return str(uuid.uuid4())


async def as_retry_after_conflict(attempt: Callable[[], Awaitable[T]], *,
                                  conflict: str) -> T:
    """Run a keyed create call; when its insert lost to a concurrent call with the same
    key (IntegrityError), run it once more in a new transaction.

    A retry can overlap its original (clients retry on timeouts): both find no record,
    both insert, one wins. The second run finds the winner's record and answers as any
    later retry does: the original answer for the same content, ALREADY_EXISTS for other
    content. Should it lose again, the caller is told `conflict` (ABORTED).
    """
    for _ in range(2):
        try:
            return await attempt()
        except IntegrityError as exc:
            lost = exc
    raise Aborted(conflict) from lost


class Handoff(Protocol):
    """Where committed events go at once (shared.outbox.OutboxRelay), besides the table."""

    @property
    def takes_handoff(self) -> bool: ...

    def handoff_insert(self, dialect_name: str) -> Any: ...

    def hand_off(self, rows: Sequence[Mapping[str, Any]], before: Mapping[str, Any]) -> None: ...


def _request_id() -> str | None:
    current = request_context.get()
    return current[0] if current else None


class UnitOfWork:
    """`async with uow:` ... `await uow.commit()`; leaving without commit rolls back.

    Events recorded with `emit` go to the outbox table in the same transaction, so a
    state change is never committed without its event, nor an event without its change.
    """

    def __init__(self, engine: AsyncEngine, outbox: Table, clock: Clock,
                 on_events_committed: Callable[[], None] | None = None,
                 handoff: Handoff | None = None) -> None:
        self._engine = engine
        self._outbox = outbox
        self.clock = clock
        self._on_events_committed = on_events_committed
        self._handoff = handoff
        self._conn: AsyncConnection | None = None
        self._events: list[dict[str, Any]] = []
        self._after_commit: list[Callable[[], None]] = []
        self.committed = False
        # Changes of GMP records noted by `shared.audit.record`, written at commit.
        self.audit_entries: list[audit.Pending] = []
        # Who changes records when no caller does (events, schedules).
        self.system_actor = "lotgate:system"

    @property
    def metadata(self) -> MetaData:
        """The service's metadata (its tables, its audited record types)."""
        return self._outbox.metadata

    @property
    def conn(self) -> AsyncConnection:
        assert self._conn is not None, "use the unit of work inside 'async with'"
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        try:
            self._conn = await self._engine.connect()
            await self._conn.begin()
        except (OperationalError, DBAPIError, OSError) as exc:
            if self._conn is not None:
                await self._conn.close()
            raise Unavailable("the database cannot be reached; nothing was changed") from exc
        self._events = []
        self._after_commit = []
        self.audit_entries = []
        self.committed = False
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self.committed:
                await conn.rollback()
        finally:
            await conn.close()

    def emit(self, subject: str, aggregate_id: str, event: Message) -> None:
        """Record an event; its `event_id` field must be set (it becomes the Nats-Msg-Id)."""
        event_id = event.event_id  # type: ignore[attr-defined]
        if not event_id:
            raise ValueError("event without event_id")
        self._events.append({
            "event_id": event_id,
            "subject": subject,
            "aggregate_id": aggregate_id,
            "event_type": event.DESCRIPTOR.full_name,
            "payload": event.SerializeToString(deterministic=True),
            "created_at": self.clock.now(),
            "trace_context": tracing.carrier(_request_id()),
        })

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction has committed (never on rollback)."""
        self._after_commit.append(callback)

    async def commit(self) -> None:
        """Write the audit entries and the events, and commit.

        Statements: the audit flush's reads and the chain's lock and head
        (shared.audit.flush), an INSERT of the entries, an INSERT of the events (returning
        what the relay needs when it takes hand-offs, shared.outbox), COMMIT. On
        PostgreSQL a commit of one entry and one event (a lone call's) inserts both in one
        statement: the entry's INSERT is a WITH of the event's (shared.audit_chain.append).
        """
        handoff = self._handoff if self._events and self._handoff is not None \
            and self._handoff.takes_handoff else None
        insert_events = handoff.handoff_insert(self.conn.dialect.name) \
            if handoff is not None else _insert(self._outbox)
        # A single parameter set skips the executemany path (measured ~30% cheaper).
        events: Any = self._events[0] if len(self._events) == 1 else self._events
        if self.audit_entries:
            # Last, so that each entry holds the row as this transaction leaves it.
            along = await audit.flush(
                self.conn, self._outbox.metadata, self.audit_entries, self.clock.now(),
                along=insert_events if len(self._events) == 1 else None)
            self.audit_entries = []
            if along is not None:
                insert_events, events = along.statement, {**events, **along.parameters}
        before: dict[str, Any] = {}
        if handoff is not None:
            # The relay publishes these rows without reading them back; what each row's
            # aggregate still has in the outbox before it keeps them in order.
            before = {row[0]: row[1] for row in await self.conn.execute(insert_events, events)}
        elif self._events:
            await self.conn.execute(insert_events, events)
        await self.conn.commit()
        self.committed = True
        crash_point("after_commit_before_ack")
        for callback in self._after_commit:
            callback()
        if handoff is not None:
            handoff.hand_off(self._events, before)
        elif self._events and self._on_events_committed is not None:
            self._on_events_committed()


@functools.cache
def _insert(outbox: Table) -> Insert:
    """The outbox's plain insert, built once per table (and so is the audit entry's
    statement that goes along with it)."""
    return insert(outbox)


class UnitOfWorkFactory:
    """Makes units of work for one service's database and outbox."""

    def __init__(self, engine: AsyncEngine, outbox: Table, clock: Clock) -> None:
        self.engine = engine
        self.outbox = outbox
        self.clock = clock
        self.on_events_committed: Callable[[], None] | None = None
        # The relay, once it runs: committed events are handed to it (Handoff).
        self.handoff: Handoff | None = None
        self.system_actor = "lotgate:system"

    def __call__(self) -> UnitOfWork:
        uow = UnitOfWork(self.engine, self.outbox, self.clock, self.on_events_committed,
                         self.handoff)
        uow.system_actor = self.system_actor
        return uow
