"""The results service's own tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from shared import audit
from shared.db import BigId, UtcDateTime
from shared.tables import make_tables

metadata = MetaData()

# One row per version of a material's specification. A DRAFT row may be changed; an
# EFFECTIVE row never is: every UPDATE of this table is guarded by status = 'DRAFT'.
specifications = Table(
    "specifications", metadata,
    Column("material_code", String(64), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("status", String(10), nullable=False),
    # The tests and their criteria as JSON (a list, ordered by test); see repository.py.
    Column("tests", Text, nullable=False),
    Column("change_reason", Text, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # Everyone who wrote the draft (a JSON list, the creator first): none may approve it.
    Column("authors", Text, nullable=False),
    Column("effective_from", UtcDateTime, nullable=True),
    Column("approved_by", String(200), nullable=True),
    Column("approved_at", UtcDateTime, nullable=True),
    # At most one open draft per material.
    Index("uq_specifications_one_draft", "material_code", unique=True,
          postgresql_where=text("status = 'DRAFT'"), sqlite_where=text("status = 'DRAFT'")),
)

instruments = Table(
    "instruments", metadata,
    Column("instrument_id", String(64), primary_key=True),
    Column("type", String(100), nullable=False),
    Column("location", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("status_reason", Text, nullable=False),
    Column("status_changed_by", String(200), nullable=False),
    Column("status_changed_at", UtcDateTime, nullable=False),
    # The due date of the latest calibration (calibrations has them all).
    Column("calibration_due", Date, nullable=False),
    Column("registered_by", String(200), nullable=False),
    Column("registered_at", UtcDateTime, nullable=False),
)

# Append-only: every calibration of an instrument.
calibrations = Table(
    "calibrations", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instrument_id", String(64), nullable=False),
    Column("calibrated_on", Date, nullable=False),
    Column("calibration_due", Date, nullable=False),
    Column("certificate_ref", String(200), nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Index("ix_calibrations_instrument", "instrument_id", "calibrated_on", "id"),
    sqlite_autoincrement=True,
)

# One row: a number raised by the database itself (triggers of the revision that made it)
# in every transaction that changes specifications, instruments or calibrations, whoever
# changes them. A post reads it with its lots' numbers and so knows whether what it holds
# of them in memory (services/results/reference.py) is still what the tables hold.
reference_version = Table(
    "reference_version", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

# The lots this service has heard of (from LotReceived) and their material.
known_lots = Table(
    "known_lots", metadata,
    Column("lot_id", String(64), primary_key=True),
    Column("material_code", String(64), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    # How many results this lot has; the next one gets number result_count + 1.
    Column("result_count", BigInteger, nullable=False, server_default="0"),
)

# A result's measurement and verdict are written once and never changed; only QA's
# handling (state, state_*) is updated, once, from VALID. `sequence` orders results
# across the service. On SQLite AUTOINCREMENT keeps it from reusing ids.
results = Table(
    "results", metadata,
    Column("sequence", BigId, primary_key=True, autoincrement=True),
    Column("result_id", String(36), nullable=False, unique=True),
    Column("lot_id", String(64), nullable=False),
    Column("material_code", String(64), nullable=False),
    Column("test", String(20), nullable=False),
    Column("instrument_id", String(64), nullable=False),
    Column("instrument_result_id", String(128), nullable=False),
    # sha256 of the entry as sent: tells a retry from another result under a reused id.
    Column("fingerprint", String(64), nullable=False),
    # The measurement as sent: an outcome (identity, sterility), a value and unit, or a
    # match score (identity).
    Column("outcome", String(20), nullable=True),
    Column("value", Double, nullable=True),
    Column("unit", String(32), nullable=True),
    Column("score", Double, nullable=True),
    Column("verdict", String(10), nullable=False),
    Column("verdict_reason", Text, nullable=False),
    Column("spec_version", BigInteger, nullable=False),
    # The tests of spec_version, comma-separated.
    Column("required_tests", String(200), nullable=False),
    # For quantities: the value judged, converted to the specification's unit and rounded.
    Column("judged_value", Double, nullable=True),
    Column("judged_unit", String(32), nullable=True),
    Column("measured_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("lot_result_number", BigInteger, nullable=False),
    Column("retest_of", String(36), nullable=True),
    Column("state", String(12), nullable=False),
    Column("state_reason", Text, nullable=True),
    Column("state_changed_by", String(200), nullable=True),
    Column("state_changed_at", UtcDateTime, nullable=True),
    UniqueConstraint("instrument_id", "instrument_result_id", name="uq_results_idempotency"),
    UniqueConstraint("lot_id", "lot_result_number", name="uq_results_lot_number"),
    Index("ix_results_lot", "lot_id", "sequence"),
    # ListInstrumentResults: a range of measured_at, in (measured_at, sequence) order.
    Index("ix_results_instrument", "instrument_id", "measured_at", "sequence"),
    sqlite_autoincrement=True,
)

# The GMP records of this service, each change of which the audit trail records. An
# instrument's calibration due date follows its calibrations, which are recorded.
audit.register(metadata, "specification", specifications)
audit.register(metadata, "instrument", instruments, derived=["calibration_due"])
audit.register(metadata, "calibration", calibrations)
audit.register(metadata, "result", results, "result_id")

# Version 2: specification versions with drafts and tests, instruments and calibrations,
# result states, retests and judged values.
# Version 3: audit_trail.
tables = make_tables(metadata)
