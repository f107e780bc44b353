"""The suppliers service's own tables."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text, UniqueConstraint

from shared.db import BigId, UtcDateTime
from shared.runtime import make_tables

metadata = MetaData()

suppliers = Table(
    "suppliers", metadata,
    Column("supplier_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

qualifications = Table(
    "qualifications", metadata,
    Column("supplier_id", String(64), primary_key=True),
    Column("material_code", String(64), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    Column("version", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("changed_by", String(200), nullable=False),
    Column("changed_at", UtcDateTime, nullable=False),
)

# Append-only: every change with who, what, when, why, old and new status.
qualification_history = Table(
    "qualification_history", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("supplier_id", String(64), nullable=False),
    Column("material_code", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("previous_status", String(20), nullable=True),
    Column("new_status", String(20), nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    Column("reason", Text, nullable=False),
    Column("changed_by", String(200), nullable=False),
    Column("changed_at", UtcDateTime, nullable=False),
    Column("event_id", String(36), nullable=False),
    UniqueConstraint("supplier_id", "material_code", "version"),
    Index("ix_history_supplier", "supplier_id", "id"),
)

tables = make_tables(metadata)
