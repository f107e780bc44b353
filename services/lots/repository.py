"""SQL of the lots service (SQLAlchemy Core on the unit of work's connection). SQL only:
it reads and writes rows and returns domain values and typed records; the rules are the
domain's, and the filters that depend on them are built from its constants. (Reviews and
release policies: qa_repository.py.)

The statements of the decision path, run for every event, are built once (at import, or
once per shape of `load_lots`) and take their values as parameters: a statement built
per call costs about three times its execution in SQLAlchemy alone (its cache key walked
and its IN list written out anew), and lists are `shared.db.one_of`, one array parameter
on PostgreSQL, so that the driver prepares each statement once whatever their length.

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
from sqlalchemy import ColumnElement, Insert, Select, bindparam, insert, select, tuple_, update
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
from shared.db import insert_ignoring_duplicates, one_of

# -- filters built from the domain's constants -----------------------------------------

def _status_in(statuses: Iterable[LotStatus]) -> ColumnElement[bool]:
    return lots.c.status.in_(sorted(status.value for status in statuses))


def _status_among(statuses: Iterable[LotStatus]) -> ColumnElement[bool]:
    """`_status_in` with the statuses written into the SQL, as a partial index's predicate
    is: only then can the database use that index for a plan made for any parameters."""
    return lots.c.status.in_([sa.literal(value, literal_execute=True)
                              for value in sorted(status.value for status in statuses)])


_NOT_FINAL = [status for status in LotStatus if status not in FINAL]


def _due(today: Any) -> ColumnElement[bool]:
    """Lots time moves on `today` (lifecycle.moved_by_time, and the rule's expiry): past
    their expiry date and not final, or usable with their retest date come."""
    return (((lots.c.expiry_date < today) & _status_in(_NOT_FINAL))
            | ((lots.c.retest_date <= today) & _status_in(USABLE)))


def _key_values(key: Key) -> dict[str, str]:
    """The parameters of a statement that names one (supplier, site, material)."""
    return {"k_supplier": key[0], "k_site": key[1], "k_material": key[2]}


_K_SUPPLIER, _K_SITE, _K_MATERIAL = (bindparam(name) for name in _key_values(("", "", "")))


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


_Q = qualifications.c
_Q_KEY = (_Q.supplier_id, _Q.site_id, _Q.material_code)
# By `shared` (FOR SHARE, else FOR UPDATE): one key (an event's, a receipt's), the rows
# locked being exactly the wanted ones either way; several keys, locked in key order.
_LOCK_ONE = {shared: select(qualifications).where(
    _Q.supplier_id == _K_SUPPLIER, _Q.site_id == _K_SITE, _Q.material_code == _K_MATERIAL
).with_for_update(read=shared) for shared in (False, True)}
_LOCK_SOME = {shared: select(qualifications)
              .where(tuple_(*_Q_KEY).in_(bindparam("keys", expanding=True)))
              .order_by(*_Q_KEY).with_for_update(read=shared) for shared in (False, True)}


async def _lock_existing(conn: AsyncConnection, keys: list[Key],
                         shared: bool) -> dict[Key, QualificationFacts]:
    if len(keys) == 1:
        rows = await conn.execute(_LOCK_ONE[shared], _key_values(keys[0]))
    else:
        rows = await conn.execute(_LOCK_SOME[shared], {"keys": keys})
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
    values: dict[str, Any] = {} if key is None else _key_values(key)
    if lot_ids is not None:
        values["lot_ids"] = sorted(set(lot_ids))
    if statuses is not None:
        values["statuses"] = sorted(status.value for status in statuses)
    if due_on is not None:
        values["due_on"] = due_on
    query = _lots_query(lot_ids is not None, key is not None, statuses is not None,
                        due_on is not None, skip_locked)
    context = DecisionContext([], dict(qualifications_ or {}))
    results: dict[str, list[ResultFacts]] = defaultdict(list)
    for r in await conn.execute(query, values):
        if not context.lots or context.lots[-1].lot_id != r.lot_id:
            context.lots.append(lot_from_row(r))
            if r.material_policy is not None:
                context.policies[r.material_code] = ReleasePolicy(r.material_policy)
        if r.r_result_id is not None:
            results[r.lot_id].append(result_from_row(Prefixed(r)))
    context.results.update(results)
    return context


@functools.cache
def _lots_query(by_ids: bool, by_key: bool, by_status: bool, by_due: bool,
                skip_locked: bool) -> Select[Any]:
    """`load_lots`'s statement for the filters given (which it takes as parameters):
    built once for each of the few shapes the decision paths use."""
    query = (select(lots, release_policies.c.policy.label("material_policy"),
                    *(c.label(f"r_{c.name}") for c in lot_results.c))
             .outerjoin(release_policies,
                        release_policies.c.material_code == lots.c.material_code)
             .outerjoin(lot_results, lot_results.c.lot_id == lots.c.lot_id))
    if by_ids:
        query = query.where(one_of(lots.c.lot_id, "lot_ids"))
    if by_key:
        query = query.where(lots.c.supplier_id == _K_SUPPLIER,
                            lots.c.supplier_site_id == _K_SITE,
                            lots.c.material_code == _K_MATERIAL)
    if by_status:
        query = query.where(one_of(lots.c.status, "statuses"))
    if by_due:
        query = query.where(_due(bindparam("due_on", type_=sa.Date())))
    return query.order_by(lots.c.lot_id, lot_results.c.result_id).with_for_update(
        of=lots, skip_locked=skip_locked)


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
    if len(decided) == 1 and conn.dialect.name == "postgresql":
        # One lot (an event's, a receipt's): both writes in one round trip.
        await conn.execute(_SAVE_ONE, {**updates[0], **{f"d_{k}": v
                                                         for k, v in records[0].items()}})
        return
    await conn.execute(_SAVE_LOT, updates)
    await conn.execute(_ADD_DECISIONS, records)


_ADD_DECISIONS = insert(decisions)
# PostgreSQL runs a data-modifying WITH once, to completion, whether or not the statement
# reads it: the lot's update and its decision record in one statement.
_SAVE_ONE = insert(decisions).values({
    column: bindparam(f"d_{column}") for column in (
        "lot_id", "version", "previous_status", "status", "unmet", "inputs", "cause",
        "decided_at")}).add_cte(_SAVE_LOT.cte("saved"))


# -- lots ------------------------------------------------------------------------------

_GET_LOT = select(lots).where(lots.c.lot_id == bindparam("lot_id"))
_KEYS_OF = select(lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id,
                  lots.c.material_code).where(one_of(lots.c.lot_id, "lot_ids"))
_GET_LOTS = select(lots).where(one_of(lots.c.lot_id, "lot_ids"))


async def get_lot(conn: AsyncConnection, *, lot_id: str) -> Lot | None:
    row = (await conn.execute(_GET_LOT, {"lot_id": lot_id})).first()
    return None if row is None else lot_from_row(row)


async def keys_of(conn: AsyncConnection, *, lot_ids: Iterable[str]) -> dict[str, Key]:
    """(supplier, site, material) of each received lot among `lot_ids`."""
    rows = await conn.execute(_KEYS_OF, {"lot_ids": sorted(set(lot_ids))})
    return {r.lot_id: (r.supplier_id, r.supplier_site_id, r.material_code) for r in rows}


async def get_lots(conn: AsyncConnection, *, lot_ids: Iterable[str]) -> dict[str, Lot]:
    """The received lots among `lot_ids`, by id."""
    rows = await conn.execute(_GET_LOTS, {"lot_ids": sorted(set(lot_ids))})
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

_SET_QUALIFICATION = update(qualifications).where(
    _Q.supplier_id == _K_SUPPLIER, _Q.site_id == _K_SITE, _Q.material_code == _K_MATERIAL
).values(status=bindparam("b_status"), valid_until=bindparam("b_valid_until"),
         version=bindparam("b_version"))


async def set_qualification(conn: AsyncConnection, *, key: Key, facts: QualificationFacts
                            ) -> None:
    """Store a newer qualification (the row is locked by the caller)."""
    await conn.execute(_SET_QUALIFICATION, {
        **_key_values(key), "b_status": facts.status, "b_valid_until": facts.valid_until,
        "b_version": facts.version})


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
