"""Specifications and test results: how a measurement is judged. No I/O here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.errors import FieldViolation, InvalidArgument


class TestKind(StrEnum):
    __test__ = False  # not a pytest test class, whatever its name says

    IDENTITY = "IDENTITY"
    PURITY = "PURITY"
    STERILITY = "STERILITY"


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"


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


# What an instrument reports: the outcome of an identity or sterility test, or a purity.
Measurement = IdentityOutcome | Quantity | SterilityOutcome

MEASUREMENT_OF: dict[TestKind, type[Measurement]] = {
    TestKind.IDENTITY: IdentityOutcome,
    TestKind.PURITY: Quantity,
    TestKind.STERILITY: SterilityOutcome,
}


@dataclass(frozen=True)
class Range:
    """lower <= value <= upper, in `unit`; a missing bound is open."""

    lower: float | None
    upper: float | None
    unit: str


@dataclass(frozen=True)
class Specification:
    """One version of a material's acceptance criteria; versions are never changed."""

    material_code: str
    version: int
    identity_reference: str
    purity: Range
    sterility_method: str
    effective_from: datetime
    approved_by: str


@dataclass(frozen=True)
class SetSpecification:
    """Command: QA puts a new version of a material's specification in force."""

    material_code: str
    identity_reference: str
    purity: Range
    sterility_method: str
    approved_by: str


@dataclass(frozen=True)
class RecordResult:
    """Command: an instrument posts one result for a lot.

    `fingerprint` identifies the request's content, so that a retry under the same
    idempotency key can be told from a different result posted under a reused key.
    """

    lot_id: str
    test: TestKind
    instrument_id: str
    idempotency_key: str
    measurement: Measurement
    measured_at: datetime | None
    fingerprint: str


@dataclass(frozen=True)
class Result:
    result_id: str
    lot_id: str
    material_code: str
    test: TestKind
    instrument_id: str
    idempotency_key: str
    measurement: Measurement
    verdict: Verdict
    verdict_reason: str
    spec_version: int
    measured_at: datetime
    recorded_at: datetime
    # Assigned when the result is stored; 0 before that.
    sequence: int = 0
    lot_result_number: int = 0


def range_problems(lower: float | None, upper: float | None) -> list[tuple[str, str]]:
    """What is wrong with a range's limits, as (limit, problem); limit "" means the range."""
    problems = []
    if lower is None and upper is None:
        problems.append(("", "needs a lower limit, an upper limit or both"))
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound is not None and not math.isfinite(bound):
            problems.append((name, "must be a finite number"))
    if not problems and lower is not None and upper is not None and lower > upper:
        problems.append(("lower", f"must not exceed the upper limit ({lower} > {upper})"))
    return problems


def evaluate(measurement: Measurement, spec: Specification) -> tuple[Verdict, str]:
    """The verdict on a measurement under `spec`, and why it fails ("" when it passes).

    A quantity in another unit than the specification's cannot be judged: that is
    InvalidArgument on `quantity.unit`, never an implicit conversion.
    """
    if isinstance(measurement, IdentityOutcome):
        if measurement is IdentityOutcome.MATCH:
            return Verdict.PASS, ""
        return Verdict.FAIL, f"identity does not match the reference {spec.identity_reference}"
    if isinstance(measurement, SterilityOutcome):
        if measurement is SterilityOutcome.NO_GROWTH:
            return Verdict.PASS, ""
        method = f" ({spec.sterility_method})" if spec.sterility_method else ""
        return Verdict.FAIL, f"growth observed in the sterility test{method}"
    limits = spec.purity
    if not math.isfinite(measurement.value):
        # NaN compares false with both limits and would pass: never judge it.
        raise InvalidArgument([FieldViolation("quantity.value", "must be a finite number")])
    if measurement.unit != limits.unit:
        raise InvalidArgument([FieldViolation(
            "quantity.unit",
            f"must be '{limits.unit}', the unit of specification version {spec.version} of "
            f"{spec.material_code}; '{measurement.unit}' is not converted")])
    value, unit = measurement.value, limits.unit
    if limits.lower is not None and value < limits.lower:
        return Verdict.FAIL, f"purity {value} {unit} is below the lower limit {limits.lower} {unit}"
    if limits.upper is not None and value > limits.upper:
        return Verdict.FAIL, f"purity {value} {unit} is above the upper limit {limits.upper} {unit}"
    return Verdict.PASS, ""
