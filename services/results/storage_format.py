"""How the results service stores what has no column of its own: a specification's
criteria (JSON) and a result's measurement (one of four column groups). Rows written
years ago are read with these, so a change here changes what they mean."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.results.domain.evaluation import (
    IdentityOutcome,
    IdentityScore,
    Measurement,
    Quantity,
    SterilityOutcome,
)
from services.results.domain.specifications import (
    Bound,
    Criterion,
    IdentityCriterion,
    RangeCriterion,
    SterilityCriterion,
    TestCriterion,
)
from shared.contract import TestKind

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


# Results' measurements: outcome (identity or sterility), value + unit, or score.

MeasurementColumns = dict[str, str | float | None]


def measurement_columns(m: Measurement) -> MeasurementColumns:
    outcome = value = unit = score = None
    if isinstance(m, Quantity):
        value, unit = m.value, m.unit
    elif isinstance(m, IdentityScore):
        score = m.score
    else:
        outcome = m.value
    return {"outcome": outcome, "value": value, "unit": unit, "score": score}


def measurement_of(test: TestKind, *, outcome: str | None, value: float | None,
                   unit: str | None, score: float | None) -> Measurement:
    if score is not None:
        return IdentityScore(score)
    if outcome is not None:
        if test is TestKind.IDENTITY:
            return IdentityOutcome(outcome)
        return SterilityOutcome(outcome)
    return Quantity(value=value, unit=unit)  # type: ignore[arg-type]
