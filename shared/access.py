"""Who may call what: one table from each RPC to the roles allowed to call it.

Deny by default: an RPC missing from `ACCESS` is refused for every caller, so a new RPC
stays closed until someone decides who may call it (a unit test fails until then). A
caller needs one of the RPC's roles; the README's access table is this one, per role.

Roles:
    warehouse   receives lots; reads and watches their status
    instrument  posts its own results (the token names its instrument_id)
    qc          instruments, calibrations, specification drafts
    qa          qualifies, suspends, disqualifies; approves specifications; invalidates and
                confirms results; holds, releases and rejects lots; policies; reviews;
                enrols its own signing secret (its decisions are signed: shared.esign)
    auditor     reads everything, changes nothing
    admin       operational calls: the reads an operator needs, unlocking a signer, no
                change to GMP records
"""

from __future__ import annotations

from collections.abc import Iterable

WAREHOUSE = "warehouse"
INSTRUMENT = "instrument"
QC = "qc"
QA = "qa"
AUDITOR = "auditor"
ADMIN = "admin"
ROLES = (WAREHOUSE, INSTRUMENT, QC, QA, AUDITOR, ADMIN)

# Reading GMP records: the quality unit, the auditor and operations.
_READ = frozenset({QA, QC, AUDITOR, ADMIN})
# Reading a lot's status: everyone who reads, and the warehouse that picks.
_STATUS = _READ | {WAREHOUSE}

_SUPPLIERS = "lotgate.suppliers.v1.SupplierService"
_LOTS = "lotgate.lots.v1.LotService"
_RESULTS = "lotgate.results.v1.ResultService"
_AUDIT = "lotgate.audit.v1.AuditService"
_SIGNATURES = "lotgate.signatures.v1.SignatureService"


def _rpcs(service: str, roles: Iterable[str], *methods: str) -> dict[str, frozenset[str]]:
    allowed = frozenset(roles)
    return {f"{service}/{method}": allowed for method in methods}


# Fully qualified RPC name ("package.Service/Method", as grpcurl writes it) -> roles.
ACCESS: dict[str, frozenset[str]] = {
    **_rpcs(_SUPPLIERS, {QA}, "CreateSupplier", "AddSite", "RecordAudit",
            "OpenQualification", "QualifySupplier", "SuspendQualification",
            "DisqualifySupplier"),
    **_rpcs(_SUPPLIERS, _READ, "GetSupplier", "ListAudits", "GetQualification",
            "ListQualificationHistory", "ListApprovedSuppliers"),

    **_rpcs(_LOTS, {WAREHOUSE}, "ReceiveLot"),
    **_rpcs(_LOTS, _STATUS, "GetLot", "GetReleaseStatus", "GetReleaseStatuses",
            "WatchReleaseStatus", "ListLots"),
    **_rpcs(_LOTS, _READ, "ExplainDecision", "ListDecisions", "GetReleasePolicy",
            "ListLotReviews"),
    **_rpcs(_LOTS, {QA}, "SetReleasePolicy", "ReleaseLot", "HoldLot", "ReleaseHold",
            "RejectLot", "SetRetestDate", "CloseLotReview"),

    **_rpcs(_RESULTS, {QC}, "CreateSpecificationDraft", "UpdateSpecificationDraft",
            "RegisterInstrument", "RecordCalibration", "SetInstrumentStatus"),
    **_rpcs(_RESULTS, {QA}, "ApproveSpecification", "InvalidateResult", "ConfirmResult"),
    **_rpcs(_RESULTS, {INSTRUMENT}, "RecordResult", "RecordResults"),
    # Signing secrets, in every service: QA signs its decisions; an administrator unlocks.
    **_rpcs(_SIGNATURES, {QA}, "EnrollSigner"),
    **_rpcs(_SIGNATURES, {ADMIN}, "ResetSigner"),
    **_rpcs(_SIGNATURES, {QA, ADMIN, AUDITOR}, "GetSigner"),

    **_rpcs(_RESULTS, _READ, "GetSpecification", "ListSpecificationVersions",
            "GetInstrument", "ListLotResults", "ListInstrumentResults"),

    # Every service's audit trail: read by those who answer for the records.
    **_rpcs(_AUDIT, {QA, AUDITOR, ADMIN}, "VerifyAuditTrail", "ListAuditTrail",
            "GetAuditAnchor"),
    # Publishing the chain head now (it is published periodically anyway).
    **_rpcs(_AUDIT, {ADMIN}, "PublishAuditAnchor"),
}

# Request fields that name the person acting. They must be the caller's subject or empty
# (then the service records the caller's subject): nobody acts in another's name.
ACTOR_FIELDS = ("requested_by", "approved_by")

# RPCs through which an instrument posts: each result's instrument_id must be the one its
# token names.
INSTRUMENT_POSTS = frozenset({f"{_RESULTS}/RecordResult", f"{_RESULTS}/RecordResults"})


def rpc_name(method: str) -> str:
    """The table's key of a gRPC method path ("/package.Service/Method")."""
    return method.removeprefix("/")


def allowed_roles(method: str) -> frozenset[str]:
    """The roles that may call `method`; empty (nobody) for an RPC not in the table."""
    return ACCESS.get(rpc_name(method), frozenset())


def rpcs_of(role: str) -> list[str]:
    """Every RPC `role` may call, in table order (for the README and `lotgate token`)."""
    return [rpc for rpc, roles in ACCESS.items() if role in roles]
