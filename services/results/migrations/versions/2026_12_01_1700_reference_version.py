"""reference version: a number the database raises on every change of the reference data

`reference_version` holds one row, raised by triggers in every transaction that inserts,
updates or deletes specifications, instruments or calibrations, whatever the writer.
Posting reads it together with the lots' numbers, and serves the specifications and
instruments it holds in memory only while the number is the one they were read under
(services/results/reference.py).

Revision ID: 2026_12_01_1700
Revises: 2026_12_01_1647
Create Date: 2026-12-01 17:00:00.000000+00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '2026_12_01_1700'
down_revision = '2026_12_01_1647'
branch_labels = None
depends_on = None

_TABLES = ("specifications", "instruments", "calibrations")

_PG_FUNCTION = """CREATE OR REPLACE FUNCTION lotgate_reference_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE reference_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$"""


def upgrade() -> None:
    op.create_table(
        'reference_version',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.execute("INSERT INTO reference_version (id, version) VALUES (1, 1)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for table in _TABLES:
            op.execute(f"CREATE TRIGGER {table}_reference_changed AFTER INSERT OR UPDATE OR "
                       f"DELETE OR TRUNCATE ON {table} FOR EACH STATEMENT "
                       "EXECUTE FUNCTION lotgate_reference_changed()")
    else:
        for table in _TABLES:
            for event in ("INSERT", "UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_reference_{event.lower()} AFTER {event} "
                           f"ON {table} BEGIN UPDATE reference_version SET version = "
                           "version + 1 WHERE id = 1; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_reference_changed ON {table}")
        op.execute("DROP FUNCTION IF EXISTS lotgate_reference_changed()")
    else:
        for table in _TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_reference_{event}")
    op.drop_table('reference_version')
