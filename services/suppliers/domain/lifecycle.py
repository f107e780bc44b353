"""The qualification lifecycle: which transitions QA (or time) may make, the evidence
each one needs, and what QA is told when one is refused. No I/O here: the handlers load
what a rule needs and pass it in. The states are drawn in qualification.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from services.suppliers.commands import ChangeQualification
from services.suppliers.domain.audits import Audit, approval_until, cited_audit
from services.suppliers.domain.qualification import (
    APPROVED,
    Action,
    Qualification,
    QualificationStatus,
    subject,
)
from shared.errors import Aborted, FailedPrecondition

# Who records the transitions that nobody asked for.
SYSTEM_ACTOR = "lotgate:expiry"

_FROM: dict[Action, frozenset[QualificationStatus | None]] = {
    Action.OPEN: frozenset({None, QualificationStatus.DISQUALIFIED}),
    Action.QUALIFY: frozenset({QualificationStatus.PENDING, QualificationStatus.QUALIFIED,
                               QualificationStatus.SUSPENDED, QualificationStatus.EXPIRED}),
    Action.SUSPEND: frozenset({QualificationStatus.QUALIFIED}),
    Action.DISQUALIFY: frozenset({QualificationStatus.PENDING, QualificationStatus.QUALIFIED,
                                  QualificationStatus.SUSPENDED, QualificationStatus.EXPIRED}),
    Action.EXPIRE: frozenset({APPROVED}),
}

_DONE = {
    Action.OPEN: "opened",
    Action.QUALIFY: "qualified",
    Action.SUSPEND: "suspended",
    Action.DISQUALIFY: "disqualified",
    Action.EXPIRE: "expired",
}

_TO = {
    Action.OPEN: QualificationStatus.PENDING,
    Action.QUALIFY: QualificationStatus.QUALIFIED,
    Action.SUSPEND: QualificationStatus.SUSPENDED,
    Action.DISQUALIFY: QualificationStatus.DISQUALIFIED,
    Action.EXPIRE: QualificationStatus.EXPIRED,
}


def check_version(current: Qualification | None, expected: int | None) -> None:
    """A change that names the version it was decided on applies only to that version."""
    if expected is None:
        return
    actual = current.version if current else 0
    if actual != expected:
        raise Aborted(f"qualification is at version {actual}, not {expected}; read it again")


def apply(current: Qualification | None, command: ChangeQualification, now: datetime, *,
          audit: Audit | None = None) -> Qualification:
    """The qualification after `command`, or FailedPrecondition naming the current state.

    `audit` is the record of `command.evidence.audit_id` when one was cited and found.
    """
    state = current.status if current else None
    where = subject(command.supplier_id, command.site_id, command.material_code)
    if state not in _FROM[command.action]:
        raise FailedPrecondition(_refusal(command, state), subject=where)
    evidence = command.evidence
    if command.evidence.audit_id:
        cited = cited_audit(audit, audit_id=command.evidence.audit_id,
                            supplier_id=command.supplier_id, site_id=command.site_id)
        evidence = replace(evidence, audit_date=cited.audit_date)
    elif not command.evidence and current is not None:
        evidence = current.evidence  # what the standing rests on stays visible
    valid_until = current.valid_until if current else None
    if command.action is Action.QUALIFY:
        valid_until = approval_until(command.valid_until, audit, now, where)
    elif command.action is Action.OPEN:
        valid_until = None
    return Qualification(
        supplier_id=command.supplier_id,
        site_id=command.site_id,
        material_code=command.material_code,
        status=_TO[command.action],
        valid_until=valid_until,
        version=(current.version if current else 0) + 1,
        reason=command.reason,
        changed_by=command.requested_by,
        changed_at=now,
        evidence=evidence,
    )


def expire(current: Qualification, now: datetime) -> ChangeQualification | None:
    """The command that ends a lapsed approval, or None when it has not lapsed."""
    if current.status_at(now) is not QualificationStatus.EXPIRED or (
            current.status is not APPROVED):
        return None
    when = current.valid_until.isoformat() if current.valid_until else "an unknown date"
    return ChangeQualification(
        supplier_id=current.supplier_id, site_id=current.site_id,
        material_code=current.material_code, action=Action.EXPIRE,
        reason=f"valid_until {when} passed without requalification",
        requested_by=SYSTEM_ACTOR)


def _refusal(command: ChangeQualification, state: QualificationStatus | None) -> str:
    who = f"site {command.site_id} of supplier {command.supplier_id}"
    what = f"for {command.material_code}"
    shown = state.value if state else "not open"
    if state is QualificationStatus.DISQUALIFIED and command.action is not Action.OPEN:
        return (f"{who} is DISQUALIFIED {what}; that is final: only a newly opened "
                "qualification can follow")
    if command.action is Action.OPEN:
        return (f"a qualification of {who} {what} is already open ({shown}); a new one can be "
                "opened only after a disqualification")
    if state is None:
        return f"no qualification of {who} {what} is open; open one first"
    allowed = " or ".join(sorted(s.value for s in _FROM[command.action] if s))
    return (f"cannot {command.action.value} {who} {what}: it is {shown}; only a {allowed} "
            f"qualification can be {_DONE[command.action]}")
