"""Events of other services, as facts for the results service: the lots service's
LotReceived tells which lots exist and of which material (results are posted only for
known lots). Each handler runs in the unit of work of the consumer that delivers the
event (shared.inbox), which records it as processed in the same transaction."""

from __future__ import annotations

from services.results import handlers
from services.results.convert import LotReceived, known_lot
from shared.uow import UnitOfWork


async def lot_received(uow: UnitOfWork, event: LotReceived) -> None:
    """Learn a lot's material from the lots service; a lot already known stays as it is."""
    await handlers.learn_lot(uow, known_lot(event, now=uow.clock.now()))
