"""A lot's lifecycle: the statuses it may leave, the one transition every decision takes
(the live path and the replay alike), and what time does to a usable lot.

Pure, like the rule: everything is an argument. The repository builds its SQL filters
from the constants here (FINAL, USABLE, DECIDED_ON_QUALIFICATION), so that the database
and the domain never disagree about which lots a change can still move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from services.lots.domain.lot import Key, Lot
from services.lots.domain.rule import (
    SUPPLIER_CODES,
    Decision,
    DecisionInputs,
    LotStatus,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    Unmet,
    decide,
    lot_expired,
    retest_date_reached,
)
from shared.dates import MAX_LOT_YEARS, years_after

# Statuses a lot never leaves.
FINAL = frozenset({LotStatus.REJECTED, LotStatus.EXPIRED})

# Statuses in which a lot may be used; time moves them (`moved_by_time`).
USABLE = frozenset({LotStatus.RELEASED, LotStatus.RELEASABLE})

# Statuses whose lots a qualification change decides again. A released lot is not (a
# lapse opens a review instead); REJECTED and EXPIRED are final.
DECIDED_ON_QUALIFICATION = frozenset({LotStatus.QUARANTINE, LotStatus.ON_HOLD,
                                      LotStatus.RELEASABLE})

# Statuses whose lots a change of their material's release policy decides again: a
# released lot stays released, and a lot on hold waits for QA.
DECIDED_ON_POLICY = frozenset({LotStatus.QUARANTINE, LotStatus.RELEASABLE})


def next_status(current: LotStatus | None, decision: Decision) -> LotStatus:
    """The status a lot moves to, given the status it has and a fresh decision.

    REJECTED and EXPIRED are final. A released lot stays released when the only unmet
    conditions are about its supplier (a lapse after release: QA reviews such lots);
    anything about the lot itself pulls it back: its expiry, a result invalidated after
    release (a retest is needed), a result that has not arrived (QUARANTINE), a result
    out of specification (ON_HOLD) or a confirmed failure (REJECTED), its retest date
    (QUARANTINE), QA's hold or rejection. A released lot is not made RELEASABLE again by
    a policy that came after its release. A lot ON_HOLD takes whatever the decision says
    once QA has dealt with the result or lifted its hold. A RELEASABLE lot becomes
    RELEASED only when the rule says so: under QA_RELEASE, only once QA has released it.
    """
    if current in FINAL:
        return current
    if current is LotStatus.RELEASED and decision.status is LotStatus.QUARANTINE:
        supplier_only = all(u.code in SUPPLIER_CODES for u in decision.unmet)
        return LotStatus.RELEASED if supplier_only else LotStatus.QUARANTINE
    if current is LotStatus.RELEASED and decision.status is LotStatus.RELEASABLE:
        return LotStatus.RELEASED
    return decision.status


def keeps_qa_release(status: LotStatus) -> bool:
    """Whether QA's release of a lot still stands once the lot has `status`.

    A release holds only for the episode in which everything holds: once the lot leaves
    RELEASED and RELEASABLE (an out-of-specification result, its retest date, QA's hold,
    ...), QA must release it again. A released lot kept RELEASED for a supplier lapse
    keeps it.
    """
    return status in USABLE


@dataclass(frozen=True)
class Step:
    """One decision of a lot as the live path takes it (see `transition`)."""

    rule: Decision  # what the rule alone decided
    status: LotStatus  # after the transition policy
    unmet: tuple[Unmet, ...]  # the conditions the lot's status carries from now on
    # Whether it is recorded: the lot's first decision, a QA action, or a change of the
    # status or of the conditions.
    recorded: bool
    # Whether QA's release still stands after it (`keeps_qa_release`).
    qa_released: bool


def transition(inputs: DecisionInputs, previous_status: LotStatus | None,
               previous_unmet: Iterable[Unmet], *, force: bool = False) -> Step:
    """The decision the live path takes from `inputs` for a lot whose previous decision
    was `previous_status` with `previous_unmet` (None and () for a lot's first decision);
    `force`: a QA action, recorded even when it changes nothing.

    The rule decides; the transition policy gives the status; the conditions are the
    rule's when the status is the rule's, else the previous decision's (a released lot
    that stays released for a supplier lapse keeps its reasons; REJECTED and EXPIRED are
    final). The lots service's handler and the replay both take this one step, so a
    replayed decision is the live one by construction.
    """
    rule = decide(inputs.lot, inputs.qualification, inputs.results, inputs.now, inputs.qa)
    status = next_status(previous_status, rule)
    previous = tuple(previous_unmet)
    unmet = rule.unmet if status is rule.status else previous
    recorded = (previous_status is None or force or status is not previous_status
                or unmet != previous)
    return Step(rule, status, unmet, recorded,
                inputs.qa.released and keeps_qa_release(status))


def moved_by_time(status: LotStatus, expiry_date: date, retest_date: date | None,
                  now: datetime) -> tuple[LotStatus, Unmet] | None:
    """What a usable lot (RELEASED, RELEASABLE) is at `now` if its dates have passed since
    its last decision, before the scheduler records that: EXPIRED after its expiry date,
    QUARANTINE from its retest date. None: the lot is as decided.

    Reads answer with this, so that a lot is never picked in the moments between midnight
    and the scheduler's next run, nor while the scheduler cannot reach the database.
    """
    if status not in USABLE:
        return None
    today = now.date()
    if today > expiry_date:
        return LotStatus.EXPIRED, lot_expired(expiry_date)
    if retest_date is not None and today >= retest_date:
        return LotStatus.QUARANTINE, retest_date_reached(retest_date)
    return None


def retest_date_problem(retest_date: date, *, expiry_date: date, today: date) -> str | None:
    """Why a lot cannot have this retest date, or None: the one rule for the retest date
    given on receipt and the one QA sets later. It lies after today (a retest date that
    has come would send the lot back to QUARANTINE at once) and not after the expiry
    date (past that the lot is EXPIRED, retested or not)."""
    if retest_date <= today:
        return f"must lie after today ({today.isoformat()})"
    if retest_date > expiry_date:
        return f"must not lie after the lot's expiry date ({expiry_date.isoformat()})"
    return None


def receipt_date_problems(expiry_date: date, retest_date: date | None,
                          today: date) -> list[tuple[str, str]]:
    """Problems of a new lot's dates on the day it is received, as (field, description).

    A lot already at or past its expiry date is refused rather than received as EXPIRED:
    the warehouse must not put it into stock. An expiry date more than MAX_LOT_YEARS ahead
    is a typo (shared/dates.py). Checked only for a lot not received yet, so that a retry
    of an accepted receipt gets its original answer on any later day.
    """
    problems = []
    latest = years_after(today, MAX_LOT_YEARS)
    if expiry_date <= today:
        problems.append(("expiry_date", f"must lie after today ({today.isoformat()}): a lot "
                                        "at or past its expiry date is not received"))
    elif expiry_date > latest:
        problems.append(("expiry_date", f"must not lie more than {MAX_LOT_YEARS} years "
                                        f"ahead (after {latest.isoformat()})"))
    if retest_date is not None:
        problem = retest_date_problem(retest_date, expiry_date=expiry_date, today=today)
        if problem:
            problems.append(("retest_date", problem))
    return problems


@dataclass(frozen=True)
class Decided:
    """A lot's decision that is recorded: the lot as it was, what the rule was given, and
    the step `transition` took."""

    lot: Lot
    inputs: DecisionInputs
    step: Step
    first: bool  # the lot's first decision (on receipt)

    @property
    def version(self) -> int:
        return self.lot.status_version + 1

    @property
    def previous_status(self) -> LotStatus | None:
        return None if self.first else self.lot.status


def decide_lots(lots: Iterable[Lot], qualifications: Mapping[Key, QualificationFacts],
                results: Mapping[str, Sequence[ResultFacts]],
                policies: Mapping[str, ReleasePolicy], now: datetime, *,
                first: bool = False, force: bool = False) -> list[Decided]:
    """Decide each lot at `now` and take its transition; the decisions to record (every
    lot's when `force`: a QA action is recorded even when it changes nothing)."""
    decided = []
    for lot in lots:
        qa = lot.qa(policies.get(lot.material_code, ReleasePolicy.AUTOMATIC))
        inputs = DecisionInputs(lot.facts, qualifications.get(lot.key),
                                tuple(results.get(lot.lot_id, ())), now, qa)
        step = transition(inputs, None if first else lot.status, () if first else lot.unmet,
                          force=force)
        if step.recorded:
            decided.append(Decided(lot, inputs, step, first))
    return decided
