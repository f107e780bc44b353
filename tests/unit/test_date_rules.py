"""The bounds every date field is held to (shared/dates.py), as pure functions: the
system's epoch, a lot's expiry and retest dates, calibration intervals, audit cycles,
the approvals they support and how far ahead a specification may take effect."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from services.lots.domain import receipt_date_problems, retest_date_problem
from services.results.domain import Specification, SpecificationStatus, calibration_record_problems
from services.results.domain import check_approval as check_spec_approval
from services.suppliers.domain import (
    Action,
    Audit,
    AuditOutcome,
    AuditType,
    ChangeQualification,
    Evidence,
    Qualification,
    QualificationStatus,
    apply,
    check_audit_record,
    cycle_end,
)
from shared.dates import EPOCH, bounds_problem, years_after
from shared.errors import FailedPrecondition, InvalidArgument, Violations

TODAY = date(2026, 12, 1)
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


# The helpers

@pytest.mark.req("DAT-001")
@pytest.mark.parametrize(("day", "years", "expected"), [
    (date(2026, 12, 1), 10, date(2036, 12, 1)),
    (date(2028, 2, 29), 1, date(2029, 2, 28)),
    (date(2028, 2, 29), 4, date(2032, 2, 29)),
    (date(9998, 6, 1), 5, date.max),
])
def test_years_after_keeps_the_day_of_the_year(day: date, years: int, expected: date) -> None:
    assert years_after(day, years) == expected


@pytest.mark.req("DAT-001")
def test_years_after_keeps_a_timestamp_and_its_zone() -> None:
    assert years_after(NOW, 1) == datetime(2027, 12, 1, 9, 30, tzinfo=UTC)
    assert years_after(NOW.replace(year=9999), 1) == datetime.max.replace(tzinfo=UTC)


@pytest.mark.req("DAT-001")
def test_bounds_include_both_ends() -> None:
    assert bounds_problem(EPOCH, EPOCH, TODAY) is None
    assert bounds_problem(TODAY, EPOCH, TODAY) is None
    assert bounds_problem(date(1999, 12, 31), EPOCH, None) == "must not lie before 2000-01-01"
    assert bounds_problem(TODAY + timedelta(days=1), None, TODAY) == (
        "must not lie after 2026-12-01")


@pytest.mark.req("DAT-001")
@pytest.mark.parametrize(("value", "says"), [
    ("0001-01-01", "must not lie before 2000-01-01"),
    ("1999-12-31", "must not lie before 2000-01-01"),
    ("9999-12-31", "must not lie after 2031-12-01"),
    ("2026-02-30", "must be a date as YYYY-MM-DD"),
    ("", "is required (YYYY-MM-DD)"),
])
def test_a_day_out_of_bounds_is_named_with_its_field(value: str, says: str) -> None:
    v = Violations()

    assert v.day_between("some_date", value, EPOCH, date(2031, 12, 1)) is None
    assert [(i.field, i.description) for i in v.items] == [("some_date", says)]


@pytest.mark.req("DAT-001")
def test_a_day_within_bounds_is_returned_and_an_optional_one_may_be_absent() -> None:
    v = Violations()

    assert v.day_between("some_date", "2000-01-01") == EPOCH
    assert v.day_between("other_date", "", required=False) is None
    assert v.items == []


# Lots: expiry on receipt, and the one retest rule

@pytest.mark.req("DAT-002")
def test_a_lot_is_received_only_before_its_expiry_date_and_at_most_ten_years_ahead() -> None:
    assert receipt_date_problems(TODAY + timedelta(days=1), None, TODAY) == []
    assert receipt_date_problems(date(2036, 12, 1), None, TODAY) == []
    for expired in (TODAY, TODAY - timedelta(days=1), EPOCH):
        [(field, says)] = receipt_date_problems(expired, None, TODAY)
        assert field == "expiry_date" and "must lie after today (2026-12-01)" in says
    [(field, says)] = receipt_date_problems(date(2036, 12, 2), None, TODAY)
    assert (field, says) == ("expiry_date",
                             "must not lie more than 10 years ahead (after 2036-12-01)")


@pytest.mark.req("DAT-002")
@pytest.mark.parametrize(("retest", "says"), [
    (TODAY - timedelta(days=1), "must lie after today (2026-12-01)"),
    (TODAY, "must lie after today (2026-12-01)"),
    (date(2028, 7, 1), "must not lie after the lot's expiry date (2028-06-30)"),
    (TODAY + timedelta(days=1), None),
    (date(2028, 6, 30), None),
])
def test_receipt_and_qa_hold_a_retest_date_to_one_rule(retest: date, says: str | None) -> None:
    expiry = date(2028, 6, 30)

    assert retest_date_problem(retest, expiry_date=expiry, today=TODAY) == says
    on_receipt = receipt_date_problems(expiry, retest, TODAY)
    assert on_receipt == ([("retest_date", says)] if says else [])


@pytest.mark.req("DAT-002")
def test_a_receipt_names_both_dates_when_both_are_wrong() -> None:
    problems = receipt_date_problems(TODAY, TODAY, TODAY)

    assert [field for field, _ in problems] == ["expiry_date", "retest_date"]


# Results: calibration intervals, and how far ahead a specification takes effect

@pytest.mark.req("DAT-003")
@pytest.mark.parametrize(("calibrated_on", "due", "fields"), [
    (TODAY, TODAY, []),
    (TODAY - timedelta(days=30), date(2031, 11, 1), []),
    (TODAY, date(2031, 12, 1), []),
    (TODAY, date(2031, 12, 2), ["calibration_due"]),
    (EPOCH, date(9999, 12, 31), ["calibration_due"]),
    (TODAY, TODAY - timedelta(days=1), ["calibration_due"]),
    (TODAY + timedelta(days=1), date(2027, 6, 1), ["calibrated_on"]),
])
def test_a_calibration_covers_at_most_five_years(calibrated_on: date, due: date,
                                                 fields: list[str]) -> None:
    problems = calibration_record_problems(calibrated_on, due, TODAY)

    assert [field for field, _ in problems] == fields


@pytest.mark.req("DAT-003")
def test_a_too_long_calibration_interval_says_its_last_allowed_day() -> None:
    [(_, says)] = calibration_record_problems(EPOCH, date(9999, 12, 31), TODAY)

    assert says == "must lie at most 5 years after calibrated_on (not after 2005-01-01)"


def _draft() -> Specification:
    return Specification("MAT-A", 2, SpecificationStatus.DRAFT, (), None, "qa.jane",
                         NOW - timedelta(days=1), "", None, "")


@pytest.mark.req("DAT-003")
def test_a_specification_takes_effect_at_most_a_year_ahead() -> None:
    check_spec_approval(_draft(), approved_by="qa.lead", effective_from=years_after(NOW, 1),
                        now=NOW)
    with pytest.raises(InvalidArgument) as refused:
        check_spec_approval(_draft(), approved_by="qa.lead",
                            effective_from=years_after(NOW, 1) + timedelta(seconds=1), now=NOW)

    [violation] = refused.value.violations
    assert violation.field == "effective_from"
    assert "at most 1 year ahead" in violation.description


# Suppliers: audit cycles, and the approvals they support

AUDIT = Audit(audit_id="AUD-1", supplier_id="ACME", site_id="MAIN", type=AuditType.ON_SITE,
              audit_date=date(2026, 11, 2), auditor="max", outcome=AuditOutcome.APPROVED,
              critical_findings=0, major_findings=0, minor_findings=0,
              next_audit_due=date(2028, 11, 1), summary="", recorded_by="qa",
              recorded_at=NOW)


@pytest.mark.req("DAT-003")
@pytest.mark.parametrize(("next_due", "fields"), [
    (date(2031, 11, 2), []),
    (date(2031, 11, 3), ["next_audit_due"]),
    (date(9999, 12, 31), ["next_audit_due"]),
])
def test_an_audit_cycle_is_at_most_five_years(next_due: date, fields: list[str]) -> None:
    problems = check_audit_record(replace(AUDIT, next_audit_due=next_due), TODAY)

    assert [field for field, _ in problems] == fields
    if fields:
        assert "at most 5 years after audit_date (not after 2031-11-02)" in problems[0][1]


def _qualify(valid_until: datetime, audit: Audit) -> QualificationStatus:
    command = ChangeQualification(
        supplier_id="ACME", site_id="MAIN", material_code="MAT-A", action=Action.QUALIFY,
        reason="audit passed", requested_by="qa.jane", valid_until=valid_until,
        evidence=Evidence(audit_id="AUD-1", quality_agreement_ref="QAG-7"))
    pending = Qualification(supplier_id="ACME", site_id="MAIN", material_code="MAT-A",
                            status=QualificationStatus.PENDING, valid_until=None, version=1,
                            reason="opened", changed_by="qa.jane", changed_at=NOW)
    return apply(pending, command, NOW, audit=audit).status


@pytest.mark.req("SUP-004")
def test_an_approval_never_outlasts_the_longest_audit_cycle() -> None:
    # An audit recorded before cycles were bounded may name any next audit.
    legacy = replace(AUDIT, next_audit_due=date(9999, 12, 31))
    end = cycle_end(legacy)
    assert end == date(2031, 11, 2)

    last_day = datetime.combine(end, datetime.min.time(), UTC)
    assert _qualify(last_day, legacy) is QualificationStatus.QUALIFIED
    with pytest.raises(FailedPrecondition) as refused:
        _qualify(last_day + timedelta(days=1), legacy)
    assert "due 2031-11-02" in refused.value.message
    assert refused.value.type_ == "DATE"
