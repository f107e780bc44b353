"""The scheduler's partial indexes hold exactly the lots the domain lets time move: a
status added to the domain and forgotten in the index would make the due-lots query
unable to use it (tests/integration/test_lots_plans.py shows the plan)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from services.lots.domain.lifecycle import FINAL, USABLE
from services.lots.domain.rule import LotStatus
from services.lots.tables import lots


def predicate(name: str, dialect_name: str) -> str:
    [index] = [i for i in lots.indexes if i.name == name]
    where = index.dialect_options[dialect_name]["where"]
    dialect = postgresql.dialect() if dialect_name == "postgresql" else sqlite.dialect()
    return str(where.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def test_the_due_indexes_hold_the_lots_time_can_move() -> None:
    not_final = sorted(s.value for s in LotStatus if s not in FINAL)
    usable = sorted(s.value for s in USABLE)
    for dialect_name in ("postgresql", "sqlite"):
        expiry = predicate("ix_lots_expiry_due", dialect_name)
        retest = predicate("ix_lots_retest_due", dialect_name)
        assert expiry.endswith("IN (" + ", ".join(f"'{s}'" for s in not_final) + ")")
        assert retest.endswith("IN (" + ", ".join(f"'{s}'" for s in usable) + ")")
