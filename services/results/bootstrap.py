"""Wires the results service: the only place that builds its parts."""

from __future__ import annotations

import grpc

from lotgate.lots.v1 import events_pb2 as lots_events_pb2
from lotgate.results.v1 import results_pb2, results_pb2_grpc
from services.results import inbound
from services.results.api import ResultApi
from services.results.tables import tables
from shared import messaging
from shared.clock import Clock
from shared.config import ServiceSettings
from shared.inbox import Subscription
from shared.runtime import Infrastructure, RunningService, ServiceParts, start_service


def build(infra: Infrastructure) -> ServiceParts:
    def register(server: grpc.aio.Server) -> list[str]:
        results_pb2_grpc.add_ResultServiceServicer_to_server(ResultApi(
            infra.uow, group_commit=infra.settings.group_commit), server)
        return [results_pb2.DESCRIPTOR.services_by_name["ResultService"].full_name]

    lot_received = Subscription(
        stream=messaging.LOTS_STREAM.name, subject=messaging.LOT_RECEIVED,
        durable="results-lot-received", message_type=lots_events_pb2.LotReceived,
        handler=inbound.lot_received)
    return ServiceParts(tables=tables, register=register, subscriptions=[lot_received],
                        streams=[messaging.RESULTS_STREAM, messaging.LOTS_STREAM])


async def start(settings: ServiceSettings, *, clock: Clock | None = None) -> RunningService:
    return await start_service(settings, build, clock=clock, tables=tables)
