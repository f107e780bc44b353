"""A receipt and a qualification change at the same time, over real gRPC and a real
database: the receipt reads the qualification under a read lock (FOR SHARE), the change
writes it under FOR UPDATE, so each waits for the other's commit.

Each test stops one of the two inside its transaction, holding its lock, and starts the
other: on PostgreSQL it waits for the lock (seen in pg_stat_activity) until the first
commits; on SQLite, one writer at a time, it waits for the database. Either way a receipt
is never decided on a qualification a committed change has replaced: decided after a
disqualification, it is decided on it; decided before, the disqualification decides it
again. Receipts of one supplier site and material do not wait for each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import Any

import pytest
from sqlalchemy import text

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots import receipts, repository
from services.lots.commands import ReceiveLot
from services.lots.read_model import StatusCache
from tests.integration.test_lots import SITE, System, running_system
from tests.support.databases import Databases
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WAITING = ["IDENTITY_MISSING", "PURITY_MISSING", "STERILITY_MISSING"]
# A guard against a test that would otherwise hang on a lock (a failure, not a timing).
GUARD_SECONDS = 30.0


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


class Pause:
    """Wraps an async function: the calls `concerned` picks stop after it ran (inside
    their transaction) until `go` is set; `reached` is set when one has stopped."""

    def __init__(self, real: Callable[..., Awaitable[Any]],
                 concerned: Callable[..., bool]) -> None:
        self.real = real
        self.concerned = concerned
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.concerned(*args, **kwargs):
            self.reached.set()
            await self.go.wait()
        return await self.real(*args, **kwargs)


async def qualified(system: System) -> tuple[str, str]:
    """A supplier site qualified for a new material, known to the lots service."""
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    probe = await system.receive(supplier_id, material)
    await system.wait_unmet(probe.lot_id, WAITING)
    return supplier_id, material


async def waiting_for_a_lock(system: System, databases: Databases) -> None:
    """On PostgreSQL: wait until a transaction of the lots service waits for a row lock."""
    if databases.kind != "postgresql":
        return  # one writer at a time: the other waits for the database itself

    async def waiters() -> int:
        async with system.lots_service.infra.engine.connect() as conn:
            return (await conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))).scalar_one()

    await eventually(waiters, lambda n: n >= 1, within=GUARD_SECONDS)


async def decisions(system: System, lot_id: str) -> list[tuple[int, str, list[str]]]:
    found = (await system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot_id))).decisions
    return [(d.decision.version, d.decision.cause, [u.code for u in d.decision.unmet])
            for d in found]


@pytest.mark.req("DEL-004")
async def test_a_receipt_that_waited_for_a_disqualification_is_decided_on_it(
        system: System, databases: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    supplier_id, material = await qualified(system)
    wanted = (supplier_id, SITE, material)
    # The disqualification stops holding the qualification (FOR UPDATE), before it writes.
    pause = Pause(repository.set_qualification, lambda conn, *, key, facts: key == wanted)
    monkeypatch.setattr(repository, "set_qualification", pause)
    disqualifying = asyncio.create_task(system.disqualify(supplier_id, material))
    await asyncio.wait_for(pause.reached.wait(), GUARD_SECONDS)

    lot_id = ref("LOT")
    receiving = asyncio.create_task(system.receive(supplier_id, material, lot_id=lot_id))
    await waiting_for_a_lock(system, databases)
    pause.go.set()
    lot = await asyncio.wait_for(receiving, GUARD_SECONDS)
    await disqualifying

    # Decided at once on the disqualification it waited for, and only once.
    assert [u.code for u in lot.release_status.unmet] == ["SUPPLIER_DISQUALIFIED", *WAITING]
    assert await decisions(system, lot_id) == [
        (1, "received by wms", ["SUPPLIER_DISQUALIFIED", *WAITING])]


@pytest.mark.req("DEL-004")
async def test_a_disqualification_that_waited_for_a_receipt_decides_its_lot_again(
        system: System, databases: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    supplier_id, material = await qualified(system)
    lot_id = ref("LOT")
    # The receipt stops once its lot is inserted, its qualification held, undecided.
    pause = Pause(receipts.decide_and_save,
                  lambda uow, context, *a, **kw: lot_id in {lot.lot_id for lot in context.lots})
    monkeypatch.setattr(receipts, "decide_and_save", pause)
    receiving = asyncio.create_task(system.receive(supplier_id, material, lot_id=lot_id))
    await asyncio.wait_for(pause.reached.wait(), GUARD_SECONDS)

    await system.disqualify(supplier_id, material)
    await waiting_for_a_lock(system, databases)  # the change waits for the receipt
    pause.go.set()
    lot = await asyncio.wait_for(receiving, GUARD_SECONDS)

    # Decided on the qualification it held, then again on the disqualification.
    assert [u.code for u in lot.release_status.unmet] == WAITING
    await system.wait_unmet(lot_id, ["SUPPLIER_DISQUALIFIED", *WAITING])
    found = await decisions(system, lot_id)
    assert [(version, unmet) for version, _, unmet in found] == [
        (1, WAITING), (2, ["SUPPLIER_DISQUALIFIED", *WAITING])]
    assert found[1][1].startswith(f"qualification {supplier_id}/{SITE}/{material} v")


@pytest.mark.req("WMS-003")
async def test_receipts_of_one_site_and_material_do_not_wait_for_each_other(
        system: System, databases: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    supplier_id, material = await qualified(system)
    first, second = ref("LOT"), ref("LOT")
    pause = Pause(receipts.decide_and_save,
                  lambda uow, context, *a, **kw: first in {lot.lot_id for lot in context.lots})
    monkeypatch.setattr(receipts, "decide_and_save", pause)
    receiving = asyncio.create_task(system.receive(supplier_id, material, lot_id=first))
    await asyncio.wait_for(pause.reached.wait(), GUARD_SECONDS)

    # A second receipt of the same key in a transaction of its own, beside the first.
    infra = system.lots_service.infra
    alone = receipts.receive_lot(infra.uow(), ReceiveLot(
        lot_id=second, material_code=material, supplier_id=supplier_id,
        supplier_site_id=SITE, supplier_lot_number="S-2", quantity_value=5.0,
        quantity_unit="kg", container_count=1, expiry_date=date(2030, 1, 31),
        requested_by="wms.dock2",
        fingerprint=ref("FP")), StatusCache(max_entries=10, max_floors=10))
    if databases.kind == "postgresql":
        # Both hold the qualification's read lock: the second is decided meanwhile.
        _lot, entry = await asyncio.wait_for(alone, GUARD_SECONDS)
        pause.go.set()
    else:  # one writer at a time
        pause.go.set()
        _lot, entry = await asyncio.wait_for(alone, GUARD_SECONDS)
    await asyncio.wait_for(receiving, GUARD_SECONDS)

    assert [u.code for u in entry.unmet] == WAITING
    assert await decisions(system, second) == [(1, "received by wms.dock2", WAITING)]
    assert await decisions(system, first) == [(1, "received by wms", WAITING)]
