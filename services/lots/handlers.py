"""Writes of the lots service: each use case one unit of work, taking a command or the
facts of other services' events (inbound.py) and returning domain values.

Every path that can change a lot's status decides in three beats:
`repository.load_decision_context` (the lots' qualifications locked, then the lots with
their results and release policy, locked: two queries), the pure
`lifecycle.decide_lots` (the rule, then the one `transition`), and
`repository.save_decisions` with each lot's LotStatusChanged in the outbox, in the same
transaction. A qualification withdrawn after release does not change a released lot: it
opens a review of it for QA, announced by LotReviewRequired. Receipts (receipts.py) and
QA's actions on a lot (qa_handlers.py) are writes too, through the same `decide_and_save`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import Context
from dataclasses import replace
from datetime import datetime

from services.lots import convert, qa_queries, qa_repository, repository
from services.lots.commands import (
    CloseLotReview,
    SetReleasePolicy,
)
from services.lots.decision_record import (
    REVIEW,
    review_content,
)
from services.lots.domain.lifecycle import (
    DECIDED_ON_POLICY,
    DECIDED_ON_QUALIFICATION,
    Decided,
    decide_lots,
)
from services.lots.domain.lot import Key, Lot
from services.lots.domain.projection import LabResult, QualificationChange
from services.lots.domain.reviews import (
    ReviewState,
    must_close,
    needs_review,
    review_id_of,
    review_reason,
)
from services.lots.domain.rule import LotStatus, QualificationFacts, ResultState
from services.lots.qa_queries import SignedReview
from services.lots.read_model import StatusCache, StatusEntry
from services.lots.records import DecisionContext, Policy, Review
from shared import esign, messaging, tracing
from shared.audit import record as audit_record
from shared.crash import crash_point
from shared.errors import NotFound
from shared.logs import get_logger
from shared.metrics import count_decision
from shared.uow import UnitOfWork

log = get_logger(__name__)


# -- the decision path -----------------------------------------------------------------

@tracing.traced("lots.decide")
async def decide_and_save(uow: UnitOfWork, context: DecisionContext, cache: StatusCache, *,
                          cause: str, first: bool = False, force: bool = False,
                          contexts: Mapping[str, Context] | None = None
                          ) -> list[StatusEntry]:
    """The decision path's last two beats, for a loaded context: decide its lots (the
    pure rule and the one transition), then record and announce those whose status or
    reasons changed (every lot when `force`: a QA action is recorded even when it changes
    neither). `contexts`: the context (caller, request, trace) each lot's decision is noted
    in, by lot id (receipts written together, receipts.py); else the current one."""
    now = uow.clock.now()
    decided = decide_lots(context.lots, context.qualifications, context.results,
                          context.policies, now, first=first, force=force)
    entries = []
    replies: dict[str, bytes] = {}
    for d in decided:
        own = contexts.get(d.lot.lot_id) if contexts else None
        entry = (own.run(_note, uow, d, cache, now, cause) if own
                 else _note(uow, d, cache, now, cause))
        replies[d.lot.lot_id] = convert.status_reply(entry)
        entries.append(entry)
    crash_point("inside_decision")
    await repository.save_decisions(uow.conn, decided, cause=cause, now=now, replies=replies)
    return entries


def _note(uow: UnitOfWork, d: Decided, cache: StatusCache, now: datetime,
          cause: str) -> StatusEntry:
    """A decision's audit note, LotStatusChanged, count and log line; its new status."""
    audit_record(uow, "lot", d.lot.lot_id, action="decide", reason=cause)
    entry = StatusEntry.make(d.lot, d.step.status, d.version, d.step.unmet, now)
    changed = convert.status_changed(entry, d.previous_status, now)
    uow.emit(messaging.LOT_STATUS_CHANGED, d.lot.lot_id, changed)
    uow.after_commit(lambda entry=entry: cache.put(entry))
    count_decision(uow, d.step.status, d.step.unmet)
    if d.step.status is not (d.previous_status or LotStatus.QUARANTINE):
        # The cause's event (or request) and trace ids come from the context.
        log.info("lot_status_changed", lot_id=d.lot.lot_id, status=d.step.status.value,
                 previous=d.previous_status.value if d.previous_status else None,
                 version=d.version, cause=cause[:200], status_event_id=changed.event_id)
        tracing.add_event("lot_status_changed", lot_id=d.lot.lot_id,
                          status=d.step.status.value, version=d.version)
    return entry


def entry_of(lot: Lot) -> StatusEntry:
    return StatusEntry.make(lot, lot.status, lot.status_version, lot.unmet, lot.decided_at)


# -- other services' events ------------------------------------------------------------

async def apply_results(uow: UnitOfWork, results: Sequence[LabResult],
                        cache: StatusCache) -> None:
    """Project recorded results (inbound.recorded) and decide every lot they concern.

    A result the projection holds already (from a redelivery, or from its invalidation
    or confirmation arriving first) is left as it is.
    """
    await repository.add_results(uow.conn, results)
    causes = ", ".join(sorted({r.facts.result_id for r in results}))
    await _redecide(uow, {r.lot_id for r in results}, cache, cause=f"results {causes}")


