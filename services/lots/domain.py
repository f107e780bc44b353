"""The release rule. Pure: no I/O, no clock of its own; everything it uses is an argument.

A lot is RELEASED only when, at decision time, its supplier's site is qualified for its
material (and the approval has not lapsed), the lot is within its expiry date, and every
required test passes: identity, purity and sterility always, and any other test (assay,
bioburden, ...) that the specification version of one of its results requires.

A failing result no longer rejects the lot at once: it is out of specification and under
investigation, and it holds the lot (ON_HOLD) until QA either confirms it (the lot is
REJECTED) or invalidates it (a laboratory error: the result no longer counts, and the
test is decided by the other results of that test, or waits for a retest). Results
arrive already judged by the results service against the specification version in force;
that version, the tests it requires and QA's verdict on each result travel with it and
are kept in the decision record.

QA acts on lots too: it may hold a lot (ON_HOLD) or reject it (REJECTED, final), and a
material's release policy may require QA to release each lot that meets every condition
(RELEASABLE until QA does). Time moves lots as well: past its expiry date a lot is
EXPIRED (final), and a lot whose retest date has come is back in QUARANTINE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from shared.contract import ResultState, TestKind, Verdict
from shared.dates import MAX_LOT_YEARS, years_after
from shared.errors import FailedPrecondition


class LotStatus(StrEnum):
    QUARANTINE = "QUARANTINE"
    RELEASED = "RELEASED"
    REJECTED = "REJECTED"
    # A result is out of specification and under investigation, or QA holds the lot.
    ON_HOLD = "ON_HOLD"
    # Every condition holds; the material's policy wants QA to release it.
    RELEASABLE = "RELEASABLE"
    # Past its expiry date: final.
    EXPIRED = "EXPIRED"


# Statuses a lot never leaves.
FINAL = frozenset({LotStatus.REJECTED, LotStatus.EXPIRED})


class ReleasePolicy(StrEnum):
    """Who releases a material's lots once every condition holds."""

    AUTOMATIC = "AUTOMATIC"  # Lotgate does (review by exception)
    QA_RELEASE = "QA_RELEASE"  # a QA person releases each one


# Required of every lot, whatever its specification says.
REQUIRED_TESTS = (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY)


@dataclass(frozen=True)
class LotFacts:
    """What the rule needs to know about the lot itself."""

    lot_id: str
    material_code: str
    supplier_id: str
    supplier_site_id: str
    expiry_date: date
    # From this day a released lot must be re-tested before it is used again.
    retest_date: date | None = None


@dataclass(frozen=True)
class QaFacts:
    """The material's release policy and what QA decided about the lot itself."""

    policy: ReleasePolicy = ReleasePolicy.AUTOMATIC
    # QA released the lot while it was RELEASABLE (kept only while the lot stays
    # RELEASED or RELEASABLE: see `keeps_qa_release`).
    released: bool = False
    hold_reason: str = ""  # "" when QA does not hold the lot
    rejection_reason: str = ""  # "" when QA has not rejected the lot


NO_QA = QaFacts()


@dataclass(frozen=True)
class QualificationFacts:
    """The standing of the lot's supplier site for its material, as last announced."""

    # QUALIFIED, PENDING, SUSPENDED, DISQUALIFIED, EXPIRED; "" when nothing is known
    status: str
    valid_until: datetime | None
    version: int


@dataclass(frozen=True)
class ResultFacts:
    result_id: str
    test: TestKind
    verdict: Verdict
    sequence: int
    spec_version: int
    # The lot's 1st, 2nd, ... result, numbered without gaps by the results service.
    number: int = 0
    state: ResultState = ResultState.VALID
    # Why QA invalidated or confirmed it ("" when not known).
    state_reason: str = ""
    # The invalidated result this one retests ("" when none).
    retest_of: str = ""
    # The tests of the specification version it was judged against: all must pass.
    required_tests: tuple[TestKind, ...] = ()


@dataclass(frozen=True)
class Unmet:
    code: str
    message: str
    rule: str


