"""lots status reply: each lot's status as the API answers it, stored with the lot

Reading a lot that is not in memory then parses nothing (read_model.StoredStatus). The
existing lots get theirs here, made from status, status_version, unmet and decided_at
as convert.release_status makes it; a lot the upgrade misses (none should) would still
be answered from those columns.

Revision ID: 2026_12_01_1057
Revises: 2026_12_01_0622
Create Date: 2026-12-01 10:57:14.965816+00:00
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from google.protobuf.timestamp_pb2 import Timestamp

from lotgate.lots.v1 import lots_pb2 as pb

revision = '2026_12_01_1057'
down_revision = '2026_12_01_0622'
branch_labels = None
depends_on = None

# Lots per read and per batch of updates.
_PAGE = 5000

_lots = sa.table("lots", sa.column("lot_id", sa.String), sa.column("status", sa.String),
                 sa.column("status_version", sa.BigInteger), sa.column("unmet", sa.Text),
                 sa.column("decided_at", sa.DateTime(timezone=True)),
                 sa.column("status_reply", sa.LargeBinary),
                 sa.column("status_reply_version", sa.BigInteger))


def _reply(row: Any) -> bytes:
    decided_at: datetime = row.decided_at
    if isinstance(decided_at, str):  # SQLite without the column's type
        decided_at = datetime.fromisoformat(decided_at)
    decided_at = (decided_at.replace(tzinfo=UTC) if decided_at.tzinfo is None
                  else decided_at.astimezone(UTC))
    stamp = Timestamp()
    stamp.FromDatetime(decided_at)
    return pb.ReleaseStatus(
        lot_id=row.lot_id, status=pb.LotStatus.Value(f"LOT_STATUS_{row.status}"),
        version=row.status_version,
        unmet=[pb.UnmetCondition(code=code, message=message, rule=rule)
               for code, message, rule in json.loads(row.unmet)],
        decided_at=stamp).SerializeToString()


def upgrade() -> None:
    with op.batch_alter_table('lots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status_reply', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('status_reply_version', sa.BigInteger(), nullable=True))

    conn = op.get_bind()
    write = (sa.update(_lots).where(_lots.c.lot_id == sa.bindparam("b_lot_id"))
             .values(status_reply=sa.bindparam("b_reply"),
                     status_reply_version=sa.bindparam("b_version")))
    after = ""
    while True:
        rows = conn.execute(
            sa.select(_lots.c.lot_id, _lots.c.status, _lots.c.status_version, _lots.c.unmet,
                      _lots.c.decided_at)
            .where(_lots.c.lot_id > after).order_by(_lots.c.lot_id).limit(_PAGE)).all()
        if not rows:
            break
        conn.execute(write, [{"b_lot_id": r.lot_id, "b_reply": _reply(r),
                              "b_version": r.status_version} for r in rows])
        after = rows[-1].lot_id


def downgrade() -> None:
    with op.batch_alter_table('lots', schema=None) as batch_op:
        batch_op.drop_column('status_reply_version')
        batch_op.drop_column('status_reply')
