"""The gRPC entrypoint: proto requests in, commands to the handlers and reads to the
queries, proto responses out (with the signatures of the records they show)."""

from __future__ import annotations

import re
from typing import Any

import grpc

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as pb_grpc
from services.suppliers import handlers, queries
from services.suppliers.commands import AddSite, ChangeQualification, CreateSupplier, RecordAudit
from services.suppliers.convert import (
    AUDIT_OUTCOMES_FROM_PROTO,
    AUDIT_TYPES_FROM_PROTO,
    approved_to_proto,
    audit_to_proto,
    change_to_proto,
    evidence_from_proto,
    qualification_to_proto,
    signed_content,
    signed_record,
    site_to_proto,
    status_to_proto,
    supplier_to_proto,
)
from services.suppliers.domain.qualification import Action, Key
from shared import paging
from shared.errors import Violations
from shared.protoconv import fingerprint, from_timestamp, timestamp_is_valid
from shared.uow import UnitOfWorkFactory

_COUNTRY = re.compile(r"[A-Z]{2}")
_MAX_FINDINGS = 10_000


class SupplierApi(pb_grpc.SupplierServiceServicer):
    def __init__(self, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def CreateSupplier(self, request: pb.CreateSupplierRequest,
                             context: grpc.aio.ServicerContext) -> pb.CreateSupplierResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        v.text("name", request.name, max_length=200)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        supplier = await handlers.create_supplier(self._uow(), CreateSupplier(
            supplier_id=request.supplier_id, name=request.name.strip(),
            requested_by=request.requested_by))
        return pb.CreateSupplierResponse(supplier=supplier_to_proto(supplier))

    async def GetSupplier(self, request: pb.GetSupplierRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetSupplierResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        v.raise_if_any()
        supplier = await queries.get_supplier(self._uow(), supplier_id=request.supplier_id)
        return pb.GetSupplierResponse(supplier=supplier_to_proto(supplier))

    async def AddSite(self, request: pb.AddSiteRequest,
                      context: grpc.aio.ServicerContext) -> pb.AddSiteResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        v.code("site_id", request.site_id)
        v.text("name", request.name, max_length=200)
        v.text("address", request.address, max_length=500, prose=True)
        if not _COUNTRY.fullmatch(request.country):
            v.add("country", "must be an ISO 3166-1 alpha-2 code in capitals, like CH")
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        site = await handlers.add_site(self._uow(), AddSite(
            supplier_id=request.supplier_id, site_id=request.site_id,
            name=request.name.strip(), address=request.address.strip(),
            country=request.country, requested_by=request.requested_by))
        return pb.AddSiteResponse(site=site_to_proto(site))

    async def RecordAudit(self, request: pb.RecordAuditRequest,
                          context: grpc.aio.ServicerContext) -> pb.RecordAuditResponse:
        v = Violations()
        v.code("audit_id", request.audit_id)
        v.code("supplier_id", request.supplier_id)
        v.code("site_id", request.site_id)
        audit_type = AUDIT_TYPES_FROM_PROTO.get(request.type)
        if audit_type is None:
            v.add("type", "must be ON_SITE, REMOTE or QUESTIONNAIRE")
        outcome = AUDIT_OUTCOMES_FROM_PROTO.get(request.outcome)
        if outcome is None:
            v.add("outcome", "must be APPROVED, APPROVED_WITH_CONDITIONS or NOT_APPROVED")
        audit_date = v.day_between("audit_date", request.audit_date)
        next_due = v.day_between("next_audit_due", request.next_audit_due, required=False)
        v.text("auditor", request.auditor, max_length=200)
        for name in ("critical_findings", "major_findings", "minor_findings"):
            if not 0 <= getattr(request, name) <= _MAX_FINDINGS:
                v.add(name, f"must be between 0 and {_MAX_FINDINGS}")
        v.text("summary", request.summary, max_length=4000, required=False, prose=True)
        v.text("requested_by", request.requested_by, max_length=200)
        v.raise_if_any()
        assert audit_type and outcome and audit_date
        saved = await handlers.record_audit(self._uow(), RecordAudit(
            audit_id=request.audit_id, supplier_id=request.supplier_id,
            site_id=request.site_id, type=audit_type, audit_date=audit_date,
            auditor=request.auditor.strip(), outcome=outcome,
            critical_findings=request.critical_findings, major_findings=request.major_findings,
            minor_findings=request.minor_findings, next_audit_due=next_due,
            summary=request.summary.strip(), requested_by=request.requested_by,
            fingerprint=fingerprint(request)))
        return pb.RecordAuditResponse(audit=audit_to_proto(saved))

    async def ListAudits(self, request: pb.ListAuditsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListAuditsResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        if request.site_id:
            v.code("site_id", request.site_id)
        v.raise_if_any()
        found = await queries.list_audits(self._uow(), supplier_id=request.supplier_id,
                                          site_id=request.site_id)
        return pb.ListAuditsResponse(audits=[audit_to_proto(a) for a in found])

    async def OpenQualification(self, request: pb.OpenQualificationRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.OpenQualificationResponse:
        q = await self._change(request, Action.OPEN, Violations())
        return pb.OpenQualificationResponse(qualification=q)

    async def QualifySupplier(self, request: pb.QualifySupplierRequest,
                              context: grpc.aio.ServicerContext) -> pb.QualifySupplierResponse:
        v = Violations()
        if not request.HasField("valid_until"):
            v.add("valid_until", "is required: the date by which the site must be "
                                 "requalified")
        elif not timestamp_is_valid(request.valid_until):
            v.add("valid_until", "is not a valid timestamp")
        if not request.evidence.audit_id:
            v.add("evidence.audit_id", "is required: the audit that supports the approval")
        if not request.evidence.quality_agreement_ref.strip():
            v.add("evidence.quality_agreement_ref",
                  "is required: the quality agreement in force with the supplier")
        q = await self._change(request, Action.QUALIFY, v)
        return pb.QualifySupplierResponse(qualification=q)

    async def SuspendQualification(
            self, request: pb.SuspendQualificationRequest,
            context: grpc.aio.ServicerContext) -> pb.SuspendQualificationResponse:
        q = await self._change(request, Action.SUSPEND, Violations())
        return pb.SuspendQualificationResponse(qualification=q)

    async def DisqualifySupplier(
            self, request: pb.DisqualifySupplierRequest,
            context: grpc.aio.ServicerContext) -> pb.DisqualifySupplierResponse:
        q = await self._change(request, Action.DISQUALIFY, Violations())
        return pb.DisqualifySupplierResponse(qualification=q)

    async def GetQualification(self, request: pb.GetQualificationRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetQualificationResponse:
        v = Violations()
        key = _key(request, v)
        as_of = v.instant(request, "as_of")
        v.raise_if_any()
        q, in_force = await queries.get_qualification(self._uow(), key=key, as_of=as_of)
        shown = qualification_to_proto(q)
        await self._with_signatures([shown])
        return pb.GetQualificationResponse(qualification=shown,
                                           status_in_force=status_to_proto(in_force))

    async def ListQualificationHistory(
            self, request: pb.ListQualificationHistoryRequest,
            context: grpc.aio.ServicerContext) -> pb.ListQualificationHistoryResponse:
        v = Violations()
        v.code("supplier_id", request.supplier_id)
        if request.material_code:
            v.code("material_code", request.material_code)
        if request.site_id:
            v.code("site_id", request.site_id)
        changed_from = v.instant(request, "changed_from")
        changed_before = v.instant(request, "changed_before")
        if changed_from and changed_before and changed_before <= changed_from:
            v.add("changed_before", "must lie after changed_from")
        limit = paging.page_size(v, request.page_size)
        after = paging.decode_position(v, request.page_token)
        v.raise_if_any()
        found = await queries.history_page(
            self._uow(), supplier_id=request.supplier_id, material_code=request.material_code,
            site_id=request.site_id, changed_from=changed_from, changed_before=changed_before,
            after_id=after, limit=limit)
        token = paging.encode_position(found[-1].sequence) if len(found) == limit else ""
        changes = [change_to_proto(c) for c in found]
        await self._with_signatures(changes)
        return pb.ListQualificationHistoryResponse(changes=changes, next_page_token=token)

    async def ListApprovedSuppliers(
            self, request: pb.ListApprovedSuppliersRequest,
            context: grpc.aio.ServicerContext) -> pb.ListApprovedSuppliersResponse:
        v = Violations()
        v.code("material_code", request.material_code)
        as_of = v.instant(request, "as_of")
        v.raise_if_any()
        found = await queries.approved_suppliers(self._uow(), material_code=request.material_code,
                                                 as_of=as_of)
        return pb.ListApprovedSuppliersResponse(suppliers=[approved_to_proto(a) for a in found])

    async def _change(self, request: Any, action: Action, v: Violations) -> pb.Qualification:
        key = _key(request, v)
        v.text("reason", request.reason, max_length=2000, prose=True)
        v.text("requested_by", request.requested_by, max_length=200)
        if request.evidence.audit_id:
            v.code("evidence.audit_id", request.evidence.audit_id)
        for name in ("quality_agreement_ref", "questionnaire_ref"):
            v.text(f"evidence.{name}", getattr(request.evidence, name), max_length=200,
                   required=False)
        if request.HasField("expected_version") and request.expected_version < 0:
            v.add("expected_version", "must not be negative")
        v.raise_if_any()
        command = ChangeQualification(
            supplier_id=key[0], site_id=key[1], material_code=key[2], action=action,
            reason=request.reason.strip(), requested_by=request.requested_by,
            valid_until=(from_timestamp(request.valid_until)
                         if action is Action.QUALIFY else None),
            evidence=evidence_from_proto(request.evidence),
            expected_version=(request.expected_version
                              if request.HasField("expected_version") else None))
        q = qualification_to_proto(await handlers.change_qualification(self._uow(), command))
        await self._with_signatures([q])
        return q

    async def _with_signatures(
            self, shown: list[pb.Qualification] | list[pb.QualificationChange]) -> None:
        """Add to each qualification version its signatures, verified against it."""
        found = await queries.signatures_of(
            self._uow(), {signed_record(q): signed_content(q) for q in shown})
        for q in shown:
            q.signatures.extend(found[signed_record(q)])


def _key(request: Any, v: Violations) -> Key:
    v.code("supplier_id", request.supplier_id)
    v.code("site_id", request.site_id)
    v.code("material_code", request.material_code)
    return (request.supplier_id, request.site_id, request.material_code)

