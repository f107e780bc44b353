"""Data access for lots and the projections (SQLAlchemy Core on the unit of work).

Lock order, everywhere: qualification rows first, then lot rows, each in key order.
Every decision path follows it, so concurrent decisions wait for each other instead of
deciding from a stale qualification.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Insert, bindparam, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.lots.domain import (
    DECIDED_ON_QUALIFICATION,
    Decision,
    DecisionInputs,
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Unmet,
    Verdict,
)
from services.lots.read_model import StatusEntry
from services.lots.tables import (
    decisions,
    lot_results,
    lot_reviews,
    lots,
    qualifications,
    release_policies,
    release_policy_history,
)
from shared.db import insert_ignoring_duplicates

Key = tuple[str, str, str]  # (supplier_id, site_id, material_code)


def key_of(lot: Any) -> Key:
    """The qualification key of a lot row (or any row with the lot's fixed columns)."""
    return (lot.supplier_id, lot.supplier_site_id, lot.material_code)


def unmet_to_json(unmet: Iterable[Unmet]) -> str:
    return json.dumps([[u.code, u.message, u.rule] for u in unmet], separators=(",", ":"))


def unmet_from_json(text: str) -> tuple[Unmet, ...]:
    return tuple(Unmet(*item) for item in json.loads(text))


def status_entry(row: Any) -> StatusEntry:
    """The status entry of a lots row (any row with the status columns and fixed facts)."""
    return StatusEntry.make(row, LotStatus(row.status), row.status_version,
                            unmet_from_json(row.unmet), row.decided_at)


def inputs_to_json(inputs: DecisionInputs, decision: Decision) -> str:
    """The `inputs` of a decision record: everything `decide` was given (the lot id is the
    record's), so that the decision can be replayed, and what the rule made of it."""
    lot, qualification, qa = inputs.lot, inputs.qualification, inputs.qa
    return json.dumps({
        "now": inputs.now.isoformat(),
        "expiry_date": lot.expiry_date.isoformat(),
        "retest_date": lot.retest_date.isoformat() if lot.retest_date else None,
        "release_policy": qa.policy.value,
        "qa_released": qa.released,
        "qa_hold_reason": qa.hold_reason,
        "qa_rejection_reason": qa.rejection_reason,
        "supplier_id": lot.supplier_id,
        "supplier_site_id": lot.supplier_site_id,
        "material_code": lot.material_code,
        "qualification": None if qualification is None else {
            "status": qualification.status, "version": qualification.version,
            "valid_until": (qualification.valid_until.isoformat()
                            if qualification.valid_until else None)},
        # Every result the rule saw, with QA's state of it, and which of them counted.
        "results": [{"result_id": r.result_id, "test": r.test.value,
                     "verdict": r.verdict.value, "sequence": r.sequence,
                     "number": r.number, "spec_version": r.spec_version,
                     "state": r.state.value, "state_reason": r.state_reason,
                     "retest_of": r.retest_of,
                     "required_tests": [t.value for t in r.required_tests]}
                    for r in sorted(inputs.results, key=lambda r: (r.sequence, r.result_id))],
        "required_tests": [t.value for t in decision.required_tests],
        "counted": [r.result_id for r in decision.used_results],
        "rule_status": decision.status.value,
    }, separators=(",", ":"))


@dataclass(frozen=True)
class StoredInputs:
    """The inputs of a decision record, read back: what the rule was given, and what the
    record says it made of them."""

    inputs: DecisionInputs
    rule_status: LotStatus | None
    required_tests: tuple[TestKind, ...] | None
    counted: tuple[str, ...] | None


def inputs_from_json(lot_id: str, text: str) -> StoredInputs:
    """Parse a record's inputs; ValueError naming what is missing or malformed."""
    try:
        data = json.loads(text)
        q = data["qualification"]
        qualification = None if q is None else QualificationFacts(
            q["status"], _instant(q["valid_until"]), int(q["version"]))
        results = tuple(ResultFacts(
            r["result_id"], TestKind(r["test"]), Verdict(r["verdict"]), int(r["sequence"]),
            int(r["spec_version"]), int(r["number"]), state=ResultState(r["state"]),
            state_reason=r["state_reason"], retest_of=r["retest_of"],
            required_tests=tuple(TestKind(t) for t in r["required_tests"]))
            for r in data["results"])
        retest = data["retest_date"]
        lot = LotFacts(lot_id, data["material_code"], data["supplier_id"],
                       data["supplier_site_id"], date.fromisoformat(data["expiry_date"]),
                       date.fromisoformat(retest) if retest is not None else None)
        qa = QaFacts(ReleasePolicy(data["release_policy"]), bool(data["qa_released"]),
                     str(data["qa_hold_reason"]), str(data["qa_rejection_reason"]))
        now = _instant(data["now"])
        if now is None:
            raise ValueError("now is not stored")
        rule_status = data.get("rule_status")
        required = data.get("required_tests")
        counted = data.get("counted")
        return StoredInputs(
            DecisionInputs(lot, qualification, results, now, qa),
            LotStatus(rule_status) if rule_status is not None else None,
            tuple(TestKind(t) for t in required) if required is not None else None,
            tuple(counted) if counted is not None else None)
    except KeyError as missing:
        raise ValueError(f"{missing.args[0]} is not stored") from None
    except (TypeError, AttributeError) as error:
        raise ValueError(f"malformed inputs: {error}") from None


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


async def get_lot(conn: AsyncConnection, *, lot_id: str) -> Any | None:
    """The lot row, or None."""
    return (await conn.execute(select(lots).where(lots.c.lot_id == lot_id))).first()


async def add_lot(conn: AsyncConnection, *, values: dict[str, Any]) -> None:
    """Insert a received lot with its first status."""
    await conn.execute(insert(lots).values(**values))


async def lock_qualifications(conn: AsyncConnection, *,
                              keys: Iterable[Key]) -> dict[Key, QualificationFacts]:
    """Lock (creating placeholders where missing) the qualification rows of `keys`."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    found = await _lock_existing(conn, ordered)
    missing = [key for key in ordered if key not in found]
    if missing:
        await conn.execute(
            insert_ignoring_duplicates(qualifications, conn.dialect.name),
            [{"supplier_id": s, "site_id": site, "material_code": m, "status": "",
              "valid_until": None, "version": 0} for s, site, m in missing])
        found.update(await _lock_existing(conn, missing))
    return found


async def _lock_existing(conn: AsyncConnection,
                         keys: list[Key]) -> dict[Key, QualificationFacts]:
    q = qualifications.c
    rows = await conn.execute(
        select(qualifications)
        .where(tuple_(q.supplier_id, q.site_id, q.material_code).in_(keys))
        .order_by(q.supplier_id, q.site_id, q.material_code)
        .with_for_update())
    return {(r.supplier_id, r.site_id, r.material_code):
            QualificationFacts(r.status, r.valid_until, r.version) for r in rows}


async def set_qualification(conn: AsyncConnection, *, key: Key, status: str,
                            valid_until: datetime | None, version: int) -> None:
    """Store a newer qualification (the row is locked by the caller)."""
    q = qualifications.c
    await conn.execute(update(qualifications).where(
        q.supplier_id == key[0], q.site_id == key[1], q.material_code == key[2]
    ).values(status=status, valid_until=valid_until, version=version))


async def lots_by_id(conn: AsyncConnection, *, lot_ids: Iterable[str],
                     for_update: bool = False) -> list[Any]:
    """Lots with these ids, in id order."""
    query = select(lots).where(lots.c.lot_id.in_(sorted(set(lot_ids)))).order_by(lots.c.lot_id)
    if for_update:
        query = query.with_for_update()
    return list(await conn.execute(query))


def _of_key(key: Key) -> Any:
    return (lots.c.supplier_id == key[0]) & (lots.c.supplier_site_id == key[1]) & (
        lots.c.material_code == key[2])


# Statuses a qualification change can still move a lot out of.
_OPEN = tuple(sorted(status.value for status in DECIDED_ON_QUALIFICATION))


async def open_lots_of(conn: AsyncConnection, *, key: Key) -> list[Any]:
    """Lots of a supplier site and material that a qualification change can still decide
    (in QUARANTINE, ON_HOLD or RELEASABLE), locked."""
    return list(await conn.execute(
        select(lots).where(_of_key(key), lots.c.status.in_(_OPEN))
        .order_by(lots.c.lot_id).with_for_update()))


async def released_lots_of(conn: AsyncConnection, *, key: Key) -> list[Any]:
    """Released lots of a supplier site and material, in id order.

    Not locked: the caller holds the qualification row, and only a decision (which takes
    that row first) can change whether a lot of this key is released.
    """
    return list(await conn.execute(
        select(lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id, lots.c.material_code)
        .where(_of_key(key), lots.c.status == LotStatus.RELEASED.value)
        .order_by(lots.c.lot_id)))


def tests_to_text(tests: Iterable[TestKind]) -> str:
    return ",".join(test.value for test in tests)


def tests_from_text(text: str) -> tuple[TestKind, ...]:
    return tuple(TestKind(name) for name in text.split(",") if name)


async def add_results(conn: AsyncConnection, *, rows: Sequence[dict[str, Any]]) -> None:
    """Store results in the projection; ones already there are left as they are (so a
    late ResultRecorded never turns an invalidated or confirmed result back to VALID)."""
    if rows:
        await conn.execute(insert_ignoring_duplicates(lot_results, conn.dialect.name), rows)


async def set_result_states(conn: AsyncConnection, *, rows: Sequence[dict[str, Any]]) -> None:
    """Store QA's invalidation or confirmation of results (full rows, one per result).

    A result not in the projection yet (its ResultRecorded is still on its way) is
    inserted as it is; one that is there and still VALID takes the new state. A result
    invalidated or confirmed already keeps its state: the results service moves a result
    out of VALID once, and never back.
    """
    if rows:
        await conn.execute(_upsert_state(conn.dialect.name), list(rows))


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


async def results_of(conn: AsyncConnection, *,
                     lot_ids: Iterable[str]) -> dict[str, list[ResultFacts]]:
    """Every known result per lot, whatever its state."""
    found: dict[str, list[ResultFacts]] = defaultdict(list)
    rows = await conn.execute(select(lot_results).where(lot_results.c.lot_id.in_(list(lot_ids))))
    for r in rows:
        found[r.lot_id].append(ResultFacts(
            r.result_id, TestKind(r.test), Verdict(r.verdict), r.sequence, r.spec_version,
            r.lot_result_number, state=ResultState(r.state), state_reason=r.state_reason,
            retest_of=r.retest_of or "", required_tests=tests_from_text(r.required_tests)))
    return found


async def save_decisions(conn: AsyncConnection, *, lot_updates: Sequence[dict[str, Any]],
                         records: Sequence[dict[str, Any]]) -> None:
    """Write new statuses and their decision records."""
    if not lot_updates:
        return
    await conn.execute(
        update(lots).where(lots.c.lot_id == bindparam("b_lot_id")).values(
            status=bindparam("b_status"), status_version=bindparam("b_version"),
            unmet=bindparam("b_unmet"), decided_at=bindparam("b_decided_at"),
            qa_released=bindparam("b_qa_released")),
        list(lot_updates))
    await conn.execute(insert(decisions), list(records))


_STATUS_COLUMNS = (lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id,
                   lots.c.material_code, lots.c.status, lots.c.status_version, lots.c.unmet,
                   lots.c.decided_at, lots.c.expiry_date, lots.c.retest_date)


async def read_status(conn: AsyncConnection, *, lot_id: str) -> Any | None:
    """The columns GetReleaseStatus answers from."""
    return (await conn.execute(
        select(*_STATUS_COLUMNS).where(lots.c.lot_id == lot_id))).first()


async def read_statuses(conn: AsyncConnection, *, lot_ids: Iterable[str]) -> list[Any]:
    """The same columns for every lot among `lot_ids` that exists, in one query."""
    wanted = sorted(set(lot_ids))
    if not wanted:
        return []
    return list(await conn.execute(select(*_STATUS_COLUMNS).where(lots.c.lot_id.in_(wanted))))


async def list_lots(conn: AsyncConnection, *, status: str | None, after: str, limit: int,
                    supplier_id: str = "", supplier_site_id: str = "",
                    material_code: str = "", received_from: datetime | None = None,
                    received_before: datetime | None = None) -> list[Any]:
    """A page of lots in id order, after the lot id `after`; empty filters match all.
    The received range is half-open: from `received_from` included to `received_before`
    excluded."""
    query = select(lots).where(lots.c.lot_id > after)
    if received_from is not None:
        query = query.where(lots.c.received_at >= received_from)
    if received_before is not None:
        query = query.where(lots.c.received_at < received_before)
    if status:
        query = query.where(lots.c.status == status)
    if supplier_id:
        query = query.where(lots.c.supplier_id == supplier_id)
    if supplier_site_id:
        query = query.where(lots.c.supplier_site_id == supplier_site_id)
    if material_code:
        query = query.where(lots.c.material_code == material_code)
    return list(await conn.execute(query.order_by(lots.c.lot_id).limit(limit)))


async def decisions_of(conn: AsyncConnection, *, lot_id: str) -> list[Any]:
    """Every decision record of a lot, oldest first."""
    return list(await conn.execute(
        select(decisions).where(decisions.c.lot_id == lot_id).order_by(decisions.c.version)))


async def decision_with_previous(conn: AsyncConnection, *, lot_id: str,
                                 version: int) -> list[Any]:
    """Decision `version` of a lot (the latest when 0) and the one before it, oldest first;
    fewer when they do not exist."""
    query = select(decisions).where(decisions.c.lot_id == lot_id)
    if version:
        query = query.where(decisions.c.version.in_([version - 1, version]))
    rows = list(await conn.execute(query.order_by(decisions.c.version.desc()).limit(2)))
    return rows[::-1]


async def review_ids_present(conn: AsyncConnection, *, review_ids: Iterable[str]) -> set[str]:
    """Which of these reviews exist already."""
    wanted = sorted(set(review_ids))
    if not wanted:
        return set()
    rows = await conn.execute(select(lot_reviews.c.review_id)
                              .where(lot_reviews.c.review_id.in_(wanted)))
    return {r.review_id for r in rows}


async def add_reviews(conn: AsyncConnection, *, rows: Sequence[dict[str, Any]]) -> None:
    """Open reviews, in the given order; a review that exists already is left as it is."""
    if rows:
        await conn.execute(insert_ignoring_duplicates(lot_reviews, conn.dialect.name),
                           list(rows))


async def get_review(conn: AsyncConnection, *, review_id: str,
                     for_update: bool = False) -> Any | None:
    query = select(lot_reviews).where(lot_reviews.c.review_id == review_id)
    if for_update:
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def close_review(conn: AsyncConnection, *, review_id: str, conclusion: str,
                       closed_by: str, closed_at: datetime) -> None:
    """Close an OPEN review (locked by the caller)."""
    await conn.execute(update(lot_reviews).where(
        lot_reviews.c.review_id == review_id, lot_reviews.c.state == "OPEN"
    ).values(state="CLOSED", conclusion=conclusion, closed_by=closed_by, closed_at=closed_at))


async def list_reviews(conn: AsyncConnection, *, state: str | None, supplier_id: str,
                       material_code: str, after: int, limit: int) -> list[Any]:
    """A page of reviews, oldest first, after the sequence `after`; empty filters match all."""
    query = select(lot_reviews).where(lot_reviews.c.sequence > after)
    if state:
        query = query.where(lot_reviews.c.state == state)
    if supplier_id:
        query = query.where(lot_reviews.c.supplier_id == supplier_id)
    if material_code:
        query = query.where(lot_reviews.c.material_code == material_code)
    return list(await conn.execute(query.order_by(lot_reviews.c.sequence).limit(limit)))


async def set_qa_facts(conn: AsyncConnection, *, lot_id: str, **values: Any) -> None:
    """Change the lot's retest date or what QA decided about it (the row is locked)."""
    await conn.execute(update(lots).where(lots.c.lot_id == lot_id).values(**values))


def qa_facts_of(lot: Any, policy: ReleasePolicy) -> QaFacts:
    """What QA decided about a lot row, under its material's policy."""
    return QaFacts(policy, bool(lot.qa_released), lot.qa_hold_reason or "",
                   lot.qa_rejection_reason or "")


async def policies_of(conn: AsyncConnection, *,
                      material_codes: Iterable[str]) -> dict[str, ReleasePolicy]:
    """The release policy of each material that has one (the others are AUTOMATIC)."""
    wanted = sorted(set(material_codes))
    if not wanted:
        return {}
    rows = await conn.execute(select(release_policies.c.material_code, release_policies.c.policy)
                              .where(release_policies.c.material_code.in_(wanted)))
    return {r.material_code: ReleasePolicy(r.policy) for r in rows}


async def get_policy(conn: AsyncConnection, *, material_code: str,
                     for_update: bool = False) -> Any | None:
    query = select(release_policies).where(release_policies.c.material_code == material_code)
    if for_update:
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def add_policy(conn: AsyncConnection, *, values: dict[str, Any]) -> bool:
    """Store a material's first policy (without history: `set_policy` follows); False
    when a concurrent first setter stored one (this waits for that setter's commit)."""
    added = await conn.execute(insert_ignoring_duplicates(release_policies, conn.dialect.name),
                               values)
    return added.rowcount == 1


async def set_policy(conn: AsyncConnection, *, values: dict[str, Any]) -> None:
    """Store a material's policy in its row (`add_policy` made it) and append it to the
    history."""
    await conn.execute(
        update(release_policies)
        .where(release_policies.c.material_code == values["material_code"])
        .values(**values))
    await conn.execute(insert(release_policy_history).values(**values))


async def undecided_lots_of_material(conn: AsyncConnection, *, material_code: str) -> list[Any]:
    """Lots of a material a policy change can still move (QUARANTINE, RELEASABLE), not
    locked: the caller locks their qualifications, then them (`lock_lots_in`)."""
    return list(await conn.execute(
        select(lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id, lots.c.material_code)
        .where(lots.c.material_code == material_code,
               lots.c.status.in_([LotStatus.QUARANTINE.value, LotStatus.RELEASABLE.value]))
        .order_by(lots.c.lot_id)))


async def lock_lots_in(conn: AsyncConnection, *, lot_ids: Iterable[str],
                       statuses: Iterable[LotStatus]) -> list[Any]:
    """The lots among `lot_ids` still in one of `statuses`, locked, in id order."""
    return list(await conn.execute(
        select(lots).where(lots.c.lot_id.in_(sorted(set(lot_ids))),
                           lots.c.status.in_([s.value for s in statuses]))
        .order_by(lots.c.lot_id).with_for_update()))


# Time-driven transitions: lots past their expiry date that are not final yet, and
# released (or releasable) lots whose retest date has come.
_NOT_FINAL = [s.value for s in LotStatus if s not in (LotStatus.REJECTED, LotStatus.EXPIRED)]
_USABLE = [LotStatus.RELEASED.value, LotStatus.RELEASABLE.value]


def _due(today: date) -> Any:
    return (((lots.c.expiry_date < today) & lots.c.status.in_(_NOT_FINAL))
            | ((lots.c.retest_date <= today) & lots.c.status.in_(_USABLE)))


async def due_lots(conn: AsyncConnection, *, today: date, limit: int) -> list[Any]:
    """Lots a time-driven decision would move on `today`, not locked (see `lock_due`)."""
    return list(await conn.execute(
        select(lots.c.lot_id, lots.c.supplier_id, lots.c.supplier_site_id, lots.c.material_code)
        .where(_due(today)).order_by(lots.c.lot_id).limit(limit)))


async def lock_due(conn: AsyncConnection, *, lot_ids: Iterable[str], today: date) -> list[Any]:
    """The lots among `lot_ids` still due on `today`, locked; rows another replica holds
    are skipped (it is deciding them)."""
    return list(await conn.execute(
        select(lots).where(lots.c.lot_id.in_(sorted(set(lot_ids))), _due(today))
        .order_by(lots.c.lot_id).with_for_update(skip_locked=True)))
