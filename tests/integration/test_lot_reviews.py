"""Reviews of released lots whose supplier site lost its approval, over real gRPC and NATS.

The suppliers service runs for real: QA suspends or disqualifies a site for a material
there, and the lots service opens a review of every lot of that site and material that
was already released, without changing the lot.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js.api import DeliverPolicy

from lotgate.lots.v1 import events_pb2 as lot_events
from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from shared import messaging
from tests.integration.test_lots import SITE, System, running_system
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


async def reviews(system: System, **filters: Any) -> list[pb.LotReview]:
    """Every review ListLotReviews returns for these filters, through all pages."""
    found: list[pb.LotReview] = []
    token = ""
    while True:
        page = await system.lots.ListLotReviews(pb.ListLotReviewsRequest(
            page_token=token, **filters))
        found += page.reviews
        token = page.next_page_token
        if not token:
            return found


async def wait_reviews(system: System, count: int, **filters: Any) -> list[pb.LotReview]:
    return await eventually(lambda: reviews(system, **filters), lambda r: len(r) == count)


async def events_on(system: System, subject: str, message_type: type[Message],
                    wanted: Callable[[Any], bool], count: int,
                    within: float = 10.0) -> list[tuple[Any, Any]]:
    """The first `count` events on `subject` (from the start of its stream) that match,
    each with its message, waiting for them to be published."""
    sub = await system.js.subscribe(subject, ordered_consumer=True,
                                    deliver_policy=DeliverPolicy.ALL)
    found: list[tuple[Any, Any]] = []
    deadline = time.monotonic() + within
    try:
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(found)} of {count} events on {subject}")
            try:
                msg = await sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                continue
            event = message_type.FromString(msg.data)
            if wanted(event):
                found.append((event, msg))
    finally:
        await sub.unsubscribe()
    return found


async def review_of_a_released_lot(system: System) -> pb.LotReview:
    """An OPEN review: a lot released, then its site suspended for its material."""
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    await system.released_lot(supplier_id, material)
    await system.suspend(supplier_id, material)
    [review] = await wait_reviews(system, 1, supplier_id=supplier_id)
    return review


def precondition_subjects(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    subjects = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            subjects += [v.subject for v in failure.violations]
    return subjects


@pytest.mark.req("REL-010")
async def test_a_disqualification_opens_a_review_of_each_released_lot_of_that_site_and_material(
        system: System) -> None:
    supplier_id, mat_x, mat_y = ref("SUP"), ref("MAT"), ref("MAT")
    for site, material in ((SITE, mat_x), (SITE, mat_y), ("LYON-2", mat_x)):
        await system.qualify(supplier_id, material, site=site)
    concerned = sorted([await system.released_lot(supplier_id, mat_x),
                        await system.released_lot(supplier_id, mat_x)])
    other_material = await system.released_lot(supplier_id, mat_y)
    other_site = await system.released_lot(supplier_id, mat_x, site="LYON-2")
    unreleased = (await system.receive(supplier_id, mat_x)).lot_id

    disqualified = await system.disqualify(supplier_id, mat_x, reason="critical finding")

    found = await wait_reviews(system, 2, supplier_id=supplier_id)
    assert [r.lot_id for r in found] == concerned
    for review, lot_id in zip(found, concerned, strict=True):
        assert review.review_id == f"{lot_id}/{disqualified.version}"
        assert (review.supplier_id, review.supplier_site_id, review.material_code) == (
            supplier_id, SITE, mat_x)
        assert review.qualification_status == "DISQUALIFIED"
        assert review.qualification_version == disqualified.version
        assert review.reason == "critical finding"
        assert review.state == pb.REVIEW_STATE_OPEN
        assert review.HasField("opened_at") and not review.HasField("closed_at")
    # The released lots are not changed; the open one shows why it cannot be released.
    for lot_id in (*concerned, other_material, other_site):
        assert (await system.status(lot_id)).status == pb.LOT_STATUS_RELEASED
    waiting = await system.wait_unmet(unreleased, ["SUPPLIER_DISQUALIFIED", "IDENTITY_MISSING",
                                                   "PURITY_MISSING", "STERILITY_MISSING"])
    assert f"site {SITE} for material {mat_x} is disqualified" in waiting.unmet[0].message
    assert await reviews(system, material_code=mat_y) == []

    announced = await events_on(system, messaging.LOT_REVIEW_REQUIRED,
                                lot_events.LotReviewRequired,
                                lambda e: e.review.supplier_id == supplier_id, 2)
    assert sorted(e.review.lot_id for e, _ in announced) == concerned
    assert {msg.metadata.stream for _, msg in announced} == {"LOTGATE_LOTS"}
    assert {e.review.review_id: e.review for e, _ in announced} == {
        r.review_id: r for r in found}


@pytest.mark.req("REL-010", "REL-004")
async def test_a_suspension_opens_reviews_too_and_unreleased_lots_wait(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    released = await system.released_lot(supplier_id, material)
    waiting = await system.receive(supplier_id, material)

    suspended = await system.suspend(supplier_id, material, reason="complaint CMP-17")

    [review] = await wait_reviews(system, 1, supplier_id=supplier_id)
    assert (review.lot_id, review.qualification_status, review.reason) == (
        released, "SUSPENDED", "complaint CMP-17")
    assert review.review_id == f"{released}/{suspended.version}"
    await system.post_all_passing(waiting.lot_id, material)
    status = await system.wait_unmet(waiting.lot_id, ["SUPPLIER_SUSPENDED"])
    assert status.status == pb.LOT_STATUS_QUARANTINE


@pytest.mark.req("REL-010", "DEL-002")
async def test_a_repeated_announcement_opens_no_second_review(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    await system.released_lot(supplier_id, material)
    await system.disqualify(supplier_id, material)
    [review] = await wait_reviews(system, 1, supplier_id=supplier_id)
    [(original, _)] = await events_on(
        system, messaging.QUALIFICATION_CHANGED, supplier_events.QualificationChanged,
        lambda e: (e.qualification.supplier_id == supplier_id
                   and e.qualification.status == spb.QUALIFICATION_STATUS_DISQUALIFIED), 1)

    # The same change announced again under a new event id: past JetStream's
    # de-duplication and the consumer's inbox, only the projection can absorb it.
    again = supplier_events.QualificationChanged()
    again.CopyFrom(original)
    again.event_id = str(uuid.uuid4())
    await system.js.publish(messaging.QUALIFICATION_CHANGED, again.SerializeToString(),
                            headers={"Nats-Msg-Id": again.event_id})
    # A marker behind it: once its lot is decided, the copy has been applied too.
    marker_supplier = await system.qualified_supplier(material)
    marker = await system.receive(marker_supplier, material)
    await system.wait_unmet(marker.lot_id, ["IDENTITY_MISSING", "PURITY_MISSING",
                                            "STERILITY_MISSING"])

    assert await reviews(system, supplier_id=supplier_id) == [review]


@pytest.mark.req("REV-001")
async def test_reviews_are_listed_oldest_first_page_by_page_and_filtered(system: System) -> None:
    supplier_id, mat_x, mat_y = ref("SUP"), ref("MAT"), ref("MAT")
    await system.qualify(supplier_id, mat_x)
    await system.qualify(supplier_id, mat_y)
    lots_x = sorted([await system.released_lot(supplier_id, mat_x) for _ in range(2)])
    lots_y = sorted([await system.released_lot(supplier_id, mat_y) for _ in range(2)])
    await system.suspend(supplier_id, mat_y)
    await wait_reviews(system, 2, supplier_id=supplier_id)
    await system.disqualify(supplier_id, mat_x)
    await wait_reviews(system, 4, supplier_id=supplier_id)

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await system.lots.ListLotReviews(pb.ListLotReviewsRequest(
            supplier_id=supplier_id, page_size=3, page_token=token))
        pages.append([r.lot_id for r in page.reviews])
        token = page.next_page_token
        if not token:
            break

    assert pages[0] == [*lots_y, lots_x[0]] and pages[1] == [lots_x[1]]
    assert [r.lot_id for r in await reviews(system, material_code=mat_x)] == lots_x
    assert [r.lot_id for r in await reviews(system, supplier_id=supplier_id,
                                            material_code=mat_y,
                                            state=pb.REVIEW_STATE_OPEN)] == lots_y
    assert await reviews(system, supplier_id=supplier_id, state=pb.REVIEW_STATE_CLOSED) == []


@pytest.mark.req("REV-001", "INP-001")
async def test_list_lot_reviews_refuses_bad_filters_and_tokens_field_by_field(
        system: System) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.ListLotReviews(pb.ListLotReviewsRequest(
            state=7, supplier_id="ACME BIO", material_code="-MAT", page_size=1001,
            page_token="not a token"))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {
        "state", "supplier_id", "material_code", "page_size", "page_token"}
    # A ListLots token is no ListLotReviews token.
    lots_page = await system.lots.ListLots(pb.ListLotsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.ListLotReviews(pb.ListLotReviewsRequest(
            page_token=lots_page.next_page_token or "bm90LWEtdG9rZW4="))
    assert set(field_violations(caught.value)) == {"page_token"}


@pytest.mark.req("REV-001")
async def test_qa_closes_a_review_with_its_conclusion(system: System) -> None:
    review = await review_of_a_released_lot(system)

    closed = (await system.lots.CloseLotReview(pb.CloseLotReviewRequest(
        review_id=review.review_id, conclusion="lot used up; no impact per DEV-31",
        requested_by="qa.jane"))).review

    assert closed.state == pb.REVIEW_STATE_CLOSED
    assert (closed.conclusion, closed.closed_by) == ("lot used up; no impact per DEV-31",
                                                     "qa.jane")
    assert closed.HasField("closed_at")
    assert (closed.review_id, closed.lot_id, closed.opened_at) == (
        review.review_id, review.lot_id, review.opened_at)
    assert await reviews(system, supplier_id=review.supplier_id) == [closed]
    assert await reviews(system, supplier_id=review.supplier_id,
                         state=pb.REVIEW_STATE_OPEN) == []
    assert (await system.status(review.lot_id)).status == pb.LOT_STATUS_RELEASED
    [(announced, msg)] = await events_on(
        system, messaging.LOT_REVIEW_CLOSED, lot_events.LotReviewClosed,
        lambda e: e.review.review_id == review.review_id, 1)
    assert announced.review == closed
    assert msg.metadata.stream == "LOTGATE_LOTS"


@pytest.mark.req("REV-001")
async def test_closing_again_the_same_way_is_a_retry_and_any_other_way_is_refused(
        system: System) -> None:
    review = await review_of_a_released_lot(system)
    close = dict(review_id=review.review_id, conclusion="no impact", requested_by="qa.jane")
    first = (await system.lots.CloseLotReview(pb.CloseLotReviewRequest(**close))).review

    retried = (await system.lots.CloseLotReview(pb.CloseLotReviewRequest(**close))).review
    assert retried == first

    for change in ({"conclusion": "lot recalled"}, {"requested_by": "qa.tom"}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await system.lots.CloseLotReview(pb.CloseLotReviewRequest(**{**close, **change}))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CLOSED" in caught.value.details()
        assert precondition_subjects(caught.value) == [f"lot_reviews/{review.review_id}"]
    assert await reviews(system, supplier_id=review.supplier_id) == [first]
    # One close, one announcement.
    closes = await events_on(system, messaging.LOT_REVIEW_CLOSED, lot_events.LotReviewClosed,
                             lambda e: e.review.review_id == review.review_id, 1)
    assert len(closes) == 1


@pytest.mark.req("REV-001")
async def test_closing_an_unknown_review_is_not_found(system: System) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.lots.CloseLotReview(pb.CloseLotReviewRequest(
            review_id=f"{ref('LOT')}/3", conclusion="no impact", requested_by="qa.jane"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert set(field_violations(caught.value)) == {"review_id"}


@pytest.mark.req("REV-001")
async def test_a_close_without_review_conclusion_or_person_is_refused_field_by_field(
        system: System) -> None:
    review = await review_of_a_released_lot(system)

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await system.lots.CloseLotReview(pb.CloseLotReviewRequest(conclusion="  "))
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await system.lots.CloseLotReview(pb.CloseLotReviewRequest(
            review_id=review.review_id, conclusion="x" * 2001, requested_by="q" * 201))

    assert empty.value.code() == too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An empty requested_by is the caller (the authenticated subject).
    assert set(field_violations(empty.value)) == {"review_id", "conclusion"}
    assert set(field_violations(too_long.value)) == {"conclusion", "requested_by"}
    assert (await reviews(system, supplier_id=review.supplier_id))[0].state == (
        pb.REVIEW_STATE_OPEN)
