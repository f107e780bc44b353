"""The commands the suppliers service takes: plain data, imperative names, no rules.

The api builds them from requests; the handlers carry them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from services.suppliers.domain.audits import AuditOutcome, AuditType
from services.suppliers.domain.qualification import Action, Evidence


@dataclass(frozen=True)
class CreateSupplier:
    supplier_id: str
    name: str
    requested_by: str


@dataclass(frozen=True)
class AddSite:
    supplier_id: str
    site_id: str
    name: str
    address: str
    country: str
    requested_by: str


@dataclass(frozen=True)
class RecordAudit:
    """Record an audit of a site. `fingerprint` identifies the request's content, so that
    a retry can be told from other content under the same audit id."""

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
    requested_by: str
    fingerprint: str


@dataclass(frozen=True)
class ChangeQualification:
    """QA (or the expiry scheduler) changes a site's standing for one material."""

    supplier_id: str
    site_id: str
    material_code: str
    action: Action
    reason: str
    requested_by: str
    valid_until: datetime | None = None
    evidence: Evidence = field(default_factory=Evidence)
    expected_version: int | None = None
