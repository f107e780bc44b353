"""Reads of the results service: each in one unit of work, answering domain values (or
NOT_FOUND naming the field)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from services.results import repository
from services.results.convert import Signature
from services.results.domain.instruments import Calibration, Instrument
from services.results.domain.results import Result
from services.results.domain.specifications import Specification, in_force
from services.results.repository import StoredSpecification
from shared import esign
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.uow import UnitOfWork


async def stored_specification(uow: UnitOfWork, material_code: str, version: int, *,
                               for_update: bool = False) -> StoredSpecification:
    """A specification version and its authors, in the caller's unit of work."""
    stored = await repository.get_specification(uow.conn, material_code=material_code,
                                                version=version, for_update=for_update)
    if stored is None:
        raise NotFound(f"material {material_code} has no specification version {version}",
                       field="version")
    return stored


async def instrument_or_not_found(uow: UnitOfWork, instrument_id: str, *,
                                  for_update: bool = False) -> Instrument:
    """The instrument, in the caller's unit of work."""
    found = await repository.get_instrument(uow.conn, instrument_id=instrument_id,
                                            for_update=for_update)
    if found is None:
        raise NotFound(f"instrument {instrument_id} is not registered", field="instrument_id")
    return found


async def get_specification(uow: UnitOfWork, *, material_code: str, version: int,
                            as_of: datetime | None) -> Specification:
    """The given version (drafts included), else the EFFECTIVE version in force at `as_of`
    (now when None)."""
    async with uow:
        if version:
            return (await stored_specification(uow, material_code, version)).spec
        versions = await repository.list_specifications(uow.conn, material_code=material_code)
        instant = as_of or uow.clock.now()
    spec = in_force(versions, instant)
    if spec is None:
        if not versions:
            raise NotFound(f"no specification for material {material_code}",
                           field="material_code")
        raise NotFound(f"no specification of material {material_code} was in force at "
                       f"{instant.isoformat()}", field="as_of" if as_of else "material_code")
    return spec


async def list_specification_versions(uow: UnitOfWork, *,
                                      material_code: str) -> list[Specification]:
    async with uow:
        return await repository.list_specifications(uow.conn, material_code=material_code)


async def get_instrument(uow: UnitOfWork, *,
                         instrument_id: str) -> tuple[Instrument, list[Calibration]]:
    """The instrument and its calibrations, oldest first."""
    async with uow:
        found = await instrument_or_not_found(uow, instrument_id)
        return found, await repository.list_calibrations(uow.conn, instrument_id=instrument_id)


async def list_lot_results(uow: UnitOfWork, *, lot_id: str) -> list[Result]:
    async with uow:
        if await repository.known_lot_material(uow.conn, lot_id=lot_id) is None:
            raise NotFound(f"lot {lot_id} is not known to the results service", field="lot_id")
        return await repository.list_lot_results(uow.conn, lot_id=lot_id)


async def instrument_results_page(uow: UnitOfWork, *, instrument_id: str,
                                  measured_from: datetime | None,
                                  measured_before: datetime | None, after_sequence: int,
                                  limit: int) -> list[Result]:
    """An instrument's results, oldest first by measured_at (then recording order), after
    the result whose sequence the page token names."""
    async with uow:
        await instrument_or_not_found(uow, instrument_id)
        after = None
        if after_sequence:
            measured_at = await repository.measured_at_of(uow.conn, sequence=after_sequence)
            if measured_at is None:
                raise InvalidArgument([FieldViolation(
                    "page_token", "is not a token this service gave out")])
            after = (measured_at, after_sequence)
        return await repository.instrument_results_page(
            uow.conn, instrument_id=instrument_id, measured_from=measured_from,
            measured_before=measured_before, after=after, limit=limit)


async def signatures_of(uow: UnitOfWork, *, record_type: str,
                        contents: Mapping[str, Mapping[str, object]]
                        ) -> dict[str, list[Signature]]:
    """The signatures of records (record id -> content as shown now), each verified
    against its record."""
    if not contents:
        return {}
    async with uow:
        return await esign.signatures_of(uow.conn, record_type=record_type, contents=contents)