async def apply_result_states(uow: UnitOfWork, results: Sequence[LabResult],
                              cache: StatusCache, *, state: ResultState) -> None:
    """Project QA's invalidations (or confirmations) of results (inbound.with_state) and
    decide their lots again.

    The result is inserted when its ResultRecorded has not arrived yet (the event carries
    the full result), else its state is set; a result already out of VALID keeps its state.
    """
    await repository.set_result_states(uow.conn, results)
    word = "invalidated" if state is ResultState.INVALIDATED else "confirmed"
    ids = ", ".join(r.facts.result_id for r in results)
    await _redecide(uow, {r.lot_id for r in results}, cache, cause=f"{word} {ids}")


async def _redecide(uow: UnitOfWork, lot_ids: set[str], cache: StatusCache, *,
                    cause: str) -> None:
    """Decide the received lots among `lot_ids` again (results for lots not received yet
    wait in the projection)."""
    keys = {lot_id: entry.key for lot_id in lot_ids
            if (entry := cache.get(lot_id)) is not None}
    missing = lot_ids - keys.keys()
    if missing:
        keys.update(await repository.keys_of(uow.conn, lot_ids=missing))
    if keys:
        context = await repository.load_decision_context(uow.conn, keys=keys.values(),
                                                         lot_ids=keys)
        await decide_and_save(uow, context, cache, cause=cause[:200])


async def apply_qualifications(uow: UnitOfWork,
                               changes: dict[Key, list[QualificationChange]],
                               cache: StatusCache) -> None:
    """Project qualification changes (inbound.qualification_changes; highest version wins)
    and decide the open lots of each supplier site and material again.

    Each new version that withdraws the approval (SUSPENDED, DISQUALIFIED, EXPIRED) opens
    a review of every lot of that site and material released before it; released lots
    themselves are not changed. Versions already seen change nothing, so a redelivered
    event opens no second review.
    """
    held = await repository.lock_qualifications(uow.conn, keys=changes)
    for key in sorted(changes):
        new = [c for c in changes[key] if c.version > held[key].version]
        if not new:
            continue  # older or repeated announcements
        reviewing = [c for c in new if needs_review(c.status)]
        wanted = DECIDED_ON_QUALIFICATION | ({LotStatus.RELEASED} if reviewing else set())
        context = await repository.load_lots(uow.conn, key=key, statuses=wanted,
                                             qualifications_=held)
        # Reviews first, for every withdrawing version in order (a batch may hold a
        # suspension and its reinstatement): they concern lots released before it.
        released = [lot for lot in context.lots if lot.status is LotStatus.RELEASED]
        for change in reviewing:
            await _open_reviews(uow, released, change)
        # Open lots are decided once, from the newest version: what is known now.
        latest = new[-1]
        held[key] = QualificationFacts(latest.status, latest.valid_until, latest.version)
        await repository.set_qualification(uow.conn, key=key, facts=held[key])
        open_lots = [lot for lot in context.lots if lot.status in DECIDED_ON_QUALIFICATION]
        if open_lots:
            cause = f"qualification {key[0]}/{key[1]}/{key[2]} v{latest.version}"
            await decide_and_save(uow, replace(context, lots=open_lots, qualifications=held),
                                  cache, cause=cause)


async def _open_reviews(uow: UnitOfWork, released: Sequence[Lot],
                        change: QualificationChange) -> None:
    """Open a review (and announce it) for each released lot without one."""
    if not released:
        return
    ids = {lot.lot_id: review_id_of(lot.lot_id, change.version) for lot in released}
    present = await qa_repository.review_ids_present(uow.conn, review_ids=ids.values())
    now = uow.clock.now()
    reason = review_reason(change.status, change.reason, change.valid_until)
    reviews = [Review(ids[lot.lot_id], lot.lot_id, lot.supplier_id, lot.supplier_site_id,
                      lot.material_code, change.status, change.version, reason, now,
                      ReviewState.OPEN.value)
               for lot in released if ids[lot.lot_id] not in present]
    if not reviews:
        return
    await qa_repository.add_reviews(uow.conn, reviews)
    for review in reviews:
        audit_record(uow, "review", review.review_id, action="open", reason=reason)
        uow.emit(messaging.LOT_REVIEW_REQUIRED, review.lot_id,
                 convert.review_required(review, now))
    key = change.key
    log.info("lot_reviews_opened", supplier_id=key[0], site_id=key[1], material_code=key[2],
             qualification_status=change.status, qualification_version=change.version,
             lots=len(reviews))


# -- release policies, time, reviews ---------------------------------------------------

