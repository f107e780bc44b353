"""How the results service's records sit in their rows: a specification's criteria as
JSON, a result's measurement in one of three column groups. Rows written years ago are
read with these, so a change here changes what they mean."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Row

from services.results.domain.evaluation import (
    IdentityOutcome,
    IdentityScore,
    Measurement,
    Quantity,
    SterilityOutcome,
)
from services.results.domain.results import Result
from services.results.domain.specifications import (
    Bound,
    Criterion,
    IdentityCriterion,
    RangeCriterion,
    SterilityCriterion,
    TestCriterion,
)
from shared.contract import ResultState, TestKind, Verdict

# Specifications' criteria


def _bound_json(b: Bound | None) -> dict[str, Any] | None:
    return None if b is None else {"value": b.value, "exclusive": b.exclusive}


def _criterion_json(c: Criterion) -> dict[str, Any]:
    if isinstance(c, IdentityCriterion):
        return {"identity": {"reference": c.reference, "min_score": c.min_score}}
    if isinstance(c, RangeCriterion):
        return {"range": {"lower": _bound_json(c.lower), "upper": _bound_json(c.upper),
                          "unit": c.unit, "decimals": c.decimals}}
    return {"sterility": {"method": c.method}}


def criteria_to_json(tests: Sequence[TestCriterion]) -> str:
    return json.dumps([{"test": t.test.value, "method": t.method,
                        **_criterion_json(t.criterion)} for t in tests],
                      sort_keys=True, allow_nan=False)


def _bound(data: dict[str, Any] | None) -> Bound | None:
    return None if data is None else Bound(float(data["value"]), bool(data["exclusive"]))


def criteria_from_json(text: str) -> tuple[TestCriterion, ...]:
    found = []
    for item in json.loads(text):
        criterion: Criterion
        if "identity" in item:
            c = item["identity"]
            criterion = IdentityCriterion(reference=c["reference"], min_score=c["min_score"])
        elif "range" in item:
            c = item["range"]
            criterion = RangeCriterion(lower=_bound(c["lower"]), upper=_bound(c["upper"]),
                                       unit=c["unit"], decimals=c["decimals"])
        else:
            criterion = SterilityCriterion(method=item["sterility"]["method"])
        found.append(TestCriterion(test=TestKind(item["test"]), method=item["method"],
                                   criterion=criterion))
    return tuple(found)


# Results: the measurement is one of outcome (identity or sterility), value + unit, or
# score; the judged quantity, when there is one, is judged_value + judged_unit.


def _measurement_columns(m: Measurement) -> dict[str, str | float | None]:
    outcome = value = unit = score = None
    if isinstance(m, Quantity):
        value, unit = m.value, m.unit
    elif isinstance(m, IdentityScore):
        score = m.score
    else:
        outcome = m.value
    return {"outcome": outcome, "value": value, "unit": unit, "score": score}


def _measurement(test: TestKind, row: Row) -> Measurement:
    if row.score is not None:
        return IdentityScore(row.score)
    if row.outcome is not None:
        if test is TestKind.IDENTITY:
            return IdentityOutcome(row.outcome)
        return SterilityOutcome(row.outcome)
    return Quantity(value=row.value, unit=row.unit)


def result_values(result: Result, fingerprint: str) -> dict[str, object]:
    """The column values of a new result's row."""
    return {
        "result_id": result.result_id, "lot_id": result.lot_id,
        "material_code": result.material_code, "test": result.test.value,
        "instrument_id": result.instrument_id,
        "instrument_result_id": result.instrument_result_id, "fingerprint": fingerprint,
        **_measurement_columns(result.measurement),
        "verdict": result.verdict.value, "verdict_reason": result.verdict_reason,
        "spec_version": result.spec_version,
        "required_tests": ",".join(t.value for t in result.required_tests),
        "judged_value": result.judged.value if result.judged else None,
        "judged_unit": result.judged.unit if result.judged else None,
        "measured_at": result.measured_at, "recorded_at": result.recorded_at,
        "lot_result_number": result.lot_result_number,
        "retest_of": result.retest_of or None, "state": result.state.value,
        "state_reason": None, "state_changed_by": None, "state_changed_at": None,
    }


@dataclass(frozen=True)
class StoredResult:
    result: Result
    fingerprint: str


def stored_result(row: Row) -> StoredResult:
    """A result as its row holds it, with the fingerprint of the post that stored it."""
    test = TestKind(row.test)
    result = Result(
        result_id=row.result_id, lot_id=row.lot_id, material_code=row.material_code,
        test=test, instrument_id=row.instrument_id,
        instrument_result_id=row.instrument_result_id,
        measurement=_measurement(test, row),
        verdict=Verdict(row.verdict), verdict_reason=row.verdict_reason,
        spec_version=row.spec_version,
        required_tests=tuple(TestKind(t) for t in row.required_tests.split(",") if t),
        measured_at=row.measured_at, recorded_at=row.recorded_at,
        judged=(Quantity(row.judged_value, row.judged_unit)
                if row.judged_value is not None else None),
        retest_of=row.retest_of or "", state=ResultState(row.state),
        state_reason=row.state_reason or "", state_changed_by=row.state_changed_by or "",
        state_changed_at=row.state_changed_at, sequence=row.sequence,
        lot_result_number=row.lot_result_number)
    return StoredResult(result, row.fingerprint)
