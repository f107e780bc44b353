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


def lot_expired(expiry_date: date) -> Unmet:
    return Unmet("LOT_EXPIRED", f"the lot expired on {expiry_date.isoformat()}", _EXPIRY_RULE)


def retest_date_reached(retest_date: date) -> Unmet:
    return Unmet("RETEST_DATE_REACHED",
                 f"the lot's retest date {retest_date.isoformat()} has come; it must be "
                 "re-tested before use", _RETEST_RULE)


@dataclass(frozen=True)
class DecisionInputs:
    """Everything `decide` was given for one decision, as stored with it."""

    lot: LotFacts
    qualification: QualificationFacts | None
    results: tuple[ResultFacts, ...]
    now: datetime
    qa: QaFacts = NO_QA
