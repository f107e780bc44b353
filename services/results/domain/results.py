"""A test result as the results service keeps it: the measurement exactly as the
instrument sent it, the verdict under the specification version in force, and where it
stands in QA's handling."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.results.domain.evaluation import Measurement, Quantity
from shared.contract import ResultState, TestKind, Verdict


@dataclass(frozen=True)
class Result:
    result_id: str
    lot_id: str
    material_code: str
    test: TestKind
    instrument_id: str
    instrument_result_id: str
    # Exactly as the instrument sent it.
    measurement: Measurement
    verdict: Verdict
    verdict_reason: str
    spec_version: int
    required_tests: tuple[TestKind, ...]
    measured_at: datetime
    recorded_at: datetime
    # For quantities: the value judged, in the specification's unit, rounded.
    judged: Quantity | None = None
    retest_of: str = ""
    state: ResultState = ResultState.VALID
    state_reason: str = ""
    state_changed_by: str = ""
    state_changed_at: datetime | None = None
    # Assigned when the result is stored; 0 before that.
    sequence: int = 0
    lot_result_number: int = 0


@dataclass(frozen=True)
class KnownLot:
    """A lot the results service has heard of from the lots service: results are posted
    only for known lots, and judged under their material's specification."""

    lot_id: str
    material_code: str
    received_at: datetime
