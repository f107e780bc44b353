"""Time moves lots too: past its expiry date a lot is EXPIRED, and a released lot whose
retest date has come is back in QUARANTINE, with nobody acting.

Every replica runs this loop (like services/suppliers/expiry.py). Each pass finds the due
lots, locks them (after their qualifications: the lock order of every decision) and skips
lots another replica holds, so each lot moves once; each move is an ordinary decision,
recorded with its cause and announced through the outbox in the same transaction. A pass
that fails (the database is away) is simply repeated on the next tick.
"""

from __future__ import annotations

import asyncio

from services.lots import handlers
from services.lots.read_model import StatusCache
from shared.aio import sleep_or_stop
from shared.logs import get_logger
from shared.uow import UnitOfWorkFactory

log = get_logger(__name__)

BATCH = 100


async def run_time_checks(uow: UnitOfWorkFactory, cache: StatusCache, stop: asyncio.Event, *,
                          every_seconds: float) -> None:
    """Move expired lots and lots due for retest every `every_seconds` until `stop`."""
    while not stop.is_set():
        try:
            await check_once(uow, cache)
        except Exception as exc:
            log.warning("lot_time_check_failed", error=repr(exc))
        await sleep_or_stop(stop, every_seconds)


async def check_once(uow: UnitOfWorkFactory, cache: StatusCache) -> int:
    """One pass: how many lots were decided again."""
    moved = 0
    while True:
        found, decided = await handlers.apply_time(uow(), cache, limit=BATCH)
        moved += decided
        # A full batch may hide more; a batch that moved nothing (held by another
        # replica) is left to the next tick.
        if found < BATCH or decided == 0:
            return moved
