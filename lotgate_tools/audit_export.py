"""`lotgate audit`: an auditor's export of one service's audit trail with its verification.

Pages through ListAuditTrail with the filters given, asks VerifyAuditTrail, and writes
both as JSON (one document) or CSV (the entries; the verification goes to stderr and
into the exit code, so a script cannot miss a broken chain).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from lotgate.audit.v1 import audit_pb2, audit_pb2_grpc
from lotgate_tools.tokens import TokenSource, channel
from shared.protoconv import to_timestamp

PAGE_SIZE = 1000
CALL_TIMEOUT_S = 30.0
COLUMNS = ("sequence", "recorded_at", "principal_subject", "principal_name", "record_type",
           "record_id", "action", "reason", "old_values_json", "new_values_json",
           "request_id", "previous_hash", "entry_hash")


@dataclass
class Export:
    service: str
    entries: list[audit_pb2.AuditEntry]
    verification: audit_pb2.VerifyAuditTrailResponse


async def fetch(stub: audit_pb2_grpc.AuditServiceStub, *, record_type: str = "",
                record_id: str = "", principal: str = "", since: datetime | None = None,
                until: datetime | None = None,
                anchor: audit_pb2.GetAuditAnchorResponse | None = None
                ) -> tuple[list[audit_pb2.AuditEntry], audit_pb2.VerifyAuditTrailResponse]:
    """Every matching entry, page after page, then the verification of the whole chain
    (against `anchor`, the keeper's latest anchor of it, when given)."""
    request = audit_pb2.ListAuditTrailRequest(
        record_type=record_type, record_id=record_id, principal=principal,
        page_size=PAGE_SIZE)
    if since is not None:
        request.since.CopyFrom(to_timestamp(since))
    if until is not None:
        request.until.CopyFrom(to_timestamp(until))
    entries: list[audit_pb2.AuditEntry] = []
    while True:
        page = await stub.ListAuditTrail(request, timeout=CALL_TIMEOUT_S)
        entries.extend(page.entries)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    verify = audit_pb2.VerifyAuditTrailRequest()
    if anchor is not None:
        verify = audit_pb2.VerifyAuditTrailRequest(
            anchor_sequence=anchor.anchor.sequence, anchor_hash=anchor.anchor.entry_hash,
            anchor_kept_by=anchor.kept_by)
    verification = await stub.VerifyAuditTrail(verify, timeout=CALL_TIMEOUT_S)
    return entries, verification


async def anchor_from(address: str, service: str, tokens: TokenSource | None
                      ) -> audit_pb2.GetAuditAnchorResponse | None:
    """The latest anchor of `service`'s chain its keeper at `address` holds; None when it
    has received none yet."""
    async with channel(address, tokens) as ch:
        try:
            return await audit_pb2_grpc.AuditServiceStub(ch).GetAuditAnchor(
                audit_pb2.GetAuditAnchorRequest(service=service), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


async def fetch_from(address: str, service: str, tokens: TokenSource | None, *,
                     anchor_address: str = "", **filters: Any) -> Export:
    """The export; with `anchor_address` (the keeper of the service's anchors) the chain
    is verified against the latest anchor kept there."""
    anchor = await anchor_from(anchor_address, service, tokens) if anchor_address else None
    async with channel(address, tokens) as ch:
        entries, verification = await fetch(audit_pb2_grpc.AuditServiceStub(ch),
                                            anchor=anchor, **filters)
    return Export(service, entries, verification)


def _row(entry: audit_pb2.AuditEntry) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in COLUMNS}
    row["recorded_at"] = entry.recorded_at.ToJsonString()
    return row


def verification_dict(v: audit_pb2.VerifyAuditTrailResponse) -> dict[str, Any]:
    return MessageToDict(v, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def to_json(export: Export) -> str:
    document = {"format": "lotgate-audit-trail/1", "service": export.service,
                "verification": verification_dict(export.verification),
                "entries": [_row(e) for e in export.entries]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_csv(export: Export) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for entry in export.entries:
        row = _row(entry)
        writer.writerow([row[name] for name in COLUMNS])
    return buffer.getvalue()


def summary(export: Export) -> str:
    """One line on the verification, for people."""
    v = export.verification
    if v.ok:
        anchor = (f"; matches the anchor at entry {v.anchor_sequence} kept by "
                  f"{v.anchor_kept_by}" if v.anchor_sequence else "; no anchor kept yet")
        return (f"audit trail of {export.service}: verified, {v.entries_checked} entries, "
                f"{v.records_checked} records, head {v.head_sequence} "
                f"{v.head_hash[:16]}{anchor}")
    return (f"audit trail of {export.service}: NOT VERIFIED: "
            f"{audit_pb2.AuditProblem.Name(v.problem)}: {v.detail}")
