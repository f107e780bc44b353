"""audit chain head: the append's lock and head read in one call (PostgreSQL)

`lotgate_audit_chain_head(lock_key)` takes the append's advisory lock, then reads the
head in a query of its own: a VOLATILE function's queries take their snapshots as they
run, so the head is the one after the lock was granted (shared.audit_chain). The read is
planned on each call (EXECUTE), as the services' statements are: a plan kept from while
the trail was small would scan and sort it whole once it is large. SQLite has
one writer and reads the head as before: nothing to do there.

Revision ID: 2026_12_01_1647
Revises: 2026_12_01_0614
Create Date: 2026-12-01 16:47:54.113896+00:00
"""

from __future__ import annotations

from alembic import op

revision = '2026_12_01_1647'
down_revision = '2026_12_01_0614'
branch_labels = None
depends_on = None

_CHAIN_HEAD_FUNCTION = """CREATE OR REPLACE FUNCTION lotgate_audit_chain_head(lock_key bigint)
RETURNS TABLE(sequence bigint, entry_hash varchar)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN QUERY EXECUTE 'SELECT t.sequence, t.entry_hash FROM audit_trail AS t
        ORDER BY t.sequence DESC LIMIT 1';
END
$$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CHAIN_HEAD_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS lotgate_audit_chain_head(bigint)")
