"""A lot answered from its stored reply (read_model.StoredStatus: a batch or a page read
of a lot not in memory) gets the answer a held entry gives, at any moment: as decided,
moved to QUARANTINE at its retest date, EXPIRED after its expiry date; in a batch, in the
order asked, beside held entries and lots never received."""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from services.lots import convert
from services.lots.domain import LotStatus
from services.lots.domain.rule import Unmet
from services.lots.read_model import StatusEntry, StoredStatus

DECIDED = datetime(2026, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)
RETEST, EXPIRY = date(2027, 3, 1), date(2028, 1, 31)


def entry(lot_id: str, status: LotStatus, unmet: tuple[Unmet, ...] = (),
          retest: date | None = RETEST) -> StatusEntry:
    lot = SimpleNamespace(lot_id=lot_id, supplier_id="SUP-1", supplier_site_id="MAIN",
                          material_code="MAT-1", expiry_date=EXPIRY, retest_date=retest)
    return StatusEntry.make(lot, status, 4, unmet, DECIDED)


def stored(held: StatusEntry) -> StoredStatus:
    return StoredStatus(held.lot_id, convert.status_reply(held), held.status.value,
                        held.expiry_date, held.retest_date)


ENTRIES = [
    entry("LOT-REL", LotStatus.RELEASED),
    entry("LOT-ABLE", LotStatus.RELEASABLE, retest=None),
    entry("LOT-Q", LotStatus.QUARANTINE,
          (Unmet("STERILITY_MISSING", "no sterility result for LOT-Q", "R2"),)),
    entry("LOT-HOLD", LotStatus.ON_HOLD, (Unmet("QA_HOLD", "held: déviation ü", "QA"),)),
]


@pytest.mark.parametrize("now", [
    datetime(2026, 6, 1, tzinfo=UTC),  # as decided
    datetime(2027, 3, 1, tzinfo=UTC),  # the retest date: back to QUARANTINE
    datetime(2028, 1, 31, 23, 59, tzinfo=UTC),  # the last day before expiry
    datetime(2028, 2, 1, tzinfo=UTC),  # EXPIRED
])
def test_a_stored_status_answers_as_the_held_entry_does(now: datetime) -> None:
    for held in ENTRIES:
        expected = convert.release_status_of(held.as_of(now))
        assert convert.release_statuses({held.lot_id: stored(held)}, [held.lot_id],
                                        now) == [expected]
        lot = SimpleNamespace(
            lot_id=held.lot_id, material_code="MAT-1", supplier_id="SUP-1",
            supplier_site_id="MAIN", supplier_lot_number="S1", quantity_value=1.0,
            quantity_unit="kg", container_count=1, expiry_date=EXPIRY,
            received_at=DECIDED, retest_date=held.retest_date)
        assert (convert.listed_lot(lot, stored(held), now)  # type: ignore[arg-type]
                == convert.lot_to_proto(lot, held.as_of(now)))  # type: ignore[arg-type]


def test_a_batch_mixes_held_stored_and_unknown_lots_in_the_order_asked() -> None:
    now = datetime(2027, 3, 2, tzinfo=UTC)
    found = {e.lot_id: (e if i % 2 else stored(e)) for i, e in enumerate(ENTRIES)}
    asked = ["LOT-NONE", *reversed([e.lot_id for e in ENTRIES])]

    reply = convert.release_statuses_response(found, asked, now)

    assert list(reply.statuses) == [convert.not_found("LOT-NONE"), *(
        convert.release_status_of(e.as_of(now)) for e in reversed(ENTRIES))]
    assert reply.statuses[-1].status == pb.LOT_STATUS_QUARANTINE  # LOT-REL, retest date


def test_a_long_answer_is_framed_as_protobuf_frames_it() -> None:
    long = entry("LOT-LONG", LotStatus.ON_HOLD,
                 tuple(Unmet(f"CODE_{i}", "m" * 300, "R") for i in range(60)))
    reply = convert.release_statuses_response({long.lot_id: stored(long)}, [long.lot_id],
                                              DECIDED)
    assert len(convert.status_reply(long)) > 1 << 14
    assert list(reply.statuses) == [convert.release_status_of(long)]
