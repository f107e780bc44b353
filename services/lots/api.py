"""The gRPC entrypoint of the lots service: warehouse calls in, decisions out."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from services.lots import handlers
from services.lots.convert import POLICY_FROM_PROTO, REVIEW_STATE_FROM_PROTO, STATUS_FROM_PROTO
from services.lots.domain import ReleasePolicy
from services.lots.read_model import StatusCache
from services.lots.watch import ChangeFeed, watch
from shared.clock import Clock
from shared.errors import Unavailable, Violations
from shared.paging import decode_key, decode_position, encode_key, encode_position, page_size
from shared.protoconv import fingerprint
from shared.uow import UnitOfWorkFactory

MAX_CONCLUSION = 2000
# The most lots GetReleaseStatuses answers for in one call (a pick list).
MAX_BATCH = 1000


class LotApi(pb_grpc.LotServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory, engine: AsyncEngine, cache: StatusCache,
                 clock: Clock) -> None:
        self._uow = uow
        self._engine = engine
        self._cache = cache
        self._clock = clock

    async def ReceiveLot(self, request: pb.ReceiveLotRequest,
                         context: grpc.aio.ServicerContext) -> pb.ReceiveLotResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        v.code("material_code", request.material_code)
        v.code("supplier_id", request.supplier_id)
        v.code("supplier_site_id", request.supplier_site_id)
        v.text("supplier_lot_number", request.supplier_lot_number, max_length=64)
        quantity = request.quantity
        if not request.HasField("quantity"):
            v.add("quantity", "is required")
        else:
            if not math.isfinite(quantity.value) or quantity.value <= 0:
                v.add("quantity.value", "must be a finite number above zero")
            v.text("quantity.unit", quantity.unit, max_length=32)
        if not 1 <= request.container_count <= 100_000:
            v.add("container_count", "must be between 1 and 100000")
        # Bounds that depend on the day (after today, at most so many years ahead) are the
        # handler's: a retry of an accepted receipt keeps its answer on a later day.
        expiry = v.day_between("expiry_date", request.expiry_date)
        retest = v.day_between("retest_date", request.retest_date, required=False)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        assert expiry is not None
        command = handlers.ReceiveLot(
            lot_id=request.lot_id, material_code=request.material_code,
            supplier_id=request.supplier_id, supplier_site_id=request.supplier_site_id,
            supplier_lot_number=request.supplier_lot_number.strip(),
            quantity_value=quantity.value, quantity_unit=quantity.unit.strip(),
            container_count=request.container_count, expiry_date=expiry,
            requested_by=request.requested_by, fingerprint=fingerprint(request),
            retest_date=retest)
        lot = await handlers.receive_lot(self._uow(), command, self._cache)
        return pb.ReceiveLotResponse(lot=lot)

    async def GetLot(self, request: pb.GetLotRequest,
                     context: grpc.aio.ServicerContext) -> pb.GetLotResponse:
        _require_lot_id(request.lot_id)
        lot = await handlers.get_lot(self._uow(), lot_id=request.lot_id, cache=self._cache)
        return pb.GetLotResponse(lot=lot)

    async def GetReleaseStatus(self, request: pb.GetReleaseStatusRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetReleaseStatusResponse:
        # The warehouse asks this before every pick: memory first, the database on a miss.
        entry = self._cache.get(request.lot_id)
        if entry is None:
            _require_lot_id(request.lot_id)
            async with self._engine.connect() as conn:
                entry = await handlers.get_status(conn, lot_id=request.lot_id, cache=self._cache)
        return pb.GetReleaseStatusResponse(release_status=entry.as_of(self._clock.now()))

    async def GetReleaseStatuses(self, request: pb.GetReleaseStatusesRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.GetReleaseStatusesResponse:
        # A pick list at once: memory first, one database query for all the misses.
        lot_ids = list(request.lot_ids)
        v = Violations()
        if not lot_ids:
            v.add("lot_ids", f"is required: 1 to {MAX_BATCH:,} lot ids")
        v.codes("lot_ids", lot_ids, max_items=MAX_BATCH)
        v.raise_if_any()
        async with self._engine.connect() as conn:
            statuses = await handlers.get_statuses(conn, lot_ids=lot_ids, cache=self._cache,
                                                   now=self._clock.now())
        return pb.GetReleaseStatusesResponse(statuses=statuses)

    async def ExplainDecision(self, request: pb.ExplainDecisionRequest,
                              context: grpc.aio.ServicerContext) -> pb.ExplainDecisionResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        if request.version < 0:
            v.add("version", "must be 0 (the latest) or a decision version")
        v.raise_if_any()
        async with self._engine.connect() as conn:
            explained = await handlers.explain_decision(conn, lot_id=request.lot_id,
                                                        version=request.version)
        return pb.ExplainDecisionResponse(explained=explained)

    async def ListDecisions(self, request: pb.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListDecisionsResponse:
        _require_lot_id(request.lot_id)
        async with self._engine.connect() as conn:
            decisions = await handlers.list_decisions(conn, lot_id=request.lot_id)
        return pb.ListDecisionsResponse(decisions=decisions)

    # QA's release policies and actions on lots: each recorded as a decision with its cause.

    async def SetReleasePolicy(self, request: pb.SetReleasePolicyRequest,
                               context: grpc.aio.ServicerContext) -> pb.SetReleasePolicyResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        policy = POLICY_FROM_PROTO.get(request.policy)
        if policy is None:
            v.add("policy", "must be RELEASE_POLICY_AUTOMATIC or RELEASE_POLICY_QA_RELEASE")
        elif request.two_signatures and policy is not ReleasePolicy.QA_RELEASE:
            v.add("two_signatures", "only with RELEASE_POLICY_QA_RELEASE (a release by QA)")
        _reason_and_who(v, request)
        v.raise_if_any()
        assert policy is not None
        set_ = await handlers.set_release_policy(
            self._uow(), self._cache, material_code=request.material_code, policy=policy,
            reason=request.reason, requested_by=request.requested_by,
            two_signatures=request.two_signatures)
        return pb.SetReleasePolicyResponse(policy=set_)

    async def GetReleasePolicy(self, request: pb.GetReleasePolicyRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetReleasePolicyResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        v.raise_if_any()
        async with self._engine.connect() as conn:
            policy = await handlers.get_release_policy(conn, material_code=request.material_code)
        return pb.GetReleasePolicyResponse(policy=policy)

    async def ReleaseLot(self, request: pb.ReleaseLotRequest,
                         context: grpc.aio.ServicerContext) -> pb.ReleaseLotResponse:
        status, awaited = await self._qa(handlers.release_lot, request)
        return pb.ReleaseLotResponse(release_status=status, signatures_awaited=awaited)

    async def HoldLot(self, request: pb.HoldLotRequest,
                      context: grpc.aio.ServicerContext) -> pb.HoldLotResponse:
        return pb.HoldLotResponse(release_status=await self._qa(handlers.hold_lot, request))

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest,
                          context: grpc.aio.ServicerContext) -> pb.ReleaseHoldResponse:
        return pb.ReleaseHoldResponse(release_status=await self._qa(handlers.release_hold,
                                                                    request))

    async def RejectLot(self, request: pb.RejectLotRequest,
                        context: grpc.aio.ServicerContext) -> pb.RejectLotResponse:
        return pb.RejectLotResponse(release_status=await self._qa(handlers.reject_lot, request))

    async def _qa(self, action: Any, request: Any) -> Any:
        """A QA action on a lot: the lot, why and who (field violations otherwise), then
        the handler's unit of work."""
        v = Violations()
        v.code("lot_id", request.lot_id)
        _reason_and_who(v, request)
        v.raise_if_any()
        return await action(self._uow(), self._cache, lot_id=request.lot_id,
                            reason=request.reason, requested_by=request.requested_by)

    async def SetRetestDate(self, request: pb.SetRetestDateRequest,
                            context: grpc.aio.ServicerContext) -> pb.SetRetestDateResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        retest = v.day_between("retest_date", request.retest_date)
        _reason_and_who(v, request)
        v.raise_if_any()
        assert retest is not None
        status = await handlers.set_retest_date(
            self._uow(), self._cache, lot_id=request.lot_id, retest_date=retest,
            reason=request.reason, requested_by=request.requested_by)
        return pb.SetRetestDateResponse(release_status=status)

    async def ListLots(self, request: pb.ListLotsRequest,
                       context: grpc.aio.ServicerContext) -> pb.ListLotsResponse:
        v = Violations()
        status = None
        if request.status != pb.LOT_STATUS_UNSPECIFIED:
            status = STATUS_FROM_PROTO.get(request.status)
            if status is None:
                v.add("status", f"unknown lot status {request.status}")
        if request.supplier_id:
            v.code("supplier_id", request.supplier_id)
        if request.supplier_site_id:
            if not request.supplier_id:
                v.add("supplier_site_id", "may be given only together with supplier_id")
            else:
                v.code("supplier_site_id", request.supplier_site_id)
        if request.material_code:
            v.code("material_code", request.material_code)
        received_from = v.instant(request, "received_from")
        received_before = v.instant(request, "received_before")
        if received_from and received_before and received_before <= received_from:
            v.add("received_before", "must lie after received_from")
        limit = page_size(v, request.page_size)
        after = decode_key(v, request.page_token)
        v.raise_if_any()
        lots = await handlers.list_lots(
            self._uow(), status=status, after=after, limit=limit, cache=self._cache,
            supplier_id=request.supplier_id, supplier_site_id=request.supplier_site_id,
            material_code=request.material_code, received_from=received_from,
            received_before=received_before)
        token = ""
        if len(lots) == limit:
            token = encode_key(lots[-1].lot_id)
        return pb.ListLotsResponse(lots=lots, next_page_token=token)

    async def ListLotReviews(self, request: pb.ListLotReviewsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListLotReviewsResponse:
        v = Violations()
        state = None
        if request.state != pb.REVIEW_STATE_UNSPECIFIED:
            state = REVIEW_STATE_FROM_PROTO.get(request.state)
            if state is None:
                v.add("state", f"unknown review state {request.state}")
        if request.supplier_id:
            v.code("supplier_id", request.supplier_id)
        if request.material_code:
            v.code("material_code", request.material_code)
        limit = page_size(v, request.page_size)
        after = decode_position(v, request.page_token)
        v.raise_if_any()
        reviews, last = await handlers.list_lot_reviews(
            self._uow(), state=state, supplier_id=request.supplier_id,
            material_code=request.material_code, after=after, limit=limit)
        token = ""
        if len(reviews) == limit:
            token = encode_position(last)
        return pb.ListLotReviewsResponse(reviews=reviews, next_page_token=token)

    async def CloseLotReview(self, request: pb.CloseLotReviewRequest,
                             context: grpc.aio.ServicerContext) -> pb.CloseLotReviewResponse:
        v = Violations()
        v.code("review_id", request.review_id, max_length=100)
        v.text("conclusion", request.conclusion, max_length=MAX_CONCLUSION, prose=True)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        review = await handlers.close_lot_review(
            self._uow(), review_id=request.review_id, conclusion=request.conclusion,
            requested_by=request.requested_by)
        return pb.CloseLotReviewResponse(review=review)

    # The change feed WatchReleaseStatus reads from; set by the bootstrap.
    feed: ChangeFeed | None = None

    async def WatchReleaseStatus(self, request: pb.WatchReleaseStatusRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[pb.WatchReleaseStatusResponse]:
        # Snapshot (or the changes after resume_from), then every change: see watch.py.
        if self.feed is None:
            raise Unavailable("status changes cannot be watched on this server")
        async for response in watch(self.feed, self._engine, self._clock, request):
            yield response


def _reason_and_who(v: Violations, request: Any) -> None:
    v.text("reason", request.reason, max_length=MAX_CONCLUSION, prose=True)
    v.text("requested_by", request.requested_by, max_length=200)


def _require_lot_id(lot_id: str) -> None:
    v = Violations()
    v.code("lot_id", lot_id)
    v.raise_if_any()

