"""Judging a measurement: what an instrument reports, and the verdict on it under one
test of a specification version (USP General Notices 7.20 for rounding)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from enum import StrEnum

from services.results.domain.specifications import (
    IdentityCriterion,
    SterilityCriterion,
    TestCriterion,
    show_range,
)
from services.results.domain.units import convert
from shared.contract import TestKind, Verdict
from shared.errors import FieldViolation, InvalidArgument


class IdentityOutcome(StrEnum):
    MATCH = "MATCH"
    NO_MATCH = "NO_MATCH"


class SterilityOutcome(StrEnum):
    NO_GROWTH = "NO_GROWTH"
    GROWTH = "GROWTH"


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str


@dataclass(frozen=True)
class IdentityScore:
    score: float


# What an instrument reports.
Measurement = IdentityOutcome | IdentityScore | Quantity | SterilityOutcome


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    # Why the result fails; "" when it passes.
    reason: str
    # For quantities: the value compared, in the specification's unit, rounded.
    judged: Quantity | None = None


def evaluate(measurement: Measurement, test: TestCriterion, *, material_code: str,
             spec_version: int) -> Judgement:
    """The verdict on a measurement under one test of a specification version.

    A measurement of the wrong kind, a non-finite number, or a unit that cannot be
    converted to the specification's is InvalidArgument: never judged.
    """
    c = test.criterion
    name = test.test.value.lower()
    if isinstance(c, IdentityCriterion):
        return _identity(measurement, c)
    if isinstance(c, SterilityCriterion):
        if not isinstance(measurement, SterilityOutcome):
            raise _wrong_kind("sterility", test.test)
        if measurement is SterilityOutcome.NO_GROWTH:
            return Judgement(Verdict.PASS, "")
        method = f" ({c.method or test.method})" if (c.method or test.method) else ""
        return Judgement(Verdict.FAIL, f"growth observed in the sterility test{method}")
    if not isinstance(measurement, Quantity):
        raise _wrong_kind("quantity", test.test)
    if not math.isfinite(measurement.value):
        # NaN compares false with both limits and would pass: never judge it.
        raise InvalidArgument([FieldViolation("quantity.value", "must be a finite number")])
    converted = convert(measurement.value, measurement.unit, c.unit)
    if converted is None:
        raise InvalidArgument([FieldViolation(
            "quantity.unit",
            f"'{measurement.unit}' cannot be converted to '{c.unit}', the unit of "
            f"specification version {spec_version} of {material_code}")])
    value = rounded(converted, c.decimals)
    if not math.isfinite(float(value)):
        # Converted to the specification's unit it no longer fits a double (1e308 CFU/mg
        # in CFU/g): the judged value could not be stored or shown.
        raise InvalidArgument([FieldViolation(
            "quantity.value", f"is too large to be judged in {c.unit}")])
    judged = Quantity(float(value), c.unit)
    shown = f"{name} {_show_value(value)} {c.unit}"
    if c.lower is not None:
        limit = Decimal(repr(c.lower.value))
        if value < limit or (c.lower.exclusive and value == limit):
            word = "not above" if c.lower.exclusive else "below"
            return Judgement(Verdict.FAIL, f"{shown} is {word} the lower limit "
                                           f"{show_range(c)}", judged)
    if c.upper is not None:
        limit = Decimal(repr(c.upper.value))
        if value > limit or (c.upper.exclusive and value == limit):
            word = "not below" if c.upper.exclusive else "above"
            return Judgement(Verdict.FAIL, f"{shown} is {word} the upper limit "
                                           f"{show_range(c)}", judged)
    return Judgement(Verdict.PASS, "", judged)


def rounded(value: Decimal, decimals: int | None) -> Decimal:
    """`value` rounded half away from zero to `decimals` (unchanged when None).

    Any finite double can be rounded: the context holds every digit of the result (a
    double's integer part has at most 309 digits; decimal's default 28 would make quantize
    fail on 1e30 at one decimal).
    """
    if decimals is None:
        return value
    digits = max(value.adjusted(), 0) + 1 + decimals
    with localcontext() as context:
        context.prec = max(context.prec, digits + 1)
        return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def _show_value(value: Decimal) -> str:
    """A judged value for a verdict's reason: as rounded, in scientific notation when it
    would take more than 30 characters (1e30 at one decimal)."""
    text = str(value)
    return text if len(text) <= 30 else f"{value:.6E}"


def _identity(measurement: Measurement, c: IdentityCriterion) -> Judgement:
    if c.min_score is not None:
        if not isinstance(measurement, IdentityScore):
            raise _wrong_kind("identity_score", TestKind.IDENTITY)
        if not math.isfinite(measurement.score):
            raise InvalidArgument([FieldViolation("identity_score", "must be a finite number")])
        if measurement.score >= c.min_score:
            return Judgement(Verdict.PASS, "")
        return Judgement(Verdict.FAIL, f"identity match score {measurement.score} is below "
                                       f"{c.min_score} against the reference {c.reference}")
    if not isinstance(measurement, IdentityOutcome):
        raise _wrong_kind("identity", TestKind.IDENTITY)
    if measurement is IdentityOutcome.MATCH:
        return Judgement(Verdict.PASS, "")
    return Judgement(Verdict.FAIL, f"identity does not match the reference {c.reference}")


def _wrong_kind(expected: str, test: TestKind) -> InvalidArgument:
    return InvalidArgument([FieldViolation(
        "measurement", f"a {test} result under this specification carries {expected}")])
