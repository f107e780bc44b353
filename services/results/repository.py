"""Data access for specifications, known lots and results (SQLAlchemy Core on the unit of work)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.results.domain import (
    IdentityOutcome,
    Measurement,
    Quantity,
    Range,
    Result,
    Specification,
    SterilityOutcome,
    TestKind,
    Verdict,
)
from services.results.tables import known_lots, results, specifications
from shared.db import insert_ignoring_duplicates


@dataclass(frozen=True)
class StoredResult:
    result: Result
    fingerprint: str


@dataclass(frozen=True)
class RecordingContext:
    """What RecordResult needs to know, read in one round trip."""

    material_code: str | None  # None: the lot is not known here (yet)
    spec: Specification | None  # the version in force for the lot's material
    previous: StoredResult | None  # what was stored under this idempotency key


def _specification(row: Any, prefix: str = "") -> Specification:
    get = row._mapping
    return Specification(
        material_code=get[f"{prefix}material_code"], version=get[f"{prefix}version"],
        identity_reference=get[f"{prefix}identity_reference"],
        purity=Range(lower=get[f"{prefix}purity_lower"], upper=get[f"{prefix}purity_upper"],
                     unit=get[f"{prefix}purity_unit"]),
        sterility_method=get[f"{prefix}sterility_method"],
        effective_from=get[f"{prefix}effective_from"], approved_by=get[f"{prefix}approved_by"])


def _measurement(test: TestKind, outcome: str | None, value: float | None,
                 unit: str | None) -> Measurement:
    if test is TestKind.IDENTITY:
        return IdentityOutcome(outcome)
    if test is TestKind.STERILITY:
        return SterilityOutcome(outcome)
    assert value is not None and unit is not None
    return Quantity(value=value, unit=unit)


def _stored(row: Any, prefix: str = "") -> StoredResult:
    get = row._mapping
    test = TestKind(get[f"{prefix}test"])
    result = Result(
        result_id=get[f"{prefix}result_id"], lot_id=get[f"{prefix}lot_id"],
        material_code=get[f"{prefix}material_code"], test=test,
        instrument_id=get[f"{prefix}instrument_id"],
        idempotency_key=get[f"{prefix}idempotency_key"],
        measurement=_measurement(test, get[f"{prefix}outcome"], get[f"{prefix}value"],
                                 get[f"{prefix}unit"]),
        verdict=Verdict(get[f"{prefix}verdict"]), verdict_reason=get[f"{prefix}verdict_reason"],
        spec_version=get[f"{prefix}spec_version"], measured_at=get[f"{prefix}measured_at"],
        recorded_at=get[f"{prefix}recorded_at"], sequence=get[f"{prefix}sequence"],
        lot_result_number=get[f"{prefix}lot_result_number"])
    return StoredResult(result, get[f"{prefix}fingerprint"])


def _recording_context_query() -> Any:
    # A one-row anchor, outer-joined to the lot, its material's latest specification and
    # a result already stored under the key: every lookup of the hot path in one statement.
    anchor = select(literal(1).label("one")).subquery("anchor")
    newer = specifications.alias("newer")
    latest = (select(func.max(newer.c.version))
              .where(newer.c.material_code == known_lots.c.material_code)
              .correlate(known_lots).scalar_subquery())
    return (
        select(known_lots.c.material_code.label("lot_material_code"),
               *[c.label(f"spec_{c.name}") for c in specifications.c],
               *[c.label(f"prev_{c.name}") for c in results.c])
        .select_from(
            anchor
            .outerjoin(known_lots, known_lots.c.lot_id == bindparam("lot_id"))
            .outerjoin(specifications, and_(
                specifications.c.material_code == known_lots.c.material_code,
                specifications.c.version == latest))
            .outerjoin(results, and_(
                results.c.instrument_id == bindparam("instrument_id"),
                results.c.idempotency_key == bindparam("idempotency_key")))))


# Built once: the hot path then skips constructing and cache-keying a statement per call.
_RECORDING_CONTEXT = _recording_context_query()
_INSERT_RESULT = insert(results).returning(results.c.sequence)
# Locks the lot's row until commit, so concurrent results of one lot get 1, 2, 3, ...
_NEXT_NUMBER = (update(known_lots).where(known_lots.c.lot_id == bindparam("b_lot_id"))
                .values(result_count=known_lots.c.result_count + 1)
                .returning(known_lots.c.result_count))


async def recording_context(conn: AsyncConnection, *, lot_id: str, instrument_id: str,
                            idempotency_key: str) -> RecordingContext:
    """The lot's material, the specification in force for it, and any result under the key."""
    row = (await conn.execute(_RECORDING_CONTEXT, {
        "lot_id": lot_id, "instrument_id": instrument_id,
        "idempotency_key": idempotency_key})).one()
    return RecordingContext(
        material_code=row.lot_material_code,
        spec=_specification(row, "spec_") if row.spec_version is not None else None,
        previous=_stored(row, "prev_") if row.prev_sequence is not None else None)


