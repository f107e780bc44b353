"""The suppliers service's rules, pure (no I/O): the handlers load what a rule needs and
pass it in.

- qualification.py: what a qualification is (statuses, evidence, a recorded change);
- lifecycle.py: the transitions QA or time may make, and why one is refused;
- audits.py: audit records and what an approval may rest on;
- sites.py: suppliers and their sites, and what registering one again means.

The public names are gathered here for callers that want the whole domain.
"""

from services.suppliers.commands import ChangeQualification
from services.suppliers.domain.audits import (
    Audit,
    AuditOutcome,
    AuditType,
    check_audit_record,
    cycle_end,
)
from services.suppliers.domain.lifecycle import SYSTEM_ACTOR, apply, check_version, expire
from services.suppliers.domain.qualification import (
    APPROVED,
    Action,
    Evidence,
    Key,
    Qualification,
    QualificationChange,
    QualificationStatus,
    subject,
)
from services.suppliers.domain.sites import ApprovedSupplier, Site, Supplier

__all__ = [
    "APPROVED", "SYSTEM_ACTOR", "Action", "ApprovedSupplier", "Audit", "AuditOutcome",
    "AuditType", "ChangeQualification", "Evidence", "Key", "Qualification",
    "QualificationChange", "QualificationStatus", "Site", "Supplier", "apply",
    "check_audit_record", "check_version", "cycle_end", "expire", "subject",
]
