"""Use cases of the results service: each one unit of work."""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy.exc import IntegrityError

from lotgate.lots.v1 import events_pb2 as lots_events_pb2
from lotgate.results.v1 import events_pb2
from services.results import repository
from services.results.convert import result_to_proto
from services.results.domain import (
    RecordResult,
    Result,
    SetSpecification,
    Specification,
    evaluate,
)
from services.results.repository import StoredResult
from shared import messaging
from shared.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from shared.logs import get_logger
from shared.protoconv import from_timestamp, timestamp_is_valid, to_timestamp
from shared.uow import UnitOfWork, new_event_id

log = get_logger(__name__)


async def set_specification(uow: UnitOfWork, command: SetSpecification) -> Specification:
    """Put a new version of a material's specification in force from now."""
    async with uow:
        current = await repository.latest_specification(uow.conn,
                                                        material_code=command.material_code)
        spec = Specification(
            material_code=command.material_code,
            version=(current.version if current else 0) + 1,
            identity_reference=command.identity_reference, purity=command.purity,
            sterility_method=command.sterility_method, effective_from=uow.clock.now(),
            approved_by=command.approved_by)
        try:
            await repository.add_specification(uow.conn, spec=spec)
            await uow.commit()
        except IntegrityError as exc:
            raise Aborted(f"another version of the specification of {command.material_code} "
                          "was set at the same time; read it and retry") from exc
        return spec


async def get_specification(uow: UnitOfWork, *, material_code: str) -> Specification:
    async with uow:
        spec = await repository.latest_specification(uow.conn, material_code=material_code)
    if spec is None:
        raise NotFound(f"no specification for material {material_code}", field="material_code")
    return spec


async def record_result(uow: UnitOfWork, command: RecordResult) -> Result:
    """Judge a result against the specification in force, store it and announce it.

    Idempotent on (instrument_id, idempotency_key): a retry gets the stored original.
    """
    async with uow:
        context = await repository.recording_context(
            uow.conn, lot_id=command.lot_id, instrument_id=command.instrument_id,
            idempotency_key=command.idempotency_key)
        if context.previous is not None:
            return _original(context.previous, command)
        if context.material_code is None:
            raise NotFound(
                f"lot {command.lot_id} is not known to the results service yet; if it was "
                "just received, retry shortly", field="lot_id")
        spec = context.spec
        if spec is None:
            raise FailedPrecondition(
                f"material {context.material_code} has no specification: QA must set one "
                "before results can be judged", type_="SPECIFICATION",
                subject=f"materials/{context.material_code}")
        verdict, reason = evaluate(command.measurement, spec)
        now = uow.clock.now()
        number = await repository.next_result_number(uow.conn, lot_id=command.lot_id)
        result = Result(
            result_id=str(uuid.uuid4()), lot_id=command.lot_id,
            material_code=context.material_code, test=command.test,
            instrument_id=command.instrument_id, idempotency_key=command.idempotency_key,
            measurement=command.measurement, verdict=verdict, verdict_reason=reason,
            spec_version=spec.version, measured_at=command.measured_at or now, recorded_at=now,
            lot_result_number=number)
        try:
            sequence = await repository.add_result(uow.conn, result=result,
                                                   fingerprint=command.fingerprint)
        except IntegrityError as exc:
            conflict = exc  # a concurrent request with the same key won: answer as a retry
        else:
            result = dataclasses.replace(result, sequence=sequence)
            uow.emit(messaging.RESULT_RECORDED, command.lot_id, events_pb2.ResultRecorded(
                event_id=new_event_id(), result=result_to_proto(result),
                occurred_at=to_timestamp(now)))
            await uow.commit()
            return result
    async with uow:
        previous = await repository.get_result_by_key(
            uow.conn, instrument_id=command.instrument_id,
            idempotency_key=command.idempotency_key)
    if previous is None:
        raise Aborted("the result could not be stored because of a concurrent change; "
                      "retry with the same key") from conflict
    return _original(previous, command)


def _original(previous: StoredResult, command: RecordResult) -> Result:
    if previous.fingerprint != command.fingerprint:
        raise AlreadyExists(
            f"instrument {command.instrument_id} already recorded result "
            f"{previous.result.result_id} under idempotency key {command.idempotency_key} "
            "with other content; a new result needs a new key")
    return previous.result


async def list_lot_results(uow: UnitOfWork, *, lot_id: str) -> list[Result]:
    async with uow:
        if await repository.known_lot_material(uow.conn, lot_id=lot_id) is None:
            raise NotFound(f"lot {lot_id} is not known to the results service", field="lot_id")
        return await repository.list_lot_results(uow.conn, lot_id=lot_id)


async def lot_received(uow: UnitOfWork, event: lots_events_pb2.LotReceived) -> None:
    """Learn a lot's material from the lots service; a lot already known stays as it is."""
    lot = event.lot
    if not lot.lot_id or not lot.material_code:
        raise ValueError(f"LotReceived {event.event_id} has no lot_id or material_code")
    if lot.HasField("received_at") and timestamp_is_valid(lot.received_at):
        received_at = from_timestamp(lot.received_at)
    elif event.HasField("occurred_at") and timestamp_is_valid(event.occurred_at):
        received_at = from_timestamp(event.occurred_at)
    else:
        received_at = uow.clock.now()
    added = await repository.add_known_lot(uow.conn, lot_id=lot.lot_id,
                                           material_code=lot.material_code,
                                           received_at=received_at)
    if not added:
        known = await repository.known_lot_material(uow.conn, lot_id=lot.lot_id)
        if known != lot.material_code:
            log.warning("lot_received_with_other_material", alert=True, lot_id=lot.lot_id,
                        known_material=known, event_material=lot.material_code)
