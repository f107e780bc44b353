"""Supplier qualification: the states and the transitions QA may make. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.errors import FailedPrecondition


class QualificationStatus(StrEnum):
    PENDING = "PENDING"
    QUALIFIED = "QUALIFIED"
    SUSPENDED = "SUSPENDED"
    DISQUALIFIED = "DISQUALIFIED"


class Action(StrEnum):
    QUALIFY = "qualify"
    SUSPEND = "suspend"
    DISQUALIFY = "disqualify"


@dataclass(frozen=True)
class Qualification:
    supplier_id: str
    material_code: str
    status: QualificationStatus
    valid_until: datetime | None
    version: int
    reason: str
    changed_by: str
    changed_at: datetime


@dataclass(frozen=True)
class ChangeQualification:
    """Command: QA changes a supplier's standing for one material."""

    supplier_id: str
    material_code: str
    action: Action
    reason: str
    requested_by: str
    valid_until: datetime | None = None
    expected_version: int | None = None


_TARGET = {
    Action.QUALIFY: QualificationStatus.QUALIFIED,
    Action.SUSPEND: QualificationStatus.SUSPENDED,
    Action.DISQUALIFY: QualificationStatus.DISQUALIFIED,
}


def apply(current: Qualification | None, command: ChangeQualification,
          now: datetime) -> Qualification:
    """The qualification after `command`, or FailedPrecondition naming the current state.

    PENDING or SUSPENDED -> QUALIFIED; QUALIFIED -> QUALIFIED (renewal with a new date);
    QUALIFIED -> SUSPENDED; anything -> DISQUALIFIED, which is final.
    """
    state = current.status if current else None
    subject = f"suppliers/{command.supplier_id}/materials/{command.material_code}"
    if state is QualificationStatus.DISQUALIFIED:
        raise FailedPrecondition(
            f"supplier {command.supplier_id} is DISQUALIFIED for {command.material_code}; "
            "that is final", subject=subject)
    if command.action is Action.SUSPEND and state is not QualificationStatus.QUALIFIED:
        raise FailedPrecondition(
            f"only a QUALIFIED supplier can be suspended; supplier {command.supplier_id} is "
            f"{state.value if state else 'not qualified'} for {command.material_code}",
            subject=subject)
    valid_until = current.valid_until if current else None
    if command.action is Action.QUALIFY:
        if command.valid_until is None or command.valid_until <= now:
            raise FailedPrecondition("valid_until must lie in the future", type_="DATE",
                                     subject=subject)
        valid_until = command.valid_until
    return Qualification(
        supplier_id=command.supplier_id,
        material_code=command.material_code,
        status=_TARGET[command.action],
        valid_until=valid_until,
        version=(current.version if current else 0) + 1,
        reason=command.reason,
        changed_by=command.requested_by,
        changed_at=now,
    )
