"""The tables every service has beside its own, and `make_tables`, which adds them.

Only SQLAlchemy and table definitions: a service's `tables.py` builds its metadata from
here without importing the runtime (gRPC, NATS). The code that uses each table lives
elsewhere: the outbox relay (shared.outbox), the inbox consumers (shared.inbox), the audit
trail (shared.audit, shared.audit_verify), anchors (shared.audit_anchor), signatures
(shared.esign, shared.esign_signers).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
)

from shared.db import BigId, UtcDateTime

AUDIT_TRAIL = "audit_trail"
AUDIT_ANCHORS = "audit_anchors"


@dataclass
class Tables:
    metadata: MetaData
    outbox: Table
    inbox: Table
    dead_letters: Table


def make_tables(metadata: MetaData) -> Tables:
    """The outbox, inbox, dead-letter, audit trail, audit anchor and signature tables every
    service has beside its own. A change to any table needs a revision (shared.migrations).
    """
    audit_trail_table(metadata)
    audit_anchors_table(metadata)
    add_signature_tables(metadata)
    return Tables(metadata, outbox_table(metadata), inbox_table(metadata),
                  dead_letter_table(metadata))


# Events out and in

def outbox_table(metadata: MetaData) -> Table:
    return Table(
        "outbox", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("subject", String(200), nullable=False),
        Column("aggregate_id", String(200), nullable=False),
        Column("event_type", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        # The trace context (W3C traceparent, tracestate) and request id of the call that
        # wrote the row, as JSON of the headers to publish (shared.tracing). Nullable:
        # rows from before it, and rows written outside any trace, publish without.
        Column("trace_context", Text, nullable=True),
        Index("ix_outbox_aggregate", "aggregate_id"),
    )


def inbox_table(metadata: MetaData) -> Table:
    return Table(
        "inbox", metadata,
        Column("event_id", String(36), primary_key=True),
        Column("subject", String(200), nullable=False),
        Column("processed_at", UtcDateTime, nullable=False),
        # The pruner's scan for rows past the retention (shared.inbox_retention).
        Index("ix_inbox_processed_at", "processed_at"),
    )


def dead_letter_table(metadata: MetaData) -> Table:
    """Messages that could not be applied, kept for QA and operators to look at."""
    return Table(
        "dead_letters", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("event_id", String(200), nullable=False),
        Column("subject", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("error", Text, nullable=False),
        Column("parked_at", UtcDateTime, nullable=False),
    )


# The audit trail and the anchors of other services' chains

# Installed with the table on PostgreSQL: the trail cannot be edited through SQL by the
# service's role (nor anyone else who does not first disable the trigger).
_APPEND_ONLY_FUNCTION = DDL("""
CREATE OR REPLACE FUNCTION lotgate_audit_trail_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_trail is append-only: %% refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
""")
_NO_UPDATE_DELETE = DDL(
    "CREATE TRIGGER audit_trail_append_only BEFORE UPDATE OR DELETE ON audit_trail "
    "FOR EACH ROW EXECUTE FUNCTION lotgate_audit_trail_append_only()")
_NO_TRUNCATE = DDL(
    "CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail "
    "FOR EACH STATEMENT EXECUTE FUNCTION lotgate_audit_trail_append_only()")

# The append's lock and head read in one round trip (shared.audit_chain). The head is read
# by a query of its own, after the lock is granted: a VOLATILE function's queries each take
# a fresh snapshot in READ COMMITTED, so it sees the append it waited for; one statement
# doing both would read from a snapshot taken before the wait, and fork the chain. The
# read is planned on each call (EXECUTE), as the services' statements are
# (shared.db): a plan kept from while the trail was small would scan and sort it whole.
_CHAIN_HEAD_FUNCTION = DDL("""
CREATE OR REPLACE FUNCTION lotgate_audit_chain_head(lock_key bigint)
RETURNS TABLE(sequence bigint, entry_hash varchar)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY EXECUTE 'SELECT t.sequence, t.entry_hash FROM audit_trail AS t
        ORDER BY t.sequence DESC LIMIT 1';
