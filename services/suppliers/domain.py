"""Supplier qualification: the states, the transitions QA may make, and the evidence
each one needs. No I/O here: the handlers load what a rule needs and pass it in.

A qualification is for one manufacturing site of a supplier and one material:

    (none) --open--> PENDING --qualify--> QUALIFIED --suspend--> SUSPENDED
                                          ^   |  ^--qualify (renewal)   |
                                          |   '--expire (time)--> EXPIRED
                                          '----------qualify------------'  (from SUSPENDED
                                                                            or EXPIRED)
    PENDING, QUALIFIED, SUSPENDED, EXPIRED --disqualify--> DISQUALIFIED --open--> PENDING

DISQUALIFIED ends the qualification: only a newly opened one can follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import StrEnum

from shared.dates import MAX_AUDIT_CYCLE_YEARS, years_after
from shared.errors import FailedPrecondition


class QualificationStatus(StrEnum):
    PENDING = "PENDING"
    QUALIFIED = "QUALIFIED"
    SUSPENDED = "SUSPENDED"
    DISQUALIFIED = "DISQUALIFIED"
    EXPIRED = "EXPIRED"


class Action(StrEnum):
    OPEN = "open"
    QUALIFY = "qualify"
    SUSPEND = "suspend"
    DISQUALIFY = "disqualify"
    EXPIRE = "expire"  # taken by the service itself when valid_until passes


class AuditType(StrEnum):
    ON_SITE = "ON_SITE"
    REMOTE = "REMOTE"
    QUESTIONNAIRE = "QUESTIONNAIRE"


class AuditOutcome(StrEnum):
    APPROVED = "APPROVED"
    APPROVED_WITH_CONDITIONS = "APPROVED_WITH_CONDITIONS"
    NOT_APPROVED = "NOT_APPROVED"


# Who records the transitions that nobody asked for.
SYSTEM_ACTOR = "lotgate:expiry"

_FROM: dict[Action, frozenset[QualificationStatus | None]] = {
    Action.OPEN: frozenset({None, QualificationStatus.DISQUALIFIED}),
    Action.QUALIFY: frozenset({QualificationStatus.PENDING, QualificationStatus.QUALIFIED,
                               QualificationStatus.SUSPENDED, QualificationStatus.EXPIRED}),
    Action.SUSPEND: frozenset({QualificationStatus.QUALIFIED}),
    Action.DISQUALIFY: frozenset({QualificationStatus.PENDING, QualificationStatus.QUALIFIED,
                                  QualificationStatus.SUSPENDED, QualificationStatus.EXPIRED}),
    Action.EXPIRE: frozenset({QualificationStatus.QUALIFIED}),
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


@dataclass(frozen=True)
class Evidence:
    """What a decision rests on. audit_date is copied from the cited audit's record."""

    audit_id: str = ""
    audit_date: date | None = None
    quality_agreement_ref: str = ""
    questionnaire_ref: str = ""

    def __bool__(self) -> bool:
        return bool(self.audit_id or self.quality_agreement_ref or self.questionnaire_ref)


@dataclass(frozen=True)
class Audit:
    audit_id: str
    supplier_id: str
    site_id: str
    type: AuditType
    audit_date: date
    auditor: str
    outcome: AuditOutcome
    critical_findings: int
    major_findings: int
    minor_findings: int
    next_audit_due: date | None
    summary: str
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True)
class Qualification:
    supplier_id: str
    site_id: str
    material_code: str
    status: QualificationStatus
    valid_until: datetime | None
    version: int
    reason: str
    changed_by: str
    changed_at: datetime
    evidence: Evidence = field(default_factory=Evidence)

    @property
    def subject(self) -> str:
        return subject(self.supplier_id, self.site_id, self.material_code)

    def status_at(self, instant: datetime) -> QualificationStatus:
        """The status in force at `instant`: an approval whose date has passed has lapsed,
        whether or not the expiry has been recorded yet."""
        if (self.status is QualificationStatus.QUALIFIED
                and (self.valid_until is None or self.valid_until <= instant)):
            return QualificationStatus.EXPIRED
        return self.status


