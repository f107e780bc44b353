"""The pure rules of the results service: how a measurement is judged against a specification."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.results.domain import (
    IdentityOutcome,
    Quantity,
    Range,
    Specification,
    SterilityOutcome,
    Verdict,
    evaluate,
    range_problems,
)
from shared.errors import InvalidArgument


def spec(lower: float | None = 98.0, upper: float | None = 102.0, unit: str = "%",
         method: str = "Ph. Eur. 2.6.1") -> Specification:
    return Specification(
        material_code="MAT-A", version=3, identity_reference="IR reference spectrum RS-7",
        purity=Range(lower=lower, upper=upper, unit=unit), sterility_method=method,
        effective_from=datetime(2026, 1, 1, tzinfo=UTC), approved_by="qa.jane")


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


@pytest.mark.parametrize("value", [98.0, 100.0, 102.0])
def test_purity_on_or_between_the_limits_passes(value: float) -> None:
    assert evaluate(Quantity(value, "%"), spec()) == (Verdict.PASS, "")


def test_purity_just_below_the_lower_limit_fails_and_says_so() -> None:
    verdict, reason = evaluate(Quantity(below(98.0), "%"), spec())

    assert verdict is Verdict.FAIL
    assert "below the lower limit 98.0 %" in reason


def test_purity_just_above_the_upper_limit_fails_and_says_so() -> None:
    verdict, reason = evaluate(Quantity(above(102.0), "%"), spec())

    assert verdict is Verdict.FAIL
    assert "above the upper limit 102.0 %" in reason


def test_the_failure_reason_names_the_value_the_limit_and_the_unit() -> None:
    assert evaluate(Quantity(97.1, "%"), spec()) == (
        Verdict.FAIL, "purity 97.1 % is below the lower limit 98.0 %")


def test_a_range_without_an_upper_limit_accepts_any_value_above_the_lower() -> None:
    open_above = spec(lower=98.0, upper=None)

    assert evaluate(Quantity(1e300, "%"), open_above)[0] is Verdict.PASS
    assert evaluate(Quantity(98.0, "%"), open_above)[0] is Verdict.PASS
    assert evaluate(Quantity(below(98.0), "%"), open_above)[0] is Verdict.FAIL


def test_a_range_without_a_lower_limit_accepts_any_value_below_the_upper() -> None:
    open_below = spec(lower=None, upper=0.5, unit="ppm")

    assert evaluate(Quantity(-1e300, "ppm"), open_below)[0] is Verdict.PASS
    assert evaluate(Quantity(0.5, "ppm"), open_below)[0] is Verdict.PASS
    assert evaluate(Quantity(above(0.5), "ppm"), open_below)[0] is Verdict.FAIL


def test_a_single_point_range_accepts_only_that_value() -> None:
    point = spec(lower=100.0, upper=100.0)

    assert evaluate(Quantity(100.0, "%"), point)[0] is Verdict.PASS
    assert evaluate(Quantity(below(100.0), "%"), point)[0] is Verdict.FAIL
    assert evaluate(Quantity(above(100.0), "%"), point)[0] is Verdict.FAIL


def test_a_purity_in_another_unit_is_refused_not_converted() -> None:
    with pytest.raises(InvalidArgument) as caught:
        evaluate(Quantity(0.99, "fraction"), spec())

    assert [v.field for v in caught.value.violations] == ["quantity.unit"]
    assert "'%'" in caught.value.violations[0].description


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_purity_is_never_judged(value: float) -> None:
    # NaN compares false with both limits: judged naively it would pass.
    with pytest.raises(InvalidArgument) as caught:
        evaluate(Quantity(value, "%"), spec(lower=None, upper=None))

    assert [v.field for v in caught.value.violations] == ["quantity.value"]


def test_an_identity_match_passes() -> None:
    assert evaluate(IdentityOutcome.MATCH, spec()) == (Verdict.PASS, "")


def test_an_identity_mismatch_fails_naming_the_reference() -> None:
    verdict, reason = evaluate(IdentityOutcome.NO_MATCH, spec())

    assert verdict is Verdict.FAIL
    assert "IR reference spectrum RS-7" in reason


def test_no_growth_passes_sterility() -> None:
    assert evaluate(SterilityOutcome.NO_GROWTH, spec()) == (Verdict.PASS, "")


def test_growth_fails_sterility_naming_the_method() -> None:
    verdict, reason = evaluate(SterilityOutcome.GROWTH, spec())

    assert verdict is Verdict.FAIL
    assert reason == "growth observed in the sterility test (Ph. Eur. 2.6.1)"


@pytest.mark.parametrize(("lower", "upper"), [
    (98.0, 102.0), (98.0, None), (None, 102.0), (100.0, 100.0), (-5.0, -1.0)])
def test_a_range_with_ordered_finite_limits_is_sound(lower, upper) -> None:
    assert range_problems(lower, upper) == []


def test_a_range_needs_at_least_one_limit() -> None:
    assert [limit for limit, _ in range_problems(None, None)] == [""]


def test_a_lower_limit_above_the_upper_is_refused() -> None:
    assert [limit for limit, _ in range_problems(102.0, 98.0)] == ["lower"]


@pytest.mark.parametrize(("lower", "upper", "bad"), [
    (math.nan, 102.0, ["lower"]), (98.0, math.inf, ["upper"]),
    (-math.inf, None, ["lower"]), (math.nan, math.nan, ["lower", "upper"])])
def test_non_finite_limits_are_refused(lower, upper, bad) -> None:
    assert [limit for limit, _ in range_problems(lower, upper)] == bad
