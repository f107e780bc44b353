"""The AuditService every service answers on its own port, for its own trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.audit.v1 import audit_pb2 as pb
from lotgate.audit.v1 import audit_pb2_grpc
from shared import audit, paging
from shared.errors import Unavailable, Violations
from shared.protoconv import to_timestamp

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name

# The latest anchor of this service's chain that another party keeps: (sequence, hash,
# who keeps it), or None when there is none yet.
AnchorSource = Callable[[], Awaitable[tuple[int, str, str] | None]]
# Publishes the chain head now; returns it.
AnchorPublisher = Callable[[], Awaitable[tuple[int, str]]]


def entry_to_proto(row: Any) -> pb.AuditEntry:
    return pb.AuditEntry(
        sequence=row.sequence, recorded_at=to_timestamp(row.recorded_at),
        principal_subject=row.principal_subject, principal_name=row.principal_name,
        record_type=row.record_type, record_id=row.record_id, action=row.action,
        reason=row.reason, old_values_json=row.old_values or "",
        new_values_json=row.new_values, request_id=row.request_id,
        previous_hash=row.previous_hash, entry_hash=row.entry_hash)


def verdict_to_proto(service: str, verdict: audit.Verdict) -> pb.VerifyAuditTrailResponse:
    return pb.VerifyAuditTrailResponse(
        ok=verdict.ok,
        problem=(pb.AuditProblem.Value(f"AUDIT_PROBLEM_{verdict.problem.value}")
                 if verdict.problem else pb.AUDIT_PROBLEM_UNSPECIFIED),
        sequence=verdict.sequence, record_type=verdict.record_type,
        record_id=verdict.record_id, detail=verdict.detail,
        entries_checked=verdict.entries_checked, records_checked=verdict.records_checked,
        head_sequence=verdict.head_sequence, head_hash=verdict.head_hash,
        anchor_sequence=verdict.anchor_sequence, anchor_kept_by=verdict.anchor_source,
        service=service)


class AuditApi(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, service: str, engine: AsyncEngine, metadata: MetaData, *,
                 anchor: AnchorSource | None = None,
                 publish: AnchorPublisher | None = None) -> None:
        self._service = service
        self._engine = engine
        self._metadata = metadata
        self._anchor = anchor
        self._publish = publish

    async def VerifyAuditTrail(self, request: pb.VerifyAuditTrailRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.VerifyAuditTrailResponse:
        anchor = await self._anchor() if self._anchor is not None else None
        async with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot: the chain and the rows as of one instant, so a change
                # committed during the walk is not mistaken for an edit.
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            verdict = await audit.verify(conn, self._metadata, anchor=anchor)
        return verdict_to_proto(self._service, verdict)

    async def ListAuditTrail(self, request: pb.ListAuditTrailRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListAuditTrailResponse:
        v = Violations()
        known = audit.audited(self._metadata)
        if request.record_type and request.record_type not in known:
            v.add("record_type", f"must be one of {', '.join(sorted(known))}")
        if request.record_id:
            if not request.record_type:
                v.add("record_id", "needs record_type")
            v.text("record_id", request.record_id, max_length=300)
        if request.principal:
            v.text("principal", request.principal, max_length=200)
        since = v.instant(request, "since")
        until = v.instant(request, "until")
        if since and until and until <= since:
            v.add("until", "must lie after since")
        limit = paging.page_size(v, request.page_size)
        after = paging.decode_position(v, request.page_token)
        v.raise_if_any()
        filters = audit.Filters(record_type=request.record_type, record_id=request.record_id,
                                principal=request.principal, since=since, until=until)
        async with self._engine.connect() as conn:
            rows = await audit.page(conn, self._metadata, filters, after=after, limit=limit)
        token = paging.encode_position(rows[-1].sequence) if len(rows) == limit else ""
        return pb.ListAuditTrailResponse(entries=[entry_to_proto(r) for r in rows],
                                         next_page_token=token)

    async def PublishAuditAnchor(self, request: pb.PublishAuditAnchorRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.PublishAuditAnchorResponse:
        if self._publish is None:
            raise Unavailable("this service does not publish anchors")
        sequence, entry_hash = await self._publish()
        return pb.PublishAuditAnchorResponse(sequence=sequence, entry_hash=entry_hash)


def add_to_server(server: grpc.aio.Server, api: AuditApi) -> list[str]:
    audit_pb2_grpc.add_AuditServiceServicer_to_server(api, server)
    return [SERVICE_NAME]
