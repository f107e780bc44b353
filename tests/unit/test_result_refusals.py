"""What the lab and QA are told when the results service refuses or judges something: the
exact field violations of a specification, the reason a result fails, and the message,
type and resource of each refused action. Instruments and people read these, and tools
match on the fields, types and subjects."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.results.domain import (
    MAX_DECIMALS,
    Bound,
    IdentityCriterion,
    IdentityOutcome,
    IdentityScore,
    InstrumentStatus,
    Judgement,
    PriorResult,
    Quantity,
    RangeCriterion,
    ResultState,
    Specification,
    SpecificationStatus,
    SterilityCriterion,
    SterilityOutcome,
    TestCriterion,
    TestKind,
    Verdict,
    calibration_problem,
    check_approval,
    check_confirmation,
    check_draft_change,
    check_invalidation,
    check_posting,
    check_status_change,
    check_tests,
    evaluate,
    range_problems,
    rounded,
)
from shared.errors import FailedPrecondition, InvalidArgument

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = TestKind
PURITY = RangeCriterion(Bound(98.0), Bound(102.0), "%", decimals=1)


def violations(e: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in e.violations]


def precondition(e: FailedPrecondition) -> tuple[str, str, str]:
    return e.message, e.type_, e.subject


def criteria_with(*extra: TestCriterion, identity: IdentityCriterion | None = None
             ) -> list[TestCriterion]:
    return [TestCriterion(T.IDENTITY, "FTIR", identity or IdentityCriterion("RS-17")),
            TestCriterion(T.PURITY, "HPLC", PURITY),
            TestCriterion(T.STERILITY, "Ph. Eur. 2.6.1", SterilityCriterion()), *extra]


# Specifications

@pytest.mark.parametrize("min_score,ok", [
    (0.0, True), (100.0, True), (55.5, True), (-0.1, False), (100.1, False),
    (math.nan, False), (math.inf, False), (None, True)])
def test_an_identity_minimum_score_is_a_number_from_0_to_100(min_score: float | None,
                                                            ok: bool) -> None:
    problems = check_tests(criteria_with(identity=IdentityCriterion("RS-17", min_score)))

    assert problems == ([] if ok else [("tests[0].identity.min_score",
                                        "must be a number from 0 to 100")])


def test_an_identity_test_needs_its_reference() -> None:
    assert check_tests(criteria_with(identity=IdentityCriterion("  "))) == [
        ("tests[0].identity.reference", "is required")]


def test_a_specification_without_the_three_tests_names_the_missing_ones() -> None:
    problems = check_tests([TestCriterion(T.PURITY, "HPLC", PURITY)])

    assert problems == [("tests", "must include IDENTITY, STERILITY: identity, purity and "
                                  "sterility are always required for release")]


@pytest.mark.parametrize("criterion,problems", [
    (RangeCriterion(None, None, "%"), [("", "needs a lower bound, an upper bound or both")]),
    (RangeCriterion(Bound(1.0), None, "%"), []),
    (RangeCriterion(None, Bound(1.0), "%"), []),
    (RangeCriterion(Bound(math.nan), Bound(2.0), "%"),
     [("lower.value", "must be a finite number")]),
    (RangeCriterion(Bound(1.0), Bound(math.inf), "%"),
     [("upper.value", "must be a finite number")]),
    (RangeCriterion(Bound(1.0), None, " "), [("unit", "is required")]),
    (RangeCriterion(Bound(1.0), None, "%", decimals=0), []),
    (RangeCriterion(Bound(1.0), None, "%", decimals=MAX_DECIMALS), []),
    (RangeCriterion(Bound(1.0), None, "%", decimals=-1), [("decimals", "must be between 0 and 6")]),
    (RangeCriterion(Bound(1.0), None, "%", decimals=MAX_DECIMALS + 1),
     [("decimals", "must be between 0 and 6")]),
    (RangeCriterion(Bound(2.0), Bound(2.0), "%"), []),
    (RangeCriterion(Bound(2.0, exclusive=True), Bound(2.0), "%"),
     [("lower.value", "leaves no value that could pass ((2, 2] %)")]),
    (RangeCriterion(Bound(2.0), Bound(2.0, exclusive=True), "%"),
     [("lower.value", "leaves no value that could pass ([2, 2) %)")]),
    (RangeCriterion(Bound(3.0), Bound(2.0), "%"),
     [("lower.value", "leaves no value that could pass ([3, 2] %)")]),
    # A range with another problem is not also judged empty.
    (RangeCriterion(Bound(3.0), Bound(2.0), ""), [("unit", "is required")]),
])
def test_each_problem_of_a_range_is_named_on_its_field(
        criterion: RangeCriterion, problems: list[tuple[str, str]]) -> None:
    assert range_problems(criterion) == problems


def test_an_unknown_unit_lists_the_units_lotgate_knows() -> None:
    [(field, description)] = range_problems(RangeCriterion(Bound(1.0), None, "furlong"))

    assert field == "unit"
    assert description.startswith("'furlong' is not a unit Lotgate knows (%, ")
    assert ", mg/g, " in description and description.endswith(")")


def _spec(status: SpecificationStatus) -> Specification:
    return Specification("MAT-1", 3, status, tuple(criteria_with()), None, "qa.jane", NOW, "", None,
                         "first")


def test_only_an_existing_draft_is_changed() -> None:
    draft = _spec(SpecificationStatus.DRAFT)
    assert check_draft_change(draft, material_code="MAT-1", version=3) is draft

    with pytest.raises(FailedPrecondition) as missing:
        check_draft_change(None, material_code="MAT-1", version=3)
    with pytest.raises(FailedPrecondition) as effective:
        check_draft_change(_spec(SpecificationStatus.EFFECTIVE), material_code="MAT-1",
                           version=3)

    subject = "materials/MAT-1/specifications/3"
    assert precondition(missing.value) == (
        "specification MAT-1 version 3 does not exist", "STATE", subject)
    assert precondition(effective.value) == (
        "specification MAT-1 version 3 is EFFECTIVE and can never be edited; create a new "
        "version", "STATE", subject)


@pytest.mark.parametrize("status,approved_by,effective_from,expected", [
    (SpecificationStatus.EFFECTIVE, "qa.lead", NOW,
     ("specification MAT-1 version 3 is already EFFECTIVE", "STATE")),
    (SpecificationStatus.DRAFT, "qa.jane", NOW,
     ("qa.jane wrote this draft and cannot also approve it (four eyes)", "APPROVER")),
    (SpecificationStatus.DRAFT, "qa.lead", NOW - timedelta(seconds=1),
     ("effective_from must not lie in the past", "DATE")),
])
def test_an_approval_is_refused_with_the_reason(status: SpecificationStatus, approved_by: str,
                                                effective_from: datetime,
                                                expected: tuple[str, str]) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        check_approval(_spec(status), approved_by=approved_by, effective_from=effective_from,
                       now=NOW)

    assert precondition(refused.value) == (*expected, "materials/MAT-1/specifications/3")


def test_an_approval_effective_now_by_another_person_is_accepted() -> None:
    assert check_approval(_spec(SpecificationStatus.DRAFT), approved_by="qa.lead",
                          effective_from=NOW, now=NOW) is None


# Judging results

def judge(measurement, test: TestCriterion) -> Judgement:
    return evaluate(measurement, test, material_code="MAT-1", spec_version=3)


@pytest.mark.parametrize("criterion,value,verdict,reason", [
    (RangeCriterion(Bound(98.0), Bound(102.0), "%"), 97.9, Verdict.FAIL,
     "purity 97.9 % is below the lower limit [98, 102] %"),
    (RangeCriterion(Bound(98.0, exclusive=True), None, "%"), 98.0, Verdict.FAIL,
     "purity 98.0 % is not above the lower limit (98, +inf) %"),
    (RangeCriterion(None, Bound(102.0), "%"), 102.5, Verdict.FAIL,
     "purity 102.5 % is above the upper limit (-inf, 102] %"),
    (RangeCriterion(None, Bound(102.0, exclusive=True), "%"), 102.0, Verdict.FAIL,
     "purity 102.0 % is not below the upper limit (-inf, 102) %"),
    (RangeCriterion(Bound(98.0), Bound(102.0), "%"), 98.0, Verdict.PASS, ""),
    (RangeCriterion(Bound(98.0), Bound(102.0), "%"), 102.0, Verdict.PASS, ""),
])
def test_a_quantity_is_judged_against_its_range_and_a_failure_says_which_limit(
        criterion: RangeCriterion, value: float, verdict: Verdict, reason: str) -> None:
    judgement = judge(Quantity(value, "%"), TestCriterion(T.PURITY, "HPLC", criterion))

    assert (judgement.verdict, judgement.reason) == (verdict, reason)
    assert judgement.judged == Quantity(value, "%")


@pytest.mark.parametrize("measurement,criterion,verdict,reason", [
    (IdentityOutcome.MATCH, IdentityCriterion("RS-17"), Verdict.PASS, ""),
    (IdentityOutcome.NO_MATCH, IdentityCriterion("RS-17"), Verdict.FAIL,
     "identity does not match the reference RS-17"),
    (IdentityScore(95.0), IdentityCriterion("RS-17", 95.0), Verdict.PASS, ""),
    (IdentityScore(94.9), IdentityCriterion("RS-17", 95.0), Verdict.FAIL,
     "identity match score 94.9 is below 95.0 against the reference RS-17"),
])
def test_identity_is_judged_by_outcome_or_by_score(measurement, criterion: IdentityCriterion,
                                                   verdict: Verdict, reason: str) -> None:
    judgement = judge(measurement, TestCriterion(T.IDENTITY, "FTIR", criterion))

    assert judgement == Judgement(verdict, reason)


@pytest.mark.parametrize("criterion,method,reason", [
    (SterilityCriterion("Ph. Eur. 2.6.1"), "", "growth observed in the sterility test "
                                               "(Ph. Eur. 2.6.1)"),
    (SterilityCriterion(), "USP <71>", "growth observed in the sterility test (USP <71>)"),
    (SterilityCriterion(), "", "growth observed in the sterility test"),
])
def test_sterility_growth_fails_and_names_the_method(criterion: SterilityCriterion,
                                                     method: str, reason: str) -> None:
    test = TestCriterion(T.STERILITY, method, criterion)

    assert judge(SterilityOutcome.GROWTH, test) == Judgement(Verdict.FAIL, reason)
    assert judge(SterilityOutcome.NO_GROWTH, test) == Judgement(Verdict.PASS, "")


@pytest.mark.parametrize("measurement,test,expected", [
    (Quantity(1.0, "%"), TestCriterion(T.STERILITY, "", SterilityCriterion()),
     [("measurement", "a STERILITY result under this specification carries sterility")]),
    (SterilityOutcome.GROWTH, TestCriterion(T.PURITY, "", PURITY),
     [("measurement", "a PURITY result under this specification carries quantity")]),
    (IdentityOutcome.MATCH, TestCriterion(T.IDENTITY, "", IdentityCriterion("R", 90.0)),
     [("measurement", "a IDENTITY result under this specification carries identity_score")]),
    (IdentityScore(99.0), TestCriterion(T.IDENTITY, "", IdentityCriterion("R")),
     [("measurement", "a IDENTITY result under this specification carries identity")]),
    (IdentityScore(math.nan), TestCriterion(T.IDENTITY, "", IdentityCriterion("R", 90.0)),
     [("identity_score", "must be a finite number")]),
    (Quantity(math.nan, "%"), TestCriterion(T.PURITY, "", PURITY),
     [("quantity.value", "must be a finite number")]),
    (Quantity(1.0, "CFU/g"), TestCriterion(T.PURITY, "", PURITY),
     [("quantity.unit", "'CFU/g' cannot be converted to '%', the unit of specification "
                        "version 3 of MAT-1")]),
])
def test_a_measurement_that_cannot_be_judged_is_refused_on_its_field(
        measurement, test: TestCriterion, expected: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        judge(measurement, test)

    assert violations(refused.value) == expected


def test_rounding_is_half_away_from_zero_to_the_given_decimals() -> None:
    assert rounded(Decimal("1.25"), 1) == Decimal("1.3")
    assert rounded(Decimal("1.24"), 1) == Decimal("1.2")
    assert rounded(Decimal("7.5"), 0) == Decimal("8")
    assert str(rounded(Decimal("2"), 2)) == "2.00"
    assert rounded(Decimal("1.2345"), None) == Decimal("1.2345")


# Instruments and QA's actions

def test_an_instrument_posts_only_when_registered_active_and_calibrated() -> None:
    window = [(date(2026, 10, 1), date(2026, 12, 31))]

    def problem(status, calibrations, day):
        return calibration_problem(instrument_id="HPLC-2", status=status,
                                   calibrations=calibrations, measured_on=day)

    assert problem(InstrumentStatus.ACTIVE, window, date(2026, 10, 1)) is None
    assert problem(InstrumentStatus.ACTIVE, window, date(2026, 12, 31)) is None
    assert problem(None, window, date(2026, 11, 1)) == "instrument HPLC-2 is not registered"
    assert problem(InstrumentStatus.OUT_OF_SERVICE, window, date(2026, 11, 1)) == (
        "instrument HPLC-2 is OUT_OF_SERVICE")
    assert problem(InstrumentStatus.ACTIVE, window, date(2027, 1, 1)) == (
        "instrument HPLC-2 was not within calibration on 2027-01-01; its calibration was due "
        "2026-12-31")
    assert problem(InstrumentStatus.ACTIVE, [], date(2027, 1, 1)) == (
        "instrument HPLC-2 was not within calibration on 2027-01-01")


def test_a_retired_instrument_stays_retired() -> None:
    check_status_change(InstrumentStatus.OUT_OF_SERVICE, instrument_id="HPLC-2")
    with pytest.raises(FailedPrecondition) as refused:
        check_status_change(InstrumentStatus.RETIRED, instrument_id="HPLC-2")

    assert precondition(refused.value) == (
        "instrument HPLC-2 is RETIRED; that is final", "STATE", "instruments/HPLC-2")


def test_only_a_valid_result_is_invalidated_or_confirmed_and_only_a_failure_confirmed(
        ) -> None:
    check_invalidation(ResultState.VALID, result_id="R-1")
    check_confirmation(ResultState.VALID, Verdict.FAIL, result_id="R-1")
    with pytest.raises(FailedPrecondition) as invalidated:
        check_invalidation(ResultState.CONFIRMED, result_id="R-1")
    with pytest.raises(FailedPrecondition) as confirmed:
        check_confirmation(ResultState.INVALIDATED, Verdict.FAIL, result_id="R-1")
    with pytest.raises(FailedPrecondition) as passing:
        check_confirmation(ResultState.VALID, Verdict.PASS, result_id="R-1")

    assert precondition(invalidated.value) == (
        "result R-1 is CONFIRMED; only a VALID result can be invalidated", "STATE", "results/R-1")
    assert precondition(confirmed.value) == (
        "result R-1 is INVALIDATED; only a VALID result can be confirmed", "STATE",
        "results/R-1")
    assert precondition(passing.value) == (
        "result R-1 passes its specification; only an out-of-specification result is "
        "confirmed", "STATE", "results/R-1")


def _prior(result_id: str, verdict: Verdict, state: ResultState, retested: bool = False
           ) -> PriorResult:
    return PriorResult(result_id, verdict, state, retested)


@pytest.mark.parametrize("prior,retest_of,expected", [
    ([_prior("R-1", Verdict.FAIL, ResultState.VALID)], "",
     ("PURITY result R-1 of this lot is out of specification and under investigation: QA "
      "must invalidate or confirm it before another result is taken", "INVESTIGATION",
      "results/R-1")),
    ([], "R-9", ("retest_of R-9 is not a PURITY result of this lot", "RETEST", "results/R-9")),
    ([_prior("R-1", Verdict.PASS, ResultState.VALID)], "R-1",
     ("result R-1 is VALID; only an invalidated result is retested", "RETEST", "results/R-1")),
    ([_prior("R-1", Verdict.FAIL, ResultState.INVALIDATED, retested=True)], "R-1",
     ("result R-1 has been retested already", "RETEST", "results/R-1")),
    ([_prior("R-1", Verdict.FAIL, ResultState.INVALIDATED)], "",
     ("PURITY result R-1 of this lot was invalidated: its retest must name it in retest_of",
      "RETEST", "results/R-1")),
])
def test_a_result_that_would_test_into_compliance_is_refused(
        prior: list[PriorResult], retest_of: str, expected: tuple[str, str, str]) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        check_posting(prior, test=T.PURITY, retest_of=retest_of)

    assert precondition(refused.value) == expected


def test_a_retest_naming_its_invalidated_result_is_taken() -> None:
    prior = [_prior("R-1", Verdict.FAIL, ResultState.INVALIDATED),
             _prior("R-2", Verdict.PASS, ResultState.VALID)]

    assert check_posting(prior, test=T.PURITY, retest_of="R-1") is None
    assert check_posting(prior[1:], test=T.PURITY, retest_of="") is None


def test_a_specification_gives_the_criterion_of_each_of_its_tests() -> None:
    spec = _spec(SpecificationStatus.DRAFT)

    assert spec.criterion(T.PURITY) == TestCriterion(T.PURITY, "HPLC", PURITY)
    assert spec.criterion(T.IDENTITY).method == "FTIR"
    assert spec.criterion(T.ASSAY) is None
    assert spec.test_kinds == (T.IDENTITY, T.PURITY, T.STERILITY)
