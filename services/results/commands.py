"""The commands the results service takes: plain data, imperative names, no rules.

The api builds them from requests; the handlers carry them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from services.results.domain.evaluation import Measurement
from services.results.domain.instruments import InstrumentStatus
from services.results.domain.specifications import TestCriterion
from shared.contract import ResultState, TestKind


@dataclass(frozen=True)
class RecordResult:
    """An instrument posts one result for a lot.

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
class SpecificationDraft:
    """QA writes a new version of a material's specification, or changes a draft."""

    material_code: str
    tests: tuple[TestCriterion, ...]
    change_reason: str
    requested_by: str


@dataclass(frozen=True)
class ApproveSpecification:
    """A second person makes a DRAFT effective, from `effective_from` (now when None)."""

    material_code: str
    version: int
    effective_from: datetime | None
    approved_by: str


@dataclass(frozen=True)
class CalibrationReport:
    """A calibration as the laboratory reports it (the service notes when it is recorded)."""

    calibrated_on: date
    calibration_due: date
    certificate_ref: str


@dataclass(frozen=True)
class RegisterInstrument:
    """Register an instrument with its first calibration."""

    instrument_id: str
    type: str
    location: str
    first: CalibrationReport
    requested_by: str


@dataclass(frozen=True)
class RecordCalibration:
    instrument_id: str
    calibration: CalibrationReport
    requested_by: str


@dataclass(frozen=True)
class SetInstrumentStatus:
    instrument_id: str
    status: InstrumentStatus
    reason: str
    requested_by: str


@dataclass(frozen=True)
class HandleResult:
    """QA invalidates a result (a laboratory error) or confirms it out of specification."""

    result_id: str
    target: ResultState
    reason: str
    requested_by: str
