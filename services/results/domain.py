"""Specifications, instruments and test results: how a measurement is judged, and what
QA may do with a result. No I/O here: the handlers load what a rule needs and pass it in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from enum import StrEnum

from shared.contract import ResultState, TestKind, Verdict
from shared.dates import MAX_CALIBRATION_YEARS, MAX_SPECIFICATION_LEAD_YEARS, years_after
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

# Every specification has these; release needs every test of the specification.
REQUIRED_TESTS = (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY)


class IdentityOutcome(StrEnum):
    MATCH = "MATCH"
    NO_MATCH = "NO_MATCH"


class SterilityOutcome(StrEnum):
    NO_GROWTH = "NO_GROWTH"
    GROWTH = "GROWTH"


class SpecificationStatus(StrEnum):
    DRAFT = "DRAFT"
    EFFECTIVE = "EFFECTIVE"


class InstrumentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    OUT_OF_SERVICE = "OUT_OF_SERVICE"
    RETIRED = "RETIRED"


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
class Bound:
    value: float
    exclusive: bool = False


@dataclass(frozen=True)
class RangeCriterion:
    """A number within [lower, upper] (each bound inclusive unless exclusive) in `unit`.

    With `decimals`, the value is rounded half away from zero to that many decimals
    before it is compared (USP General Notices 7.20).
    """

    lower: Bound | None
    upper: Bound | None
    unit: str
    decimals: int | None = None


@dataclass(frozen=True)
class IdentityCriterion:
    reference: str
    min_score: float | None = None


@dataclass(frozen=True)
class SterilityCriterion:
    method: str = ""


Criterion = IdentityCriterion | RangeCriterion | SterilityCriterion

# Which kind of criterion (and of measurement) each test takes.
CRITERION_OF: dict[TestKind, type[Criterion]] = {
    TestKind.IDENTITY: IdentityCriterion,
    TestKind.PURITY: RangeCriterion,
    TestKind.STERILITY: SterilityCriterion,
    TestKind.ASSAY: RangeCriterion,
    TestKind.BIOBURDEN: RangeCriterion,
}


@dataclass(frozen=True)
class TestCriterion:
    __test__ = False

    test: TestKind
    method: str
    criterion: Criterion


@dataclass(frozen=True)
class Specification:
    """One version of a material's acceptance criteria. An EFFECTIVE version never changes."""

    material_code: str
    version: int
    status: SpecificationStatus
    tests: tuple[TestCriterion, ...]
    effective_from: datetime | None
    created_by: str
    created_at: datetime
    approved_by: str
    approved_at: datetime | None
    change_reason: str

    def criterion(self, test: TestKind) -> TestCriterion | None:
        return next((t for t in self.tests if t.test is test), None)

    @property
    def test_kinds(self) -> tuple[TestKind, ...]:
        return tuple(t.test for t in self.tests)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    # Why the result fails; "" when it passes.
    reason: str
    # For quantities: the value compared, in the specification's unit, rounded.
    judged: Quantity | None = None


# Specifications

MAX_DECIMALS = 6


def check_tests(tests: Sequence[TestCriterion]) -> list[tuple[str, str]]:
    """Problems of a specification's tests, as (field, description); fields are
    relative to the request, for example "tests[1].range.lower"."""
    problems: list[tuple[str, str]] = []
    seen: set[TestKind] = set()
    for i, t in enumerate(tests):
        where = f"tests[{i}]"
        if t.test in seen:
            problems.append((f"{where}.test", f"{t.test} appears more than once"))
        seen.add(t.test)
        expected = CRITERION_OF[t.test]
        if not isinstance(t.criterion, expected):
            problems.append((where, f"a {t.test} test needs a "
                                    f"{_CRITERION_NAME[expected]} criterion"))
            continue
        c = t.criterion
        if isinstance(c, RangeCriterion):
            problems += [(f"{where}.range{'.' + f if f else ''}", d)
                         for f, d in range_problems(c)]
        elif isinstance(c, IdentityCriterion):
            if not c.reference.strip():
                problems.append((f"{where}.identity.reference", "is required"))
            if c.min_score is not None and not (math.isfinite(c.min_score)
                                                and 0 <= c.min_score <= 100):
                problems.append((f"{where}.identity.min_score",
                                 "must be a number from 0 to 100"))
    missing = [t.value for t in REQUIRED_TESTS if t not in seen]
    if missing:
        problems.append(("tests", f"must include {', '.join(missing)}: identity, purity and "
                                  "sterility are always required for release"))
    return problems


