"""The pure rules of the results service: how a measurement is judged against one test of a
specification version, which specifications are sound, which instrument may post, and what
QA may do with a result."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.results.domain import (
    Bound,
    IdentityCriterion,
    IdentityOutcome,
    IdentityScore,
    InstrumentStatus,
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
    convert,
    evaluate,
    in_force,
    rounded,
)
from shared.errors import FailedPrecondition, InvalidArgument

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def purity(lower: float | None = 98.0, upper: float | None = 102.0, *, unit: str = "%",
           decimals: int | None = None, lower_exclusive: bool = False,
           upper_exclusive: bool = False) -> TestCriterion:
    return TestCriterion(TestKind.PURITY, "HPLC", RangeCriterion(
        lower=None if lower is None else Bound(lower, lower_exclusive),
        upper=None if upper is None else Bound(upper, upper_exclusive),
        unit=unit, decimals=decimals))


IDENTITY = TestCriterion(TestKind.IDENTITY, "FTIR", IdentityCriterion("RS-7"))
STERILITY = TestCriterion(TestKind.STERILITY, "", SterilityCriterion("Ph. Eur. 2.6.1"))


def judge(measurement, test: TestCriterion):
    return evaluate(measurement, test, material_code="MAT-A", spec_version=3)


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


# Every bound: inclusive, exclusive, equal to the limit, just inside, just outside


@pytest.mark.req("SPEC-004")
@pytest.mark.parametrize(("value", "lower_exclusive", "upper_exclusive", "verdict"), [
    (98.0, False, False, Verdict.PASS),
    (102.0, False, False, Verdict.PASS),
    (100.0, True, True, Verdict.PASS),
    (98.0, True, False, Verdict.FAIL),
    (102.0, False, True, Verdict.FAIL),
    (above(98.0), True, False, Verdict.PASS),
    (below(102.0), False, True, Verdict.PASS),
    (below(98.0), False, False, Verdict.FAIL),
    (above(102.0), False, False, Verdict.FAIL),
])
def test_each_bound_is_inclusive_unless_exclusive(value, lower_exclusive, upper_exclusive,
                                                   verdict) -> None:
    test = purity(lower_exclusive=lower_exclusive, upper_exclusive=upper_exclusive)

    assert judge(Quantity(value, "%"), test).verdict is verdict


@pytest.mark.req("SPEC-004")
def test_a_failure_says_which_limit_and_how_the_range_reads() -> None:
    low = judge(Quantity(97.2, "%"), purity())
    high = judge(Quantity(102.0, "%"), purity(upper_exclusive=True))

    assert low.reason == "purity 97.2 % is below the lower limit [98, 102] %"
    assert high.reason == "purity 102.0 % is not below the upper limit [98, 102) %"


@pytest.mark.req("SPEC-004")
@pytest.mark.parametrize(("value", "verdict", "judged"), [
    (97.95, Verdict.PASS, 98.0),    # rounds up onto the limit: conforms (USP 7.20)
    (97.94, Verdict.FAIL, 97.9),
    (102.04, Verdict.PASS, 102.0),
    (102.05, Verdict.FAIL, 102.1),  # half rounds away from zero, not to even
    (-0.05, Verdict.FAIL, -0.1),
])
def test_values_are_rounded_to_the_reported_precision_before_comparison(
        value, verdict, judged) -> None:
    result = judge(Quantity(value, "%"), purity(decimals=1))

    assert result.verdict is verdict
    assert result.judged == Quantity(judged, "%")


@pytest.mark.req("SPEC-004")
def test_rounding_uses_the_decimal_value_that_was_sent_not_its_binary_neighbour() -> None:
    # 2.675 is stored as 2.67499999...; the instrument sent 2.675, which rounds to 2.68.
    assert rounded(Decimal(repr(2.675)), 2) == Decimal("2.68")
    assert rounded(Decimal("1.5"), None) == Decimal("1.5")


@pytest.mark.req("SPEC-004")
def test_a_range_open_on_one_side_checks_only_the_other() -> None:
    bioburden = TestCriterion(TestKind.BIOBURDEN, "USP <61>", RangeCriterion(
        lower=None, upper=Bound(100), unit="CFU/g"))

    assert judge(Quantity(100, "CFU/g"), bioburden).verdict is Verdict.PASS
    assert judge(Quantity(101, "CFU/g"), bioburden).verdict is Verdict.FAIL
    assert judge(Quantity(-1e9, "CFU/g"), bioburden).verdict is Verdict.PASS


# Units


@pytest.mark.req("SPEC-005")
def test_a_value_in_another_unit_of_the_same_kind_is_converted_then_judged() -> None:
    result = judge(Quantity(994.0, "mg/g"), purity(decimals=1))

    assert result.verdict is Verdict.PASS
    assert result.judged == Quantity(99.4, "%")


@pytest.mark.req("SPEC-005")
@pytest.mark.parametrize(("value", "unit", "to", "expected"), [
    (1, "%", "mg/g", Decimal(10)),
    (250, "ppm", "%", Decimal("0.025")),
    (1, "CFU/mg", "CFU/g", Decimal(1000)),
    (3, "µg/mL", "mg/L", Decimal(3)),
    (5, "CFU/100mL", "CFU/mL", Decimal("0.05")),
])
def test_conversions_are_exact(value, unit, to, expected) -> None:
    assert convert(value, unit, to) == expected


@pytest.mark.req("SPEC-005")
@pytest.mark.parametrize(("unit"), ["mg/mL", "CFU/g", "kg", ""])
def test_a_unit_of_another_kind_is_refused_never_guessed(unit) -> None:
    with pytest.raises(InvalidArgument) as refused:
        judge(Quantity(99.0, unit), purity())

    assert refused.value.violations[0].field == "quantity.unit"
    assert "version 3 of MAT-A" in refused.value.violations[0].description


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_a_finite_number_is_never_judged(value) -> None:
    with pytest.raises(InvalidArgument) as refused:
        judge(Quantity(value, "%"), purity())

    assert refused.value.violations[0].field == "quantity.value"


# Identity and sterility


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [1e30, -1e30, 1e100, 1e308, -1e308, 1.7976931348623157e308])
@pytest.mark.parametrize("decimals", [None, 0, 1, 6])
def test_any_finite_value_far_out_of_range_is_judged_out_of_specification(
        value, decimals) -> None:
    judged = evaluate(Quantity(value, "%"), purity(decimals=decimals), material_code="M",
                      spec_version=1)
    assert judged.verdict is Verdict.FAIL
    assert judged.judged is not None and math.isfinite(judged.judged.value)
    assert len(judged.reason) < 120


@pytest.mark.req("RES-004")
@pytest.mark.parametrize("value", [5e-324, -5e-324, 1e-300])
def test_a_tiny_value_is_rounded_to_zero_and_judged(value) -> None:
    judged = evaluate(Quantity(value, "mg/g"), purity(decimals=1), material_code="M",
                      spec_version=1)
    assert judged.verdict is Verdict.FAIL
    assert judged.judged == Quantity(0.0, "%") or judged.judged == Quantity(-0.0, "%")


@pytest.mark.req("RES-004", "SPEC-004")
def test_rounding_keeps_every_digit_of_a_huge_value() -> None:
    assert rounded(Decimal("1E+308"), 1) == Decimal("1E+308")
    assert rounded(Decimal("123456789012345678901234567890.25"), 1) == Decimal(
        "123456789012345678901234567890.3")


@pytest.mark.req("RES-004")
def test_a_value_too_large_once_converted_is_refused_on_its_field() -> None:
    bioburden = TestCriterion(TestKind.BIOBURDEN, "", RangeCriterion(
        lower=None, upper=Bound(100.0), unit="CFU/g"))
    with pytest.raises(InvalidArgument) as refused:
        evaluate(Quantity(1e308, "CFU/mg"), bioburden, material_code="M", spec_version=1)
    assert [v.field for v in refused.value.violations] == ["quantity.value"]


@pytest.mark.req("SPEC-004")
def test_identity_by_outcome() -> None:
    assert judge(IdentityOutcome.MATCH, IDENTITY).verdict is Verdict.PASS
    failed = judge(IdentityOutcome.NO_MATCH, IDENTITY)
    assert failed.verdict is Verdict.FAIL and "RS-7" in failed.reason


@pytest.mark.req("SPEC-004")
def test_identity_by_score_passes_at_the_threshold_and_fails_below() -> None:
    scored = TestCriterion(TestKind.IDENTITY, "Raman", IdentityCriterion("RS-7", min_score=95.0))

    assert judge(IdentityScore(95.0), scored).verdict is Verdict.PASS
    assert judge(IdentityScore(below(95.0)), scored).verdict is Verdict.FAIL
    with pytest.raises(InvalidArgument):
        judge(IdentityOutcome.MATCH, scored)  # a score is required under this criterion
    with pytest.raises(InvalidArgument):
        judge(IdentityScore(math.nan), scored)


@pytest.mark.req("SPEC-004")
def test_sterility_passes_only_without_growth() -> None:
    assert judge(SterilityOutcome.NO_GROWTH, STERILITY).verdict is Verdict.PASS
    failed = judge(SterilityOutcome.GROWTH, STERILITY)
    assert failed.verdict is Verdict.FAIL and "Ph. Eur. 2.6.1" in failed.reason


@pytest.mark.req("RES-004")
@pytest.mark.parametrize(("measurement", "test"), [
    (Quantity(99, "%"), IDENTITY),
    (IdentityOutcome.MATCH, purity()),
    (SterilityOutcome.NO_GROWTH, purity()),
    (IdentityOutcome.MATCH, STERILITY),
])
def test_a_measurement_of_the_wrong_kind_is_refused(measurement, test) -> None:
    with pytest.raises(InvalidArgument) as refused:
        judge(measurement, test)

    assert refused.value.violations[0].field == "measurement"


# Specifications


@pytest.mark.req("SPEC-006")
def test_a_sound_specification_has_no_problems() -> None:
    assay = TestCriterion(TestKind.ASSAY, "titration", RangeCriterion(
        Bound(95.0), Bound(105.0), "%", 1))

    assert check_tests([IDENTITY, purity(), STERILITY, assay]) == []


@pytest.mark.req("SPEC-006")
@pytest.mark.parametrize(("tests", "fields"), [
    ([IDENTITY, purity()], ["tests"]),
    ([IDENTITY, purity(), STERILITY, purity()], ["tests[3].test"]),
    ([IDENTITY, purity(None, None), STERILITY], ["tests[1].range"]),
    ([IDENTITY, purity(unit="furlongs"), STERILITY], ["tests[1].range.unit"]),
    ([IDENTITY, purity(102.0, 98.0), STERILITY], ["tests[1].range.lower.value"]),
    ([IDENTITY, purity(98.0, 98.0, lower_exclusive=True), STERILITY],
     ["tests[1].range.lower.value"]),
    ([IDENTITY, purity(math.nan), STERILITY], ["tests[1].range.lower.value"]),
    ([IDENTITY, purity(decimals=9), STERILITY], ["tests[1].range.decimals"]),
    ([TestCriterion(TestKind.IDENTITY, "", IdentityCriterion(" ")), purity(), STERILITY],
     ["tests[0].identity.reference"]),
    ([TestCriterion(TestKind.IDENTITY, "", SterilityCriterion()), purity(), STERILITY],
     ["tests[0]"]),
])
def test_an_unsound_specification_names_each_problem(tests, fields) -> None:
    assert [field for field, _ in check_tests(tests)] == fields


def version(n: int, status: SpecificationStatus = SpecificationStatus.EFFECTIVE, *,
            from_: datetime | None = NOW, by: str = "qa.jane") -> Specification:
    return Specification("MAT-A", n, status, (IDENTITY, purity(), STERILITY),
                         from_ if status is SpecificationStatus.EFFECTIVE else None,
                         by, NOW - timedelta(days=1), "", None, "")


@pytest.mark.req("SPEC-003")
def test_the_version_in_force_is_the_latest_effective_one_at_that_instant() -> None:
    versions = [version(1, from_=NOW - timedelta(days=30)), version(2, from_=NOW),
                version(3, from_=NOW + timedelta(days=7)),
                version(4, SpecificationStatus.DRAFT)]

    assert in_force(versions, NOW - timedelta(days=31)) is None
    assert in_force(versions, NOW - timedelta(seconds=1)).version == 1
    assert in_force(versions, NOW).version == 2
    assert in_force(versions, NOW + timedelta(days=8)).version == 3


@pytest.mark.req("SPEC-002")
def test_an_effective_version_is_never_edited_and_a_draft_is() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        check_draft_change(version(2), material_code="MAT-A", version=2)

    assert "EFFECTIVE" in refused.value.message and "new version" in refused.value.message
    draft = version(3, SpecificationStatus.DRAFT)
    assert check_draft_change(draft, material_code="MAT-A", version=3) is draft


@pytest.mark.req("SPEC-001", "DAT-003")
def test_approval_needs_a_second_person_and_no_date_in_the_past() -> None:
    draft = version(3, SpecificationStatus.DRAFT, by="qa.jane")

    with pytest.raises(FailedPrecondition) as own:
        check_approval(draft, approved_by="qa.jane", effective_from=NOW, now=NOW)
    with pytest.raises(FailedPrecondition) as past:
        check_approval(draft, approved_by="qa.lead", effective_from=NOW - timedelta(days=1),
                       now=NOW)
    with pytest.raises(FailedPrecondition):
        check_approval(version(2), approved_by="qa.lead", effective_from=NOW, now=NOW)
    check_approval(draft, approved_by="qa.lead", effective_from=NOW, now=NOW)

    assert own.value.type_ == "APPROVER" and past.value.type_ == "DATE"


# Instruments


CALIBRATED = [(date(2026, 1, 1), date(2026, 6, 30)), (date(2026, 7, 1), date(2026, 12, 31))]


@pytest.mark.req("INS-001")
@pytest.mark.parametrize(("status", "day", "says"), [
    (InstrumentStatus.ACTIVE, date(2026, 12, 31), None),
    (InstrumentStatus.ACTIVE, date(2026, 1, 1), None),
    (InstrumentStatus.ACTIVE, date(2027, 1, 1), "not within calibration on 2027-01-01; "
                                                "its calibration was due 2026-12-31"),
    (InstrumentStatus.ACTIVE, date(2025, 12, 31), "not within calibration"),
    (InstrumentStatus.OUT_OF_SERVICE, date(2026, 6, 1), "is OUT_OF_SERVICE"),
    (InstrumentStatus.RETIRED, date(2026, 6, 1), "is RETIRED"),
    (None, date(2026, 6, 1), "is not registered"),
])
def test_only_a_registered_active_instrument_within_calibration_may_post(
        status, day, says) -> None:
    problem = calibration_problem(instrument_id="HPLC-02", status=status,
                                  calibrations=CALIBRATED, measured_on=day)

    assert (problem is None) if says is None else (says in problem)


@pytest.mark.req("INS-001")
def test_a_retired_instrument_stays_retired() -> None:
    with pytest.raises(FailedPrecondition):
        check_status_change(InstrumentStatus.RETIRED, instrument_id="HPLC-02")
    check_status_change(InstrumentStatus.OUT_OF_SERVICE, instrument_id="HPLC-02")


# Out of specification


@pytest.mark.req("OOS-002", "OOS-003")
def test_only_a_valid_result_is_invalidated_and_only_a_valid_failure_confirmed() -> None:
    check_invalidation(ResultState.VALID, result_id="R1")
    check_confirmation(ResultState.VALID, Verdict.FAIL, result_id="R1")
    for state in (ResultState.INVALIDATED, ResultState.CONFIRMED):
        with pytest.raises(FailedPrecondition):
            check_invalidation(state, result_id="R1")
        with pytest.raises(FailedPrecondition):
            check_confirmation(state, Verdict.FAIL, result_id="R1")
    with pytest.raises(FailedPrecondition) as passing:
        check_confirmation(ResultState.VALID, Verdict.PASS, result_id="R1")
    assert "passes" in passing.value.message


def prior(result_id: str, verdict: Verdict, state: ResultState,
          retested: bool = False) -> PriorResult:
    return PriorResult(result_id, verdict, state, retested)


@pytest.mark.req("OOS-004")
def test_no_other_result_is_taken_while_an_oos_result_is_under_investigation() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        check_posting([prior("R1", Verdict.FAIL, ResultState.VALID)], test=TestKind.PURITY,
                      retest_of="")

    assert refused.value.type_ == "INVESTIGATION" and "R1" in refused.value.message


@pytest.mark.req("OOS-003")
def test_after_an_invalidation_the_retest_must_name_the_invalidated_result() -> None:
    invalidated = [prior("R1", Verdict.FAIL, ResultState.INVALIDATED)]

    with pytest.raises(FailedPrecondition) as unnamed:
        check_posting(invalidated, test=TestKind.PURITY, retest_of="")
    check_posting(invalidated, test=TestKind.PURITY, retest_of="R1")
    assert unnamed.value.type_ == "RETEST"


@pytest.mark.req("OOS-003")
@pytest.mark.parametrize(("results", "retest_of", "says"), [
    ([prior("R1", Verdict.PASS, ResultState.VALID)], "R1", "only an invalidated result"),
    ([prior("R1", Verdict.FAIL, ResultState.INVALIDATED, retested=True)], "R1",
     "retested already"),
    ([], "R9", "is not a PURITY result of this lot"),
])
def test_a_retest_names_an_invalidated_result_that_has_no_retest_yet(
        results, retest_of, says) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        check_posting(results, test=TestKind.PURITY, retest_of=retest_of)

    assert says in refused.value.message


@pytest.mark.req("OOS-004")
def test_a_further_result_after_a_pass_or_a_completed_retest_is_taken() -> None:
    check_posting([prior("R1", Verdict.PASS, ResultState.VALID)], test=TestKind.PURITY,
                  retest_of="")
    check_posting([prior("R1", Verdict.FAIL, ResultState.INVALIDATED, retested=True),
                   prior("R2", Verdict.PASS, ResultState.VALID)], test=TestKind.PURITY,
                  retest_of="")
