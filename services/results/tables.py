"""The results service's own tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shared.db import BigId, UtcDateTime
from shared.runtime import make_tables

metadata = MetaData()

# Append-only: a new version per change, earlier versions kept unchanged.
specifications = Table(
    "specifications", metadata,
    Column("material_code", String(64), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("identity_reference", Text, nullable=False),
    Column("purity_lower", Double, nullable=True),
    Column("purity_upper", Double, nullable=True),
    Column("purity_unit", String(32), nullable=False),
    Column("sterility_method", Text, nullable=False),
    Column("effective_from", UtcDateTime, nullable=False),
    Column("approved_by", String(200), nullable=False),
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

# Append-only. `sequence` orders results across the service: a later result supersedes an
# earlier one for the same lot and test. On SQLite AUTOINCREMENT keeps it from reusing ids.
results = Table(
    "results", metadata,
    Column("sequence", BigId, primary_key=True, autoincrement=True),
    Column("result_id", String(36), nullable=False, unique=True),
    Column("lot_id", String(64), nullable=False),
    Column("material_code", String(64), nullable=False),
    Column("test", String(20), nullable=False),
    Column("instrument_id", String(64), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    # sha256 of the request as sent: tells a retry from another result under a reused key.
    Column("fingerprint", String(64), nullable=False),
    # IDENTITY and STERILITY: the outcome; PURITY: the value and unit as sent.
    Column("outcome", String(20), nullable=True),
    Column("value", Double, nullable=True),
    Column("unit", String(32), nullable=True),
    Column("verdict", String(10), nullable=False),
    Column("verdict_reason", Text, nullable=False),
    Column("spec_version", BigInteger, nullable=False),
    Column("measured_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("lot_result_number", BigInteger, nullable=False),
    UniqueConstraint("instrument_id", "idempotency_key", name="uq_results_idempotency"),
    UniqueConstraint("lot_id", "lot_result_number", name="uq_results_lot_number"),
    Index("ix_results_lot", "lot_id", "sequence"),
    sqlite_autoincrement=True,
)

tables = make_tables(metadata)
