"""Instruments and their calibrations: an instrument posts results only while ACTIVE and
within a calibration on the day it measured; RETIRED is final."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from shared.dates import MAX_CALIBRATION_YEARS, years_after
from shared.errors import AlreadyExists, FailedPrecondition


class InstrumentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    OUT_OF_SERVICE = "OUT_OF_SERVICE"
    RETIRED = "RETIRED"


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


def registered(*, instrument_id: str, type_: str, location: str, first: Calibration,
               registered_by: str, now: datetime) -> Instrument:
    """A newly registered instrument: ACTIVE, due for calibration when its first one says."""
    return Instrument(instrument_id=instrument_id, type=type_, location=location,
                      status=InstrumentStatus.ACTIVE, status_reason="registered",
                      calibration_due=first.calibration_due, registered_by=registered_by,
                      registered_at=now)


def subject(instrument_id: str) -> str:
    return f"instruments/{instrument_id}"


def check_same_registration(existing: Instrument, registered: Calibration | None, *,
                            instrument: Instrument, first: Calibration) -> None:
    """An instrument registered again must come with the same details and the same first
    calibration (`registered` is the one on record)."""
    same = ((existing.type, existing.location) == (instrument.type, instrument.location)
            and registered is not None
            and _calibration_key(registered) == _calibration_key(first))
    if not same:
        raise AlreadyExists(
            f"instrument {instrument.instrument_id} is registered with other details; "
            "record a calibration or change its status instead")


def _calibration_key(c: Calibration) -> tuple[date, date, str]:
    return (c.calibrated_on, c.calibration_due, c.certificate_ref)


def check_calibration(instrument: Instrument) -> None:
    """A RETIRED instrument is not calibrated any more."""
    if instrument.status is InstrumentStatus.RETIRED:
        raise FailedPrecondition(f"instrument {instrument.instrument_id} is RETIRED; it is "
                                 "not calibrated any more",
                                 subject=subject(instrument.instrument_id))


def is_recorded(history: Sequence[Calibration], calibration: Calibration) -> bool:
    """Whether the same calibration (dates and certificate) is on record already."""
    return any(_calibration_key(c) == _calibration_key(calibration) for c in history)


def latest_due(calibrations: Sequence[Calibration]) -> date:
    """The instrument's calibration_due: the due date of its latest calibration, the one
    last calibrated (of several calibrated the same day, the last recorded)."""
    latest = max(calibrations, key=lambda c: c.calibrated_on)
    return max((c for c in calibrations if c.calibrated_on == latest.calibrated_on),
               key=lambda c: c.recorded_at).calibration_due


def is_repeated_status(instrument: Instrument, status: InstrumentStatus, reason: str) -> bool:
    """Whether a status change asks for what the instrument already is (a retry)."""
    return instrument.status is status and instrument.status_reason == reason


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
