"""Expiry as time: approvals lapse when their valid_until passes, with nobody acting.

Every replica runs this loop. Each pass locks the due rows and skips rows another
replica holds, so a qualification expires (and is warned about) exactly once; the
transition and its event commit together through the outbox. A pass that fails (the
database is away) is simply repeated on the next tick.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from services.suppliers import handlers
from shared.aio import sleep_or_stop
from shared.logs import get_logger
from shared.uow import UnitOfWorkFactory

log = get_logger(__name__)

BATCH = 100


async def run_expiry(uow: UnitOfWorkFactory, stop: asyncio.Event, *, every_seconds: float,
                     warn_ahead: timedelta) -> None:
    """Expire lapsed approvals and warn of coming ones every `every_seconds` until `stop`."""
    while not stop.is_set():
        try:
            await check_once(uow, warn_ahead=warn_ahead)
        except Exception as exc:
            log.warning("expiry_check_failed", error=repr(exc))
        await sleep_or_stop(stop, every_seconds)


async def check_once(uow: UnitOfWorkFactory, *, warn_ahead: timedelta) -> tuple[int, int]:
    """One pass: (approvals expired, warnings sent)."""
    expired = warned = 0
    while True:
        done = await handlers.expire_lapsed(uow(), limit=BATCH)
        expired += done
        if done < BATCH:
            break
    while True:
        done = await handlers.warn_expiring(uow(), ahead=warn_ahead, limit=BATCH)
        warned += done
        if done < BATCH:
            break
    return expired, warned
