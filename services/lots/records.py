"""The typed records the repository and the queries return: rows of the lots service's
tables as values (a domain `Lot`, or the records below), read from rows in one place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from services.lots.decision_record import unmet_from_json, unmet_to_json
from services.lots.domain.lot import Key, Lot
from services.lots.domain.rule import (
    LotStatus,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Unmet,
    Verdict,
)


@dataclass(frozen=True)
class DecisionContext:
    """Everything the decision of some lots needs, loaded (and the lots locked) at once."""

    lots: list[Lot]
    qualifications: dict[Key, QualificationFacts]
    results: dict[str, list[ResultFacts]] = field(default_factory=dict)
    policies: dict[str, ReleasePolicy] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A material's release policy as set (a row of release_policies)."""

    material_code: str
    policy: ReleasePolicy
    reason: str
    set_by: str
    set_at: datetime | None
    two_signatures: bool = False


@dataclass(frozen=True)
class Review:
    """A review of a released lot (a row of lot_reviews)."""

    review_id: str
    lot_id: str
    supplier_id: str
    supplier_site_id: str
    material_code: str
    qualification_status: str
    qualification_version: int
    reason: str
    opened_at: datetime
    state: str  # OPEN, CLOSED
    conclusion: str | None = None
    closed_by: str | None = None
    closed_at: datetime | None = None
    sequence: int = 0  # its place in the list, once stored


@dataclass(frozen=True)
class DecisionRecord:
    """A stored decision (a row of decisions); `inputs` as stored (decision_record.py)."""

    lot_id: str
    version: int
    previous_status: LotStatus | None
    status: LotStatus
    unmet: tuple[Unmet, ...]
    inputs: str
    cause: str
    decided_at: datetime


# Rows -> records.

def lot_from_row(r: Row[Any]) -> Lot:
    return Lot(r.lot_id, r.material_code, r.supplier_id, r.supplier_site_id,
               r.supplier_lot_number, r.quantity_value, r.quantity_unit, r.container_count,
               r.expiry_date, r.retest_date, r.received_at, r.received_by, r.fingerprint,
               LotStatus(r.status), r.status_version, unmet_from_json(r.unmet), r.decided_at,
               bool(r.qa_released), r.qa_hold_reason or "", r.qa_rejection_reason or "")


def lot_row(lot: Lot) -> dict[str, Any]:
    """The row of a received lot (the inverse of `lot_from_row`)."""
    return {"lot_id": lot.lot_id, "material_code": lot.material_code,
            "supplier_id": lot.supplier_id, "supplier_site_id": lot.supplier_site_id,
            "supplier_lot_number": lot.supplier_lot_number,
            "quantity_value": lot.quantity_value, "quantity_unit": lot.quantity_unit,
            "container_count": lot.container_count, "expiry_date": lot.expiry_date,
            "retest_date": lot.retest_date, "qa_released": lot.qa_released,
            "qa_hold_reason": lot.qa_hold_reason,
            "qa_rejection_reason": lot.qa_rejection_reason, "received_at": lot.received_at,
            "received_by": lot.received_by, "fingerprint": lot.fingerprint,
            "status": lot.status.value, "status_version": lot.status_version,
            "unmet": unmet_to_json(lot.unmet), "decided_at": lot.decided_at}


def result_from_row(r: Any) -> ResultFacts:
    return ResultFacts(
        r.result_id, TestKind(r.test), Verdict(r.verdict), r.sequence, r.spec_version,
        r.lot_result_number, state=ResultState(r.state), state_reason=r.state_reason,
        retest_of=r.retest_of or "", required_tests=tests_from_text(r.required_tests))


class Prefixed:
    """The lot_results columns of a joined row (labelled r_<name>)."""

    def __init__(self, row: Row[Any]) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, f"r_{name}")


def policy_from_row(r: Row[Any]) -> Policy:
    return Policy(r.material_code, ReleasePolicy(r.policy), r.reason, r.set_by, r.set_at,
                  bool(r.two_signatures))


def review_from_row(r: Row[Any]) -> Review:
    return Review(r.review_id, r.lot_id, r.supplier_id, r.supplier_site_id, r.material_code,
                  r.qualification_status, r.qualification_version, r.reason, r.opened_at,
                  r.state, r.conclusion, r.closed_by, r.closed_at, r.sequence)


def decision_from_row(r: Row[Any]) -> DecisionRecord:
    return DecisionRecord(r.lot_id, r.version,
                          LotStatus(r.previous_status) if r.previous_status else None,
                          LotStatus(r.status), unmet_from_json(r.unmet), r.inputs, r.cause,
                          r.decided_at)


def tests_to_text(tests: Iterable[TestKind]) -> str:
    return ",".join(test.value for test in tests)


def tests_from_text(text: str) -> tuple[TestKind, ...]:
    return tuple(TestKind(name) for name in text.split(",") if name)