async def latest_specification(conn: AsyncConnection, *,
                               material_code: str) -> Specification | None:
    """The newest version of a material's specification, or None."""
    row = (await conn.execute(
        select(specifications).where(specifications.c.material_code == material_code)
        .order_by(specifications.c.version.desc()).limit(1))).first()
    return _specification(row) if row else None


async def add_specification(conn: AsyncConnection, *, spec: Specification) -> None:
    """Insert a new specification version (IntegrityError if that version exists)."""
    await conn.execute(insert(specifications).values(
        material_code=spec.material_code, version=spec.version,
        identity_reference=spec.identity_reference, purity_lower=spec.purity.lower,
        purity_upper=spec.purity.upper, purity_unit=spec.purity.unit,
        sterility_method=spec.sterility_method, effective_from=spec.effective_from,
        approved_by=spec.approved_by))


async def next_result_number(conn: AsyncConnection, *, lot_id: str) -> int:
    """The number of the lot's next result (1, 2, ...); holds the lot's row until commit."""
    return (await conn.execute(_NEXT_NUMBER, {"b_lot_id": lot_id})).scalar_one()


async def add_result(conn: AsyncConnection, *, result: Result, fingerprint: str) -> int:
    """Insert a result and return its sequence (IntegrityError if its key is taken)."""
    m = result.measurement
    if isinstance(m, Quantity):
        outcome, value, unit = None, m.value, m.unit
    else:
        outcome, value, unit = m.value, None, None
    return (await conn.execute(_INSERT_RESULT, {
        "result_id": result.result_id, "lot_id": result.lot_id,
        "material_code": result.material_code, "test": result.test.value,
        "instrument_id": result.instrument_id, "idempotency_key": result.idempotency_key,
        "fingerprint": fingerprint, "outcome": outcome, "value": value, "unit": unit,
        "verdict": result.verdict.value, "verdict_reason": result.verdict_reason,
        "spec_version": result.spec_version, "measured_at": result.measured_at,
        "recorded_at": result.recorded_at,
        "lot_result_number": result.lot_result_number})).scalar_one()


async def get_result_by_key(conn: AsyncConnection, *, instrument_id: str,
                            idempotency_key: str) -> StoredResult | None:
    """The result an instrument stored under an idempotency key, or None."""
    row = (await conn.execute(select(results).where(
        results.c.instrument_id == instrument_id,
        results.c.idempotency_key == idempotency_key))).first()
    return _stored(row) if row else None


async def list_lot_results(conn: AsyncConnection, *, lot_id: str) -> list[Result]:
    """Every result of a lot, by sequence."""
    rows = await conn.execute(select(results).where(results.c.lot_id == lot_id)
                              .order_by(results.c.sequence))
    return [_stored(row).result for row in rows]


async def known_lot_material(conn: AsyncConnection, *, lot_id: str) -> str | None:
    """The material of a known lot, or None when the lot is not known here."""
    return (await conn.execute(select(known_lots.c.material_code)
                               .where(known_lots.c.lot_id == lot_id))).scalar_one_or_none()


async def add_known_lot(conn: AsyncConnection, *, lot_id: str, material_code: str,
                        received_at: datetime) -> bool:
    """Remember a lot unless it is known already; True when it was new."""
    result = await conn.execute(
        insert_ignoring_duplicates(known_lots, conn.dialect.name),
        {"lot_id": lot_id, "material_code": material_code, "received_at": received_at})
    return result.rowcount == 1
