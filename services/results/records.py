"""What the results service stores and the commands it takes: plain data, no rules.

The rules (judging, four eyes, calibration, investigations) are in domain.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from services.results.domain import (
    InstrumentStatus,
    Measurement,
    Quantity,
    ResultState,
    TestCriterion,
    TestKind,
    Verdict,
)


@dataclass(frozen=True)
class RecordResult:
    """Command: an instrument posts one result for a lot.

    `fingerprint` identifies the entry's content, so that a retry under the same
    instrument_result_id can be told from another result posted under a reused id.
    """

    lot_id: str
    test: TestKind
    instrument_id: str
    instrument_result_id: str
    measurement: Measurement
    measured_at: datetime
    retest_of: str
    fingerprint: str


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
class SpecificationDraft:
    """Command: QA writes a new version of a material's specification, or changes a draft."""

    material_code: str
    tests: tuple[TestCriterion, ...]
    change_reason: str
    requested_by: str


@dataclass(frozen=True)
class Calibration:
    calibrated_on: date
    calibration_due: date
    certificate_ref: str
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True)
class Instrument:
    instrument_id: str
    type: str
    location: str
    status: InstrumentStatus
    status_reason: str
    # The due date of the latest calibration.
    calibration_due: date
    registered_by: str
    registered_at: datetime