_CRITERION_NAME = {IdentityCriterion: "identity", RangeCriterion: "range",
                   SterilityCriterion: "sterility"}


def range_problems(c: RangeCriterion) -> list[tuple[str, str]]:
    """What is wrong with a range, as (field, problem); field "" means the range."""
    problems = []
    if c.lower is None and c.upper is None:
        problems.append(("", "needs a lower bound, an upper bound or both"))
    for name, bound in (("lower", c.lower), ("upper", c.upper)):
        if bound is not None and not math.isfinite(bound.value):
            problems.append((f"{name}.value", "must be a finite number"))
    if not c.unit.strip():
        problems.append(("unit", "is required"))
    elif canonical_unit(c.unit) is None:
        problems.append(("unit", f"'{c.unit}' is not a unit Lotgate knows "
                                 f"({', '.join(sorted(UNITS))})"))
    if c.decimals is not None and not 0 <= c.decimals <= MAX_DECIMALS:
        problems.append(("decimals", f"must be between 0 and {MAX_DECIMALS}"))
    if not problems and c.lower is not None and c.upper is not None:
        lo, hi = c.lower, c.upper
        if lo.value > hi.value or (lo.value == hi.value and (lo.exclusive or hi.exclusive)):
            problems.append(("lower.value", f"leaves no value that could pass "
                                            f"({_show_range(c)})"))
    return problems


def check_draft_change(spec: Specification | None, *, material_code: str,
                       version: int) -> Specification:
    """The draft that may be changed, or why not (NOT_FOUND is the caller's)."""
    subject = f"materials/{material_code}/specifications/{version}"
    if spec is None:
        raise FailedPrecondition(f"specification {material_code} version {version} does not "
                                 "exist", subject=subject)
    if spec.status is SpecificationStatus.EFFECTIVE:
        raise FailedPrecondition(
            f"specification {material_code} version {version} is EFFECTIVE and can never be "
            "edited; create a new version", subject=subject)
    return spec


def check_approval(spec: Specification, *, approved_by: str, effective_from: datetime,
                   now: datetime) -> None:
    """Whether `approved_by` may make this draft effective from `effective_from`."""
    subject = f"materials/{spec.material_code}/specifications/{spec.version}"
    if spec.status is SpecificationStatus.EFFECTIVE:
        raise FailedPrecondition(
            f"specification {spec.material_code} version {spec.version} is already EFFECTIVE",
            subject=subject)
    if approved_by == spec.created_by:
        raise FailedPrecondition(
            f"{approved_by} wrote this draft and cannot also approve it (four eyes)",
            type_="APPROVER", subject=subject)
    if effective_from < now:
        raise FailedPrecondition("effective_from must not lie in the past", type_="DATE",
                                 subject=subject)
    latest = years_after(now, MAX_SPECIFICATION_LEAD_YEARS)
    if effective_from > latest:
        # A version approved today describes today's knowledge; one effective years ahead
        # is a typo (shared/dates.py).
        raise InvalidArgument([FieldViolation(
            "effective_from", f"must lie at most {MAX_SPECIFICATION_LEAD_YEARS} year ahead "
                              f"(not after {latest.isoformat()})")])


def in_force(versions: Sequence[Specification], instant: datetime) -> Specification | None:
    """The EFFECTIVE version that judges a result measured at `instant`: the highest
    version whose effective_from is not after it."""
    found = [s for s in versions if s.status is SpecificationStatus.EFFECTIVE
             and s.effective_from is not None and s.effective_from <= instant]
    return max(found, key=lambda s: s.version, default=None)