@dataclass(frozen=True)
class Decision:
    status: LotStatus
    unmet: tuple[Unmet, ...]
    # The results that counted, for the decision record: per test, the confirmed or
    # investigated failures, else the latest result that counts.
    used_results: tuple[ResultFacts, ...] = field(default=())
    # The tests the rule required, in TestKind order.
    required_tests: tuple[TestKind, ...] = field(default=REQUIRED_TESTS)


_SUPPLIER_RULE = "ICH Q7 7.12, 7.31; EU GMP Part I 5.27-5.30"
_TEST_RULES = {
    TestKind.IDENTITY: "21 CFR 211.84(d)(1); ICH Q7 7.30",
    TestKind.PURITY: "21 CFR 211.84(d)(2)",
    TestKind.STERILITY: "21 CFR 211.84(d)(6)",
    TestKind.ASSAY: "21 CFR 211.84(d)(2)",
    TestKind.BIOBURDEN: "21 CFR 211.84(d)(6); USP <61>",
}
_REJECT_RULE = "21 CFR 211.84(e)"
_OOS_RULE = "21 CFR 211.192; FDA guidance on investigating OOS results (2006)"
_EXPIRY_RULE = "21 CFR 211.87; ICH Q7 7.5"
_RETEST_RULE = "ICH Q7 11.6; 21 CFR 211.87"
_QA_RULE = "EU GMP Part I 1.4(xv); 21 CFR 211.22(a)"
_QA_RELEASE_RULE = "21 CFR 211.22(a); EU GMP Annex 16"
_COMPLETE_RECORDS_RULE = "21 CFR 211.194(a); EU GMP Annex 11 section 4.8"


def missing_results(results: Iterable[ResultFacts]) -> list[int]:
    """Numbers of the lot's results that exist but have not arrived (gaps in 1..max)."""
    numbers = {r.number for r in results if r.number > 0}
    if not numbers:
        return []
    return sorted(set(range(1, max(numbers) + 1)) - numbers)


def _order(result: ResultFacts) -> tuple[int, str]:
    # Later results supersede earlier ones; the id only breaks (impossible) ties, so the
    # outcome never depends on the order results are given in.
    return (result.sequence, result.result_id)


def required_tests(results: Iterable[ResultFacts]) -> tuple[TestKind, ...]:
    """Identity, purity and sterility, and every test a result's specification requires,
    in TestKind order."""
    wanted = set(REQUIRED_TESTS)
    for result in results:
        wanted.update(result.required_tests)
    return tuple(test for test in TestKind if test in wanted)


def qualification_unmet(lot: LotFacts, qualification: QualificationFacts | None,
                        now: datetime) -> Unmet | None:
    status = qualification.status if qualification else ""
    who = (f"supplier {lot.supplier_id} site {lot.supplier_site_id} "
           f"for material {lot.material_code}")
    valid_until = qualification.valid_until if qualification else None
    when = valid_until.isoformat() if valid_until else "an unknown date"
    if status == "QUALIFIED":
        # Checked here, at decision time: an approval that has lapsed does not count even
        # before the suppliers service announces the expiry.
        if valid_until is None or valid_until <= now:
            return Unmet("QUALIFICATION_EXPIRED",
                         f"the qualification of {who} lapsed on {when}", _SUPPLIER_RULE)
        return None
    if status == "EXPIRED":
        return Unmet("QUALIFICATION_EXPIRED",
                     f"the qualification of {who} lapsed on {when}", _SUPPLIER_RULE)
    if status == "SUSPENDED":
        return Unmet("SUPPLIER_SUSPENDED", f"{who} is suspended", _SUPPLIER_RULE)
    if status == "DISQUALIFIED":
        return Unmet("SUPPLIER_DISQUALIFIED", f"{who} is disqualified", _SUPPLIER_RULE)
    return Unmet("SUPPLIER_NOT_QUALIFIED", f"{who} is not qualified", _SUPPLIER_RULE)


