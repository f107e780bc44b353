"""A received lot as the decision path and the QA actions see it: its fixed facts, its
current status and what QA decided about it. Pure data; the repository builds it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from services.lots.domain.rule import LotFacts, LotStatus, QaFacts, ReleasePolicy, Unmet

Key = tuple[str, str, str]  # (supplier_id, site_id, material_code): one qualification


@dataclass(frozen=True)
class Lot:
    lot_id: str
    material_code: str
    supplier_id: str
    supplier_site_id: str
    supplier_lot_number: str
    quantity_value: float
    quantity_unit: str
    container_count: int
    expiry_date: date
    retest_date: date | None
    received_at: datetime
    received_by: str
    # Hash of the receiving request: a retry with the same content gets the original answer.
    fingerprint: str
    status: LotStatus
    status_version: int  # 0 until the lot's first decision
    unmet: tuple[Unmet, ...]
    decided_at: datetime
    qa_released: bool = False
    qa_hold_reason: str = ""
    qa_rejection_reason: str = ""

    @property
    def key(self) -> Key:
        """The qualification this lot is decided by."""
        return (self.supplier_id, self.supplier_site_id, self.material_code)

    @property
    def facts(self) -> LotFacts:
        """What the release rule needs to know about the lot itself."""
        return LotFacts(self.lot_id, self.material_code, self.supplier_id,
                        self.supplier_site_id, self.expiry_date, self.retest_date)

    def qa(self, policy: ReleasePolicy) -> QaFacts:
        """What QA decided about the lot, under its material's policy."""
        return QaFacts(policy, self.qa_released, self.qa_hold_reason,
                       self.qa_rejection_reason)