# Units: only these, and only explicit conversions within one dimension.

# unit -> (dimension, factor to the dimension's base unit)
UNITS: dict[str, tuple[str, Decimal]] = {
    "%": ("mass fraction", Decimal(1)),
    "mg/g": ("mass fraction", Decimal("0.1")),
    "g/kg": ("mass fraction", Decimal("0.1")),
    "ug/g": ("mass fraction", Decimal("0.0001")),
    "ppm": ("mass fraction", Decimal("0.0001")),
    "mg/mL": ("concentration", Decimal(1)),
    "g/L": ("concentration", Decimal(1)),
    "ug/mL": ("concentration", Decimal("0.001")),
    "mg/L": ("concentration", Decimal("0.001")),
    "CFU/g": ("bioburden", Decimal(1)),
    "CFU/mg": ("bioburden", Decimal(1000)),
    "CFU/kg": ("bioburden", Decimal("0.001")),
    "CFU/mL": ("bioburden per volume", Decimal(1)),
    "CFU/100mL": ("bioburden per volume", Decimal("0.01")),
    "EU/mL": ("endotoxin", Decimal(1)),
}
_ALIASES = {"µg/g": "ug/g", "μg/g": "ug/g", "µg/mL": "ug/mL", "μg/mL": "ug/mL",
            "cfu/g": "CFU/g", "cfu/mL": "CFU/mL", "cfu/kg": "CFU/kg", "cfu/mg": "CFU/mg",
            "cfu/100mL": "CFU/100mL", "% w/w": "%"}


def canonical_unit(unit: str) -> str | None:
    unit = unit.strip()
    unit = _ALIASES.get(unit, unit)
    return unit if unit in UNITS else None


def convert(value: float, unit: str, to: str) -> Decimal | None:
    """`value` in `unit` expressed in `to`, exactly; None when they measure different things."""
    a, b = canonical_unit(unit), canonical_unit(to)
    if a is None or b is None or UNITS[a][0] != UNITS[b][0]:
        return None
    return Decimal(repr(value)) * UNITS[a][1] / UNITS[b][1]


# Judging a result

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
                                           f"{_show_range(c)}", judged)
    if c.upper is not None:
        limit = Decimal(repr(c.upper.value))
        if value > limit or (c.upper.exclusive and value == limit):
            word = "not below" if c.upper.exclusive else "above"
            return Judgement(Verdict.FAIL, f"{shown} is {word} the upper limit "
                                           f"{_show_range(c)}", judged)
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


def _show_range(c: RangeCriterion) -> str:
    lo = (f"{'(' if c.lower.exclusive else '['}{c.lower.value:g}" if c.lower else "(-inf")
    hi = (f"{c.upper.value:g}{')' if c.upper.exclusive else ']'}" if c.upper else "+inf)")
    return f"{lo}, {hi} {c.unit}"


# Instruments

def calibration_record_problems(calibrated_on: date, calibration_due: date,
                                today: date) -> list[tuple[str, str]]:
    """Problems of a calibration record, as (field, description): it happened by today,
    and its due date lies on or after it and at most MAX_CALIBRATION_YEARS later (a longer
    interval is a typo that would let the instrument post for ever; shared/dates.py)."""
    problems = []
    if calibrated_on > today:
        problems.append(("calibrated_on", "must not lie in the future"))
    latest = years_after(calibrated_on, MAX_CALIBRATION_YEARS)
    if calibration_due < calibrated_on:
        problems.append(("calibration_due", "must not be before calibrated_on"))
    elif calibration_due > latest:
        problems.append(("calibration_due", f"must lie at most {MAX_CALIBRATION_YEARS} years "
                                            f"after calibrated_on (not after "
                                            f"{latest.isoformat()})"))
    return problems


