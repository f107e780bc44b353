"""QA, a warehouse and an instrument against the running system: supplier qualification
with real time passing, as processes over real gRPC and NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate_tools.client import DEFAULT_SITE, Lotgate, identity, purity, sterility
from shared.protoconv import to_timestamp
from tests.support.services import ref
from tests.support.waiting import eventually, until_lot

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)


async def settled(lg: Lotgate, lot_id: str, expected: list[str]) -> pb.ReleaseStatus:
    """The lot in QUARANTINE with exactly `expected` unmet; fails naming the last status seen."""
    return await until_lot(lg.lots, lot_id, pb.LOT_STATUS_QUARANTINE, expected)


def key(supplier: str, material: str) -> dict[str, str]:
    return {"supplier_id": supplier, "site_id": DEFAULT_SITE, "material_code": material}


@pytest.mark.req("REL-005")
async def test_expiry_keeps_a_lot_that_was_about_to_be_released_in_quarantine(
        lotgate: Lotgate) -> None:
    material, supplier, lot = ref("MAT"), ref("SUP"), ref("LOT")
    await lotgate.specify(material)
    lapses_at = datetime.now(UTC) + timedelta(seconds=5)
    await lotgate.qualify(supplier, "Acme", material, lapses_at)
    await lotgate.receive(lot, material, supplier)
    await lotgate.post(identity(lot, "FTIR-1", ref("K")))
    await lotgate.post(purity(lot, "HPLC-1", ref("K"), 99.5))
    await settled(lotgate, lot, ["STERILITY_MISSING"])  # one result away from release

    # Nobody acts: the suppliers service expires the approval when its date passes.
    expired = await eventually(
        lambda: lotgate.suppliers.GetQualification(spb.GetQualificationRequest(
            **key(supplier, material))),
        lambda r: r.qualification.status == spb.QUALIFICATION_STATUS_EXPIRED, within=20)
    await settled(lotgate, lot, ["QUALIFICATION_EXPIRED", "STERILITY_MISSING"])
    await lotgate.post(sterility(lot, "BACT-1", ref("K")))
    await settled(lotgate, lot, ["QUALIFICATION_EXPIRED"])

    assert expired.qualification.changed_by == "lotgate:expiry"
    assert expired.qualification.changed_at.ToDatetime(tzinfo=UTC) >= lapses_at


@pytest.mark.req("REL-004", "REL-010")
async def test_a_disqualification_holds_open_lots_and_lists_released_ones_for_review(
        lotgate: Lotgate) -> None:
    material, supplier = ref("MAT"), ref("SUP")
    released, pending = ref("LOT"), ref("LOT")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme", material, NEXT_YEAR)
    for lot in (released, pending):
        await lotgate.receive(lot, material, supplier)
    await lotgate.post(identity(released, "FTIR-1", ref("K")))
    await lotgate.post(purity(released, "HPLC-1", ref("K"), 99.5))
    await lotgate.post(sterility(released, "BACT-1", ref("K")))
    await lotgate.post(identity(pending, "FTIR-1", ref("K")))
    await until_lot(lotgate.lots, released, pb.LOT_STATUS_RELEASED, [])

    await lotgate.suppliers.DisqualifySupplier(spb.DisqualifySupplierRequest(
        reason="falsified certificates of analysis", requested_by="qa.jane",
        **key(supplier, material)))

    await settled(lotgate, pending, ["SUPPLIER_DISQUALIFIED", "PURITY_MISSING",
                                     "STERILITY_MISSING"])
    reviews = await eventually(
        lambda: lotgate.lots.ListLotReviews(pb.ListLotReviewsRequest(supplier_id=supplier)),
        lambda r: len(r.reviews) == 1)
    [review] = reviews.reviews
    assert (review.lot_id, review.qualification_status, review.state) == (
        released, "DISQUALIFIED", pb.REVIEW_STATE_OPEN)
    assert review.reason == "falsified certificates of analysis"
    # Not silently changed: the released lot stays released until QA decides.
    assert (await lotgate.status(released)).status == pb.LOT_STATUS_RELEASED

    closed = await lotgate.lots.CloseLotReview(pb.CloseLotReviewRequest(
        review_id=review.review_id, conclusion="lot consumed in batch B-77; deviation DEV-9",
        requested_by="qa.jane"))
    assert closed.review.state == pb.REVIEW_STATE_CLOSED


@pytest.mark.req("AUD-002")
async def test_the_status_as_known_on_a_past_date_is_the_older_one(lotgate: Lotgate) -> None:
    material, supplier = ref("MAT"), ref("SUP")
    await lotgate.qualify(supplier, "Acme", material, NEXT_YEAR)
    between = datetime.now(UTC)
    await lotgate.suppliers.SuspendQualification(spb.SuspendQualificationRequest(
        reason="complaint CAPA-3", requested_by="qa.bob", **key(supplier, material)))

    then = await lotgate.suppliers.GetQualification(spb.GetQualificationRequest(
        as_of=to_timestamp(between), **key(supplier, material)))
    now = await lotgate.suppliers.GetQualification(spb.GetQualificationRequest(
        **key(supplier, material)))
    listed_then = await lotgate.suppliers.ListApprovedSuppliers(
        spb.ListApprovedSuppliersRequest(material_code=material, as_of=to_timestamp(between)))
    listed_now = await lotgate.suppliers.ListApprovedSuppliers(
        spb.ListApprovedSuppliersRequest(material_code=material))

    assert then.qualification.status == spb.QUALIFICATION_STATUS_QUALIFIED
    assert now.qualification.status == spb.QUALIFICATION_STATUS_SUSPENDED
    assert [s.qualification.supplier_id for s in listed_then.suppliers] == [supplier]
    assert list(listed_now.suppliers) == []
