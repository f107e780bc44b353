"""What a qualification is: a supplier's site approved (or not) for one material, its
status, the evidence it rests on, and the record of each change.

A qualification is for one manufacturing site of a supplier and one material:

    (none) --open--> PENDING --qualify--> QUALIFIED --suspend--> SUSPENDED
                                          ^   |  ^--qualify (renewal)   |
                                          |   '--expire (time)--> EXPIRED
                                          '----------qualify------------'  (from SUSPENDED
                                                                            or EXPIRED)
    PENDING, QUALIFIED, SUSPENDED, EXPIRED --disqualify--> DISQUALIFIED --open--> PENDING

DISQUALIFIED ends the qualification: only a newly opened one can follow it. The rules
that move it are in lifecycle.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


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


# An approval: the only status under which a site may supply, and the only one that
# lapses with time (status_at; the expiry and the as-of queries look for it).
APPROVED = QualificationStatus.QUALIFIED


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

    @property
    def key(self) -> Key:
        return (self.supplier_id, self.site_id, self.material_code)

    def status_at(self, instant: datetime) -> QualificationStatus:
        """The status in force at `instant`: an approval whose date has passed has lapsed,
        whether or not the expiry has been recorded yet."""
        if (self.status is APPROVED
                and (self.valid_until is None or self.valid_until <= instant)):
            return QualificationStatus.EXPIRED
        return self.status


@dataclass(frozen=True)
class QualificationChange:
    """One recorded change: the qualification right after it, the status it replaced
    (None for the first), the event that announced it, and its place in the history."""

    sequence: int
    qualification: Qualification
    previous_status: QualificationStatus | None
    event_id: str


Key = tuple[str, str, str]  # (supplier_id, site_id, material_code)


def subject(supplier_id: str, site_id: str, material_code: str) -> str:
    """The resource name used in errors and as the events' aggregate id."""
    return f"suppliers/{supplier_id}/sites/{site_id}/materials/{material_code}"