def calibration_problem(*, instrument_id: str, status: InstrumentStatus | None,
                        calibrations: Sequence[tuple[date, date]],
                        measured_on: date) -> str | None:
    """Why the instrument may not post a result measured on `measured_on`, or None.

    `calibrations` are (calibrated_on, calibration_due) pairs; the day must fall within
    one of them, both ends included.
    """
    if status is None:
        return f"instrument {instrument_id} is not registered"
    if status is not InstrumentStatus.ACTIVE:
        return f"instrument {instrument_id} is {status.value}"
    if not any(start <= measured_on <= due for start, due in calibrations):
        last = max((due for _, due in calibrations), default=None)
        when = f"; its calibration was due {last.isoformat()}" if last else ""
        return (f"instrument {instrument_id} was not within calibration on "
                f"{measured_on.isoformat()}{when}")
    return None


def check_status_change(current: InstrumentStatus, *, instrument_id: str) -> None:
    """RETIRED is final; any other status may change."""
    if current is InstrumentStatus.RETIRED:
        raise FailedPrecondition(f"instrument {instrument_id} is RETIRED; that is final",
                                 subject=f"instruments/{instrument_id}")


# QA's handling of a result

def check_invalidation(state: ResultState, *, result_id: str) -> None:
    """A VALID result may be invalidated (a laboratory error); nothing else."""
    if state is not ResultState.VALID:
        raise FailedPrecondition(
            f"result {result_id} is {state.value}; only a VALID result can be invalidated",
            subject=f"results/{result_id}")


def check_confirmation(state: ResultState, verdict: Verdict, *, result_id: str) -> None:
    """Only a VALID out-of-specification result may be confirmed."""
    if state is not ResultState.VALID:
        raise FailedPrecondition(
            f"result {result_id} is {state.value}; only a VALID result can be confirmed",
            subject=f"results/{result_id}")
    if verdict is not Verdict.FAIL:
        raise FailedPrecondition(
            f"result {result_id} passes its specification; only an out-of-specification "
            "result is confirmed", subject=f"results/{result_id}")


@dataclass(frozen=True)
class PriorResult:
    """What posting a new result needs to know of a result of the same lot and test."""

    result_id: str
    verdict: Verdict
    state: ResultState
    retested: bool  # a later result names it in retest_of


def check_posting(prior: Sequence[PriorResult], *, test: TestKind, retest_of: str) -> None:
    """Whether a new result of `test` may be posted, given the lot's earlier ones.

    No testing into compliance: while an out-of-specification result is under
    investigation, no other result of that test is taken. After an invalidation, the
    retest must name the invalidated result.
    """
    for r in prior:
        if r.state is ResultState.VALID and r.verdict is Verdict.FAIL:
            raise FailedPrecondition(
                f"{test} result {r.result_id} of this lot is out of specification and under "
                "investigation: QA must invalidate or confirm it before another result is "
                "taken", type_="INVESTIGATION", subject=f"results/{r.result_id}")
    awaiting = [r for r in prior if r.state is ResultState.INVALIDATED and not r.retested]
    if retest_of:
        target = next((r for r in prior if r.result_id == retest_of), None)
        if target is None:
            raise FailedPrecondition(
                f"retest_of {retest_of} is not a {test} result of this lot",
                type_="RETEST", subject=f"results/{retest_of}")
        if target.state is not ResultState.INVALIDATED:
            raise FailedPrecondition(
                f"result {retest_of} is {target.state.value}; only an invalidated result is "
                "retested", type_="RETEST", subject=f"results/{retest_of}")
        if target.retested:
            raise FailedPrecondition(f"result {retest_of} has been retested already",
                                     type_="RETEST", subject=f"results/{retest_of}")
    elif awaiting:
        raise FailedPrecondition(
            f"{test} result {awaiting[0].result_id} of this lot was invalidated: its retest "
            "must name it in retest_of", type_="RETEST",
            subject=f"results/{awaiting[0].result_id}")
