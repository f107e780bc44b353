"""The rules of instruments and their calibrations, as pure functions: the latest
calibration sets the due date, a calibration is recorded once, a registration repeated
with other details conflicts, a retired instrument is not calibrated."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from services.results.domain.instruments import (
    Calibration,
    InstrumentStatus,
    check_calibration,
    check_same_registration,
    is_recorded,
    is_repeated_status,
    latest_due,
    registered,
)
from shared.errors import AlreadyExists, FailedPrecondition

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def calibration(on: date, due: date, *, cert: str = "CAL-1",
                recorded: datetime = NOW) -> Calibration:
    return Calibration(calibrated_on=on, calibration_due=due, certificate_ref=cert,
                       recorded_by="lab", recorded_at=recorded)


FIRST = calibration(date(2026, 1, 1), date(2027, 1, 1))
HPLC = registered(instrument_id="HPLC-01", type_="HPLC", location="Lab 2", first=FIRST,
                  registered_by="lab", now=NOW)


@pytest.mark.req("INS-002")
def test_a_registered_instrument_is_active_until_its_first_calibration_is_due() -> None:
    assert (HPLC.status, HPLC.status_reason, HPLC.calibration_due, HPLC.registered_at) == (
        InstrumentStatus.ACTIVE, "registered", date(2027, 1, 1), NOW)


@pytest.mark.req("INS-002")
def test_the_latest_calibration_sets_the_due_date() -> None:
    later = calibration(date(2026, 6, 1), date(2026, 12, 1))  # a shorter interval counts
    assert latest_due([FIRST, later]) == date(2026, 12, 1)
    assert latest_due([later, FIRST]) == date(2026, 12, 1)
    # Of two calibrations on the same day, the one recorded last counts.
    again = calibration(date(2026, 6, 1), date(2027, 6, 1), recorded=NOW + timedelta(hours=1))
    assert latest_due([FIRST, again, later]) == date(2027, 6, 1)


@pytest.mark.req("INS-002")
def test_the_same_calibration_is_recorded_once() -> None:
    assert is_recorded([FIRST], replace(FIRST, recorded_at=NOW + timedelta(days=1)))
    assert not is_recorded([FIRST], replace(FIRST, certificate_ref="CAL-2"))
    assert not is_recorded([], FIRST)


@pytest.mark.req("INS-002")
@pytest.mark.parametrize("change", [{"type": "GC"}, {"location": "Lab 3"}])
def test_a_registration_repeated_with_other_details_conflicts(change) -> None:
    check_same_registration(HPLC, FIRST, instrument=HPLC, first=FIRST)
    with pytest.raises(AlreadyExists) as conflict:
        check_same_registration(HPLC, FIRST, instrument=replace(HPLC, **change), first=FIRST)
    assert conflict.value.message == ("instrument HPLC-01 is registered with other details; "
                                      "record a calibration or change its status instead")
    with pytest.raises(AlreadyExists):
        check_same_registration(HPLC, FIRST, instrument=HPLC,
                                first=replace(FIRST, certificate_ref="CAL-9"))
    with pytest.raises(AlreadyExists):
        check_same_registration(HPLC, None, instrument=HPLC, first=FIRST)


@pytest.mark.req("INS-001")
def test_a_retired_instrument_is_not_calibrated_any_more() -> None:
    check_calibration(replace(HPLC, status=InstrumentStatus.OUT_OF_SERVICE))
    with pytest.raises(FailedPrecondition) as refused:
        check_calibration(replace(HPLC, status=InstrumentStatus.RETIRED))
    assert (refused.value.message, refused.value.subject) == (
        "instrument HPLC-01 is RETIRED; it is not calibrated any more", "instruments/HPLC-01")


def test_a_status_change_to_what_the_instrument_is_is_a_retry() -> None:
    assert is_repeated_status(HPLC, InstrumentStatus.ACTIVE, "registered")
    assert not is_repeated_status(HPLC, InstrumentStatus.ACTIVE, "back from repair")
    assert not is_repeated_status(HPLC, InstrumentStatus.OUT_OF_SERVICE, "registered")
