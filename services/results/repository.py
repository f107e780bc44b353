"""Data access for specifications, instruments, known lots and results (SQLAlchemy Core on
the unit of work): SQL only, domain values in and out. How criteria and measurements fit
in columns is storage_format.py's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Update, bindparam, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.results.domain.instruments import Calibration, Instrument, InstrumentStatus
from services.results.domain.oos import HANDLED_FROM, PriorResult
from services.results.domain.results import KnownLot, Result
from services.results.domain.specifications import (
    Specification,
    SpecificationStatus,
    TestCriterion,
)
from services.results.storage_format import (
    StoredResult,
    criteria_from_json,
    criteria_to_json,
    result_values,
    stored_result,
)
from services.results.tables import (
    calibrations,
    instruments,
    known_lots,
    reference_version,
    results,
    specifications,
)
from shared.contract import ResultState, TestKind, Verdict
from shared.db import insert_ignoring_duplicates, one_of

# Specifications


def _specification(row: Row) -> Specification:
    return Specification(
        material_code=row.material_code, version=row.version,
        status=SpecificationStatus(row.status), tests=criteria_from_json(row.tests),
        effective_from=row.effective_from, created_by=row.created_by,
        created_at=row.created_at, approved_by=row.approved_by or "",
        approved_at=row.approved_at, change_reason=row.change_reason)


@dataclass(frozen=True)
class StoredSpecification:
    spec: Specification
    # Everyone who wrote the draft, the creator first.
    authors: tuple[str, ...]


def _stored_specification(row: Row) -> StoredSpecification:
    return StoredSpecification(_specification(row), tuple(json.loads(row.authors)))


async def list_specifications(conn: AsyncConnection, *, material_code: str
                              ) -> list[Specification]:
    """Every version of a material's specification, oldest first."""
    rows = await conn.execute(select(specifications)
                              .where(specifications.c.material_code == material_code)
                              .order_by(specifications.c.version))
    return [_specification(row) for row in rows]


_EFFECTIVE = (select(specifications)
              .where(one_of(specifications.c.material_code, "materials"),
                     specifications.c.status == SpecificationStatus.EFFECTIVE.value)
              .order_by(specifications.c.material_code, specifications.c.version))


async def effective_specifications(conn: AsyncConnection, *, material_codes: Iterable[str]
                                   ) -> dict[str, list[Specification]]:
    """The EFFECTIVE versions of each material, oldest first."""
    rows = await conn.execute(_EFFECTIVE, {"materials": sorted(set(material_codes))})
    found: dict[str, list[Specification]] = {}
    for row in rows:
        found.setdefault(row.material_code, []).append(_specification(row))
    return found


async def get_specification(conn: AsyncConnection, *, material_code: str, version: int,
                            for_update: bool = False) -> StoredSpecification | None:
    query = select(specifications).where(specifications.c.material_code == material_code,
                                         specifications.c.version == version)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _stored_specification(row) if row else None


async def add_specification(conn: AsyncConnection, *, spec: Specification) -> None:
    """Insert a new DRAFT version (IntegrityError if that version, or another draft of the
    material, exists)."""
    assert spec.status is SpecificationStatus.DRAFT
    await conn.execute(insert(specifications).values(
        material_code=spec.material_code, version=spec.version, status=spec.status.value,
        tests=criteria_to_json(spec.tests), change_reason=spec.change_reason,
        created_by=spec.created_by, created_at=spec.created_at,
        authors=json.dumps([spec.created_by])))


def _draft(material_code: str, version: int) -> Update:
    # Every UPDATE of a specification goes through here: an EFFECTIVE version never matches.
    return (update(specifications)
            .where(specifications.c.material_code == material_code,
                   specifications.c.version == version,
                   specifications.c.status == SpecificationStatus.DRAFT.value))


async def update_draft(conn: AsyncConnection, *, material_code: str, version: int,
                       tests: Sequence[TestCriterion], change_reason: str,
                       authors: Sequence[str]) -> bool:
    """Replace a DRAFT's tests; False when it is no longer a draft."""
    result = await conn.execute(_draft(material_code, version).values(
        tests=criteria_to_json(tests), change_reason=change_reason,
        authors=json.dumps(list(authors))))
    return result.rowcount == 1


