"""Idempotent event consumers: a durable JetStream pull consumer and an inbox table.

Each batch of messages is applied in one unit of work that also records the event ids
in the inbox; the messages are acked only after that commit. A redelivered or
re-published event finds its id in the inbox and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import Table, insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared import tracing
from shared.aio import sleep_or_stop
from shared.db import insert_ignoring_duplicates
from shared.errors import Unavailable
from shared.logs import get_logger
from shared.metrics import delivered, parked
from shared.signing import EventVerifier, Unverified
from shared.uow import UnitOfWork, UnitOfWorkFactory

log = get_logger(__name__)

Handler = Callable[[UnitOfWork, Any], Awaitable[None]]
BatchHandler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """One durable consumer: which stream and subject, which message type, which handler.

    `handler` applies one event; `batch_handler`, when given instead, applies all new
    events of a fetched batch at once (fewer round trips on a busy consumer).
    """

    stream: str
    subject: str
    durable: str
    message_type: type[Message]
    handler: Handler | None = None
    batch_handler: BatchHandler | None = None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, Unavailable | OSError | asyncio.TimeoutError | InterfaceError):
        return True
    if isinstance(exc, OperationalError | DBAPIError):
        text = str(exc).lower()
        # Serialization failures and deadlocks are retried like outages.
        return exc.connection_invalidated or any(
            word in text for word in ("connect", "deadlock", "serializ", "locked", "timeout",
                                      "terminat", "shutdown"))
    return False


class EventGate:
    """Lets in only events signed by their subject's owner (shared.signing); parks the rest.

    Checked before anything is decoded: an unsigned, wrongly signed or wrongly attributed
    event changes nothing, whatever its payload says.
    """

    def __init__(self, verifier: EventVerifier, uow_factory: UnitOfWorkFactory,
                 dead_letters: Table) -> None:
        self._verifier = verifier
        self._uow = uow_factory
        self._dead = dead_letters
        self.rejected = 0

    def refusal(self, msg: Msg) -> str | None:
        """None when `msg` is verified, else why it is not (the dead letter's reason)."""
        try:
            self._verifier.verify(msg.subject, msg.headers, msg.data or b"")
        except Unverified as exc:
            self.rejected += 1
            return f"unverified: {exc}"
        return None

    async def park(self, msg: Msg, reason: str) -> bool:
        """Write `msg` to dead_letters with an alert; False when the database refused."""
        return await park_message(self._uow, self._dead, msg, reason)


async def park_message(uow_factory: UnitOfWorkFactory, dead_letters: Table, msg: Msg,
                       reason: str) -> bool:
    """Keep a message aside in dead_letters and alert; False when it could not be written."""
    event_id = (msg.headers or {}).get("Nats-Msg-Id", "") or "unknown"
    try:
        async with uow_factory() as uow:
            await uow.conn.execute(insert(dead_letters).values(
                event_id=event_id[:200], subject=msg.subject[:200], payload=msg.data or b"",
                error=reason[:4000], parked_at=uow.clock.now()))
            await uow.commit()
    except Exception as exc:
        log.error("dead_letter_write_failed", event_id=event_id, error=repr(exc))
        return False
    log.error("event_parked", alert=True, event_id=event_id, subject=msg.subject,
              reason=reason)
    parked(msg.subject)  # pragma: no mutate (metrics, tests/e2e/test_metrics.py)
    return True


class EventConsumer:
    def __init__(self, js: JetStreamContext, uow_factory: UnitOfWorkFactory, inbox: Table,
                 dead_letters: Table, subscription: Subscription, *, batch_size: int = 100,
                 max_attempts: int = 5, ack_wait_s: float = 10.0,
                 gate: EventGate | None = None) -> None:
        self._js = js
        self._uow = uow_factory
        self._inbox = inbox
        self._dead = dead_letters
        self._sub = subscription
        # Every service runs with a gate; None only where a test drives the consumer.
        self._gate = gate
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self._ack_wait_s = ack_wait_s
        self.applied = 0
        self.parked = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and apply until `stop` is set; re-subscribe after any broker trouble."""
        sub = self._sub
        while not stop.is_set():
            try:
                psub = await self._js.pull_subscribe(
                    sub.subject, durable=sub.durable, stream=sub.stream,
                    config=ConsumerConfig(
                        durable_name=sub.durable,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_wait=self._ack_wait_s,
                        # No more in flight than one batch, which bounds the work a
                        # redelivery repeats. It does not keep events in order: after a
                        # failed batch JetStream may hand out later events before the
                        # redelivery, so every handler is independent of arrival order
                        # (tests/integration/test_arrival_order.py).
                        max_ack_pending=self._batch_size,
                        filter_subject=sub.subject,
                    ))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consumer_subscribe_retry", durable=sub.durable, error=repr(exc))
                await sleep_or_stop(stop, 1.0)
                continue
            try:
                await self._fetch_loop(psub, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("consumer_restart", durable=sub.durable, error=repr(exc))
                await sleep_or_stop(stop, 0.5)
            finally:
                try:
                    await psub.unsubscribe()
                except Exception:  # the connection may be gone already
                    pass

    async def _fetch_loop(self, psub: JetStreamContext.PullSubscription,
                          stop: asyncio.Event) -> None:
        idle_errors = 0
        while not stop.is_set():
            try:
                # Wait for one message, then take whatever else is there already. A single
                # fetch of a whole batch would, once idle, hold a lone message back until
                # the batch fills or the fetch times out (nats-py waits for the rest).
                msgs = await psub.fetch(1, timeout=1.0)
                waiting = _pending_after(msgs[-1])
                more = self._batch_size - 1 if waiting is None else min(
                    self._batch_size - 1, waiting)
                if more > 0:
                    with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                        msgs += await psub.fetch(more, timeout=_REST_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.NoRespondersError,
                    nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError) as exc:
                idle_errors += 1
                if idle_errors > 3:
                    raise RuntimeError(f"pull consumer keeps failing: {exc!r}") from exc
                await sleep_or_stop(stop, 0.5)
                continue
            idle_errors = 0
            await self.process(msgs)

    async def process(self, msgs: list[Msg]) -> None:
        """Apply a fetched batch: all in one transaction, else one by one."""
        delivered(self._sub.durable, msgs)  # pragma: no mutate (metrics, tests/e2e/test_metrics.py)
        decoded: list[tuple[Msg, Message]] = []
        for msg in msgs:
            refusal = self._gate.refusal(msg) if self._gate is not None else None
            if refusal is not None:
                await self._park(msg, refusal)
                continue
            try:
                event = self._sub.message_type.FromString(msg.data)
                if not getattr(event, "event_id", ""):
                    raise DecodeError("event has no event_id")
                decoded.append((msg, event))
            except DecodeError as exc:
                await self._park(msg, f"undecodable {self._sub.message_type.__name__}: {exc}")
        if not decoded:
            return
        try:
            await self._apply(decoded)
        except Exception as exc:
            if len(decoded) == 1 or _is_transient(exc):
                await self._retry_later(decoded, exc)
                return
            for pair in decoded:  # find the bad one; apply and ack the others
                try:
                    await self._apply([pair])
                except Exception as one_exc:
                    await self._retry_later([pair], one_exc)
                else:
                    await _ack(pair[0])
            return
        for msg, _ in decoded:
            await _ack(msg)

    async def _apply(self, batch: list[tuple[Msg, Message]]) -> None:
        async with self._uow() as uow:
            now = uow.clock.now()
            # Claim the event ids in the inbox; only the ones not claimed before come back.
            fresh = set((await uow.conn.execute(
                self._claim_statement(uow.conn.dialect.name),
                [{"event_id": event.event_id, "subject": msg.subject,  # type: ignore[attr-defined]
                  "processed_at": now} for msg, event in batch])).scalars())
            taken = []
            for msg, event in batch:
                event_id = event.event_id  # type: ignore[attr-defined]
                if event_id not in fresh:
                    continue
                fresh.discard(event_id)  # a copy later in the same batch is a duplicate too
                taken.append((msg, event))
            events = [event for _, event in taken]
            if self._sub.handler is not None:
                for msg, event in taken:
                    with traced_message(self._sub.durable, [(msg, event)]):
                        await self._sub.handler(uow, event)
                await uow.commit()
            elif taken and self._sub.batch_handler is not None:
                # The commit inside the span: what runs after it (watchers) is traced too.
                with traced_message(self._sub.durable, taken):
                    await self._sub.batch_handler(uow, events)
                    await uow.commit()
            else:
                await uow.commit()
        self.applied += len(events)

    @functools.cache  # noqa: B019 (one consumer per subscription, kept for the process)
    def _claim_statement(self, dialect_name: str) -> Any:
        return insert_ignoring_duplicates(self._inbox, dialect_name).returning(
            self._inbox.c.event_id)

    async def _retry_later(self, batch: list[tuple[Msg, Message]], exc: Exception) -> None:
        for msg, event in batch:
            attempts = _deliveries(msg)
            if not _is_transient(exc) and attempts >= self._max_attempts:
                await self._park(msg, f"failed {attempts} times: {exc!r}")
                continue
            log.warning("event_retry", event_id=getattr(event, "event_id", ""),
                        subject=msg.subject, attempt=attempts, error=repr(exc))
            try:
                await msg.nak(delay=min(0.2 * 2 ** attempts, 10.0))
            except Exception:
                pass  # redelivered after ack_wait anyway

    async def _park(self, msg: Msg, reason: str) -> None:
        """Keep a poison message aside, alert, and stop its redelivery."""
        if not await park_message(self._uow, self._dead, msg, reason):
            try:
                await msg.nak(delay=5.0)
            except Exception:
                pass
            return
        self.parked += 1
        try:
            await msg.term()
        except Exception:
            pass


_IDS_ON_A_LINE = 20


@contextlib.contextmanager
def traced_message(durable: str, batch: list[tuple[Msg, Any]]) -> Iterator[None]:
    """A consumer span continuing the events' trace, with the event id(s) and the
    request id that caused them on every log line the handler writes."""
    ids = [event.event_id for _, event in batch]
    requests = list(dict.fromkeys(r for r in (tracing.request_id_of(m.headers)
                                              for m, _ in batch) if r))
    bound: dict[str, Any] = {"subject": batch[0][0].subject}
    if len(ids) == 1:
        bound["event_id"] = ids[0]
    else:  # the first ones (a line stays short), and how many
        bound["event_ids"] = ids[:_IDS_ON_A_LINE]
        bound["events"] = len(ids)
    if len(requests) == 1:
        bound["request_id"] = requests[0]
    elif requests:
        bound["request_ids"] = requests
    with tracing.consumer_span(durable, [(msg.subject, event.event_id, msg.headers)
                                         for msg, event in batch]), \
            structlog.contextvars.bound_contextvars(**bound):
        yield


# How long the fetch of the messages already waiting may take. They are there, so the
# server sends them at once; the bound only matters should they have gone meanwhile.
_REST_WAIT_S = 0.002


def _pending_after(msg: Msg) -> int | None:
    """How many more messages the consumer had for us when the broker sent `msg`.

    A lone message is applied at once: a fetch of "whatever else is there" would hold it
    back until that fetch expires (the server waits for at least one message when the
    pull request has an expiry, and nats-py always gives one). Messages that arrive after
    `msg` was sent are taken by the next fetch, without delay either.
    """
    try:
        return int(msg.metadata.num_pending or 0)
    except Exception:  # no JetStream metadata: ask for a batch anyway
        return None


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:
        return 1


async def _ack(msg: Msg) -> None:
    try:
        await msg.ack()
    except Exception as exc:
        # Redelivered later; the inbox makes that harmless.
        log.warning("ack_failed", subject=msg.subject, error=repr(exc))

