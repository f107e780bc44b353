"""Reads what a supplier's dossier needs from the suppliers and lots services.

The I/O half of `lotgate dossier`; `shared/dossier.py` is the pure half. Every failure
becomes a `DossierFetchError` with a one-line message and the command's exit code:
1 when a service answered with an error (an unknown supplier is NOT_FOUND), 2 when a
service could not be reached or did not answer in time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc
from lotgate.suppliers.v1 import suppliers_pb2, suppliers_pb2_grpc
from shared.tokens import TokenSource, channel

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
                        addresses: dict[str, str] | None = None) -> DossierRecords:
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
    return DossierRecords(supplier=reply.supplier, audits=list(audits.audits),
                          history=history, lots=lot_list, reviews=reviews)


async def fetch_from(addresses: dict[str, str], supplier_id: str,
                     tokens: TokenSource | None = None) -> DossierRecords:
    """Connect to `addresses["suppliers"]` and `addresses["lots"]` and fetch the records;
    `tokens` authenticates the calls."""
    async with channel(addresses["suppliers"], tokens) as to_suppliers, \
            channel(addresses["lots"], tokens) as to_lots:
        return await fetch_records(suppliers_pb2_grpc.SupplierServiceStub(to_suppliers),
                                   lots_pb2_grpc.LotServiceStub(to_lots), supplier_id,
                                   addresses=addresses)
