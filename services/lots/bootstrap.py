"""Wires the lots service: the only place that builds its parts."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from services.lots import handlers, inbound
from services.lots.api import LotApi
from services.lots.domain.rule import ResultState
from services.lots.feed import ChangeFeed
from services.lots.read_model import StatusCache
from services.lots.receipts import Receipts
from services.lots.tables import tables
from services.lots.time_driven import run_time_checks
from shared import messaging
from shared.clock import Clock
from shared.config import ServiceSettings
from shared.inbox import Subscription
from shared.runtime import Infrastructure, RunningService, ServiceParts, start_service
from shared.uow import UnitOfWork


def build(infra: Infrastructure) -> ServiceParts:
    # Bounded by LOTGATE_STATUS_CACHE_MB, not by how many lots are read.
    cache = StatusCache.for_budget(infra.settings.status_cache_mb)
    # Every replica's status changes: keeps the cache coherent, feeds the watches.
    feed = ChangeFeed(infra.engine, cache, gate=infra.gate)

    # Concurrent receipts share a transaction unless LOTGATE_GROUP_COMMIT is off.
    receipts = Receipts(infra.uow, cache, together=infra.settings.group_commit)

    def register(server: grpc.aio.Server) -> list[str]:
        api = LotApi(infra.uow, infra.engine, cache, infra.clock, receipts)
        api.feed = feed
        lots_pb2_grpc.add_LotServiceServicer_to_server(api, server)
        return [lots_pb2.DESCRIPTOR.services_by_name["LotService"].full_name]

    async def time_checks(stop: asyncio.Event) -> None:
        # Expiry and retest dates: lots moved by time (several replicas are safe).
        await run_time_checks(infra.uow, cache, stop,
                              every_seconds=infra.settings.expiry_check_seconds)

    # Other services' events, read as facts (inbound.py), then the handlers' decisions.
    async def on_results(uow: UnitOfWork, events: list[Any]) -> None:
        await handlers.apply_results(uow, inbound.recorded(events), cache)

    async def on_invalidations(uow: UnitOfWork, events: list[Any]) -> None:
        state = ResultState.INVALIDATED
        await handlers.apply_result_states(uow, inbound.with_state(events, state), cache,
                                           state=state)

    async def on_confirmations(uow: UnitOfWork, events: list[Any]) -> None:
        state = ResultState.CONFIRMED
        await handlers.apply_result_states(uow, inbound.with_state(events, state), cache,
                                           state=state)

    async def on_qualifications(uow: UnitOfWork, events: list[Any]) -> None:
        await handlers.apply_qualifications(uow, inbound.qualification_changes(events), cache)

    return ServiceParts(
        tables=tables,
        register=register,
        streams=[messaging.LOTS_STREAM, messaging.RESULTS_STREAM, messaging.SUPPLIERS_STREAM],
        background=[feed.run, time_checks],
        on_messaging_ready=[feed.attach],
        on_stopping=[feed.close],
        subscriptions=[
            Subscription(stream=messaging.RESULTS_STREAM.name,
                         subject=messaging.RESULT_RECORDED,
                         durable="lots-result-recorded",
                         message_type=result_events.ResultRecorded, batch_handler=on_results),
            # QA's handling of out-of-specification results. Each subject has its own
            # consumer, so these may overtake a result's ResultRecorded (and each other):
            # the projection converges whatever the order.
            Subscription(stream=messaging.RESULTS_STREAM.name,
                         subject=messaging.RESULT_INVALIDATED,
                         durable="lots-result-invalidated",
                         message_type=result_events.ResultInvalidated,
                         batch_handler=on_invalidations),
            Subscription(stream=messaging.RESULTS_STREAM.name,
                         subject=messaging.RESULT_CONFIRMED,
                         durable="lots-result-confirmed",
                         message_type=result_events.ResultConfirmed,
                         batch_handler=on_confirmations),
            Subscription(stream=messaging.SUPPLIERS_STREAM.name,
                         subject=messaging.QUALIFICATION_CHANGED,
                         durable="lots-qualification-changed",
                         message_type=supplier_events.QualificationChanged,
                         batch_handler=on_qualifications),
        ],
    )


async def start(settings: ServiceSettings, *, clock: Clock | None = None) -> RunningService:
    return await start_service(settings, build, clock=clock, tables=tables)
