"""The plain records of a supplier's dossier: what `build_dossier` (lotgate_tools.dossier)
makes of the services' answers and what every output (lotgate_tools.dossier_render) shows.

Frozen dataclasses of strings, numbers and tuples: no proto messages, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT = "lotgate-dossier/1"
JSON_FILE = "dossier.json"
HTML_FILE = "dossier.html"
CHECKSUM_FILE = "SHA256SUMS"


@dataclass(frozen=True)
class Generation:
    """When, by whom and with what the dossier was generated, and from which services."""

    generated_at: str
    generated_by: str
    generator: str
    sources: dict[str, str]


@dataclass(frozen=True)
class SupplierInfo:
    supplier_id: str
    name: str
    created_at: str | None


@dataclass(frozen=True)
class SiteRow:
    supplier_id: str
    site_id: str
    name: str
    address: str
    country: str
    created_at: str | None


@dataclass(frozen=True)
class QualificationRow:
    """The current qualification of one site for one material."""

    supplier_id: str
    site_id: str
    material_code: str
    status: str | None
    # What applied when the dossier was generated: EXPIRED when the record still says
    # QUALIFIED but valid_until had passed; otherwise the recorded status.
    status_in_force: str | None
    valid_until: str | None
    version: int
    reason: str
    changed_by: str
    changed_at: str | None
    evidence_audit_id: str
    evidence_audit_date: str
    evidence_quality_agreement_ref: str
    evidence_questionnaire_ref: str


@dataclass(frozen=True)
class HistoryRow:
    """One recorded change of a qualification."""

    supplier_id: str
    sequence: int
    site_id: str
    material_code: str
    version: int
    previous_status: str | None
    new_status: str | None
    valid_until: str | None
    reason: str
    changed_by: str
    changed_at: str | None
    event_id: str
    evidence_audit_id: str
    evidence_audit_date: str
    evidence_quality_agreement_ref: str
    evidence_questionnaire_ref: str


@dataclass(frozen=True)
class AuditRow:
    supplier_id: str
    audit_id: str
    site_id: str
    type: str | None
    audit_date: str
    auditor: str
    outcome: str | None
    critical_findings: int
    major_findings: int
    minor_findings: int
    next_audit_due: str
    summary: str
    recorded_by: str
    recorded_at: str | None


@dataclass(frozen=True)
class Condition:
    """One reason why a lot is not released."""

    code: str
    message: str
    rule: str


@dataclass(frozen=True)
class LotRow:
    supplier_id: str
    lot_id: str
    supplier_site_id: str
    material_code: str
    supplier_lot_number: str
    quantity_value: float | None
    quantity_unit: str
    container_count: int
    expiry_date: str
    received_at: str | None
    release_status: str | None
    release_status_version: int
    decided_at: str | None
    # In CSV: the codes, separated by "; ". In JSON: code, message and rule of each.
    unmet: tuple[Condition, ...]


@dataclass(frozen=True)
class ReviewRow:
    supplier_id: str
    review_id: str
    lot_id: str
    supplier_site_id: str
    material_code: str
    qualification_status: str
    qualification_version: int
    reason: str
    opened_at: str | None
    state: str | None
    conclusion: str
    closed_by: str
    closed_at: str | None


@dataclass(frozen=True)
class AuditTrailRow:
    """An entry of the suppliers service's audit trail about one of the supplier's
    records (the supplier, its sites, audits and qualifications)."""

    sequence: int
    recorded_at: str | None
    principal_subject: str
    principal_name: str
    record_type: str
    record_id: str
    action: str
    reason: str
    old_values: str
    new_values: str
    request_id: str
    entry_hash: str


@dataclass(frozen=True)
class SignatureRow:
    """An electronic signature on one of the supplier's records (a qualification change or
    a lot review), as the services showed it: verified when it fits the record."""

    supplier_id: str
    record_type: str
    record_id: str
    signer: str
    printed_name: str
    meaning: str | None
    signed_at: str | None
    content_hash: str
    verified: bool
    signature_id: str


@dataclass(frozen=True)
class Dossier:
    generation: Generation
    supplier: SupplierInfo
    sites: tuple[SiteRow, ...]
    qualifications: tuple[QualificationRow, ...]
    history: tuple[HistoryRow, ...]
    audits: tuple[AuditRow, ...]
    lots: tuple[LotRow, ...]
    reviews: tuple[ReviewRow, ...]
    audit_trail: tuple[AuditTrailRow, ...] = ()
    # What VerifyAuditTrail of the suppliers service said when the dossier was read.
    audit_trail_verification: str = ""
    signatures: tuple[SignatureRow, ...] = ()


# One CSV per table: file name, the Dossier attribute, the row type (its fields are the header).
CSV_TABLES: tuple[tuple[str, str, type], ...] = (
    ("sites.csv", "sites", SiteRow),
    ("qualifications.csv", "qualifications", QualificationRow),
    ("history.csv", "history", HistoryRow),
    ("audits.csv", "audits", AuditRow),
    ("lots.csv", "lots", LotRow),
    ("reviews.csv", "reviews", ReviewRow),
    ("audit_trail.csv", "audit_trail", AuditTrailRow),
    ("signatures.csv", "signatures", SignatureRow),
)