async def make_effective(conn: AsyncConnection, *, spec: Specification) -> bool:
    """Turn a DRAFT into the EFFECTIVE `spec`; False when it is no longer a draft."""
    assert spec.status is SpecificationStatus.EFFECTIVE
    result = await conn.execute(_draft(spec.material_code, spec.version).values(
        status=spec.status.value, effective_from=spec.effective_from,
        approved_by=spec.approved_by, approved_at=spec.approved_at))
    return result.rowcount == 1


# Instruments


def _instrument(row: Row) -> Instrument:
    return Instrument(
        instrument_id=row.instrument_id, type=row.type, location=row.location,
        status=InstrumentStatus(row.status), status_reason=row.status_reason,
        calibration_due=row.calibration_due, registered_by=row.registered_by,
        registered_at=row.registered_at)


def _calibration(row: Row) -> Calibration:
    return Calibration(calibrated_on=row.calibrated_on, calibration_due=row.calibration_due,
                       certificate_ref=row.certificate_ref, recorded_by=row.recorded_by,
                       recorded_at=row.recorded_at)


async def get_instrument(conn: AsyncConnection, *, instrument_id: str,
                         for_update: bool = False) -> Instrument | None:
    query = select(instruments).where(instruments.c.instrument_id == instrument_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return _instrument(row) if row else None


async def first_calibration(conn: AsyncConnection, *, instrument_id: str
                            ) -> Calibration | None:
    """The calibration recorded with the instrument's registration."""
    row = (await conn.execute(select(calibrations)
                              .where(calibrations.c.instrument_id == instrument_id)
                              .order_by(calibrations.c.id).limit(1))).first()
    return _calibration(row) if row else None


async def list_calibrations(conn: AsyncConnection, *, instrument_id: str) -> list[Calibration]:
    """An instrument's calibrations, oldest first."""
    rows = await conn.execute(select(calibrations)
                              .where(calibrations.c.instrument_id == instrument_id)
                              .order_by(calibrations.c.calibrated_on, calibrations.c.id))
    return [_calibration(row) for row in rows]


async def add_instrument(conn: AsyncConnection, *, instrument: Instrument,
                         first: Calibration) -> int:
    """Insert an instrument and its first calibration (IntegrityError if it exists);
    returns the calibration's id."""
    i = instrument
    await conn.execute(insert(instruments).values(
        instrument_id=i.instrument_id, type=i.type, location=i.location,
        status=i.status.value, status_reason=i.status_reason,
        status_changed_by=i.registered_by, status_changed_at=i.registered_at,
        calibration_due=i.calibration_due, registered_by=i.registered_by,
        registered_at=i.registered_at))
    return await add_calibration(conn, instrument_id=i.instrument_id, calibration=first)


async def add_calibration(conn: AsyncConnection, *, instrument_id: str,
                          calibration: Calibration) -> int:
    """Append a calibration; returns its id."""
    c = calibration
    result = await conn.execute(insert(calibrations).values(
        instrument_id=instrument_id, calibrated_on=c.calibrated_on,
        calibration_due=c.calibration_due, certificate_ref=c.certificate_ref,
        recorded_by=c.recorded_by, recorded_at=c.recorded_at))
    return int(result.inserted_primary_key[0])


async def set_calibration_due(conn: AsyncConnection, *, instrument_id: str,
                              due: date) -> None:
    await conn.execute(update(instruments).where(instruments.c.instrument_id == instrument_id)
                       .values(calibration_due=due))


async def set_instrument_status(conn: AsyncConnection, *, instrument_id: str,
                                status: InstrumentStatus, reason: str, changed_by: str,
                                changed_at: datetime) -> None:
    await conn.execute(update(instruments).where(instruments.c.instrument_id == instrument_id)
                       .values(status=status.value, status_reason=reason,
                               status_changed_by=changed_by, status_changed_at=changed_at))


_INSTRUMENTS_WITH_CALIBRATIONS = (
    select(instruments.c.instrument_id, instruments.c.status, calibrations.c.calibrated_on,
           calibrations.c.calibration_due)
    .select_from(instruments.outerjoin(
        calibrations, calibrations.c.instrument_id == instruments.c.instrument_id))
    .where(one_of(instruments.c.instrument_id, "ids")))


async def instrument_standing(conn: AsyncConnection, *, instrument_ids: Sequence[str]
                              ) -> dict[str, tuple[InstrumentStatus, list[tuple[date, date]]]]:
    """Each registered instrument's status and calibration intervals, by id (one not
    registered is left out), in one round trip."""
    rows = (await conn.execute(_INSTRUMENTS_WITH_CALIBRATIONS,
                               {"ids": list(instrument_ids)})).all()
    found: dict[str, tuple[InstrumentStatus, list[tuple[date, date]]]] = {}
    for r in rows:
        _, intervals = found.setdefault(r.instrument_id, (InstrumentStatus(r.status), []))
        if r.calibrated_on is not None:
            intervals.append((r.calibrated_on, r.calibration_due))
    return found


# Results


# Each column among the wanted values: a superset of the wanted keys, sorted out below.
_BY_KEYS = select(results).where(one_of(results.c.instrument_id, "instruments"),
                                 one_of(results.c.instrument_result_id, "ids"))


async def results_by_keys(conn: AsyncConnection, *, keys: Sequence[tuple[str, str]]
                          ) -> dict[tuple[str, str], StoredResult]:
    """The results stored under these (instrument_id, instrument_result_id) keys, by key."""
    wanted = set(keys)
    rows = await conn.execute(_BY_KEYS, {"instruments": sorted({i for i, _ in wanted}),
                                         "ids": sorted({r for _, r in wanted})})
    return {key: stored_result(row) for row in rows
            if (key := (row.instrument_id, row.instrument_result_id)) in wanted}


_REFERENCE = (select(reference_version.c.version).where(reference_version.c.id == 1)
              .scalar_subquery().label("reference_version"))
_NEXT_NUMBERS = (update(known_lots).where(known_lots.c.lot_id == bindparam("b_lot_id"))
                 .values(result_count=known_lots.c.result_count + bindparam("b_count"))
                 .returning(known_lots.c.material_code, known_lots.c.result_count, _REFERENCE))
_SET_COUNT = (update(known_lots).where(known_lots.c.lot_id == bindparam("b_lot_id"))
              .values(result_count=bindparam("b_count")))
_LOCK_COUNTS = (select(known_lots.c.lot_id, known_lots.c.material_code,
                       known_lots.c.result_count, _REFERENCE)
                .where(one_of(known_lots.c.lot_id, "ids")).order_by(known_lots.c.lot_id)
                .with_for_update(of=known_lots))


async def take_result_numbers(conn: AsyncConnection, *, counts: dict[str, int]
                              ) -> tuple[dict[str, tuple[str, int]], int | None]:
    """Reserve each lot's next `count` result numbers: lot -> (its material, the first
    number reserved); a lot not known here is left out. Holds the lots' rows until commit
    (in lot order), so that concurrent results of one lot are numbered 1, 2, 3, ... and
    checked one after another. Also the reference version read in the same statement
    (None when no lot is known)."""
    if len(counts) == 1:
        ((lot_id, count),) = counts.items()
        row = (await conn.execute(_NEXT_NUMBERS, {"b_lot_id": lot_id, "b_count": count})).first()
        if row is None:
            return {}, None
        return {lot_id: (row.material_code, row.result_count - count + 1)}, row.reference_version
    rows = (await conn.execute(_LOCK_COUNTS, {"ids": sorted(counts)})).all()
    if rows:
        await conn.execute(_SET_COUNT, [{"b_lot_id": r.lot_id,
                                         "b_count": r.result_count + counts[r.lot_id]}
                                        for r in rows])
    return ({r.lot_id: (r.material_code, r.result_count + 1) for r in rows},
            rows[0].reference_version if rows else None)


_PRIOR = (select(results.c.result_id, results.c.test, results.c.verdict, results.c.state,
                 results.c.retest_of, results.c.instrument_id, results.c.instrument_result_id,
                 results.c.lot_id)
          .where(one_of(results.c.lot_id, "ids")).order_by(results.c.sequence))


async def prior_results(conn: AsyncConnection, *, lot_ids: Sequence[str]
                        ) -> tuple[dict[tuple[str, TestKind], list[PriorResult]],
                                   set[tuple[str, str]]]:
    """What posting needs of the lots' earlier results, by (lot, test), in recording order,
    and the (instrument_id, instrument_result_id) keys they were stored under."""
    rows = (await conn.execute(_PRIOR, {"ids": list(lot_ids)})).all()
    retested = {row.retest_of for row in rows if row.retest_of}
    found: dict[tuple[str, TestKind], list[PriorResult]] = {}
    for row in rows:
        found.setdefault((row.lot_id, TestKind(row.test)), []).append(PriorResult(
            result_id=row.result_id, verdict=Verdict(row.verdict),
            state=ResultState(row.state), retested=row.result_id in retested))
    return found, {(row.instrument_id, row.instrument_result_id) for row in rows}


# The whole rows come back: their sequences, and what their audit entries keep.
_INSERT_RESULT = insert(results).returning(*results.c)
_INSERT_RESULTS = insert(results).returning(*results.c, sort_by_parameter_order=True)


async def add_results(conn: AsyncConnection, *, new: Sequence[tuple[Result, str]]
                      ) -> list[Row[Any]]:
    """Insert (result, fingerprint) pairs; their rows as stored, in the same order
    (IntegrityError if an instrument_result_id is taken)."""
    if len(new) == 1:
        return [(await conn.execute(_INSERT_RESULT, result_values(*new[0]))).one()]
    return list(await conn.execute(_INSERT_RESULTS, [result_values(r, f) for r, f in new]))


async def get_result(conn: AsyncConnection, *, result_id: str,
                     for_update: bool = False) -> Result | None:
    query = select(results).where(results.c.result_id == result_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return stored_result(row).result if row else None


async def change_state(conn: AsyncConnection, *, result_id: str, state: ResultState,
                       reason: str, changed_by: str, changed_at: datetime) -> bool:
    """Move a VALID result to `state`; False when it is no longer VALID. The measurement
    and verdict are never written here."""
    done = await conn.execute(
        update(results).where(results.c.result_id == result_id,
                              results.c.state == HANDLED_FROM.value)
        .values(state=state.value, state_reason=reason, state_changed_by=changed_by,
                state_changed_at=changed_at))
    return done.rowcount == 1


async def list_lot_results(conn: AsyncConnection, *, lot_id: str) -> list[Result]:
    """Every result of a lot, by sequence."""
    rows = await conn.execute(select(results).where(results.c.lot_id == lot_id)
                              .order_by(results.c.sequence))
    return [stored_result(row).result for row in rows]


async def measured_at_of(conn: AsyncConnection, *, sequence: int) -> datetime | None:
    """When the result with this sequence was measured (page tokens point at results)."""
    return (await conn.execute(select(results.c.measured_at)
                               .where(results.c.sequence == sequence))).scalar_one_or_none()


async def instrument_results_page(conn: AsyncConnection, *, instrument_id: str,
                                  measured_from: datetime | None,
                                  measured_before: datetime | None,
                                  after: tuple[datetime, int] | None,
                                  limit: int) -> list[Result]:
    """An instrument's results in (measured_at, sequence) order, after position `after`."""
    r = results.c
    query = select(results).where(r.instrument_id == instrument_id)
    if measured_from is not None:
        query = query.where(r.measured_at >= measured_from)
    if measured_before is not None:
        query = query.where(r.measured_at < measured_before)
    if after is not None:
        query = query.where(or_(r.measured_at > after[0],
                                (r.measured_at == after[0]) & (r.sequence > after[1])))
    rows = await conn.execute(query.order_by(r.measured_at, r.sequence).limit(limit))
    return [stored_result(row).result for row in rows]


# Known lots


async def known_lot_material(conn: AsyncConnection, *, lot_id: str) -> str | None:
    """The material of a known lot, or None when the lot is not known here."""
    return (await conn.execute(select(known_lots.c.material_code)
                               .where(known_lots.c.lot_id == lot_id))).scalar_one_or_none()


async def add_known_lot(conn: AsyncConnection, *, lot: KnownLot) -> bool:
    """Remember a lot unless it is known already; True when it was new."""
    result = await conn.execute(
        insert_ignoring_duplicates(known_lots, conn.dialect.name),
        {"lot_id": lot.lot_id, "material_code": lot.material_code,
         "received_at": lot.received_at})
    return result.rowcount == 1
