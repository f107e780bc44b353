"""The suppliers service's own tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shared import audit
from shared.db import BigId, UtcDateTime
from shared.tables import make_tables

metadata = MetaData()

suppliers = Table(
    "suppliers", metadata,
    Column("supplier_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

sites = Table(
    "sites", metadata,
    Column("supplier_id", String(64), primary_key=True),
    Column("site_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("address", String(500), nullable=False),
    Column("country", String(2), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Audits are records: written once, never updated.
audits = Table(
    "audits", metadata,
    Column("audit_id", String(64), primary_key=True),
    Column("supplier_id", String(64), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("type", String(20), nullable=False),
    Column("audit_date", Date, nullable=False),
    Column("auditor", String(200), nullable=False),
    Column("outcome", String(30), nullable=False),
    Column("critical_findings", Integer, nullable=False),
    Column("major_findings", Integer, nullable=False),
    Column("minor_findings", Integer, nullable=False),
    Column("next_audit_due", Date, nullable=True),
    Column("summary", Text, nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    # Hash of the request: a retry with the same content gets the original answer.
    Column("fingerprint", String(64), nullable=False),
    Index("ix_audits_supplier", "supplier_id", "audit_date", "audit_id"),
)

_EVIDENCE = (
    ("audit_id", String(64)),
    ("audit_date", Date),
    ("quality_agreement_ref", String(200)),
    ("questionnaire_ref", String(200)),
)

# The current standing per (site, material).
qualifications = Table(
    "qualifications", metadata,
    Column("supplier_id", String(64), primary_key=True),
    Column("site_id", String(64), primary_key=True),
    Column("material_code", String(64), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    Column("version", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("changed_by", String(200), nullable=False),
    Column("changed_at", UtcDateTime, nullable=False),
    *(Column(name, type_, nullable=True) for name, type_ in _EVIDENCE),
    # The valid_until an expiry warning was sent for: one warning per approval date.
    Column("expiry_warned_for", UtcDateTime, nullable=True),
    # The expiry scheduler looks for QUALIFIED rows by date.
    Index("ix_qualifications_due", "status", "valid_until"),
)

# Append-only: every change with who, what, when (recorded), why, on what evidence, old
# and new status. The as-of queries read it: the standing at an instant is the highest
# version recorded by then.
qualification_history = Table(
    "qualification_history", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("supplier_id", String(64), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("material_code", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("previous_status", String(20), nullable=True),
    Column("new_status", String(20), nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    Column("reason", Text, nullable=False),
    Column("changed_by", String(200), nullable=False),
    Column("changed_at", UtcDateTime, nullable=False),
    Column("event_id", String(36), nullable=False),
    *(Column(name, type_, nullable=True) for name, type_ in _EVIDENCE),
    UniqueConstraint("supplier_id", "site_id", "material_code", "version"),
    Index("ix_history_supplier", "supplier_id", "id"),
    Index("ix_history_supplier_material", "supplier_id", "material_code", "id"),
    Index("ix_history_material", "material_code", "supplier_id", "site_id", "version",
          "changed_at"),
)

# The GMP records of this service, each change of which the audit trail records. The
# expiry warning mark is not a change of the qualification.
audit.register(metadata, "supplier", suppliers)
audit.register(metadata, "site", sites)
audit.register(metadata, "audit", audits)
audit.register(metadata, "qualification", qualifications, derived=["expiry_warned_for"])

# Version 2: qualifications per supplier site; audits; evidence; review list.
# Version 3: audit_trail.
tables = make_tables(metadata)
