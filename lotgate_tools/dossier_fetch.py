"""Reads what a supplier's dossier needs from the suppliers and lots services.

The I/O half of `lotgate dossier`; `lotgate_tools/dossier.py` is the pure half. Every failure
becomes a `DossierFetchError` with a one-line message and the command's exit code:
1 when a service answered with an error (an unknown supplier is NOT_FOUND), 2 when a
service could not be reached or did not answer in time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from lotgate.audit.v1 import audit_pb2, audit_pb2_grpc
from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc
from lotgate.suppliers.v1 import suppliers_pb2, suppliers_pb2_grpc
from lotgate_tools.tokens import TokenSource, channel

PAGE_SIZE = 1000
CALL_TIMEOUT_S = 30.0

EXIT_FAILED = 1
EXIT_UNREACHABLE = 2

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class DossierFetchError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class DossierRecords:
    """What the services returned for one supplier, as proto messages."""

    supplier: suppliers_pb2.Supplier
    audits: list[suppliers_pb2.Audit] = field(default_factory=list)
    history: list[suppliers_pb2.QualificationChange] = field(default_factory=list)
    lots: list[lots_pb2.Lot] = field(default_factory=list)
    reviews: list[lots_pb2.LotReview] = field(default_factory=list)
    audit_trail: list[audit_pb2.AuditEntry] = field(default_factory=list)
    audit_trail_verification: str = ""


R = TypeVar("R")


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def _call(service: str, address: str, rpc: str, call: Callable[[], Awaitable[R]],
                *, supplier_id: str = "") -> R:
    where = f"the {service} service" + (f" at {address}" if address else "")
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        code, details = error.code(), _one_line(error.details() or "")
        if code in _UNREACHABLE:
            raise DossierFetchError(
                f"cannot reach {where} ({rpc}: {code.name}: {details})",
                EXIT_UNREACHABLE) from None
        if code == grpc.StatusCode.NOT_FOUND and rpc == "GetSupplier":
            raise DossierFetchError(f"supplier {supplier_id!r} not found in {where}",
                                    EXIT_FAILED) from None
        raise DossierFetchError(f"{where} refused {rpc}: {code.name}: {details}",
                                EXIT_FAILED) from None


async def _all_pages(service: str, address: str, rpc: str, method: Any, request: Any,
                     items: str) -> list[Any]:
    """Every item of a paginated list: follows next_page_token until it is empty."""
    collected: list[Any] = []
    seen: set[str] = set()
    while True:
        reply = await _call(service, address, rpc,
                            lambda r=request: method(r, timeout=CALL_TIMEOUT_S))
        collected.extend(getattr(reply, items))
        token = reply.next_page_token
        if not token:
            return collected
        if token in seen:
            raise DossierFetchError(f"the {service} service returned the page token of an "
                                    f"earlier page for {rpc}", EXIT_FAILED)
        seen.add(token)
        following = type(request)()
        following.CopyFrom(request)  # the same filters, the next page
        following.page_token = token
        request = following


async def fetch_records(suppliers: suppliers_pb2_grpc.SupplierServiceStub,
                        lots: lots_pb2_grpc.LotServiceStub, supplier_id: str, *,
                        addresses: dict[str, str] | None = None,
                        trail: audit_pb2_grpc.AuditServiceStub | None = None
                        ) -> DossierRecords:
    """The supplier, its audits, its full qualification history, its lots and reviews."""
    addresses = addresses or {}
    at_suppliers, at_lots = addresses.get("suppliers", ""), addresses.get("lots", "")
    reply = await _call("suppliers", at_suppliers, "GetSupplier", lambda: suppliers.GetSupplier(
        suppliers_pb2.GetSupplierRequest(supplier_id=supplier_id), timeout=CALL_TIMEOUT_S),
        supplier_id=supplier_id)
    audits = await _call("suppliers", at_suppliers, "ListAudits", lambda: suppliers.ListAudits(
        suppliers_pb2.ListAuditsRequest(supplier_id=supplier_id), timeout=CALL_TIMEOUT_S))
    history = await _all_pages(
        "suppliers", at_suppliers, "ListQualificationHistory",
        suppliers.ListQualificationHistory,
        suppliers_pb2.ListQualificationHistoryRequest(supplier_id=supplier_id,
                                                      page_size=PAGE_SIZE), "changes")
    lot_list = await _all_pages(
        "lots", at_lots, "ListLots", lots.ListLots,
        lots_pb2.ListLotsRequest(supplier_id=supplier_id, page_size=PAGE_SIZE), "lots")
    reviews = await _all_pages(
        "lots", at_lots, "ListLotReviews", lots.ListLotReviews,
        lots_pb2.ListLotReviewsRequest(supplier_id=supplier_id, page_size=PAGE_SIZE),
        "reviews")
    records = DossierRecords(supplier=reply.supplier, audits=list(audits.audits),
                             history=history, lots=lot_list, reviews=reviews)
    if trail is not None:
        await _fetch_trail(trail, records, at_suppliers)
    return records


async def _fetch_trail(trail: audit_pb2_grpc.AuditServiceStub, records: DossierRecords,
                       address: str) -> None:
    """The suppliers service's audit entries of the supplier's records, and what
    VerifyAuditTrail says of the whole chain."""
    s = records.supplier
    wanted = [("supplier", s.supplier_id),
              *(("site", f"{site.supplier_id}/{site.site_id}") for site in s.sites),
              *(("audit", a.audit_id) for a in records.audits),
              *{("qualification", f"{c.supplier_id}/{c.site_id}/{c.material_code}")
                for c in records.history}]
    for record_type, record_id in wanted:
        records.audit_trail += await _all_pages(
            "suppliers", address, "ListAuditTrail", trail.ListAuditTrail,
            audit_pb2.ListAuditTrailRequest(record_type=record_type, record_id=record_id,
                                            page_size=PAGE_SIZE), "entries")
    v = await _call("suppliers", address, "VerifyAuditTrail", lambda: trail.VerifyAuditTrail(
        audit_pb2.VerifyAuditTrailRequest(), timeout=CALL_TIMEOUT_S))
    records.audit_trail_verification = (
        f"verified, {v.entries_checked} entries, head {v.head_sequence} {v.head_hash}"
        if v.ok else f"NOT VERIFIED: {audit_pb2.AuditProblem.Name(v.problem)}: {v.detail}")


async def fetch_from(addresses: dict[str, str], supplier_id: str,
                     tokens: TokenSource | None = None) -> DossierRecords:
    """Connect to `addresses["suppliers"]` and `addresses["lots"]` and fetch the records;
    `tokens` authenticates the calls."""
    async with channel(addresses["suppliers"], tokens) as to_suppliers, \
            channel(addresses["lots"], tokens) as to_lots:
        return await fetch_records(suppliers_pb2_grpc.SupplierServiceStub(to_suppliers),
                                   lots_pb2_grpc.LotServiceStub(to_lots), supplier_id,
                                   addresses=addresses,
                                   trail=audit_pb2_grpc.AuditServiceStub(to_suppliers))
