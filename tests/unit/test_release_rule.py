"""The release rule, exhaustively: every combination of supplier site standing and results."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from services.lots.domain import (
    Decision,
    LotFacts,
    LotStatus,
    QualificationFacts,
    ResultFacts,
    TestKind,
    Verdict,
    decide,
    expired_on_read,
    next_status,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LOT = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=date(2027, 6, 30))
QUALIFIED = QualificationFacts("QUALIFIED", NOW + timedelta(days=30), 3)


def result(test: TestKind, verdict: Verdict = Verdict.PASS, sequence: int = 1) -> ResultFacts:
    return ResultFacts(f"R-{test.value}-{sequence}", test, verdict, sequence, spec_version=2)


ALL_PASS = [result(TestKind.IDENTITY, sequence=1), result(TestKind.PURITY, sequence=2),
            result(TestKind.STERILITY, sequence=3)]


def codes(decision: Decision) -> list[str]:
    return [u.code for u in decision.unmet]


def test_a_lot_is_released_when_the_supplier_is_qualified_and_all_three_tests_pass() -> None:
    decision = decide(LOT, QUALIFIED, ALL_PASS, NOW)

    assert decision.status is LotStatus.RELEASED
    assert decision.unmet == ()
    assert {r.result_id for r in decision.used_results} == {r.result_id for r in ALL_PASS}


@pytest.mark.parametrize("missing", list(TestKind))
def test_lot_stays_quarantined_when_a_test_result_is_missing(missing: TestKind) -> None:
    results = [r for r in ALL_PASS if r.test is not missing]

    decision = decide(LOT, QUALIFIED, results, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == [f"{missing.value}_MISSING"]


@pytest.mark.parametrize("failing", list(TestKind))
def test_lot_is_rejected_when_a_test_fails(failing: TestKind) -> None:
    results = [r for r in ALL_PASS if r.test is not failing] + [
        result(failing, Verdict.FAIL, sequence=9)]

    decision = decide(LOT, QUALIFIED, results, NOW)

    assert decision.status is LotStatus.REJECTED
    assert codes(decision) == [f"{failing.value}_FAILED"]
    assert "211.84(e)" in decision.unmet[0].rule


@pytest.mark.parametrize("status,code", [
    ("", "SUPPLIER_NOT_QUALIFIED"),
    ("PENDING", "SUPPLIER_NOT_QUALIFIED"),
    ("SUSPENDED", "SUPPLIER_SUSPENDED"),
    ("DISQUALIFIED", "SUPPLIER_DISQUALIFIED"),
    ("EXPIRED", "QUALIFICATION_EXPIRED"),
])
def test_lot_stays_quarantined_unless_the_supplier_is_qualified(status: str, code: str) -> None:
    qualification = QualificationFacts(status, NOW + timedelta(days=30), 1) if status else None

    decision = decide(LOT, qualification, ALL_PASS, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == [code]


@pytest.mark.parametrize("valid_until", [NOW, NOW - timedelta(seconds=1), None])
def test_a_lapsed_qualification_does_not_count(valid_until: datetime | None) -> None:
    decision = decide(LOT, QualificationFacts("QUALIFIED", valid_until, 4), ALL_PASS, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == ["QUALIFICATION_EXPIRED"]


def test_a_qualification_past_valid_until_does_not_count_before_the_expiry_is_announced(
        ) -> None:
    # The projection still says QUALIFIED (the EXPIRED event is on its way): the rule
    # looks at the date itself, so the lot that was about to be released is not.
    valid_until = NOW + timedelta(days=1)
    qualification = QualificationFacts("QUALIFIED", valid_until, 4)
    assert decide(LOT, qualification, ALL_PASS, NOW).status is LotStatus.RELEASED

    later = decide(LOT, qualification, ALL_PASS, valid_until + timedelta(seconds=1))

    assert later.status is LotStatus.QUARANTINE
    assert codes(later) == ["QUALIFICATION_EXPIRED"]
    assert valid_until.isoformat() in later.unmet[0].message


@pytest.mark.parametrize("valid_until", [NOW + timedelta(days=30), NOW - timedelta(days=1),
                                         None])
def test_an_announced_expiry_does_not_count_whatever_its_date(
        valid_until: datetime | None) -> None:
    decision = decide(LOT, QualificationFacts("EXPIRED", valid_until, 5), ALL_PASS, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == ["QUALIFICATION_EXPIRED"]
    assert "ICH Q7" in decision.unmet[0].rule


@pytest.mark.parametrize("status,says", [
    ("", "is not qualified"), ("PENDING", "is not qualified"),
    ("SUSPENDED", "is suspended"), ("DISQUALIFIED", "is disqualified"),
    ("EXPIRED", "lapsed on"), ("QUALIFIED", "lapsed on"),
])
def test_the_unmet_supplier_condition_names_the_supplier_site_and_material(
        status: str, says: str) -> None:
    qualification = QualificationFacts(status, NOW - timedelta(days=1), 1) if status else None

    [unmet] = decide(LOT, qualification, ALL_PASS, NOW).unmet

    assert "supplier SUP-1 site SITE-1 for material MAT-1" in unmet.message
    assert says in unmet.message


def test_a_qualification_valid_one_second_longer_counts() -> None:
    qualification = QualificationFacts("QUALIFIED", NOW + timedelta(seconds=1), 4)

    assert decide(LOT, qualification, ALL_PASS, NOW).status is LotStatus.RELEASED


def test_a_lot_past_its_expiry_date_is_not_released() -> None:
    expired = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1",
                       expiry_date=NOW.date() - timedelta(days=1))
    on_the_day = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=NOW.date())

    assert codes(decide(expired, QUALIFIED, ALL_PASS, NOW)) == ["LOT_EXPIRED"]
    assert decide(on_the_day, QUALIFIED, ALL_PASS, NOW).status is LotStatus.RELEASED


def test_a_later_passing_result_supersedes_an_earlier_passing_one() -> None:
    results = [*ALL_PASS, result(TestKind.PURITY, Verdict.PASS, sequence=7)]

    decision = decide(LOT, QUALIFIED, results, NOW)

    assert "R-PURITY-7" in {r.result_id for r in decision.used_results}


def test_a_passing_retest_does_not_overrule_a_failure_in_any_order() -> None:
    fail = result(TestKind.STERILITY, Verdict.FAIL, sequence=4)
    retest = result(TestKind.STERILITY, Verdict.PASS, sequence=5)
    base = [r for r in ALL_PASS if r.test is not TestKind.STERILITY]

    for order in itertools.permutations([*base, fail, retest]):
        assert decide(LOT, QUALIFIED, order, NOW).status is LotStatus.REJECTED


def numbered(*pairs: tuple[TestKind, int], verdict: Verdict = Verdict.PASS) -> list[ResultFacts]:
    return [ResultFacts(f"R-{n}", test, verdict, sequence=n, spec_version=1, number=n)
            for test, n in pairs]


def test_a_lot_is_not_released_while_a_numbered_result_has_not_arrived() -> None:
    # Results 1, 2 and 4 are here; 3 was recorded but is still on its way.
    results = numbered((TestKind.IDENTITY, 1), (TestKind.PURITY, 2), (TestKind.STERILITY, 4))

    for order in itertools.permutations(results):
        decision = decide(LOT, QUALIFIED, order, NOW)
        assert decision.status is LotStatus.QUARANTINE
        assert codes(decision) == ["RESULTS_INCOMPLETE"]
        assert "3" in decision.unmet[0].message


def test_the_missing_result_arriving_completes_the_lot() -> None:
    results = numbered((TestKind.IDENTITY, 1), (TestKind.PURITY, 2), (TestKind.PURITY, 3),
                       (TestKind.STERILITY, 4))

    assert decide(LOT, QUALIFIED, results, NOW).status is LotStatus.RELEASED


def test_the_decision_lists_every_unmet_condition_at_once() -> None:
    decision = decide(LOT, None, [result(TestKind.PURITY, Verdict.FAIL)], NOW)

    assert codes(decision) == ["SUPPLIER_NOT_QUALIFIED", "IDENTITY_MISSING", "PURITY_FAILED",
                               "STERILITY_MISSING"]
    assert all(u.message and u.rule for u in decision.unmet)


@pytest.mark.parametrize("qual,identity,purity,sterility", list(itertools.product(
    ["", "PENDING", "QUALIFIED", "QUALIFIED-LAPSED", "SUSPENDED", "DISQUALIFIED", "EXPIRED"],
    [None, Verdict.PASS, Verdict.FAIL],
    [None, Verdict.PASS, Verdict.FAIL],
    [None, Verdict.PASS, Verdict.FAIL])))
def test_released_exactly_when_qualified_and_all_pass_rejected_exactly_when_one_fails(
        qual: str, identity: Verdict | None, purity: Verdict | None,
        sterility: Verdict | None) -> None:
    qualification = {
        "": None,
        "QUALIFIED-LAPSED": QualificationFacts("QUALIFIED", NOW - timedelta(days=1), 2),
    }.get(qual, QualificationFacts(qual, NOW + timedelta(days=1), 2))
    verdicts = {TestKind.IDENTITY: identity, TestKind.PURITY: purity,
                TestKind.STERILITY: sterility}
    results = [result(t, v, sequence=i) for i, (t, v) in enumerate(verdicts.items()) if v]

    decision = decide(LOT, qualification, results, NOW)

    all_pass = all(v is Verdict.PASS for v in verdicts.values())
    any_fail = any(v is Verdict.FAIL for v in verdicts.values())
    assert (decision.status is LotStatus.RELEASED) == (qual == "QUALIFIED" and all_pass)
    assert (decision.status is LotStatus.REJECTED) == any_fail
    assert (decision.unmet == ()) == (decision.status is LotStatus.RELEASED)


def decision_of(status: LotStatus, *codes_: str) -> Decision:
    from services.lots.domain import Unmet

    return Decision(status, tuple(Unmet(c, c, "rule") for c in codes_))


def test_rejected_is_final() -> None:
    assert next_status(LotStatus.REJECTED, decision_of(LotStatus.RELEASED)) is LotStatus.REJECTED


@pytest.mark.parametrize("code", ["SUPPLIER_SUSPENDED", "SUPPLIER_DISQUALIFIED",
                                  "QUALIFICATION_EXPIRED"])
def test_a_released_lot_is_not_silently_pulled_back_by_a_supplier_lapse(code: str) -> None:
    lapse = decision_of(LotStatus.QUARANTINE, code)

    assert next_status(LotStatus.RELEASED, lapse) is LotStatus.RELEASED


def test_a_released_lot_goes_back_to_quarantine_when_it_expires_or_is_rejected() -> None:
    expired = decision_of(LotStatus.QUARANTINE, "LOT_EXPIRED")
    failed = decision_of(LotStatus.REJECTED, "PURITY_FAILED")

    assert next_status(LotStatus.RELEASED, expired) is LotStatus.QUARANTINE
    assert next_status(LotStatus.RELEASED, failed) is LotStatus.REJECTED


def test_a_new_lot_takes_the_decided_status() -> None:
    assert next_status(None, decision_of(LotStatus.QUARANTINE, "X")) is LotStatus.QUARANTINE


def test_a_released_lot_read_after_its_expiry_date_is_not_pickable() -> None:
    assert expired_on_read(LotStatus.RELEASED, NOW.date() - timedelta(days=1), NOW)
    assert not expired_on_read(LotStatus.RELEASED, NOW.date(), NOW)
    assert not expired_on_read(LotStatus.QUARANTINE, NOW.date() - timedelta(days=1), NOW)
