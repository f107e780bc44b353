"""Use cases of the suppliers service: each one unit of work."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from lotgate.suppliers.v1 import events_pb2
from services.suppliers import repository
from services.suppliers.convert import qualification_to_proto, status_to_proto
from services.suppliers.domain import ChangeQualification, Qualification, apply
from shared import messaging
from shared.errors import Aborted, AlreadyExists, NotFound
from shared.protoconv import to_timestamp
from shared.uow import UnitOfWork, new_event_id


async def create_supplier(uow: UnitOfWork, *, supplier_id: str, name: str,
                          requested_by: str) -> tuple[Any, list[Qualification]]:
    """Register a supplier; a retry with the same name returns the original."""
    async with uow:
        existing = await repository.get_supplier(uow.conn, supplier_id=supplier_id)
        if existing is not None:
            if existing.name != name:
                raise AlreadyExists(f"supplier {supplier_id} exists with another name")
            return existing, await repository.list_qualifications(uow.conn,
                                                                  supplier_id=supplier_id)
        try:
            await repository.add_supplier(uow.conn, supplier_id=supplier_id, name=name,
                                          created_by=requested_by, created_at=uow.clock.now())
            await uow.commit()
        except IntegrityError as exc:
            raise Aborted(f"supplier {supplier_id} was created concurrently; retry") from exc
    async with uow:
        return await repository.get_supplier(uow.conn, supplier_id=supplier_id), []


async def get_supplier(uow: UnitOfWork, *, supplier_id: str) -> tuple[Any, list[Qualification]]:
    async with uow:
        row = await repository.get_supplier(uow.conn, supplier_id=supplier_id)
        if row is None:
            raise NotFound(f"no supplier {supplier_id}", field="supplier_id")
        return row, await repository.list_qualifications(uow.conn, supplier_id=supplier_id)


async def change_qualification(uow: UnitOfWork, command: ChangeQualification) -> Qualification:
    """Apply a QA decision to a supplier's qualification for one material, with its event."""
    async with uow:
        if await repository.get_supplier(uow.conn, supplier_id=command.supplier_id) is None:
            raise NotFound(f"no supplier {command.supplier_id}", field="supplier_id")
        current = await repository.get_qualification(
            uow.conn, supplier_id=command.supplier_id, material_code=command.material_code,
            for_update=True)
        if command.expected_version is not None:
            actual = current.version if current else 0
            if actual != command.expected_version:
                raise Aborted(f"qualification is at version {actual}, "
                              f"not {command.expected_version}; read it again")
        new = apply(current, command, uow.clock.now())
        event = events_pb2.QualificationChanged(
            event_id=new_event_id(),
            qualification=qualification_to_proto(new),
            previous_status=status_to_proto(current.status if current else None),
            occurred_at=to_timestamp(new.changed_at),
        )
        try:
            saved = await repository.save_qualification(uow.conn, new=new, previous=current,
                                                        event_id=event.event_id)
        except IntegrityError as exc:
            saved = False
            cause: Exception | None = exc
        else:
            cause = None
        if not saved:
            raise Aborted("the qualification was changed concurrently; read it again") from cause
        uow.emit(messaging.QUALIFICATION_CHANGED, f"{new.supplier_id}/{new.material_code}", event)
        await uow.commit()
        return new


async def list_history(uow: UnitOfWork, *, supplier_id: str, material_code: str) -> list[Any]:
    async with uow:
        if await repository.get_supplier(uow.conn, supplier_id=supplier_id) is None:
            raise NotFound(f"no supplier {supplier_id}", field="supplier_id")
        return await repository.list_history(uow.conn, supplier_id=supplier_id,
                                             material_code=material_code)
