"""The lots service's own tables: lots with their status, the projections it decides from,
and the reviews QA owes on released lots whose supplier site lost its approval."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    Index,
    Integer,
    LargeBinary,
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

lots = Table(
    "lots", metadata,
    Column("lot_id", String(64), primary_key=True),
    Column("material_code", String(64), nullable=False),
    Column("supplier_id", String(64), nullable=False),
    # The supplier's manufacturing site: qualifications are per (supplier, site, material).
    Column("supplier_site_id", String(64), nullable=False),
    Column("supplier_lot_number", String(64), nullable=False),
    Column("quantity_value", Float(53), nullable=False),
    Column("quantity_unit", String(32), nullable=False),
    Column("container_count", Integer, nullable=False),
    Column("expiry_date", Date, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("received_by", String(200), nullable=False),
    # Hash of the receiving request: a retry with the same content gets the original answer.
    Column("fingerprint", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("status_version", BigInteger, nullable=False),
    Column("unmet", Text, nullable=False),  # JSON list of [code, message, rule]
    Column("decided_at", UtcDateTime, nullable=False),
    # From this day the lot must be re-tested before use (None: no retest date).
    Column("retest_date", Date, nullable=True),
    # What QA decided about the lot; who and when are in the cause of the decision
    # record each QA action writes. qa_released holds only while the lot stays RELEASED
    # or RELEASABLE (domain.keeps_qa_release).
    Column("qa_released", Boolean, nullable=False, default=False),
    Column("qa_hold_reason", Text, nullable=False, default=""),
    Column("qa_rejection_reason", Text, nullable=False, default=""),
    # The status as GetReleaseStatus answers it (a serialized lotgate.lots.v1.ReleaseStatus,
    # before time moves it: read_model.StoredStatus), written with each decision, so that
    # reading a lot not in memory parses nothing. It answers only while status_reply_version
    # equals status_version: a row written without it (straight into the table, or by a
    # release before this column) is answered from status, unmet and decided_at.
    Column("status_reply", LargeBinary, nullable=True),
    Column("status_reply_version", BigInteger, nullable=True),
    Index("ix_lots_supplier_site_material", "supplier_id", "supplier_site_id", "material_code"),
    Index("ix_lots_status", "status", "lot_id"),
    # ListLots by material and the snapshot of a material's watch.
    Index("ix_lots_material", "material_code", "lot_id"),
    Index("ix_lots_received_at", "received_at", "lot_id"),
)

# The scheduler's scans (repository.lot_ids_to_decide): lots past their expiry date that
# are not final yet, usable lots whose retest date has come. Partial, holding only the lots
# time can still move, so the years of expired and rejected lots are never read, and
# ordered by the date, so that a plan made for any date (PostgreSQL's generic plan) still
# reads only the due lots. The statuses are the domain's (lifecycle.FINAL, USABLE), written
# out as the query writes them (literals) so the database can match query and index.
_NOT_FINAL = ("ON_HOLD", "QUARANTINE", "RELEASABLE", "RELEASED")
_USABLE = ("RELEASABLE", "RELEASED")
Index("ix_lots_expiry_due", lots.c.expiry_date,
      postgresql_where=lots.c.status.in_(_NOT_FINAL), sqlite_where=lots.c.status.in_(_NOT_FINAL))
Index("ix_lots_retest_due", lots.c.retest_date,
      postgresql_where=lots.c.status.in_(_USABLE), sqlite_where=lots.c.status.in_(_USABLE))

# Who releases each material's lots (AUTOMATIC when a material has no row).
release_policies = Table(
    "release_policies", metadata,
    Column("material_code", String(64), primary_key=True),
    Column("policy", String(20), nullable=False),  # AUTOMATIC, QA_RELEASE
    Column("reason", Text, nullable=False),
    Column("set_by", String(200), nullable=False),
    Column("set_at", UtcDateTime, nullable=False),
    # A QA release needs two people's signatures (four eyes).
    Column("two_signatures", Boolean, nullable=False, default=False),
)

# Every policy ever set, append-only: the history behind release_policies.
release_policy_history = Table(
    "release_policy_history", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("material_code", String(64), nullable=False),
    Column("policy", String(20), nullable=False),
    Column("reason", Text, nullable=False),
    Column("set_by", String(200), nullable=False),
    Column("set_at", UtcDateTime, nullable=False),
    Column("two_signatures", Boolean, nullable=False, default=False),
    Index("ix_release_policy_history_material", "material_code", "id"),
)

# Projection of the suppliers service's QualificationChanged events, one row per
# (supplier, site, material). A row with version 0 and an empty status is a placeholder
# that decisions lock on.
qualifications = Table(
    "qualifications", metadata,
    Column("supplier_id", String(64), primary_key=True),
    Column("site_id", String(64), primary_key=True),
    Column("material_code", String(64), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    Column("version", BigInteger, nullable=False),
)

# Projection of the results service's ResultRecorded, ResultInvalidated and
# ResultConfirmed events; kept even for lots not received yet, so that nothing that
# arrives early is lost. Whichever event of a result arrives first inserts its row (each
# carries the full result); a later invalidation or confirmation sets `state`; nothing
# sets a state back to VALID, so the events may arrive in any order.
lot_results = Table(
    "lot_results", metadata,
    Column("result_id", String(64), primary_key=True),
    Column("lot_id", String(64), nullable=False, index=True),
    Column("material_code", String(64), nullable=False),
    Column("test", String(20), nullable=False),
    Column("verdict", String(10), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("spec_version", BigInteger, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("lot_result_number", BigInteger, nullable=False),
    Column("state", String(12), nullable=False),  # VALID, INVALIDATED, CONFIRMED
    Column("state_reason", Text, nullable=False),  # "" while VALID or when not known
    Column("retest_of", String(64), nullable=True),  # the invalidated result it retests
    # The tests of spec_version, comma-joined: "IDENTITY,PURITY,STERILITY,ASSAY".
    Column("required_tests", String(200), nullable=False),
)

# Every decision that changed a lot's status or reasons, with everything it used.
decisions = Table(
    "decisions", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("lot_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("previous_status", String(20), nullable=True),
    Column("status", String(20), nullable=False),
    Column("unmet", Text, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("cause", String(200), nullable=False),
    Column("decided_at", UtcDateTime, nullable=False),
    UniqueConstraint("lot_id", "version"),
)

# Released lots QA must review because their supplier site was suspended, disqualified or
# expired for their material after release. One per lot and qualification version.
lot_reviews = Table(
    "lot_reviews", metadata,
    # Insertion order: ListLotReviews pages by it, oldest first.
    Column("sequence", BigId, primary_key=True, autoincrement=True),
    Column("review_id", String(100), nullable=False),  # "<lot_id>/<qualification version>"
    Column("lot_id", String(64), nullable=False),
    Column("supplier_id", String(64), nullable=False),
    Column("supplier_site_id", String(64), nullable=False),
    Column("material_code", String(64), nullable=False),
    Column("qualification_status", String(20), nullable=False),
    Column("qualification_version", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("opened_at", UtcDateTime, nullable=False),
    Column("state", String(10), nullable=False),  # OPEN, CLOSED
    Column("conclusion", Text, nullable=True),
    Column("closed_by", String(200), nullable=True),
    Column("closed_at", UtcDateTime, nullable=True),
    UniqueConstraint("review_id", name="uq_lot_reviews_review_id"),
    Index("ix_lot_reviews_state", "state", "sequence"),
    Index("ix_lot_reviews_supplier_material", "supplier_id", "material_code", "sequence"),
    Index("ix_lot_reviews_lot", "lot_id"),
)

# 2: lots and qualifications keyed by supplier site; lot_reviews.
# 3: lot_results.state, state_reason, retest_of, required_tests (OOS handling).
# 4: decisions.inputs holds the lot facts the rule uses (expiry date, supplier, site,
#    material), so that every decision can be replayed; ix_lots_received_at.
# 5: lots.retest_date, qa_released, qa_hold_reason, qa_rejection_reason; release_policies
#    and release_policy_history; RELEASABLE and EXPIRED statuses; ix_lots_material.
# 6: audit_trail.
# 7: release_policies.two_signatures (and its history); signers, signatures.
tables = make_tables(metadata)

# The GMP records of this service, each change of which the audit trail records (QA's
# actions are changes of their lot).
# A lot's status_reply is its status, version, unmet and decided_at in another form: not
# compared with the trail.
audit.register(metadata, "lot", lots, derived=["status_reply", "status_reply_version"])
audit.register(metadata, "policy", release_policies)
audit.register(metadata, "review", lot_reviews, "review_id")