@dataclass(frozen=True)
class ChangeQualification:
    """Command: QA (or the expiry scheduler) changes a site's standing for one material."""

    supplier_id: str
    site_id: str
    material_code: str
    action: Action
    reason: str
    requested_by: str
    valid_until: datetime | None = None
    evidence: Evidence = field(default_factory=Evidence)
    expected_version: int | None = None


def subject(supplier_id: str, site_id: str, material_code: str) -> str:
    """The resource name used in errors and as the events' aggregate id."""
    return f"suppliers/{supplier_id}/sites/{site_id}/materials/{material_code}"


def check_audit_record(audit: Audit, today: date) -> list[tuple[str, str]]:
    """Problems of a new audit record, as (field, description) pairs."""
    problems = []
    if audit.audit_date > today:
        problems.append(("audit_date", "must not lie in the future"))
    if audit.next_audit_due is not None and audit.next_audit_due <= audit.audit_date:
        problems.append(("next_audit_due", "must lie after audit_date"))
    elif audit.next_audit_due is not None and audit.next_audit_due > cycle_end(audit):
        problems.append(("next_audit_due", f"must lie at most {MAX_AUDIT_CYCLE_YEARS} years "
                                           "after audit_date (not after "
                                           f"{cycle_end(audit).isoformat()})"))
    if audit.outcome is not AuditOutcome.NOT_APPROVED and audit.next_audit_due is None:
        problems.append(("next_audit_due", "is required unless the outcome is NOT_APPROVED"))
    if audit.outcome is AuditOutcome.APPROVED and audit.critical_findings > 0:
        problems.append(("outcome", "an audit with critical findings cannot be APPROVED "
                                    "without conditions"))
    return problems


def cycle_end(audit: Audit) -> date:
    """The last day the site may be re-audited after `audit`, whatever its record says:
    no audit cycle is longer than MAX_AUDIT_CYCLE_YEARS (shared/dates.py)."""
    return years_after(audit.audit_date, MAX_AUDIT_CYCLE_YEARS)


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
        evidence = replace(evidence, audit_date=_cited(audit, command).audit_date)
    elif not command.evidence and current is not None:
        evidence = current.evidence  # what the standing rests on stays visible
    valid_until = current.valid_until if current else None
    if command.action is Action.QUALIFY:
        valid_until = _approval_date(command, audit, now, where)
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
            current.status is not QualificationStatus.QUALIFIED):
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


def _cited(audit: Audit | None, command: ChangeQualification) -> Audit:
    audit_id = command.evidence.audit_id
    if audit is None:
        raise FailedPrecondition(f"audit {audit_id} is not on record", type_="EVIDENCE",
                                 subject=f"audits/{audit_id}")
    if (audit.supplier_id, audit.site_id) != (command.supplier_id, command.site_id):
        raise FailedPrecondition(
            f"audit {audit_id} is of site {audit.site_id} of supplier {audit.supplier_id}, "
            f"not of site {command.site_id} of supplier {command.supplier_id}",
            type_="EVIDENCE", subject=f"audits/{audit_id}")
    return audit


def _approval_date(command: ChangeQualification, audit: Audit | None, now: datetime,
                   where: str) -> datetime:
    if command.valid_until is None or command.valid_until <= now:
        raise FailedPrecondition("valid_until must lie in the future", type_="DATE",
                                 subject=where)
    if audit is None:
        raise FailedPrecondition("qualifying needs an approving audit as evidence",
                                 type_="EVIDENCE", subject=where)
    if audit.outcome is AuditOutcome.NOT_APPROVED:
        raise FailedPrecondition(f"audit {audit.audit_id} did not approve the site",
                                 type_="EVIDENCE", subject=f"audits/{audit.audit_id}")
    # An audit recorded before the cycle was bounded may name a later next audit: the
    # approval still ends with the longest cycle.
    due = min(audit.next_audit_due or cycle_end(audit), cycle_end(audit))
    if command.valid_until.date() > due:
        raise FailedPrecondition(
            f"valid_until {command.valid_until.date().isoformat()} lies after the next audit "
            f"of the site, due {due.isoformat()} (audit {audit.audit_id})",
            type_="DATE", subject=where)
    return command.valid_until
