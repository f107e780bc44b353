"""The release rule. Pure: no I/O, no clock of its own; everything it uses is an argument.

A lot is RELEASED only when, at decision time, its supplier's site is qualified for its
material (and the approval has not lapsed), the lot is within its expiry date, and the
latest identity, purity and sterility results all pass. A failing result rejects the lot.
Results arrive already judged by the results service against the specification version
in force; that version travels with each result and is kept in the decision record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from shared.errors import FailedPrecondition


class LotStatus(StrEnum):
    QUARANTINE = "QUARANTINE"
    RELEASED = "RELEASED"
    REJECTED = "REJECTED"


class TestKind(StrEnum):
    __test__ = False  # a domain type, not a pytest test class

    IDENTITY = "IDENTITY"
    PURITY = "PURITY"
    STERILITY = "STERILITY"


REQUIRED_TESTS = (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY)


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"


@dataclass(frozen=True)
class LotFacts:
    """What the rule needs to know about the lot itself."""

    lot_id: str
    material_code: str
    supplier_id: str
    supplier_site_id: str
    expiry_date: date


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


@dataclass(frozen=True)
class Unmet:
    code: str
    message: str
    rule: str


@dataclass(frozen=True)
class Decision:
    status: LotStatus
    unmet: tuple[Unmet, ...]
    # The results that counted (latest per test), for the decision record.
    used_results: tuple[ResultFacts, ...] = field(default=())


_SUPPLIER_RULE = "ICH Q7 7.12, 7.31; EU GMP Part I 5.27-5.30"
_TEST_RULES = {
    TestKind.IDENTITY: "21 CFR 211.84(d)(1); ICH Q7 7.30",
    TestKind.PURITY: "21 CFR 211.84(d)(2)",
    TestKind.STERILITY: "21 CFR 211.84(d)(6)",
}
_REJECT_RULE = "21 CFR 211.84(e)"
_EXPIRY_RULE = "21 CFR 211.87; ICH Q7 7.5"
_COMPLETE_RECORDS_RULE = "21 CFR 211.194(a); EU GMP Annex 11 section 4.8"


def missing_results(results: Iterable[ResultFacts]) -> list[int]:
    """Numbers of the lot's results that exist but have not arrived (gaps in 1..max)."""
    numbers = {r.number for r in results if r.number > 0}
    if not numbers:
        return []
    return sorted(set(range(1, max(numbers) + 1)) - numbers)


def latest_results(results: Iterable[ResultFacts]) -> dict[TestKind, ResultFacts]:
    """The latest result per test: later results supersede earlier ones."""
    latest: dict[TestKind, ResultFacts] = {}
    for result in results:
        held = latest.get(result.test)
        if held is None or result.sequence > held.sequence:
            latest[result.test] = result
    return latest


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
           results: Iterable[ResultFacts], now: datetime) -> Decision:
    """The release decision for `lot` from what is known at `now`.

    A failing result rejects the lot whatever came after it: a retest cannot overrule a
    failure (only an invalidation, which removes the result, can). So the decision
    depends on the set of results, never on the order in which they arrived.
    """
    results = list(results)
    unmet: list[Unmet] = []
    supplier = qualification_unmet(lot, qualification, now)
    if supplier:
        unmet.append(supplier)
    latest = latest_results(results)
    used: list[ResultFacts] = []
    failed = False
    for test in REQUIRED_TESTS:
        name = test.value.lower()
        failures = sorted((r for r in results if r.test is test and r.verdict is Verdict.FAIL),
                          key=lambda r: r.sequence)
        if failures:
            failed = True
            used.extend(failures)
            ids = ", ".join(r.result_id for r in failures)
            unmet.append(Unmet(f"{test.value}_FAILED",
                               f"{name} result {ids} fails its specification "
                               f"(version {failures[0].spec_version})",
                               f"{_TEST_RULES[test]}; {_REJECT_RULE}"))
        elif test in latest:
            used.append(latest[test])
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
    if now.date() > lot.expiry_date:
        unmet.append(Unmet("LOT_EXPIRED", f"the lot expired on {lot.expiry_date.isoformat()}",
                           _EXPIRY_RULE))
    if failed:
        status = LotStatus.REJECTED
    elif unmet:
        status = LotStatus.QUARANTINE
    else:
        status = LotStatus.RELEASED
    return Decision(status, tuple(unmet), tuple(used))


def next_status(current: LotStatus | None, decision: Decision) -> LotStatus:
    """The status a lot moves to, given the status it has and a fresh decision.

    REJECTED is final. A released lot goes back to quarantine only when it expires or
    is rejected by a failing result: a supplier lapse after release does not silently
    change it (QA reviews such lots).
    """
    if current is LotStatus.REJECTED:
        return LotStatus.REJECTED
    if current is LotStatus.RELEASED and decision.status is LotStatus.QUARANTINE:
        expired = any(u.code == "LOT_EXPIRED" for u in decision.unmet)
        return LotStatus.QUARANTINE if expired else LotStatus.RELEASED
    return decision.status


def expired_on_read(status: LotStatus, expiry_date: date, now: datetime) -> bool:
    """A released lot past its expiry date must not be picked, even before a new decision."""
    return status is LotStatus.RELEASED and now.date() > expiry_date


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
