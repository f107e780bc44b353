"""Wires the suppliers service: the only place that builds its parts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc

from lotgate.suppliers.v1 import suppliers_pb2, suppliers_pb2_grpc
from services.suppliers.api import SupplierApi
from services.suppliers.expiry import run_expiry
from services.suppliers.tables import tables
from shared import messaging
from shared.clock import Clock
from shared.config import ServiceSettings
from shared.runtime import Infrastructure, RunningService, ServiceParts, start_service


def build(infra: Infrastructure) -> ServiceParts:
    def register(server: grpc.aio.Server) -> list[str]:
        suppliers_pb2_grpc.add_SupplierServiceServicer_to_server(SupplierApi(infra.uow), server)
        return [suppliers_pb2.DESCRIPTOR.services_by_name["SupplierService"].full_name]

    async def expiry(stop: asyncio.Event) -> None:
        await run_expiry(infra.uow, stop, every_seconds=infra.settings.expiry_check_seconds,
                         warn_ahead=timedelta(days=infra.settings.expiry_warning_days))

    return ServiceParts(tables=tables, register=register, streams=[messaging.SUPPLIERS_STREAM],
                        background=[expiry])


async def start(settings: ServiceSettings, *, clock: Clock | None = None) -> RunningService:
    return await start_service(settings, build, clock=clock, tables=tables)
