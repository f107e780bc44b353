"""The qualification lifecycle and its evidence rules, as pure functions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from services.suppliers.commands import ChangeQualification
from services.suppliers.domain.audits import Audit, AuditOutcome, AuditType, check_audit_record
from services.suppliers.domain.lifecycle import SYSTEM_ACTOR, apply, expire
from services.suppliers.domain.qualification import (
    Action,
    Evidence,
    Qualification,
    QualificationStatus,
)
from shared.errors import FailedPrecondition

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
S = QualificationStatus

AUDIT = Audit(audit_id="AUD-1", supplier_id="ACME", site_id="MAIN", type=AuditType.ON_SITE,
              audit_date=date(2026, 11, 1), auditor="max", outcome=AuditOutcome.APPROVED,
              critical_findings=0, major_findings=1, minor_findings=3,
              next_audit_due=date(2028, 11, 1), summary="", recorded_by="qa",
              recorded_at=NOW)
EVIDENCE = Evidence(audit_id="AUD-1", quality_agreement_ref="QAG-7")


def command(action: Action, **kw) -> ChangeQualification:
    values = dict(supplier_id="ACME", site_id="MAIN", material_code="MAT-A", action=action,
                  reason="because", requested_by="qa.jane")
    if action is Action.QUALIFY:
        values.update(valid_until=NOW + timedelta(days=365), evidence=EVIDENCE)
    values.update(kw)
    return ChangeQualification(**values)


def in_state(status: QualificationStatus | None) -> Qualification | None:
    if status is None:
        return None
    return Qualification(supplier_id="ACME", site_id="MAIN", material_code="MAT-A",
                         status=status, valid_until=NOW + timedelta(days=30), version=4,
                         reason="earlier", changed_by="qa.bob",
                         changed_at=NOW - timedelta(days=1), evidence=EVIDENCE)


ALLOWED = {
    (None, Action.OPEN): S.PENDING,
    (S.DISQUALIFIED, Action.OPEN): S.PENDING,
    (S.PENDING, Action.QUALIFY): S.QUALIFIED,
    (S.QUALIFIED, Action.QUALIFY): S.QUALIFIED,
    (S.SUSPENDED, Action.QUALIFY): S.QUALIFIED,
    (S.EXPIRED, Action.QUALIFY): S.QUALIFIED,
    (S.QUALIFIED, Action.SUSPEND): S.SUSPENDED,
    (S.PENDING, Action.DISQUALIFY): S.DISQUALIFIED,
    (S.QUALIFIED, Action.DISQUALIFY): S.DISQUALIFIED,
    (S.SUSPENDED, Action.DISQUALIFY): S.DISQUALIFIED,
    (S.EXPIRED, Action.DISQUALIFY): S.DISQUALIFIED,
    (S.QUALIFIED, Action.EXPIRE): S.EXPIRED,
}
EVERY = [(state, action) for state in (None, *S) for action in Action]


@pytest.mark.req("SUP-002")
@pytest.mark.parametrize(("state", "action"), EVERY)
def test_every_transition_is_either_allowed_or_refused_naming_the_state(state, action) -> None:
    current = in_state(state)
    change = command(action)

    if (state, action) in ALLOWED:
        new = apply(current, change, NOW, audit=AUDIT)
        assert new.status is ALLOWED[(state, action)]
        assert new.version == (current.version + 1 if current else 1)
        assert (new.changed_by, new.changed_at, new.reason) == ("qa.jane", NOW, "because")
    else:
        with pytest.raises(FailedPrecondition) as refused:
            apply(current, change, NOW, audit=AUDIT)
        assert (state.value if state else "no qualification") in refused.value.message
        assert refused.value.subject == "suppliers/ACME/sites/MAIN/materials/MAT-A"


@pytest.mark.req("SUP-004")
def test_qualifying_copies_the_audit_date_from_the_audit_record() -> None:
    new = apply(in_state(S.PENDING), command(Action.QUALIFY), NOW, audit=AUDIT)

    assert new.evidence == replace(EVIDENCE, audit_date=date(2026, 11, 1))
    assert new.valid_until == NOW + timedelta(days=365)


@pytest.mark.req("SUP-003")
def test_a_suspension_without_evidence_keeps_the_approval_evidence_visible() -> None:
    new = apply(in_state(S.QUALIFIED), command(Action.SUSPEND), NOW)

    assert new.evidence == EVIDENCE
    assert new.valid_until == NOW + timedelta(days=30)


@pytest.mark.req("SUP-003")
def test_opening_anew_forgets_the_old_approval_date() -> None:
    new = apply(in_state(S.DISQUALIFIED), command(Action.OPEN), NOW)

    assert new.valid_until is None


@pytest.mark.req("SUP-004")
@pytest.mark.parametrize(("audit", "change", "says"), [
    (None, {}, "not on record"),
    (replace(AUDIT, site_id="OTHER"), {}, "is of site OTHER"),
    (replace(AUDIT, outcome=AuditOutcome.NOT_APPROVED), {}, "did not approve"),
    (replace(AUDIT, next_audit_due=date(2027, 6, 1)), {}, "lies after the next audit"),
    (AUDIT, {"valid_until": NOW}, "must lie in the future"),
    (AUDIT, {"valid_until": None}, "must lie in the future"),
])
def test_an_approval_needs_sound_evidence(audit, change, says) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        apply(in_state(S.PENDING), command(Action.QUALIFY, **change), NOW, audit=audit)

    assert says in refused.value.message


@pytest.mark.req("SUP-004")
def test_an_approval_may_run_to_the_end_of_the_day_the_next_audit_is_due() -> None:
    audit = replace(AUDIT, next_audit_due=date(2027, 6, 1))
    until = datetime(2027, 6, 1, 23, 59, tzinfo=UTC)

    new = apply(in_state(S.PENDING), command(Action.QUALIFY, valid_until=until), NOW,
                audit=audit)

    assert new.valid_until == until


@pytest.mark.req("SUP-006", "REL-005")
def test_an_approval_lapses_at_its_date_whether_or_not_the_expiry_is_recorded() -> None:
    q = in_state(S.QUALIFIED)
    assert q is not None and q.valid_until is not None

    assert q.status_at(q.valid_until - timedelta(microseconds=1)) is S.QUALIFIED
    assert q.status_at(q.valid_until) is S.EXPIRED
    assert in_state(S.SUSPENDED).status_at(q.valid_until + timedelta(days=1)) is S.SUSPENDED


@pytest.mark.req("SUP-006")
def test_the_expiry_command_exists_only_once_the_date_has_passed() -> None:
    q = in_state(S.QUALIFIED)
    assert q is not None and q.valid_until is not None

    assert expire(q, q.valid_until - timedelta(seconds=1)) is None
    command_ = expire(q, q.valid_until)
    assert command_ is not None
    assert (command_.action, command_.requested_by) == (Action.EXPIRE, SYSTEM_ACTOR)
    assert q.valid_until.isoformat() in command_.reason
    assert expire(in_state(S.SUSPENDED), q.valid_until + timedelta(days=1)) is None


@pytest.mark.req("SUP-005")
@pytest.mark.parametrize(("change", "fields"), [
    ({}, []),
    ({"audit_date": date(2026, 11, 26)}, ["audit_date"]),
    ({"next_audit_due": date(2026, 11, 1)}, ["next_audit_due"]),
    ({"next_audit_due": None}, ["next_audit_due"]),
    ({"critical_findings": 1}, ["outcome"]),
    ({"critical_findings": 1, "outcome": AuditOutcome.APPROVED_WITH_CONDITIONS}, []),
    ({"outcome": AuditOutcome.NOT_APPROVED, "next_audit_due": None}, []),
])
def test_an_audit_record_must_be_plausible(change, fields) -> None:
    problems = check_audit_record(replace(AUDIT, **change), today=date(2026, 11, 25))

    assert [field for field, _ in problems] == fields
