"""The gRPC entrypoint of the lots service: warehouse calls in, decisions out."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from services.lots import commands, handlers, qa_handlers, qa_queries, queries
from services.lots.convert import (
    POLICY_FROM_PROTO,
    REVIEW_STATE_FROM_PROTO,
    STATUS_FROM_PROTO,
    explained_to_proto,
    listed_lot,
    lot_to_proto,
    policy_to_proto,
    release_status_of,
    release_statuses_response,
    review_to_proto,
)
from services.lots.domain.rule import ReleasePolicy
from services.lots.feed import ChangeFeed
from services.lots.read_model import StatusCache, StatusEntry
from services.lots.receipts import Receipts
from services.lots.watch import MAX_RESUME_LOTS, MAX_WATCH_LOTS, WatchRequest, watch
from shared.clock import Clock
from shared.errors import Unavailable, Violations, shown
from shared.paging import decode_key, decode_position, encode_key, encode_position, page_size
from shared.protoconv import fingerprint
from shared.uow import UnitOfWorkFactory

MAX_CONCLUSION = 2000
# The most lots GetReleaseStatuses answers for in one call (a pick list).
MAX_BATCH = 1000


class LotApi(pb_grpc.LotServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory, engine: AsyncEngine, cache: StatusCache,
                 clock: Clock, receipts: Receipts | None = None) -> None:
        self._uow = uow
        self._engine = engine
        self._cache = cache
        self._clock = clock
        self._receipts = receipts or Receipts(uow, cache)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for the status reads: on PostgreSQL without a transaction, which
        saves the BEGIN and ROLLBACK round trips (two of a batch's four). Under READ
        COMMITTED each statement reads its own snapshot in a transaction or not."""
        async with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

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
        command = commands.ReceiveLot(
            lot_id=request.lot_id, material_code=request.material_code,
            supplier_id=request.supplier_id, supplier_site_id=request.supplier_site_id,
            supplier_lot_number=request.supplier_lot_number.strip(),
            quantity_value=quantity.value, quantity_unit=quantity.unit.strip(),
            container_count=request.container_count, expiry_date=expiry,
            requested_by=request.requested_by, fingerprint=fingerprint(request),
            retest_date=retest)
        lot, status = await self._receipts(command)
        return pb.ReceiveLotResponse(lot=lot_to_proto(lot, status.as_of(self._clock.now())))

    async def GetLot(self, request: pb.GetLotRequest,
                     context: grpc.aio.ServicerContext) -> pb.GetLotResponse:
        _require_lot_id(request.lot_id)
        async with self._reading() as conn:
            lot, status = await queries.get_lot(conn, lot_id=request.lot_id, cache=self._cache)
        return pb.GetLotResponse(lot=lot_to_proto(lot, status.as_of(self._clock.now())))

    async def GetReleaseStatus(self, request: pb.GetReleaseStatusRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetReleaseStatusResponse:
        # The warehouse asks this before every pick: memory first, the database on a miss.
        entry = self._cache.get(request.lot_id)
        if entry is None:
            _require_lot_id(request.lot_id)
            async with self._reading() as conn:
                entry = await queries.get_status(conn, lot_id=request.lot_id, cache=self._cache)
        return pb.GetReleaseStatusResponse(
            release_status=release_status_of(entry.as_of(self._clock.now())))

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
        async with self._reading() as conn:
            found = await queries.get_statuses(conn, lot_ids=lot_ids, cache=self._cache)
        return release_statuses_response(found, lot_ids, self._clock.now())

    async def ExplainDecision(self, request: pb.ExplainDecisionRequest,
                              context: grpc.aio.ServicerContext) -> pb.ExplainDecisionResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        if request.version < 0:
            v.add("version", "must be 0 (the latest) or a decision version")
        v.raise_if_any()
        async with self._engine.connect() as conn:
            e = await queries.explain_decision(conn, lot_id=request.lot_id,
                                               version=request.version)
        return pb.ExplainDecisionResponse(explained=explained_to_proto(
            e.record, e.stored, e.replayed, e.problems, e.signatures))

    async def ListDecisions(self, request: pb.ListDecisionsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListDecisionsResponse:
        _require_lot_id(request.lot_id)
        async with self._engine.connect() as conn:
            found = await queries.list_decisions(conn, lot_id=request.lot_id)
        return pb.ListDecisionsResponse(decisions=[explained_to_proto(
            e.record, e.stored, e.replayed, e.problems, e.signatures) for e in found])

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
        command = commands.SetReleasePolicy(
            material_code=request.material_code, policy=policy, reason=request.reason,
            requested_by=request.requested_by, two_signatures=request.two_signatures)
        set_ = await handlers.set_release_policy(self._uow(), self._cache, command)
        return pb.SetReleasePolicyResponse(policy=policy_to_proto(set_))

    async def GetReleasePolicy(self, request: pb.GetReleasePolicyRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetReleasePolicyResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        v.raise_if_any()
        async with self._engine.connect() as conn:
            policy = await qa_queries.get_release_policy(conn, material_code=request.material_code)
        return pb.GetReleasePolicyResponse(policy=policy_to_proto(policy))

    async def ReleaseLot(self, request: pb.ReleaseLotRequest,
                         context: grpc.aio.ServicerContext) -> pb.ReleaseLotResponse:
        status, awaited = await qa_handlers.release_lot(
            self._uow(), self._cache, _qa_command(commands.ReleaseLot, request))
        return pb.ReleaseLotResponse(release_status=self._answer(status),
                                     signatures_awaited=awaited)

    async def HoldLot(self, request: pb.HoldLotRequest,
                      context: grpc.aio.ServicerContext) -> pb.HoldLotResponse:
        status = await qa_handlers.hold_lot(self._uow(), self._cache,
                                         _qa_command(commands.HoldLot, request))
        return pb.HoldLotResponse(release_status=self._answer(status))

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest,
                          context: grpc.aio.ServicerContext) -> pb.ReleaseHoldResponse:
        status = await qa_handlers.release_hold(self._uow(), self._cache,
                                             _qa_command(commands.ReleaseHold, request))
        return pb.ReleaseHoldResponse(release_status=self._answer(status))

    async def RejectLot(self, request: pb.RejectLotRequest,
                        context: grpc.aio.ServicerContext) -> pb.RejectLotResponse:
        status = await qa_handlers.reject_lot(self._uow(), self._cache,
                                           _qa_command(commands.RejectLot, request))
        return pb.RejectLotResponse(release_status=self._answer(status))

    def _answer(self, entry: StatusEntry) -> pb.ReleaseStatus:
        return release_status_of(entry.as_of(self._clock.now()))

    async def SetRetestDate(self, request: pb.SetRetestDateRequest,
                            context: grpc.aio.ServicerContext) -> pb.SetRetestDateResponse:
        v = Violations()
        v.code("lot_id", request.lot_id)
        retest = v.day_between("retest_date", request.retest_date)
        _reason_and_who(v, request)
        v.raise_if_any()
        assert retest is not None
        status = await qa_handlers.set_retest_date(self._uow(), self._cache, commands.SetRetestDate(
            request.lot_id, request.reason, request.requested_by, retest_date=retest))
        return pb.SetRetestDateResponse(release_status=self._answer(status))

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
        async with self._reading() as conn:
            found = await queries.list_lots(
                conn, status=status, after=after, limit=limit, cache=self._cache,
                supplier_id=request.supplier_id, supplier_site_id=request.supplier_site_id,
                material_code=request.material_code, received_from=received_from,
                received_before=received_before)
        now = self._clock.now()
        token = ""
        if len(found) == limit:
            token = encode_key(found[-1][0].lot_id)
        return pb.ListLotsResponse(lots=[listed_lot(lot, status, now) for lot, status in found],
                                   next_page_token=token)

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
        async with self._engine.connect() as conn:
            reviews, last = await qa_queries.list_lot_reviews(
                conn, state=state, supplier_id=request.supplier_id,
                material_code=request.material_code, after=after, limit=limit)
        token = ""
        if len(reviews) == limit:
            token = encode_position(last)
        return pb.ListLotReviewsResponse(
            reviews=[review_to_proto(r.review, r.signatures) for r in reviews],
            next_page_token=token)

    async def CloseLotReview(self, request: pb.CloseLotReviewRequest,
                             context: grpc.aio.ServicerContext) -> pb.CloseLotReviewResponse:
        v = Violations()
        v.code("review_id", request.review_id, max_length=100)
        v.text("conclusion", request.conclusion, max_length=MAX_CONCLUSION, prose=True)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        closed = await handlers.close_lot_review(self._uow(), commands.CloseLotReview(
            request.review_id, request.conclusion, request.requested_by))
        return pb.CloseLotReviewResponse(review=review_to_proto(closed.review,
                                                                closed.signatures))

    # The change feed WatchReleaseStatus reads from; set by the bootstrap.
    feed: ChangeFeed | None = None

    async def WatchReleaseStatus(self, request: pb.WatchReleaseStatusRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[pb.WatchReleaseStatusResponse]:
        # Snapshot (or the changes after resume_from), then every change: see watch.py.
        if self.feed is None:
            raise Unavailable("status changes cannot be watched on this server")
        wanted = validate_watch(request)
        async for entry, snapshot in watch(self.feed, self._engine, wanted):
            yield pb.WatchReleaseStatusResponse(release_status=self._answer(entry),
                                                snapshot=snapshot)


def _qa_command(kind: type[commands.QaCommand], request: Any) -> commands.QaCommand:
    """A QA action on a lot: the lot, why and who (field violations otherwise)."""
    v = Violations()
    v.code("lot_id", request.lot_id)
    _reason_and_who(v, request)
    v.raise_if_any()
    return kind(request.lot_id, request.reason, request.requested_by)


def _reason_and_who(v: Violations, request: Any) -> None:
    v.text("reason", request.reason, max_length=MAX_CONCLUSION, prose=True)
    v.text("requested_by", request.requested_by, max_length=200)


def _require_lot_id(lot_id: str) -> None:
    v = Violations()
    v.code("lot_id", lot_id)
    v.raise_if_any()


def validate_watch(request: pb.WatchReleaseStatusRequest) -> WatchRequest:
    """Everything that can be checked without the database (INVALID_ARGUMENT)."""
    v = Violations()
    lot_ids = list(request.lot_ids)
    material = request.material_code
    if not lot_ids and not material:
        v.add("lot_ids", f"give 1 to {MAX_WATCH_LOTS:,} lot ids, or a material_code")
    if lot_ids and material:
        v.add("material_code", "may not be given together with lot_ids")
    v.codes("lot_ids", lot_ids, max_items=MAX_WATCH_LOTS)
    if material:
        v.code("material_code", material)
    resume: dict[str, int] = {}
    fields: dict[str, str] = {}
    named = set(lot_ids)
    # Counted before any entry is looked at: a resume_from of 100,000 entries is refused
    # at the cost of one violation, not two per entry.
    limit = min(len(lot_ids), MAX_WATCH_LOTS) if lot_ids else MAX_RESUME_LOTS
    if not v.at_most("resume_from", request.resume_from, limit):
        v.raise_if_any()
    for i, seen in enumerate(request.resume_from):
        field = f"resume_from[{i}]"
        v.code(f"{field}.lot_id", seen.lot_id)
        if seen.version < 0:
            v.add(f"{field}.version", "must be 0 or the last version received")
        if seen.lot_id in resume:
            v.add(f"{field}.lot_id", f"repeats {fields[seen.lot_id]} ({shown(seen.lot_id)})")
        elif lot_ids and seen.lot_id and seen.lot_id not in named:
            v.add(f"{field}.lot_id", f"{shown(seen.lot_id)} is not among lot_ids")
        resume[seen.lot_id] = seen.version
        fields.setdefault(seen.lot_id, field)
    v.raise_if_any()
    return WatchRequest(tuple(lot_ids), material, resume, fields)
