"""Receipts: `ReceiveLot` puts a lot into QUARANTINE and decides it at once from what is
already known (its qualification, results that came before it, its material's policy).

A receipt only reads its qualification: it holds the row with a read lock (FOR SHARE), so
receipts of one supplier site and material run beside each other, while a change of that
qualification (handlers.apply_qualifications) and a decision on new results
(handlers._redecide), which lock it FOR UPDATE, wait for them, and they for it. A receipt
is decided either before a change, which then decides its lot again, or after it, on
it; never on a qualification that a committed change has replaced. Lock order as on
every decision path: qualification rows, then lot rows.

Receipts that arrive while one is being written go together in the next transaction
(shared.group_commit; LOTGATE_GROUP_COMMIT, on by default): the lots already received
looked up in one query, the qualifications locked once, the new lots inserted in one
statement and decided together, one append to the audit trail, one commit. Each
receipt's audit entry and events are recorded in its caller's own context (who, request,
trace). Whatever would make one of them fail (the same lot twice in the group, other
details under a received lot's id, dates out of bounds, a concurrent insert, the
database away) fails the group before its commit, and each of its receipts is then
written alone, through `receive_lot`, with exactly the answer it has without grouping.

With LOTGATE_GROUP_COMMIT=off each receipt is written alone and takes its qualification
FOR UPDATE, as before groups: 32 receipts of one key sharing the read lock at once were
measured at half the rate of taking it in turn (each new sharer rewrites the row's lock
as a multixact of all of them, and they queue for the audit trail's append anyway).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from services.lots import convert, queries, repository
from services.lots.commands import ReceiveLot
from services.lots.domain.lifecycle import receipt_date_problems
from services.lots.domain.lot import Lot
from services.lots.domain.rule import LotStatus
from services.lots.handlers import decide_and_save
from services.lots.read_model import StatusCache, StatusEntry
from shared import messaging
from shared.audit import record as audit_record
from shared.errors import AlreadyExists, FieldViolation, InvalidArgument
from shared.group_commit import GroupCommit, Grouped
from shared.metrics import group_committed
from shared.uow import UnitOfWork, UnitOfWorkFactory, as_retry_after_conflict

Received = tuple[Lot, StatusEntry]

# The name of the receipts' group in logs and metrics.
GROUP = "lots.receive"


class Receipts:
    """`await receipts(cmd)`: the lot received (or found received) and its status.

    Receipts are grouped by their supplier site and material, in `partitions` groups: a
    group waits for its running transaction, and so a receipt waiting for a
    qualification change holds back only the receipts of its own partition."""

    def __init__(self, uow: UnitOfWorkFactory, cache: StatusCache, *, together: bool = True,
                 partitions: int = 8, max_items: int = 256) -> None:
        self._uow = uow
        self._cache = cache
        # Grouped, a process writes one transaction of a key at a time, so the read lock
        # is rarely shared and costs nothing; without groups, many receipts of one key
        # would share it at once, which costs PostgreSQL more (a multixact per locker)
        # than it saves: they take it FOR UPDATE then, one after the other, as before.
        self._shared = together
        self.groups: list[GroupCommit[ReceiveLot, Received]] = [
            GroupCommit(self._together, self._alone, max_items=max_items, name=GROUP)
            for _ in range(partitions if together else 0)]

    async def __call__(self, cmd: ReceiveLot) -> Received:
        if not self.groups:
            return await self._alone(cmd)
        key = (cmd.supplier_id, cmd.supplier_site_id, cmd.material_code)
        return await self.groups[hash(key) % len(self.groups)](cmd)

    async def _alone(self, cmd: ReceiveLot) -> Received:
        return await receive_lot(self._uow(), cmd, self._cache, shared=self._shared)

    async def _together(self, group: Sequence[Grouped[ReceiveLot]]) -> list[Received]:
        # GroupCommit runs this in a copy of the first caller's context: that caller's
        # trace shows the shared transaction.
        try:
            answers = await receive_together(self._uow(), group, self._cache)
        except Exception:
            group_committed(GROUP, len(group), committed=False)
            raise
        group_committed(GROUP, len(group), committed=True)
        return answers


# -- one receipt -----------------------------------------------------------------------

async def receive_lot(uow: UnitOfWork, cmd: ReceiveLot, cache: StatusCache, *,
                      shared: bool = True) -> Received:
    """Receive one lot in a transaction of its own, holding its qualification with a read
    lock (`shared`) or FOR UPDATE.

    The same receipt again, also one that overlaps the original, returns the lot; other
    details under its id are ALREADY_EXISTS."""
    return await as_retry_after_conflict(
        lambda: _receive_lot(uow, cmd, cache, shared),
        conflict=f"lot {cmd.lot_id} was received concurrently; retry")


async def _receive_lot(uow: UnitOfWork, cmd: ReceiveLot, cache: StatusCache,
                       shared: bool) -> Received:
    async with uow:
        existing = await repository.get_lot(uow.conn, lot_id=cmd.lot_id)
        if existing is not None:
            _same_receipt(existing, cmd)
            return existing, await queries.get_status(uow.conn, lot_id=cmd.lot_id, cache=cache)
        now = uow.clock.now()
        _check_dates(cmd, now)
        lot = _new_lot(cmd, now)
        held = await repository.lock_qualifications(uow.conn, keys=[lot.key], shared=shared)
        await repository.add_lots(uow.conn, [lot])
        _note_receipt(uow, lot, now)
        context = await repository.load_lots(uow.conn, lot_ids=[lot.lot_id],
                                             qualifications_=held)
        [entry] = await decide_and_save(uow, context, cache, cause=_cause(lot), first=True)
        await uow.commit()
    return context.lots[0], entry


# -- receipts written together ---------------------------------------------------------

async def receive_together(uow: UnitOfWork, group: Sequence[Grouped[ReceiveLot]],
                           cache: StatusCache) -> list[Received]:
    """Receive the lots of `group` in one transaction, or raise without committing
    anything (GroupCommit then receives each alone): the answers, in order."""
    commands = [grouped.item for grouped in group]
    if len({cmd.lot_id for cmd in commands}) < len(commands):
        raise ValueError("the same lot twice in one group")  # before any statement
    async with uow:
        existing = await repository.get_lots(uow.conn, lot_ids=[c.lot_id for c in commands])
        now = uow.clock.now()
        new: dict[str, Lot] = {}
        for cmd in commands:
            if cmd.lot_id in existing:
                _same_receipt(existing[cmd.lot_id], cmd)
            else:
                _check_dates(cmd, now)
                new[cmd.lot_id] = _new_lot(cmd, now)
        answers: dict[str, Received] = {}
        if new:
            answers = await _receive_new(uow, group, new, cache, now)
        if existing:  # retries: answered as by `receive_lot`
            statuses = await queries.get_statuses(uow.conn, lot_ids=list(existing),
                                                  cache=cache)
            answers.update((lot_id, (lot, statuses[lot_id]))
                           for lot_id, lot in existing.items())
        await uow.commit()
    return [answers[cmd.lot_id] for cmd in commands]


async def _receive_new(uow: UnitOfWork, group: Sequence[Grouped[ReceiveLot]],
                       new: dict[str, Lot], cache: StatusCache,
                       now: datetime) -> dict[str, Received]:
    """Store the lots of `new` and decide each: their answers, by lot id."""
    held = await repository.lock_qualifications(
        uow.conn, keys={lot.key for lot in new.values()}, shared=True)
    await repository.add_lots(uow.conn, list(new.values()))
    contexts = {grouped.item.lot_id: grouped.context for grouped in group}
    for lot_id, lot in new.items():
        contexts[lot_id].run(_note_receipt, uow, lot, now)
    context = await repository.load_lots(uow.conn, lot_ids=new, qualifications_=held)
    # One decision per cause: the decision record names who received the lot.
    by_cause: dict[str, list[Lot]] = defaultdict(list)
    for lot in context.lots:
        by_cause[_cause(lot)].append(lot)
    loaded = {lot.lot_id: lot for lot in context.lots}
    answers: dict[str, Received] = {}
    for cause, lots in by_cause.items():
        for entry in await decide_and_save(uow, replace(context, lots=lots), cache,
                                           cause=cause, first=True, contexts=contexts):
            answers[entry.lot_id] = loaded[entry.lot_id], entry
    return answers


# -- the parts of every receipt --------------------------------------------------------

def _same_receipt(existing: Lot, cmd: ReceiveLot) -> None:
    """A receipt of a received lot is a retry: the same details, or ALREADY_EXISTS."""
    if existing.fingerprint != cmd.fingerprint:
        raise AlreadyExists(f"lot {cmd.lot_id} was received with other details")


def _check_dates(cmd: ReceiveLot, now: datetime) -> None:
    problems = receipt_date_problems(cmd.expiry_date, cmd.retest_date, now.date())
    if problems:
        raise InvalidArgument([FieldViolation(f, d) for f, d in problems])


def _new_lot(cmd: ReceiveLot, now: datetime) -> Lot:
    # Written properly by its first decision, in the same transaction.
    return Lot(cmd.lot_id, cmd.material_code, cmd.supplier_id, cmd.supplier_site_id,
               cmd.supplier_lot_number, cmd.quantity_value, cmd.quantity_unit,
               cmd.container_count, cmd.expiry_date, cmd.retest_date, now,
               cmd.requested_by, cmd.fingerprint, LotStatus.QUARANTINE, 0, (), now)


def _note_receipt(uow: UnitOfWork, lot: Lot, now: datetime) -> None:
    """The receipt's audit note and LotReceived, in the receiving caller's context."""
    audit_record(uow, "lot", lot.lot_id, action="receive", reason=_cause(lot), created=True)
    uow.emit(messaging.LOT_RECEIVED, lot.lot_id, convert.lot_received(lot, now))


def _cause(lot: Lot) -> str:
    return f"received by {lot.received_by}"