async def set_release_policy(uow: UnitOfWork, cache: StatusCache,
                             cmd: SetReleasePolicy) -> Policy:
    """Set a material's policy (kept in its history) and decide its lots in QUARANTINE
    or RELEASABLE again under it; released lots stay released. The same call again
    (also one that overlaps the first setting) changes nothing and returns the policy."""
    async with uow:
        now = uow.clock.now()
        policy = Policy(cmd.material_code, cmd.policy, cmd.reason, cmd.requested_by, now,
                        cmd.two_signatures)
        current = await qa_repository.get_policy(uow.conn, material_code=cmd.material_code,
                                               for_update=True)
        if current is None and not await qa_repository.add_policy(uow.conn, policy):
            # A concurrent first setter (a copy of this very call, perhaps) has committed
            # the material's first policy: this call comes after it.
            current = await qa_repository.get_policy(uow.conn, material_code=cmd.material_code,
                                                   for_update=True)
        if current is not None and _same_setting(current, policy):
            return current
        await qa_repository.set_policy(uow.conn, policy)
        audit_record(uow, "policy", cmd.material_code, action=f"set {cmd.policy.value}",
                     reason=cmd.reason)
        candidates = await repository.lot_ids_to_decide(
            uow.conn, material_code=cmd.material_code, statuses=DECIDED_ON_POLICY)
        if candidates:
            context = await repository.load_decision_context(
                uow.conn, keys=candidates.values(), lot_ids=candidates,
                statuses=DECIDED_ON_POLICY)
            await decide_and_save(uow, context, cache,
                          cause=f"release policy of {cmd.material_code} set to "
                                f"{cmd.policy.value} by {cmd.requested_by}: {cmd.reason}")
        stored = await qa_repository.get_policy(uow.conn, material_code=cmd.material_code)
        await uow.commit()
    log.info("release_policy_set", material_code=cmd.material_code, policy=cmd.policy.value,
             by=cmd.requested_by)
    assert stored is not None
    return stored


def _same_setting(a: Policy, b: Policy) -> bool:
    return (a.policy, a.reason, a.set_by, a.two_signatures) == (
        b.policy, b.reason, b.set_by, b.two_signatures)


async def apply_time(uow: UnitOfWork, cache: StatusCache, *, limit: int = 100) -> tuple[int, int]:
    """Decide again the lots time has moved: past their expiry date (EXPIRED), or released
    with their retest date come (QUARANTINE). (lots found due, lots decided)

    Safe with several replicas: the due lots are found unlocked, their qualifications
    locked (the lock order of every decision), then the lots locked with SKIP LOCKED and
    checked again, so each lot moves once.
    """
    async with uow:
        today = uow.clock.now().date()
        due = await repository.lot_ids_to_decide(uow.conn, due_on=today, limit=limit)
        if not due:
            return 0, 0
        context = await repository.load_decision_context(
            uow.conn, keys=due.values(), lot_ids=due, due_on=today, skip_locked=True)
        if not context.lots:
            return len(due), 0
        expired = [lot for lot in context.lots if lot.expiry_date < today]
        retest = [lot for lot in context.lots if lot.expiry_date >= today]
        decided = []
        if expired:
            decided += await decide_and_save(uow, replace(context, lots=expired), cache,
                                     cause="expiry date passed")
        if retest:
            decided += await decide_and_save(uow, replace(context, lots=retest), cache,
                                     cause="retest date reached")
        await uow.commit()
    if decided:
        log.info("lots_moved_by_time", expired=len(expired), retest=len(retest))
    return len(due), len(decided)


async def close_lot_review(uow: UnitOfWork, cmd: CloseLotReview) -> SignedReview:
    """Record QA's conclusion: OPEN -> CLOSED, announced by LotReviewClosed.

    The same close again (same conclusion, same person) returns the review unchanged;
    any other close of a closed review is refused.
    """
    async with uow:
        review = await qa_repository.get_review(uow.conn, review_id=cmd.review_id,
                                             for_update=True)
        if review is None:
            raise NotFound(f"no lot review {cmd.review_id}", field="review_id")
        if not must_close(cmd.review_id, ReviewState(review.state), review.conclusion,
                          review.closed_by, new_conclusion=cmd.conclusion,
                          requested_by=cmd.requested_by):
            [signed] = await qa_queries.signed_reviews(uow.conn, [review])
            return signed
        now = uow.clock.now()
        await qa_repository.close_review(uow.conn, review_id=cmd.review_id,
                                      conclusion=cmd.conclusion, closed_by=cmd.requested_by,
                                      closed_at=now)
        audit_record(uow, "review", cmd.review_id, action="close", reason=cmd.conclusion)
        review = await qa_repository.get_review(uow.conn, review_id=cmd.review_id)
        assert review is not None
        await esign.sign(uow.conn, now=now, record_type=REVIEW, record_id=cmd.review_id,
                         fields=review_content(review.review_id, review.lot_id, review.state,
                                               review.conclusion, review.closed_by))
        [signed] = await qa_queries.signed_reviews(uow.conn, [review])
        uow.emit(messaging.LOT_REVIEW_CLOSED, review.lot_id,
                 convert.review_closed(review, signed.signatures, now))
        await uow.commit()
    log.info("lot_review_closed", review_id=cmd.review_id, lot_id=review.lot_id,
             by=cmd.requested_by)
    return signed

