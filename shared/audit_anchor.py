"""Anchors: a service's chain head, published as a signed event and kept by another service.

A hash chain proves that no entry was changed in place, but whoever can write the
database could rebuild the whole chain with fresh hashes. So each service publishes its
chain head (sequence, hash) periodically as `lotgate.<service>.v1.audit_anchor`, through
its outbox (signed by its key), and another service keeps what it receives in its own
database: suppliers keeps the anchors of lots and results, lots keeps those of
suppliers. A verification given the keeper's latest anchor (GetAuditAnchor of the
keeper, then VerifyAuditTrail with it; `lotgate audit` does both) finds a rebuilt or cut
chain, because the chain no longer holds that hash at that sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncConnection

from lotgate.audit.v1 import audit_pb2
from shared import audit_chain, messaging
from shared.aio import sleep_or_stop
from shared.db import insert_ignoring_duplicates
from shared.inbox import Subscription
from shared.logs import get_logger
from shared.protoconv import from_timestamp, to_timestamp
from shared.tables import AUDIT_ANCHORS
from shared.uow import UnitOfWork, UnitOfWorkFactory, new_event_id

log = get_logger(__name__)

# Keeper -> the services whose anchors it keeps.
KEEPS: dict[str, tuple[str, ...]] = {"suppliers": ("lots", "results"), "lots": ("suppliers",)}
STREAMS = {"suppliers": messaging.SUPPLIERS_STREAM, "lots": messaging.LOTS_STREAM,
           "results": messaging.RESULTS_STREAM}


def subject(service: str) -> str:
    return f"lotgate.{service}.v1.audit_anchor"


def keeper_of(service: str) -> str:
    """The service that keeps `service`'s anchors."""
    return next(keeper for keeper, kept in KEEPS.items() if service in kept)


def durable(keeper: str, service: str) -> str:
    return f"{keeper}-{service}-audit-anchor"


async def publish(uow: UnitOfWork, metadata: MetaData, service: str) -> tuple[int, str]:
    """Publish the chain head now (through the outbox, so signed like every event)."""
    async with uow:
        sequence, entry_hash = await audit_chain.head(uow.conn, metadata)
        if sequence:
            uow.emit(subject(service), f"audit/{service}", audit_pb2.AuditAnchor(
                event_id=new_event_id(), service=service, sequence=sequence,
                entry_hash=entry_hash, occurred_at=to_timestamp(uow.clock.now())))
            await uow.commit()
    return sequence, entry_hash


def publisher(uow: UnitOfWorkFactory, metadata: MetaData,
              service: str) -> Callable[[], Awaitable[tuple[int, str]]]:
    return lambda: publish(uow(), metadata, service)


async def run_anchors(uow: UnitOfWorkFactory, metadata: MetaData, service: str,
                      stop: asyncio.Event, *, every_seconds: float) -> None:
    """Publish the chain head every `every_seconds` when it moved since the last time."""
    last = 0
    while not stop.is_set():
        try:
            async with uow() as unit:
                sequence, _ = await audit_chain.head(unit.conn, metadata)
            if sequence != last:
                last, _ = await publish(uow(), metadata, service)
        except Exception as exc:  # the next round tries again
            log.warning("audit_anchor_failed", error=repr(exc))
        await sleep_or_stop(stop, every_seconds)


def subscriptions(keeper: str, metadata: MetaData) -> list[Subscription]:
    """The consumers through which `keeper` keeps other services' anchors."""
    table = metadata.tables[AUDIT_ANCHORS]

    async def keep(uow: UnitOfWork, event: Any) -> None:
        await uow.conn.execute(insert_ignoring_duplicates(table, uow.conn.dialect.name), {
            "service": event.service, "sequence": event.sequence,
            "entry_hash": event.entry_hash, "event_id": event.event_id,
            "occurred_at": from_timestamp(event.occurred_at),
            "received_at": uow.clock.now()})

    return [Subscription(stream=STREAMS[service].name, subject=subject(service),
                         durable=durable(keeper, service),
                         message_type=audit_pb2.AuditAnchor, handler=keep)
            for service in KEEPS.get(keeper, ())]


def streams(keeper: str) -> list[messaging.StreamSpec]:
    return [STREAMS[service] for service in KEEPS.get(keeper, ())]


async def latest(conn: AsyncConnection, metadata: MetaData, service: str) -> Any | None:
    table = metadata.tables[AUDIT_ANCHORS]
    return (await conn.execute(select(table).where(table.c.service == service)
                               .order_by(table.c.sequence.desc()).limit(1))).first()
