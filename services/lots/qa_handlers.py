"""QA's actions on a lot (release, hold, lifting a hold, rejection, a new retest date):
writes, each one unit of work. The rules are the domain's (domain/qa_actions.py); here the
lot's decision context is loaded, the change stored, and the lot decided again through
the one decision path (`handlers.decide_and_save`), whose record names who did what and
why. The call's electronic signature signs that decision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime

from services.lots import handlers, qa_repository, repository
from services.lots.commands import QaCommand, ReleaseLot, SetRetestDate
from services.lots.decision_record import DECISION, decision_content, signed_decision
from services.lots.domain import qa_actions
from services.lots.domain.lot import Lot
from services.lots.domain.qa_actions import QaChange
from services.lots.domain.rule import LotStatus
from services.lots.read_model import StatusCache, StatusEntry
from shared import esign
from shared.audit import record as audit_record
from shared.errors import NotFound
from shared.logs import get_logger
from shared.uow import UnitOfWork

log = get_logger(__name__)

# What an action changes on the lot, from the lot as it is and the time (domain/qa_actions).
Rule = Callable[[Lot, datetime], QaChange | None]


async def _qa_action(uow: UnitOfWork, cache: StatusCache, cmd: QaCommand, rule: Rule, *,
                     cause: str,
                     two_signatures: Callable[[Lot], Awaitable[bool]] | None = None
                     ) -> StatusEntry:
    """Load the lot's decision context, ask the action's `rule` what changes (None: a
    retry of what was done already; it raises when the action is refused), set it and
    decide the lot again; the call's signature signs that decision. When
    `two_signatures(lot)` (a release whose policy asks for two), the first signature is
    only recorded and the lot waits for the second."""
    async with uow:
        found = await repository.get_lot(uow.conn, lot_id=cmd.lot_id)
        if found is None:
            raise NotFound(f"no lot {cmd.lot_id}", field="lot_id")
        wants_two = two_signatures is not None and await two_signatures(found)
        context = await repository.load_decision_context(uow.conn, keys=[found.key],
                                                         lot_ids=[cmd.lot_id])
        [lot] = context.lots
        now = uow.clock.now()
        change = rule(lot, now)
        if change is None:
            # From the locked row, not the cache: a copy of this call that overlapped
            # it may have committed without its entry in the cache yet.
            return handlers.entry_of(lot)
        if wants_two and await _first_of_two(uow, lot, now):
            await uow.commit()
            log.info("lot_release_awaits_second_signature", lot_id=cmd.lot_id)
            return handlers.entry_of(lot)
        await repository.set_qa_facts(uow.conn, lot_id=cmd.lot_id, values=change.values())
        audit_record(uow, "lot", cmd.lot_id, action=cause.split(" by ", 1)[0], reason=cause)
        changed = replace(context, lots=[replace(lot, **change.values())])
        [entry] = await handlers.decide_and_save(uow, changed, cache, cause=cause, force=True)
        await esign.sign(uow.conn, now=entry.decided_at, record_type=DECISION,
                         record_id=signed_decision(cmd.lot_id, entry.version),
                         fields=decision_content(cmd.lot_id, entry.version, entry.status))
        await uow.commit()
    log.info("lot_qa_action", lot_id=cmd.lot_id, cause=cause[:200], status=entry.status.value)
    return entry


async def _first_of_two(uow: UnitOfWork, lot: Lot, now: datetime) -> bool:
    """Whether this signature is the first of a two-signature release (recorded now, on
    the decision the release will make); False for the second, from another person.

    Both sign the same content: the lot, the next decision's version and RELEASED. A
    change of the lot in between moves the version on, so a first signature never
    counts for a lot that changed after it was given."""
    signing = esign.current_signing()
    if signing is None:
        return False
    version = lot.status_version + 1
    record_id = signed_decision(lot.lot_id, version)
    given = await esign.signature_rows(uow.conn, record_type=DECISION, record_ids=[record_id])
    if not qa_actions.is_first_signature(lot, signing.subject, [r.signer for r in given]):
        return False
    await esign.sign(uow.conn, now=now, record_type=DECISION, record_id=record_id,
                     fields=decision_content(lot.lot_id, version, LotStatus.RELEASED))
    return True


async def release_lot(uow: UnitOfWork, cache: StatusCache,
                      cmd: ReleaseLot) -> tuple[StatusEntry, int]:
    """QA's release of a RELEASABLE lot, and how many signatures it still awaits (1 after
    the first of two, when the material's policy asks for two)."""
    asked: list[bool] = []

    async def two_signatures(lot: Lot) -> bool:
        policy = await qa_repository.get_policy(uow.conn, material_code=lot.material_code)
        asked.append(policy is not None and policy.two_signatures)
        return asked[-1]

    entry = await _qa_action(uow, cache, cmd, lambda lot, now: qa_actions.release(lot),
                             two_signatures=two_signatures,
                             cause=f"QA release by {cmd.requested_by}: {cmd.reason}")
    awaited = int(bool(asked and asked[-1])
                  and entry.as_of(uow.clock.now()).status is LotStatus.RELEASABLE)
    return entry, awaited


async def hold_lot(uow: UnitOfWork, cache: StatusCache, cmd: QaCommand) -> StatusEntry:
    """QA holds a lot (ON_HOLD), whatever its status but REJECTED or EXPIRED."""
    return await _qa_action(uow, cache, cmd, lambda lot, now: qa_actions.hold(lot, cmd.reason),
                            cause=f"QA hold by {cmd.requested_by}: {cmd.reason}")


async def release_hold(uow: UnitOfWork, cache: StatusCache, cmd: QaCommand) -> StatusEntry:
    """QA lifts its hold; the lot is decided again."""
    return await _qa_action(uow, cache, cmd, lambda lot, now: qa_actions.release_hold(lot),
                            cause=f"QA hold released by {cmd.requested_by}: {cmd.reason}")


async def reject_lot(uow: UnitOfWork, cache: StatusCache, cmd: QaCommand) -> StatusEntry:
    """QA rejects a lot that is not final yet (REJECTED is final)."""
    return await _qa_action(uow, cache, cmd,
                            lambda lot, now: qa_actions.reject(lot, cmd.reason),
                            cause=f"QA rejection by {cmd.requested_by}: {cmd.reason}")


async def set_retest_date(uow: UnitOfWork, cache: StatusCache,
                          cmd: SetRetestDate) -> StatusEntry:
    """A new retest date (after today, not after the expiry date); the lot is decided
    again, so a lot back in QUARANTINE for its retest date may be released."""
    day = cmd.retest_date
    return await _qa_action(
        uow, cache, cmd,
        lambda lot, now: qa_actions.set_retest_date(lot, day, today=now.date()),
        cause=f"retest date set to {day.isoformat()} by {cmd.requested_by}: {cmd.reason}")
