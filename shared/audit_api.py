"""The AuditService every service answers on its own port, for its own trail."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.audit.v1 import audit_pb2 as pb
from lotgate.audit.v1 import audit_pb2_grpc
from shared import audit, audit_anchor, audit_verify, paging
from shared.errors import FieldViolation, InvalidArgument, NotFound, Unavailable, Violations
from shared.metrics import audit_verified
from shared.protoconv import to_timestamp

_HASH = re.compile(r"[0-9a-f]{64}")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name

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


def verdict_to_proto(service: str,
                     verdict: audit_verify.Verdict) -> pb.VerifyAuditTrailResponse:
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
                 publish: AnchorPublisher | None = None) -> None:
        self._service = service
        self._engine = engine
        self._metadata = metadata
        self._publish = publish

    async def VerifyAuditTrail(self, request: pb.VerifyAuditTrailRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.VerifyAuditTrailResponse:
        v = Violations()
        anchor = None
        if request.anchor_sequence or request.anchor_hash:
            if request.anchor_sequence <= 0:
                v.add("anchor_sequence", "must be above 0 with an anchor_hash")
            if not _HASH.fullmatch(request.anchor_hash):
                v.add("anchor_hash", "must be 64 lowercase hexadecimal digits")
            v.text("anchor_kept_by", request.anchor_kept_by, max_length=64, required=False)
            anchor = (request.anchor_sequence, request.anchor_hash,
                      request.anchor_kept_by or "the caller")
        v.raise_if_any()
        async with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot: the chain and the rows as of one instant, so a change
                # committed during the walk is not mistaken for an edit.
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            verdict = await audit_verify.verify(conn, self._metadata, anchor=anchor)
        audit_verified(verdict.problem is None)
        return verdict_to_proto(self._service, verdict)

    async def ListAuditTrail(self, request: pb.ListAuditTrailRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListAuditTrailResponse:
        v = Violations()
        known = audit.record_types(self._metadata)
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
        filters = audit_verify.Filters(
            record_type=request.record_type, record_id=request.record_id,
            principal=request.principal, since=since, until=until)
        async with self._engine.connect() as conn:
            rows = await audit_verify.page(conn, self._metadata, filters, after=after,
                                           limit=limit)
        token = paging.encode_position(rows[-1].sequence) if len(rows) == limit else ""
        return pb.ListAuditTrailResponse(entries=[entry_to_proto(r) for r in rows],
                                         next_page_token=token)

    async def GetAuditAnchor(self, request: pb.GetAuditAnchorRequest,
                             context: grpc.aio.ServicerContext) -> pb.GetAuditAnchorResponse:
        kept = audit_anchor.KEEPS.get(self._service, ())
        if request.service not in kept:
            raise InvalidArgument([FieldViolation(
                "service", f"{self._service} keeps the anchors of "
                f"{', '.join(kept) if kept else 'no service'}")])
        async with self._engine.connect() as conn:
            row = await audit_anchor.latest(conn, self._metadata, request.service)
        if row is None:
            raise NotFound(f"{self._service} has received no anchor of {request.service} yet",
                           field="service")
        return pb.GetAuditAnchorResponse(
            anchor=pb.AuditAnchor(event_id=row.event_id, service=row.service,
                                  sequence=row.sequence, entry_hash=row.entry_hash,
                                  occurred_at=to_timestamp(row.occurred_at)),
            kept_by=self._service, received_at=to_timestamp(row.received_at))

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