def decide(lot: LotFacts, qualification: QualificationFacts | None,
           results: Iterable[ResultFacts], now: datetime, qa: QaFacts = NO_QA) -> Decision:
    """The release decision for `lot` from what is known at `now`.

    Per required test, the results that count are those not invalidated. A failure QA
    confirmed rejects the lot; a failure still under investigation holds it; otherwise
    the latest result that counts decides, and a test whose only results were
    invalidated waits for its retest. A passing retest cannot overrule a failure that
    still counts: only QA's invalidation removes it. So the decision depends on the set
    of results and their states, never on the order in which they arrived.

    Status, most severe first: EXPIRED (past the expiry date), REJECTED (a confirmed
    failure or QA's rejection), ON_HOLD (a failure under investigation or QA's hold),
    QUARANTINE (anything else unmet, such as a retest date that has come), RELEASABLE
    (nothing unmet, but the policy wants QA's release and QA has not given it), RELEASED.
    """
    results = sorted(results, key=_order)
    unmet: list[Unmet] = []
    supplier = qualification_unmet(lot, qualification, now)
    if supplier:
        unmet.append(supplier)
    required = required_tests(results)
    used: list[ResultFacts] = []
    rejected = on_hold = False
    for test in required:
        name = test.value.lower()
        of_test = [r for r in results if r.test is test]
        counted = [r for r in of_test if r.state is not ResultState.INVALIDATED]
        failures = [r for r in counted if r.verdict is Verdict.FAIL]
        confirmed = [r for r in failures if r.state is ResultState.CONFIRMED]
        investigated = [r for r in failures if r.state is ResultState.VALID]
        if confirmed:
            rejected = True
            used.extend(confirmed)
            ids = ", ".join(r.result_id for r in confirmed)
            unmet.append(Unmet(f"{test.value}_FAILED",
                               f"{name} result {ids} fails its specification "
                               f"(version {confirmed[0].spec_version}); confirmed by QA",
                               f"{_TEST_RULES[test]}; {_REJECT_RULE}"))
        elif investigated:
            on_hold = True
            used.extend(investigated)
            ids = ", ".join(r.result_id for r in investigated)
            unmet.append(Unmet(f"{test.value}_OUT_OF_SPECIFICATION",
                               f"{name} result {ids} is out of specification and under "
                               "investigation", _OOS_RULE))
        elif counted:  # no failure counts: the latest result passes
            used.append(counted[-1])
        elif of_test:  # every result of this test was invalidated
            last = of_test[-1]
            why = f" ({last.state_reason})" if last.state_reason else ""
            unmet.append(Unmet(f"{test.value}_RETEST_REQUIRED",
                               f"{name} result {last.result_id} was invalidated{why}; "
                               "a retest is expected", _TEST_RULES[test]))
        else:
            unmet.append(Unmet(f"{test.value}_MISSING", f"no {name} result yet",
                               _TEST_RULES[test]))
    gaps = missing_results(results)
    if gaps:
        # A result that is on its way could be a failure: never release without it.
        shown = ", ".join(str(n) for n in gaps[:10]) + (" ..." if len(gaps) > 10 else "")
        unmet.append(Unmet("RESULTS_INCOMPLETE",
                           f"result(s) {shown} of this lot have been recorded but have not "
                           "arrived here yet", _COMPLETE_RECORDS_RULE))
    expired = now.date() > lot.expiry_date
    if expired:
        unmet.append(lot_expired(lot.expiry_date))
    if lot.retest_date is not None and now.date() >= lot.retest_date:
        unmet.append(retest_date_reached(lot.retest_date))
    if qa.hold_reason:
        on_hold = True
        unmet.append(Unmet("QA_HOLD", f"held by QA: {qa.hold_reason}", _QA_RULE))
    if qa.rejection_reason:
        rejected = True
        unmet.append(Unmet("QA_REJECTED", f"rejected by QA: {qa.rejection_reason}", _QA_RULE))
    if expired:
        status = LotStatus.EXPIRED
    elif rejected:
        status = LotStatus.REJECTED
    elif on_hold:
        status = LotStatus.ON_HOLD
    elif unmet:
        status = LotStatus.QUARANTINE
    elif qa.policy is ReleasePolicy.QA_RELEASE and not qa.released:
        status = LotStatus.RELEASABLE
        unmet.append(Unmet("QA_RELEASE_REQUIRED",
                           f"every condition holds; lots of material {lot.material_code} are "
                           "released by QA, and QA has not released this one",
                           _QA_RELEASE_RULE))
    else:
        status = LotStatus.RELEASED
    return Decision(status, tuple(unmet), tuple(used), required)


