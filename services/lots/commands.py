"""What callers ask the lots service to do: one command per write, validated by the API
(`api.py`), carried out by `handlers.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.lots.domain.rule import ReleasePolicy


@dataclass(frozen=True)
class ReceiveLot:
    """The warehouse has a new lot in quarantine."""

    lot_id: str
    material_code: str
    supplier_id: str
    supplier_site_id: str
    supplier_lot_number: str
    quantity_value: float
    quantity_unit: str
    container_count: int
    expiry_date: date
    requested_by: str
    fingerprint: str
    retest_date: date | None = None


@dataclass(frozen=True)
class QaCommand:
    """A QA action on one lot, with why and who."""

    lot_id: str
    reason: str
    requested_by: str


class ReleaseLot(QaCommand):
    """QA releases a RELEASABLE lot (the first of two signatures when its policy asks)."""


class HoldLot(QaCommand):
    """QA holds a lot."""


class ReleaseHold(QaCommand):
    """QA lifts its hold of a lot."""


class RejectLot(QaCommand):
    """QA rejects a lot."""


@dataclass(frozen=True, kw_only=True)
class SetRetestDate(QaCommand):
    """A new retest date, after the lot was re-tested."""

    retest_date: date


@dataclass(frozen=True)
class SetReleasePolicy:
    """Who releases a material's lots from now on."""

    material_code: str
    policy: ReleasePolicy
    reason: str
    requested_by: str
    two_signatures: bool = False


@dataclass(frozen=True)
class CloseLotReview:
    """QA's conclusion on a review of a released lot."""

    review_id: str
    conclusion: str
    requested_by: str
