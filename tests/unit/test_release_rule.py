"""The release rule, exhaustively: every combination of supplier site standing, verdicts
and QA's handling of out-of-specification results."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from services.lots.domain import (
    REQUIRED_TESTS,
    Decision,
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Unmet,
    Verdict,
    decide,
    keeps_qa_release,
    moved_by_time,
    next_status,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LOT = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=date(2027, 6, 30))
QUALIFIED = QualificationFacts("QUALIFIED", NOW + timedelta(days=30), 3)
OOS_RULE = "21 CFR 211.192; FDA guidance on investigating OOS results (2006)"

VALID, INVALIDATED, CONFIRMED = ResultState.VALID, ResultState.INVALIDATED, ResultState.CONFIRMED


def result(test: TestKind, verdict: Verdict = Verdict.PASS, sequence: int = 1, *,
           state: ResultState = VALID, reason: str = "", retest_of: str = "",
           required: tuple[TestKind, ...] = ()) -> ResultFacts:
    return ResultFacts(f"R-{test.value}-{sequence}", test, verdict, sequence, spec_version=2,
                       state=state, state_reason=reason, retest_of=retest_of,
                       required_tests=required)


ALL_PASS = [result(TestKind.IDENTITY, sequence=1), result(TestKind.PURITY, sequence=2),
            result(TestKind.STERILITY, sequence=3)]


def but(test: TestKind, *replacements: ResultFacts) -> list[ResultFacts]:
    """ALL_PASS with the results of `test` replaced."""
    return [r for r in ALL_PASS if r.test is not test] + list(replacements)


def codes(decision: Decision) -> list[str]:
    return [u.code for u in decision.unmet]


@pytest.mark.req("REL-001")
def test_a_lot_is_released_when_the_supplier_is_qualified_and_all_three_tests_pass() -> None:
    decision = decide(LOT, QUALIFIED, ALL_PASS, NOW)

    assert decision.status is LotStatus.RELEASED
    assert decision.unmet == ()
    assert {r.result_id for r in decision.used_results} == {r.result_id for r in ALL_PASS}
    assert decision.required_tests == REQUIRED_TESTS


@pytest.mark.req("REL-002")
@pytest.mark.parametrize("missing", REQUIRED_TESTS)
def test_lot_stays_quarantined_when_a_test_result_is_missing(missing: TestKind) -> None:
    results = [r for r in ALL_PASS if r.test is not missing]

    decision = decide(LOT, QUALIFIED, results, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == [f"{missing.value}_MISSING"]


@pytest.mark.req("OOS-001")
@pytest.mark.parametrize("failing", REQUIRED_TESTS)
def test_a_failing_result_holds_the_lot_while_it_is_investigated(failing: TestKind) -> None:
    decision = decide(LOT, QUALIFIED, but(failing, result(failing, Verdict.FAIL, 9)), NOW)

    assert decision.status is LotStatus.ON_HOLD
    assert decision.unmet == (Unmet(
        f"{failing.value}_OUT_OF_SPECIFICATION",
        f"{failing.value.lower()} result R-{failing.value}-9 is out of specification and "
        "under investigation", OOS_RULE),)
    assert [r.result_id for r in decision.used_results if r.test is failing] == [
        f"R-{failing.value}-9"]


@pytest.mark.req("OOS-002")
@pytest.mark.parametrize("failing", REQUIRED_TESTS)
def test_a_failure_confirmed_by_qa_rejects_the_lot(failing: TestKind) -> None:
    confirmed = result(failing, Verdict.FAIL, 9, state=CONFIRMED, reason="no lab error")

    decision = decide(LOT, QUALIFIED, but(failing, confirmed), NOW)

    assert decision.status is LotStatus.REJECTED
    assert codes(decision) == [f"{failing.value}_FAILED"]
    [unmet] = decision.unmet
    assert unmet.message == (f"{failing.value.lower()} result R-{failing.value}-9 fails its "
                             "specification (version 2); confirmed by QA")
    assert unmet.rule.endswith("; 21 CFR 211.84(e)")


@pytest.mark.req("OOS-003")
@pytest.mark.parametrize("failing", REQUIRED_TESTS)
def test_an_invalidated_result_with_nothing_else_waits_for_its_retest(
        failing: TestKind) -> None:
    invalidated = result(failing, Verdict.FAIL, 9, state=INVALIDATED,
                         reason="pipetting error, see INV-7")

    decision = decide(LOT, QUALIFIED, but(failing, invalidated), NOW)

    assert decision.status is LotStatus.QUARANTINE
    [unmet] = decision.unmet
    missing = decide(LOT, QUALIFIED, but(failing), NOW).unmet[0]
    assert unmet == Unmet(f"{failing.value}_RETEST_REQUIRED",
                          f"{failing.value.lower()} result R-{failing.value}-9 was "
                          "invalidated (pipetting error, see INV-7); a retest is expected",
                          missing.rule)
    assert invalidated not in decision.used_results


@pytest.mark.req("OOS-003")
def test_an_invalidation_without_a_known_reason_says_so_plainly() -> None:
    invalidated = result(TestKind.PURITY, Verdict.PASS, 9, state=INVALIDATED)

    [unmet] = decide(LOT, QUALIFIED, but(TestKind.PURITY, invalidated), NOW).unmet

    assert unmet.message == ("purity result R-PURITY-9 was invalidated; "
                             "a retest is expected")


@pytest.mark.req("OOS-003")
def test_the_retest_required_names_the_latest_invalidated_result() -> None:
    first = result(TestKind.STERILITY, Verdict.FAIL, 4, state=INVALIDATED, reason="a")
    retest = result(TestKind.STERILITY, Verdict.FAIL, 8, state=INVALIDATED, reason="b",
                    retest_of=first.result_id)

    for order in itertools.permutations(but(TestKind.STERILITY, first, retest)):
        [unmet] = decide(LOT, QUALIFIED, order, NOW).unmet
        assert unmet.message.startswith("sterility result R-STERILITY-8 was invalidated (b)")


@pytest.mark.req("OOS-003")
def test_an_invalidated_failure_and_a_passing_retest_release_the_lot() -> None:
    failure = result(TestKind.STERILITY, Verdict.FAIL, 4, state=INVALIDATED, reason="lab")
    retest = result(TestKind.STERILITY, Verdict.PASS, 5, retest_of=failure.result_id)

    decision = decide(LOT, QUALIFIED, but(TestKind.STERILITY, failure, retest), NOW)

    assert decision.status is LotStatus.RELEASED
    assert retest in decision.used_results and failure not in decision.used_results


@pytest.mark.req("OOS-003", "REL-007")
def test_an_invalidated_failure_leaves_the_passing_result_before_it_to_count() -> None:
    passing = result(TestKind.PURITY, Verdict.PASS, 2)
    failure = result(TestKind.PURITY, Verdict.FAIL, 6, state=INVALIDATED)

    decision = decide(LOT, QUALIFIED, but(TestKind.PURITY, passing, failure), NOW)

    assert decision.status is LotStatus.RELEASED
    assert passing in decision.used_results


@pytest.mark.req("OOS-003")
def test_an_invalidated_pass_does_not_count_either() -> None:
    passing = result(TestKind.PURITY, Verdict.PASS, 2)
    later = result(TestKind.PURITY, Verdict.PASS, 6, state=INVALIDATED)

    decision = decide(LOT, QUALIFIED, but(TestKind.PURITY, passing, later), NOW)

    assert decision.status is LotStatus.RELEASED
    assert passing in decision.used_results and later not in decision.used_results


@pytest.mark.req("REL-007")
@pytest.mark.parametrize("state,status,code", [
    (VALID, LotStatus.ON_HOLD, "STERILITY_OUT_OF_SPECIFICATION"),
    (CONFIRMED, LotStatus.REJECTED, "STERILITY_FAILED"),
])
def test_a_passing_retest_does_not_overrule_a_failure_that_counts_in_any_order(
        state: ResultState, status: LotStatus, code: str) -> None:
    fail = result(TestKind.STERILITY, Verdict.FAIL, sequence=4, state=state)
    retest = result(TestKind.STERILITY, Verdict.PASS, sequence=5)

    for order in itertools.permutations(but(TestKind.STERILITY, fail, retest)):
        decision = decide(LOT, QUALIFIED, order, NOW)
        assert (decision.status, codes(decision)) == (status, [code])


@pytest.mark.req("OOS-002", "REL-009")
def test_a_confirmed_failure_outranks_an_investigation_of_the_same_test() -> None:
    confirmed = result(TestKind.PURITY, Verdict.FAIL, 4, state=CONFIRMED)
    investigated = result(TestKind.PURITY, Verdict.FAIL, 5)

    decision = decide(LOT, QUALIFIED, but(TestKind.PURITY, confirmed, investigated), NOW)

    assert (decision.status, codes(decision)) == (LotStatus.REJECTED, ["PURITY_FAILED"])


@pytest.mark.req("REL-009")
def test_rejected_outranks_on_hold_which_outranks_quarantine() -> None:
    confirmed = result(TestKind.IDENTITY, Verdict.FAIL, 4, state=CONFIRMED)
    investigated = result(TestKind.PURITY, Verdict.FAIL, 5)

    everything = decide(LOT, None, [confirmed, investigated], NOW)
    held = decide(LOT, None, [investigated], NOW)

    assert everything.status is LotStatus.REJECTED
    assert codes(everything) == ["SUPPLIER_NOT_QUALIFIED", "IDENTITY_FAILED",
                                 "PURITY_OUT_OF_SPECIFICATION", "STERILITY_MISSING"]
    assert held.status is LotStatus.ON_HOLD
    assert codes(held) == ["SUPPLIER_NOT_QUALIFIED", "IDENTITY_MISSING",
                           "PURITY_OUT_OF_SPECIFICATION", "STERILITY_MISSING"]


@pytest.mark.req("OOS-001", "REL-003")
def test_every_investigated_failure_of_a_test_is_named() -> None:
    results = but(TestKind.PURITY, result(TestKind.PURITY, Verdict.FAIL, 7),
                  result(TestKind.PURITY, Verdict.FAIL, 5))

    [unmet] = decide(LOT, QUALIFIED, results, NOW).unmet

    assert unmet.message.startswith("purity result R-PURITY-5, R-PURITY-7 is out of")


SPEC_WITH_ASSAY = (*REQUIRED_TESTS, TestKind.ASSAY)


@pytest.mark.req("REL-006")
def test_a_test_the_specification_requires_is_required() -> None:
    results = [result(r.test, r.verdict, r.sequence, required=SPEC_WITH_ASSAY)
               for r in ALL_PASS]

    waiting = decide(LOT, QUALIFIED, results, NOW)
    assay = result(TestKind.ASSAY, Verdict.PASS, 9, required=SPEC_WITH_ASSAY)
    released = decide(LOT, QUALIFIED, [*results, assay], NOW)

    assert waiting.status is LotStatus.QUARANTINE
    assert waiting.unmet == (Unmet("ASSAY_MISSING", "no assay result yet",
                                   "21 CFR 211.84(d)(2)"),)
    assert waiting.required_tests == SPEC_WITH_ASSAY
    assert released.status is LotStatus.RELEASED
    assert assay in released.used_results


@pytest.mark.req("REL-006")
def test_one_result_of_a_specification_with_a_test_is_enough_to_require_it() -> None:
    # Even an invalidated one: it was judged against a version that requires bioburden.
    bioburden = result(TestKind.BIOBURDEN, Verdict.FAIL, 9, state=INVALIDATED,
                       required=(*REQUIRED_TESTS, TestKind.BIOBURDEN))

    decision = decide(LOT, QUALIFIED, [*ALL_PASS, bioburden], NOW)

    assert codes(decision) == ["BIOBURDEN_RETEST_REQUIRED"]
    assert decision.unmet[0].rule == "21 CFR 211.84(d)(6); USP <61>"


@pytest.mark.req("REL-006")
@pytest.mark.parametrize("test,rule", [(TestKind.ASSAY, "21 CFR 211.84(d)(2)"),
                                       (TestKind.BIOBURDEN, "21 CFR 211.84(d)(6); USP <61>")])
def test_an_added_test_is_handled_like_the_others(test: TestKind, rule: str) -> None:
    required = (*REQUIRED_TESTS, test)
    base = [result(r.test, r.verdict, r.sequence, required=required) for r in ALL_PASS]

    held = decide(LOT, QUALIFIED, [*base, result(test, Verdict.FAIL, 9)], NOW)
    rejected = decide(LOT, QUALIFIED, [*base, result(test, Verdict.FAIL, 9,
                                                     state=CONFIRMED)], NOW)

    assert (held.status, codes(held)) == (LotStatus.ON_HOLD,
                                          [f"{test.value}_OUT_OF_SPECIFICATION"])
    assert (rejected.status, codes(rejected)) == (LotStatus.REJECTED, [f"{test.value}_FAILED"])
    assert rejected.unmet[0].rule == f"{rule}; 21 CFR 211.84(e)"


@pytest.mark.req("REL-006")
def test_a_result_of_a_test_nobody_requires_does_not_decide() -> None:
    # An assay result judged against a specification without assay cannot hold the lot.
    stray = result(TestKind.ASSAY, Verdict.FAIL, 9)

    assert decide(LOT, QUALIFIED, [*ALL_PASS, stray], NOW).status is LotStatus.RELEASED


@pytest.mark.req("REL-007")
def test_the_same_results_in_any_order_give_the_same_decision() -> None:
    required = (*REQUIRED_TESTS, TestKind.ASSAY)
    results = [
        result(TestKind.IDENTITY, Verdict.PASS, 1, required=required),
        result(TestKind.PURITY, Verdict.FAIL, 2, state=INVALIDATED, reason="column"),
        result(TestKind.PURITY, Verdict.PASS, 3, retest_of="R-PURITY-2"),
        result(TestKind.STERILITY, Verdict.FAIL, 4),
        result(TestKind.STERILITY, Verdict.PASS, 5, state=INVALIDATED),
        result(TestKind.ASSAY, Verdict.FAIL, 6, state=INVALIDATED),
    ]
    expected = decide(LOT, QUALIFIED, results, NOW)

    for order in itertools.permutations(results):
        assert decide(LOT, QUALIFIED, order, NOW) == expected
    assert expected.status is LotStatus.ON_HOLD
    assert codes(expected) == ["STERILITY_OUT_OF_SPECIFICATION", "ASSAY_RETEST_REQUIRED"]


@pytest.mark.req("REL-004")
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


@pytest.mark.req("REL-005")
@pytest.mark.parametrize("valid_until", [NOW, NOW - timedelta(seconds=1), None])
def test_a_lapsed_qualification_does_not_count(valid_until: datetime | None) -> None:
    decision = decide(LOT, QualificationFacts("QUALIFIED", valid_until, 4), ALL_PASS, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == ["QUALIFICATION_EXPIRED"]


@pytest.mark.req("REL-005")
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


@pytest.mark.req("REL-005")
@pytest.mark.parametrize("valid_until", [NOW + timedelta(days=30), NOW - timedelta(days=1),
                                         None])
def test_an_announced_expiry_does_not_count_whatever_its_date(
        valid_until: datetime | None) -> None:
    decision = decide(LOT, QualificationFacts("EXPIRED", valid_until, 5), ALL_PASS, NOW)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == ["QUALIFICATION_EXPIRED"]
    assert "ICH Q7" in decision.unmet[0].rule


@pytest.mark.req("REL-003", "REL-004")
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


@pytest.mark.req("REL-005")
def test_a_qualification_valid_one_second_longer_counts() -> None:
    qualification = QualificationFacts("QUALIFIED", NOW + timedelta(seconds=1), 4)

    assert decide(LOT, qualification, ALL_PASS, NOW).status is LotStatus.RELEASED


@pytest.mark.req("QA-003")
def test_a_lot_past_its_expiry_date_is_not_released() -> None:
    expired = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1",
                       expiry_date=NOW.date() - timedelta(days=1))
    on_the_day = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=NOW.date())

    assert codes(decide(expired, QUALIFIED, ALL_PASS, NOW)) == ["LOT_EXPIRED"]
    assert decide(expired, QUALIFIED, ALL_PASS, NOW).status is LotStatus.EXPIRED
    assert decide(on_the_day, QUALIFIED, ALL_PASS, NOW).status is LotStatus.RELEASED


@pytest.mark.req("REL-007")
def test_a_later_passing_result_supersedes_an_earlier_passing_one() -> None:
    results = [*ALL_PASS, result(TestKind.PURITY, Verdict.PASS, sequence=7)]

    decision = decide(LOT, QUALIFIED, results, NOW)

    assert "R-PURITY-7" in {r.result_id for r in decision.used_results}


def numbered(*pairs: tuple[TestKind, int], verdict: Verdict = Verdict.PASS) -> list[ResultFacts]:
    return [ResultFacts(f"R-{n}", test, verdict, sequence=n, spec_version=1, number=n)
            for test, n in pairs]


@pytest.mark.req("REL-008")
def test_a_lot_is_not_released_while_a_numbered_result_has_not_arrived() -> None:
    # Results 1, 2 and 4 are here; 3 was recorded but is still on its way.
    results = numbered((TestKind.IDENTITY, 1), (TestKind.PURITY, 2), (TestKind.STERILITY, 4))

    for order in itertools.permutations(results):
        decision = decide(LOT, QUALIFIED, order, NOW)
        assert decision.status is LotStatus.QUARANTINE
        assert codes(decision) == ["RESULTS_INCOMPLETE"]
        assert "3" in decision.unmet[0].message


@pytest.mark.req("REL-008")
def test_the_missing_result_arriving_completes_the_lot() -> None:
    results = numbered((TestKind.IDENTITY, 1), (TestKind.PURITY, 2), (TestKind.PURITY, 3),
                       (TestKind.STERILITY, 4))

    assert decide(LOT, QUALIFIED, results, NOW).status is LotStatus.RELEASED


@pytest.mark.req("REL-003")
def test_the_decision_lists_every_unmet_condition_at_once() -> None:
    decision = decide(LOT, None, [result(TestKind.PURITY, Verdict.FAIL, state=CONFIRMED)], NOW)

    assert codes(decision) == ["SUPPLIER_NOT_QUALIFIED", "IDENTITY_MISSING", "PURITY_FAILED",
                               "STERILITY_MISSING"]
    assert all(u.message and u.rule for u in decision.unmet)


@pytest.mark.req("REL-008")
def test_an_invalidated_result_still_fills_its_place_in_the_numbering() -> None:
    results = numbered((TestKind.IDENTITY, 1), (TestKind.PURITY, 3), (TestKind.STERILITY, 4))
    invalidated = ResultFacts("R-2", TestKind.PURITY, Verdict.FAIL, sequence=2,
                              spec_version=1, number=2, state=INVALIDATED)

    assert codes(decide(LOT, QUALIFIED, results, NOW)) == ["RESULTS_INCOMPLETE"]
    assert decide(LOT, QUALIFIED, [*results, invalidated], NOW).status is LotStatus.RELEASED


# What one required test has: nothing, or one result in one verdict and state.
OUTCOMES = {
    "none": None,
    "pass": (Verdict.PASS, VALID),
    "oos": (Verdict.FAIL, VALID),
    "confirmed": (Verdict.FAIL, CONFIRMED),
    "invalidated": (Verdict.FAIL, INVALIDATED),
    "invalidated-pass": (Verdict.PASS, INVALIDATED),
}


@pytest.mark.req("REL-001", "REL-004", "REL-009")
@pytest.mark.parametrize("qual,identity,purity,sterility", list(itertools.product(
    ["", "PENDING", "QUALIFIED", "QUALIFIED-LAPSED", "SUSPENDED", "DISQUALIFIED", "EXPIRED"],
    OUTCOMES, OUTCOMES, OUTCOMES)))
def test_the_status_follows_from_the_supplier_verdicts_and_states(
        qual: str, identity: str, purity: str, sterility: str) -> None:
    qualification = {
        "": None,
        "QUALIFIED-LAPSED": QualificationFacts("QUALIFIED", NOW - timedelta(days=1), 2),
    }.get(qual, QualificationFacts(qual, NOW + timedelta(days=1), 2))
    outcomes = {TestKind.IDENTITY: identity, TestKind.PURITY: purity,
                TestKind.STERILITY: sterility}
    results = [result(t, OUTCOMES[o][0], sequence=i, state=OUTCOMES[o][1])
               for i, (t, o) in enumerate(outcomes.items()) if OUTCOMES[o]]

    decision = decide(LOT, qualification, results, NOW)

    kinds = set(outcomes.values())
    assert (decision.status is LotStatus.RELEASED) == (qual == "QUALIFIED" and kinds == {"pass"})
    assert (decision.status is LotStatus.REJECTED) == ("confirmed" in kinds)
    assert (decision.status is LotStatus.ON_HOLD) == (
        "oos" in kinds and "confirmed" not in kinds)
    assert (decision.unmet == ()) == (decision.status is LotStatus.RELEASED)
    expected = {"none": "MISSING", "oos": "OUT_OF_SPECIFICATION", "confirmed": "FAILED",
                "invalidated": "RETEST_REQUIRED", "invalidated-pass": "RETEST_REQUIRED"}
    assert [c for c in codes(decision) if c.startswith(("IDENTITY", "PURITY", "STERILITY"))] == [
        f"{t.value}_{expected[o]}" for t, o in outcomes.items() if o != "pass"]


def decision_of(status: LotStatus, *codes_: str) -> Decision:
    return Decision(status, tuple(Unmet(c, c, "rule") for c in codes_))


Q, R, J, H = LotStatus.QUARANTINE, LotStatus.RELEASED, LotStatus.REJECTED, LotStatus.ON_HOLD
A, E = LotStatus.RELEASABLE, LotStatus.EXPIRED


@pytest.mark.req("REL-009", "REL-010")
@pytest.mark.parametrize("current,decided,codes_,expected", [
    # A new lot takes the decided status.
    (None, Q, ("X",), Q), (None, R, (), R), (None, H, ("X",), H), (None, J, ("X",), J),
    # REJECTED is final.
    (J, R, (), J), (J, Q, ("X",), J), (J, H, ("X",), J),
    # Quarantine: whatever the decision says.
    (Q, R, (), R), (Q, H, ("X",), H), (Q, J, ("X",), J), (Q, Q, ("X",), Q),
    # Released: not silently pulled back by a supplier lapse (QA reviews it) ...
    (R, Q, ("SUPPLIER_SUSPENDED",), R), (R, Q, ("SUPPLIER_DISQUALIFIED",), R),
    (R, Q, ("QUALIFICATION_EXPIRED",), R),
    # ... but by anything about the lot itself: its expiry, a result invalidated after
    # release, a result on its way, an out-of-specification result, a confirmed failure.
    (R, Q, ("LOT_EXPIRED",), Q), (R, Q, ("SUPPLIER_SUSPENDED", "LOT_EXPIRED"), Q),
    (R, Q, ("PURITY_RETEST_REQUIRED",), Q), (R, Q, ("QUALIFICATION_EXPIRED",
                                                    "STERILITY_RETEST_REQUIRED"), Q),
    (R, Q, ("RESULTS_INCOMPLETE",), Q),
    (R, H, ("PURITY_OUT_OF_SPECIFICATION",), H), (R, J, ("PURITY_FAILED",), J),
    (R, R, (), R),
    # On hold: whatever the decision says once QA has dealt with the result.
    (H, R, (), R), (H, Q, ("PURITY_RETEST_REQUIRED",), Q),
    (H, Q, ("SUPPLIER_SUSPENDED",), Q), (H, J, ("PURITY_FAILED",), J),
    (H, H, ("PURITY_OUT_OF_SPECIFICATION",), H),
    # EXPIRED is final too, and outranks everything else.
    (E, R, (), E), (E, Q, ("X",), E), (E, A, ("QA_RELEASE_REQUIRED",), E), (E, J, ("X",), E),
    (Q, E, ("LOT_EXPIRED",), E), (R, E, ("LOT_EXPIRED",), E), (A, E, ("LOT_EXPIRED",), E),
    (H, E, ("LOT_EXPIRED",), E), (J, E, ("LOT_EXPIRED",), J), (None, E, ("LOT_EXPIRED",), E),
    # The retest date pulls a released lot back; QA's hold and rejection apply to it.
    (R, Q, ("RETEST_DATE_REACHED",), Q), (R, Q, ("SUPPLIER_SUSPENDED", "RETEST_DATE_REACHED"), Q),
    (R, H, ("QA_HOLD",), H), (R, J, ("QA_REJECTED",), J),
    # A released lot is not made RELEASABLE by a policy set after its release.
    (R, A, ("QA_RELEASE_REQUIRED",), R),
    # RELEASABLE: released when the rule says so (QA released it), else what it says.
    (None, A, ("QA_RELEASE_REQUIRED",), A), (Q, A, ("QA_RELEASE_REQUIRED",), A),
    (A, A, ("QA_RELEASE_REQUIRED",), A), (A, R, (), R), (A, Q, ("SUPPLIER_SUSPENDED",), Q),
    (A, Q, ("RETEST_DATE_REACHED",), Q), (A, H, ("QA_HOLD",), H), (A, J, ("QA_REJECTED",), J),
    (H, A, ("QA_RELEASE_REQUIRED",), A),
])
def test_next_status(current: LotStatus | None, decided: LotStatus, codes_: tuple[str, ...],
                     expected: LotStatus) -> None:
    assert next_status(current, decision_of(decided, *codes_)) is expected


@pytest.mark.req("WMS-002")
@pytest.mark.parametrize("status", [LotStatus.RELEASED, LotStatus.RELEASABLE])
def test_a_usable_lot_read_after_its_dates_is_not_usable_before_the_scheduler_runs(
        status: LotStatus) -> None:
    today, yesterday, tomorrow = NOW.date(), NOW.date() - timedelta(days=1), (
        NOW.date() + timedelta(days=1))

    expired = moved_by_time(status, yesterday, None, NOW)
    retest = moved_by_time(status, tomorrow, today, NOW)

    assert expired is not None and expired[0] is LotStatus.EXPIRED
    assert expired[1].code == "LOT_EXPIRED"
    assert retest is not None and retest[0] is LotStatus.QUARANTINE
    assert retest[1].code == "RETEST_DATE_REACHED"
    # The expiry day itself is still usable, the day before the retest date too.
    assert moved_by_time(status, today, tomorrow, NOW) is None


@pytest.mark.req("WMS-002")
@pytest.mark.parametrize("status", [LotStatus.QUARANTINE, LotStatus.ON_HOLD,
                                    LotStatus.REJECTED, LotStatus.EXPIRED])
def test_a_lot_that_is_not_usable_is_read_as_decided(status: LotStatus) -> None:
    yesterday = NOW.date() - timedelta(days=1)
    assert moved_by_time(status, yesterday, yesterday, NOW) is None


QA_RELEASE = QaFacts(ReleasePolicy.QA_RELEASE)
WITH_RETEST = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=date(2027, 6, 30),
                       retest_date=date(2027, 1, 15))


@pytest.mark.req("QA-001")
def test_under_qa_release_a_lot_that_meets_every_condition_waits_for_qa() -> None:
    decision = decide(LOT, QUALIFIED, ALL_PASS, NOW, QA_RELEASE)

    assert decision.status is LotStatus.RELEASABLE
    assert decision.unmet == (Unmet(
        "QA_RELEASE_REQUIRED", "every condition holds; lots of material MAT-1 are released "
        "by QA, and QA has not released this one", "21 CFR 211.22(a); EU GMP Annex 16"),)


@pytest.mark.req("QA-001")
def test_qa_release_releases_a_releasable_lot_and_automatic_needs_none() -> None:
    released = QaFacts(ReleasePolicy.QA_RELEASE, released=True)

    assert decide(LOT, QUALIFIED, ALL_PASS, NOW, released).status is LotStatus.RELEASED
    assert decide(LOT, QUALIFIED, ALL_PASS, NOW, QaFacts()).status is LotStatus.RELEASED
    assert decide(LOT, QUALIFIED, ALL_PASS, NOW).status is LotStatus.RELEASED


@pytest.mark.req("QA-001")
@pytest.mark.parametrize("qa", [QA_RELEASE, QaFacts(ReleasePolicy.QA_RELEASE, released=True)])
def test_qa_release_required_is_only_there_when_nothing_else_is_unmet(qa: QaFacts) -> None:
    decision = decide(LOT, QUALIFIED, but(TestKind.PURITY), NOW, qa)

    assert decision.status is LotStatus.QUARANTINE
    assert codes(decision) == ["PURITY_MISSING"]


@pytest.mark.req("QA-002")
def test_a_qa_hold_holds_the_lot_with_its_reason() -> None:
    decision = decide(LOT, QUALIFIED, ALL_PASS, NOW, QaFacts(hold_reason="label mix-up"))

    assert decision.status is LotStatus.ON_HOLD
    assert decision.unmet == (Unmet("QA_HOLD", "held by QA: label mix-up",
                                    "EU GMP Part I 1.4(xv); 21 CFR 211.22(a)"),)


@pytest.mark.req("QA-002")
def test_a_qa_rejection_rejects_the_lot_with_its_reason() -> None:
    qa = QaFacts(hold_reason="label mix-up", rejection_reason="container damaged")

    decision = decide(LOT, QUALIFIED, ALL_PASS, NOW, qa)

    assert decision.status is LotStatus.REJECTED
    assert codes(decision) == ["QA_HOLD", "QA_REJECTED"]
    assert decision.unmet[1] == Unmet("QA_REJECTED", "rejected by QA: container damaged",
                                      "EU GMP Part I 1.4(xv); 21 CFR 211.22(a)")


@pytest.mark.req("QA-003")
def test_the_retest_date_quarantines_the_lot_from_that_day() -> None:
    the_day = datetime.combine(WITH_RETEST.retest_date, NOW.time(), UTC)
    day_before = the_day - timedelta(days=1)
    qualified = QualificationFacts("QUALIFIED", the_day + timedelta(days=30), 3)

    assert decide(WITH_RETEST, qualified, ALL_PASS, day_before).status is LotStatus.RELEASED
    decision = decide(WITH_RETEST, qualified, ALL_PASS, the_day)
    assert decision.status is LotStatus.QUARANTINE
    assert decision.unmet == (Unmet(
        "RETEST_DATE_REACHED", "the lot's retest date 2027-01-15 has come; it must be "
        "re-tested before use", "ICH Q7 11.6; 21 CFR 211.87"),)
    # Even a QA release does not stand against it.
    assert decide(WITH_RETEST, qualified, ALL_PASS, the_day, QaFacts(
        ReleasePolicy.QA_RELEASE, released=True)).status is LotStatus.QUARANTINE


@pytest.mark.req("REL-009")
def test_expired_outranks_rejected_which_outranks_on_hold_then_quarantine_then_releasable(
        ) -> None:
    past = datetime.combine(LOT.expiry_date + timedelta(days=1), NOW.time(), UTC)
    lapsed = QualificationFacts("QUALIFIED", past + timedelta(days=1), 3)
    reject, hold = QaFacts(rejection_reason="r"), QaFacts(hold_reason="h")
    oos = but(TestKind.PURITY, result(TestKind.PURITY, Verdict.FAIL, 9))

    assert decide(LOT, lapsed, ALL_PASS, past, reject).status is LotStatus.EXPIRED
    assert codes(decide(LOT, lapsed, ALL_PASS, past, reject)) == ["LOT_EXPIRED", "QA_REJECTED"]
    assert decide(LOT, QUALIFIED, oos, NOW, reject).status is LotStatus.REJECTED
    assert decide(LOT, QUALIFIED, but(TestKind.PURITY), NOW, hold).status is LotStatus.ON_HOLD
    assert decide(LOT, None, ALL_PASS, NOW, QA_RELEASE).status is LotStatus.QUARANTINE
    assert decide(LOT, QUALIFIED, ALL_PASS, NOW, QA_RELEASE).status is LotStatus.RELEASABLE


@pytest.mark.req("QA-002")
@pytest.mark.parametrize("status,kept", [
    (LotStatus.RELEASED, True), (LotStatus.RELEASABLE, True), (LotStatus.QUARANTINE, False),
    (LotStatus.ON_HOLD, False), (LotStatus.REJECTED, False), (LotStatus.EXPIRED, False)])
def test_a_qa_release_stands_only_while_the_lot_stays_released_or_releasable(
        status: LotStatus, kept: bool) -> None:
    assert keeps_qa_release(status) is kept
