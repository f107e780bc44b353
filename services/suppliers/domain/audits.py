"""Audits of a supplier's site, and what an approval may rest on: a plausible audit
record, an audit of the same site that approved it, and a requalification date no later
than the site's next audit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from shared.dates import MAX_AUDIT_CYCLE_YEARS, years_after
from shared.errors import FailedPrecondition


class AuditType(StrEnum):
    ON_SITE = "ON_SITE"
    REMOTE = "REMOTE"
    QUESTIONNAIRE = "QUESTIONNAIRE"


class AuditOutcome(StrEnum):
    APPROVED = "APPROVED"
    APPROVED_WITH_CONDITIONS = "APPROVED_WITH_CONDITIONS"
    NOT_APPROVED = "NOT_APPROVED"


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


def cited_audit(audit: Audit | None, *, audit_id: str, supplier_id: str,
                site_id: str) -> Audit:
    """The audit a change cites, when it is on record and of the site changed."""
    if audit is None:
        raise FailedPrecondition(f"audit {audit_id} is not on record", type_="EVIDENCE",
                                 subject=f"audits/{audit_id}")
    if (audit.supplier_id, audit.site_id) != (supplier_id, site_id):
        raise FailedPrecondition(
            f"audit {audit_id} is of site {audit.site_id} of supplier {audit.supplier_id}, "
            f"not of site {site_id} of supplier {supplier_id}",
            type_="EVIDENCE", subject=f"audits/{audit_id}")
    return audit


def approval_until(valid_until: datetime | None, audit: Audit | None, now: datetime,
                   where: str) -> datetime:
    """The requalification date of an approval resting on `audit`, or why it may not be."""
    if valid_until is None or valid_until <= now:
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
    if valid_until.date() > due:
        raise FailedPrecondition(
            f"valid_until {valid_until.date().isoformat()} lies after the next audit "
            f"of the site, due {due.isoformat()} (audit {audit.audit_id})",
            type_="DATE", subject=where)
    return valid_until
