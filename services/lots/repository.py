"""SQL of the lots service (SQLAlchemy Core on the unit of work's connection). SQL only:
it reads and writes rows and returns domain values and typed records; the rules are the
domain's, and the filters that depend on them are built from its constants. (Reviews and
release policies: qa_repository.py.)

Lock order, everywhere: qualification rows first, then lot rows, each in key order.
Every decision path follows it, so concurrent decisions wait for each other instead of
deciding from a stale qualification.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Insert, and_, bindparam, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.lots.decision_record import inputs_to_json, unmet_to_json
from services.lots.domain.lifecycle import FINAL, USABLE, Decided
from services.lots.domain.lot import Key, Lot
from services.lots.domain.projection import LabResult
from services.lots.domain.rule import (
    LotStatus,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
)
from services.lots.records import (
    DecisionContext,
    Prefixed,
    lot_from_row,
    lot_row,
    result_from_row,
    tests_to_text,
)
from services.lots.tables import (
    decisions,
    lot_results,
    lots,
    qualifications,
    release_policies,
)
from shared.db import insert_ignoring_duplicates

# -- filters built from the domain's constants -----------------------------------------

def _status_in(statuses: Iterable[LotStatus]) -> ColumnElement[bool]:
    return lots.c.status.in_(sorted(status.value for status in statuses))


def _status_among(statuses: Iterable[LotStatus]) -> ColumnElement[bool]:
    """`_status_in` with the statuses written into the SQL, as a partial index's predicate
    is: only then can the database use that index for a plan made for any parameters."""
    return lots.c.status.in_([sa.literal(value, literal_execute=True)
                              for value in sorted(status.value for status in statuses)])


_NOT_FINAL = [status for status in LotStatus if status not in FINAL]


def _due(today: date) -> ColumnElement[bool]:
    """Lots time moves on `today` (lifecycle.moved_by_time, and the rule's expiry): past
    their expiry date and not final, or usable with their retest date come."""
    return (((lots.c.expiry_date < today) & _status_in(_NOT_FINAL))
            | ((lots.c.retest_date <= today) & _status_in(USABLE)))


def _of_key(key: Key) -> ColumnElement[bool]:
    return and_(lots.c.supplier_id == key[0], lots.c.supplier_site_id == key[1],
                lots.c.material_code == key[2])


# -- the decision path -----------------------------------------------------------------

async def lock_qualifications(conn: AsyncConnection, *, keys: Iterable[Key],
                              shared: bool = False) -> dict[Key, QualificationFacts]:
    """Lock (creating placeholders where missing) the qualification rows of `keys`.

    `shared`: a read lock (FOR SHARE), for decisions that only read them (receipts): they
    run beside each other, while a change of them (FOR UPDATE) waits for them all and
    they for it. SQLite has one writer at a time anyway."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    found = await _lock_existing(conn, ordered, shared)
    missing = [key for key in ordered if key not in found]
    if missing:
        await conn.execute(
            insert_ignoring_duplicates(qualifications, conn.dialect.name),
            [{"supplier_id": s, "site_id": site, "material_code": m, "status": "",
              "valid_until": None, "version": 0} for s, site, m in missing])
        found.update(await _lock_existing(conn, missing, shared))
    return found


async def _lock_existing(conn: AsyncConnection, keys: list[Key],
                         shared: bool) -> dict[Key, QualificationFacts]:
    q = qualifications.c
    rows = await conn.execute(
        select(qualifications)
        .where(tuple_(q.supplier_id, q.site_id, q.material_code).in_(keys))
        .order_by(q.supplier_id, q.site_id, q.material_code)
        .with_for_update(read=shared))
    return {(r.supplier_id, r.site_id, r.material_code):
            QualificationFacts(r.status, r.valid_until, r.version) for r in rows}


async def load_lots(conn: AsyncConnection, *, lot_ids: Iterable[str] | None = None,
                    key: Key | None = None, statuses: Iterable[LotStatus] | None = None,
                    due_on: date | None = None, skip_locked: bool = False,
                    qualifications_: dict[Key, QualificationFacts] | None = None
                    ) -> DecisionContext:
    """The lots among `lot_ids` (or of `key`), still in `statuses` / due on `due_on` when
    given, locked in id order (with `skip_locked`, rows another transaction holds are left
    out), with their results and their material's policy: one query. The caller holds
    their qualification rows (`qualifications_`), as the lock order wants."""
    query = (select(lots, release_policies.c.policy.label("material_policy"),
                    *(c.label(f"r_{c.name}") for c in lot_results.c))
             .outerjoin(release_policies,
                        release_policies.c.material_code == lots.c.material_code)
             .outerjoin(lot_results, lot_results.c.lot_id == lots.c.lot_id))
    if lot_ids is not None:
        query = query.where(lots.c.lot_id.in_(sorted(set(lot_ids))))
    if key is not None:
        query = query.where(_of_key(key))
    if statuses is not None:
        query = query.where(_status_in(statuses))
    if due_on is not None:
        query = query.where(_due(due_on))
    query = query.order_by(lots.c.lot_id, lot_results.c.result_id).with_for_update(
        of=lots, skip_locked=skip_locked)
    context = DecisionContext([], dict(qualifications_ or {}))
    results: dict[str, list[ResultFacts]] = defaultdict(list)
    for r in await conn.execute(query):
        if not context.lots or context.lots[-1].lot_id != r.lot_id:
            context.lots.append(lot_from_row(r))
            if r.material_policy is not None:
                context.policies[r.material_code] = ReleasePolicy(r.material_policy)
        if r.r_result_id is not None:
            results[r.lot_id].append(result_from_row(Prefixed(r)))
    context.results.update(results)
    return context


async def load_decision_context(conn: AsyncConnection, *, keys: Iterable[Key],
                                lot_ids: Iterable[str] | None = None,
                                statuses: Iterable[LotStatus] | None = None,
                                due_on: date | None = None,
                                skip_locked: bool = False) -> DecisionContext:
    """Lock the qualifications of `keys`, then load (and lock) the lots among `lot_ids`
    (see `load_lots`): the two queries every decision starts with."""
    held = await lock_qualifications(conn, keys=keys)
    return await load_lots(conn, lot_ids=lot_ids, statuses=statuses, due_on=due_on,
                           skip_locked=skip_locked, qualifications_=held)


_SAVE_LOT = update(lots).where(lots.c.lot_id == bindparam("b_lot_id")).values(
    status=bindparam("b_status"), status_version=bindparam("b_version"),
    unmet=bindparam("b_unmet"), decided_at=bindparam("b_decided_at"),
    qa_released=bindparam("b_qa_released"), status_reply=bindparam("b_reply"),
    status_reply_version=bindparam("b_reply_version"))


async def save_decisions(conn: AsyncConnection, decided: Sequence[Decided], *, cause: str,
                         now: datetime, replies: Mapping[str, bytes] | None = None) -> None:
    """Write the lots' new statuses (status_reply: `replies` by lot id), decision records."""
    if not decided:
        return
    updates, records = [], []
    for d in decided:
        unmet, reply = unmet_to_json(d.step.unmet), (replies or {}).get(d.lot.lot_id)
        # QA's release stands only while everything keeps holding (recorded in the inputs
        # of the next decision).
        updates.append({"b_lot_id": d.lot.lot_id, "b_status": d.step.status.value,
                        "b_version": d.version, "b_unmet": unmet, "b_decided_at": now,
                        "b_qa_released": d.step.qa_released, "b_reply": reply,
                        "b_reply_version": d.version})
        records.append({"lot_id": d.lot.lot_id, "version": d.version,
                        "previous_status": d.previous_status.value if d.previous_status
                        else None, "status": d.step.status.value, "unmet": unmet,
                        "inputs": inputs_to_json(d.inputs, d.step.rule),
                        "cause": cause[:200], "decided_at": now})
    await conn.execute(_SAVE_LOT, updates)
    await conn.execute(insert(decisions), records)


# -- lots ------------------------------------------------------------------------------

async def get_lot(conn: AsyncConnection, *, lot_id: str) -> Lot | None:
    row = (await conn.execute(select(lots).where(lots.c.lot_id == lot_id))).first()
    return None if row is None else lot_from_row(row)


async def keys_of(conn: AsyncConnection, *, lot_ids: Iterable[str]) -> dict[str, Key]:
    """(supplier, site, material) of each received lot among `lot_ids`."""
    rows = await conn.execute(
        select(lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id, lots.c.material_code)
        .where(lots.c.lot_id.in_(sorted(set(lot_ids)))))
    return {r.lot_id: (r.supplier_id, r.supplier_site_id, r.material_code) for r in rows}


async def get_lots(conn: AsyncConnection, *, lot_ids: Iterable[str]) -> dict[str, Lot]:
    """The received lots among `lot_ids`, by id."""
    rows = await conn.execute(select(lots).where(lots.c.lot_id.in_(sorted(set(lot_ids)))))
    return {r.lot_id: lot_from_row(r) for r in rows}


async def add_lots(conn: AsyncConnection, received: Sequence[Lot]) -> None:
    """Insert received lots, in one statement (their first decision follows in the same
    transaction)."""
    rows = [lot_row(lot) for lot in received]
    await conn.execute(_ADD_LOT, rows[0] if len(rows) == 1 else rows)


_ADD_LOT = insert(lots)


async def set_qa_facts(conn: AsyncConnection, *, lot_id: str, values: dict[str, Any]) -> None:
    """Change the lot's retest date or what QA decided about it (the row is locked)."""
    await conn.execute(update(lots).where(lots.c.lot_id == lot_id).values(**values))


async def lot_ids_to_decide(conn: AsyncConnection, *, material_code: str | None = None,
                            statuses: Iterable[LotStatus] | None = None,
                            due_on: date | None = None,
                            limit: int | None = None) -> dict[str, Key]:
    """Lots a policy change (`material_code`, `statuses`) or time (`due_on`) would move,
    with their keys, not locked: the caller locks their qualifications, then them."""
    columns = (lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id,
               lots.c.material_code)
    filters = []
    if material_code is not None:
        filters.append(lots.c.material_code == material_code)
    if statuses is not None:
        filters.append(_status_in(statuses))
    if due_on is None:
        query = select(*columns).where(*filters).order_by(lots.c.lot_id)
        if limit is not None:
            query = query.limit(limit)
    else:
        # Each half of `_due` through its partial index (ix_lots_expiry_due,
        # ix_lots_retest_due) in date order, the limits written into the SQL: an index
        # scan that stops after `limit` lots whatever date the plan was made for.
        halves = [
            select(*columns).where(*filters, date_column <= due_on if inclusive
                                   else date_column < due_on, _status_among(among))
            .order_by(date_column).limit(_constant(limit)).subquery()
            for date_column, inclusive, among in (
                (lots.c.expiry_date, False, _NOT_FINAL), (lots.c.retest_date, True, USABLE))]
        due = sa.union(*(select(half) for half in halves)).subquery()
        query = select(due).order_by(due.c.lot_id).limit(_constant(limit))
    return {r.lot_id: (r.supplier_id, r.supplier_site_id, r.material_code)
            for r in await conn.execute(query)}


def _constant(limit: int | None) -> Any:
    """A LIMIT written into the SQL (a planner that does not know a parameter's value
    guesses a tenth of the rows)."""
    return None if limit is None else sa.literal_column(str(int(limit)))


# -- projections -----------------------------------------------------------------------

async def set_qualification(conn: AsyncConnection, *, key: Key, facts: QualificationFacts
                            ) -> None:
    """Store a newer qualification (the row is locked by the caller)."""
    q = qualifications.c
    await conn.execute(update(qualifications).where(
        q.supplier_id == key[0], q.site_id == key[1], q.material_code == key[2]
    ).values(status=facts.status, valid_until=facts.valid_until, version=facts.version))


def _result_row(result: LabResult) -> dict[str, Any]:
    r = result.facts
    return {"result_id": r.result_id, "lot_id": result.lot_id,
            "material_code": result.material_code, "test": r.test.value,
            "verdict": r.verdict.value, "sequence": r.sequence, "spec_version": r.spec_version,
            "recorded_at": result.recorded_at, "lot_result_number": r.number,
            "state": r.state.value, "state_reason": r.state_reason,
            "retest_of": r.retest_of or None, "required_tests": tests_to_text(r.required_tests)}


async def add_results(conn: AsyncConnection, results: Sequence[LabResult]) -> None:
    """Store results in the projection; ones already there are left as they are (so a
    late ResultRecorded never turns an invalidated or confirmed result back to VALID)."""
    if results:
        await conn.execute(insert_ignoring_duplicates(lot_results, conn.dialect.name),
                           [_result_row(r) for r in results])


async def set_result_states(conn: AsyncConnection, results: Sequence[LabResult]) -> None:
    """Store QA's invalidation or confirmation of results (one per result).

    A result not in the projection yet (its ResultRecorded is still on its way) is
    inserted as it is; one that is there and still VALID takes the new state. A result
    invalidated or confirmed already keeps its state: the results service moves a result
    out of VALID once, and never back.
    """
    if results:
        await conn.execute(_upsert_state(conn.dialect.name), [_result_row(r) for r in results])


@functools.cache
def _upsert_state(dialect_name: str) -> Insert:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(lot_results)
    return statement.on_conflict_do_update(
        index_elements=[lot_results.c.result_id],
        set_={"state": statement.excluded.state,
              "state_reason": statement.excluded.state_reason},
        where=lot_results.c.state == ResultState.VALID.value)
