"""What other services announced, as the lots service keeps it in its projections: the
facts its decisions are made from (inbound.py reads them from the events)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.lots.domain.lot import Key
from services.lots.domain.rule import ResultFacts


@dataclass(frozen=True)
class LabResult:
    """A result of a lot as the results service published it: what the rule uses, and
    where it belongs."""

    lot_id: str
    material_code: str
    recorded_at: datetime
    facts: ResultFacts


@dataclass(frozen=True)
class QualificationChange:
    """A supplier site's new standing for a material (highest version wins)."""

    key: Key
    status: str  # QUALIFIED, PENDING, SUSPENDED, DISQUALIFIED, EXPIRED; "" when unknown
    valid_until: datetime | None
    version: int
    reason: str