END
$$
""")

# SQLite has no roles: the same refusal keeps the service itself from editing the trail.
_SQLITE_TRIGGERS = [DDL(
    f"CREATE TRIGGER audit_trail_no_{op.lower()} BEFORE {op} ON audit_trail "
    f"BEGIN SELECT RAISE(ABORT, 'audit_trail is append-only: {op} refused'); END")
    for op in ("UPDATE", "DELETE")]


def audit_trail_table(metadata: MetaData) -> Table:
    """The trail's table; on PostgreSQL created with the trigger that keeps it append-only
    and the function that reads its head under the append lock."""
    table = Table(
        AUDIT_TRAIL, metadata,
        Column("sequence", BigInteger, primary_key=True, autoincrement=False),
        Column("recorded_at", UtcDateTime, nullable=False),
        Column("principal_subject", String(200), nullable=False),
        Column("principal_name", String(200), nullable=False),
        Column("record_type", String(40), nullable=False),
        Column("record_id", String(300), nullable=False),
        Column("action", String(60), nullable=False),
        Column("reason", Text, nullable=False),
        Column("old_values", Text, nullable=True),
        Column("new_values", Text, nullable=False),
        Column("request_id", String(128), nullable=False),
        Column("previous_hash", String(64), nullable=False),
        Column("entry_hash", String(64), nullable=False),
        Index("ix_audit_trail_record", "record_type", "record_id", "sequence"),
        Index("ix_audit_trail_principal", "principal_subject", "sequence"),
        Index("ix_audit_trail_recorded_at", "recorded_at", "sequence"),
    )
    for ddl in (_APPEND_ONLY_FUNCTION, _NO_UPDATE_DELETE, _NO_TRUNCATE, _CHAIN_HEAD_FUNCTION):
        event.listen(table, "after_create", ddl.execute_if(dialect="postgresql"))
    for ddl in _SQLITE_TRIGGERS:
        event.listen(table, "after_create", ddl.execute_if(dialect="sqlite"))
    return table


def audit_anchors_table(metadata: MetaData) -> Table:
    """Anchors of other services' chains this service received (append-only)."""
    return Table(
        AUDIT_ANCHORS, metadata,
        Column("service", String(32), primary_key=True),
        Column("sequence", BigInteger, primary_key=True),
        Column("entry_hash", String(64), nullable=False),
        Column("event_id", String(36), nullable=False),
        Column("occurred_at", UtcDateTime, nullable=False),
        Column("received_at", UtcDateTime, nullable=False),
    )


# Electronic signatures: every service keeps its own signers and signatures beside its
# records (defined once here, copied into each service's metadata).

_metadata = MetaData()

SIGNERS = Table(
    "signers", _metadata,
    Column("subject", String(200), primary_key=True),
    # Argon2id hash (with its salt and parameters); NULL after a reset.
    Column("secret_hash", String(200), nullable=True),
    Column("failures", Integer, nullable=False),
    Column("locked", Boolean, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

SIGNATURES = Table(
    "signatures", _metadata,
    Column("signature_id", String(36), primary_key=True),
    Column("record_type", String(64), nullable=False),
    Column("record_id", String(300), nullable=False),
    Column("signer", String(200), nullable=False),
    Column("printed_name", String(200), nullable=False),
    Column("meaning", String(32), nullable=False),
    Column("signed_at", UtcDateTime, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Index("ix_signatures_record", "record_type", "record_id"),
)


# Record types the audit trail holds without comparing a row (shared.audit.record_types).
TRAIL_ONLY = "lotgate_trail_only"


def add_signature_tables(metadata: MetaData) -> None:
    """Put the signers and signatures tables into a service's metadata; signers' changes
    are audited as `signer` records, never with their rows (shared.esign_signers)."""
    SIGNERS.to_metadata(metadata)
    metadata.info.setdefault(TRAIL_ONLY, set()).add("signer")
    SIGNATURES.to_metadata(metadata)
