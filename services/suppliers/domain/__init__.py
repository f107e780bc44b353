"""The suppliers service's rules, pure (no I/O): the handlers load what a rule needs and
pass it in.

- qualification.py: what a qualification is (statuses, evidence, a recorded change);
- lifecycle.py: the transitions QA or time may make, and why one is refused;
- audits.py: audit records and what an approval may rest on;
- sites.py: suppliers and their sites, and what registering one again means.

The public names can also be taken from the package (`from services.suppliers.domain
import apply`). They are imported on first use: the lifecycle takes commands.py's
ChangeQualification, and commands.py takes the domain's value types, so an eager import
here would make whichever of the two is imported first fail.
"""

from __future__ import annotations

from importlib import import_module

_HOME = {
    **dict.fromkeys(("APPROVED", "Action", "Evidence", "Key", "Qualification",
                     "QualificationChange", "QualificationStatus", "subject"),
                    "services.suppliers.domain.qualification"),
    **dict.fromkeys(("SYSTEM_ACTOR", "apply", "check_version", "expire"),
                    "services.suppliers.domain.lifecycle"),
    **dict.fromkeys(("Audit", "AuditOutcome", "AuditType", "check_audit_record", "cycle_end"),
                    "services.suppliers.domain.audits"),
    **dict.fromkeys(("ApprovedSupplier", "Site", "Supplier"), "services.suppliers.domain.sites"),
    "ChangeQualification": "services.suppliers.commands",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__} has no attribute {name}")
    return getattr(import_module(_HOME[name]), name)