# Conditions about the supplier's standing alone. A released lot is not silently pulled
# back for these: QA reviews it instead (see the review list).
SUPPLIER_CODES = frozenset({"SUPPLIER_NOT_QUALIFIED", "SUPPLIER_SUSPENDED",
                            "SUPPLIER_DISQUALIFIED", "QUALIFICATION_EXPIRED"})


# Statuses whose lots a qualification change decides again. A released lot is not (a
# lapse opens a review instead); REJECTED and EXPIRED are final.
DECIDED_ON_QUALIFICATION = frozenset({LotStatus.QUARANTINE, LotStatus.ON_HOLD,
                                      LotStatus.RELEASABLE})


def next_status(current: LotStatus | None, decision: Decision) -> LotStatus:
    """The status a lot moves to, given the status it has and a fresh decision.

    REJECTED and EXPIRED are final. A released lot stays released when the only unmet conditions are
    about its supplier (a lapse after release: QA reviews such lots); anything about the
    lot itself pulls it back: its expiry, a result invalidated after release (a retest
    is needed), a result that has not arrived (QUARANTINE), a result out of specification
    (ON_HOLD) or a confirmed failure (REJECTED), its retest date (QUARANTINE), QA's hold
    or rejection. A released lot is not made RELEASABLE again by a policy that came after
    its release. A lot ON_HOLD takes whatever the decision says once QA has dealt with
    the result or lifted its hold. A RELEASABLE lot becomes RELEASED only when the rule
    says so: under QA_RELEASE, only once QA has released it.
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
    return status in (LotStatus.RELEASED, LotStatus.RELEASABLE)


def lot_expired(expiry_date: date) -> Unmet:
    return Unmet("LOT_EXPIRED", f"the lot expired on {expiry_date.isoformat()}", _EXPIRY_RULE)


def retest_date_reached(retest_date: date) -> Unmet:
    return Unmet("RETEST_DATE_REACHED",
                 f"the lot's retest date {retest_date.isoformat()} has come; it must be "
                 "re-tested before use", _RETEST_RULE)


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


def moved_by_time(status: LotStatus, expiry_date: date, retest_date: date | None,
                  now: datetime) -> tuple[LotStatus, Unmet] | None:
    """What a usable lot (RELEASED, RELEASABLE) is at `now` if its dates have passed since
    its last decision, before the scheduler records that: EXPIRED after its expiry date,
    QUARANTINE from its retest date. None: the lot is as decided.

    Reads answer with this, so that a lot is never picked in the moments between midnight
    and the scheduler's next run, nor while the scheduler cannot reach the database.
    """
    if status not in (LotStatus.RELEASED, LotStatus.RELEASABLE):
        return None
    today = now.date()
    if today > expiry_date:
        return LotStatus.EXPIRED, lot_expired(expiry_date)
    if retest_date is not None and today >= retest_date:
        return LotStatus.QUARANTINE, retest_date_reached(retest_date)
    return None


# Qualification statuses that withdraw an approval: the released lots of that supplier
# site and material are not pulled back, but QA must review each of them.
WITHDRAWN = frozenset({"SUSPENDED", "DISQUALIFIED", "EXPIRED"})


def needs_review(qualification_status: str) -> bool:
    """Whether a change to this status opens a review of the released lots it concerns."""
    return qualification_status in WITHDRAWN


class ReviewState(StrEnum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


def review_id_of(lot_id: str, qualification_version: int) -> str:
    return f"{lot_id}/{qualification_version}"


def must_close(review_id_: str, state: ReviewState, conclusion: str | None,
               closed_by: str | None, *, new_conclusion: str, requested_by: str) -> bool:
    """Whether closing the review changes it: True for an OPEN review.

    False for a retry of the close that closed it (same conclusion, same person): the
    caller returns the review unchanged. Any other close of a CLOSED review is refused.
    """
    if state is ReviewState.OPEN:
        return True
    if conclusion == new_conclusion and closed_by == requested_by:
        return False
    raise FailedPrecondition(
        f"review {review_id_} is CLOSED (by {closed_by}); a closed review cannot be closed "
        "again with another conclusion", subject=f"lot_reviews/{review_id_}")


# Decision replay: recompute a stored decision from its stored inputs with the same pure
# functions the live path uses (`decide`, then `next_status`), and compare.


@dataclass(frozen=True)
class DecisionInputs:
    """Everything `decide` was given for one decision, as stored with it."""

    lot: LotFacts
    qualification: QualificationFacts | None
    results: tuple[ResultFacts, ...]
    now: datetime
    qa: QaFacts = NO_QA


@dataclass(frozen=True)
class Replayed:
    """A decision recomputed from its inputs."""

    status: LotStatus  # after the transition policy
    unmet: tuple[Unmet, ...]
    rule_status: LotStatus  # what the rule alone decided
    required_tests: tuple[TestKind, ...]
    counted: tuple[str, ...]  # ids of the results that counted


@dataclass(frozen=True)
class Step:
    """One decision of a lot as the live path takes it (see `decision_step`)."""

    rule: Decision  # what the rule alone decided
    status: LotStatus  # after the transition policy
    unmet: tuple[Unmet, ...]  # the conditions the lot's status carries from now on
    # Whether it is recorded: the lot's first decision, a QA action, or a change of the
    # status or of the conditions.
    recorded: bool
    # Whether QA's release still stands after it (`keeps_qa_release`).
    qa_released: bool


def decision_step(inputs: DecisionInputs, previous_status: LotStatus | None,
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


def replay(inputs: DecisionInputs, previous_status: LotStatus | None,
           previous_unmet: Iterable[Unmet]) -> Replayed:
    """The decision the live path takes from `inputs` for a lot whose previous decision
    was `previous_status` with `previous_unmet` (None and () for a lot's first decision):
    `decision_step`, with what the record keeps of it."""
    step = decision_step(inputs, previous_status, previous_unmet)
    return Replayed(step.status, step.unmet, step.rule.status, step.rule.required_tests,
                    tuple(r.result_id for r in step.rule.used_results))


def _shown(unmet: Unmet) -> str:
    return f"[{unmet.code}: {unmet.message} ({unmet.rule})]"


def replay_difference(replayed: Replayed, *, status: LotStatus, unmet: Iterable[Unmet],
                      rule_status: LotStatus | None,
                      required_tests: Iterable[TestKind] | None = None,
                      counted: Iterable[str] | None = None) -> str:
    """What differs between a stored decision and its replay; "" when they agree.

    `rule_status`, `required_tests` and `counted` are what the record says the rule gave
    (None: not recorded, which is itself a difference for the rule status).
    """
    differences: list[str] = []
    if replayed.status is not status:
        differences.append(f"status: stored {status.value}, replayed {replayed.status.value}")
    if rule_status is None:
        differences.append("rule_status: not stored")
    elif replayed.rule_status is not rule_status:
        differences.append(f"rule_status: stored {rule_status.value}, "
                           f"replayed {replayed.rule_status.value}")
    stored = tuple(unmet)
    if stored != replayed.unmet:
        stored_codes = [u.code for u in stored]
        replayed_codes = [u.code for u in replayed.unmet]
        if stored_codes != replayed_codes:
            differences.append(f"unmet codes: stored {stored_codes}, replayed {replayed_codes}")
        else:
            for mine, theirs in zip(stored, replayed.unmet, strict=True):
                if mine != theirs:
                    differences.append(f"unmet {mine.code}: stored {_shown(mine)}, "
                                       f"replayed {_shown(theirs)}")
    if required_tests is not None:
        stored_tests = [t.value for t in required_tests]
        replayed_tests = [t.value for t in replayed.required_tests]
        if stored_tests != replayed_tests:
            differences.append(f"required_tests: stored {stored_tests}, "
                               f"replayed {replayed_tests}")
    if counted is not None:
        stored_counted = sorted(counted)
        replayed_counted = sorted(replayed.counted)
        if stored_counted != replayed_counted:
            differences.append(f"counted results: stored {stored_counted}, "
                               f"replayed {replayed_counted}")
    return "; ".join(differences)
