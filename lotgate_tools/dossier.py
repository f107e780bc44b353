"""A supplier's qualification dossier for an auditor: plain records, CSV, JSON and HTML.

`build_dossier` turns what the services return (proto messages) into plain values
(lotgate_tools.dossier_model); `write_dossier` writes them (rendered by
lotgate_tools.dossier_render) as one CSV per table, one JSON document and one
self-contained HTML page, then `SHA256SUMS` with the digest of every file it wrote
(`sha256sum -c SHA256SUMS` checks them). Nothing here talks to a service
(`lotgate_tools/dossier_fetch.py` does), reads a clock or the environment: the same records
and the same generation details give byte-identical files.

Conventions in every output: times are ISO 8601 in UTC (`2026-11-25T12:00:00Z`, with a
fraction only when there is one); enums are their short names (`QUALIFIED`, `ON_SITE`),
null / empty when unset; rows are in a stable order whatever order the services sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from lotgate.audit.v1 import audit_pb2
from lotgate.lots.v1 import lots_pb2
from lotgate.signatures.v1 import signatures_pb2
from lotgate.suppliers.v1 import suppliers_pb2
from lotgate_tools.dossier_model import (
    CHECKSUM_FILE,
    CSV_TABLES,
    HTML_FILE,
    JSON_FILE,
    AuditRow,
    AuditTrailRow,
    Condition,
    Dossier,
    Generation,
    HistoryRow,
    LotRow,
    QualificationRow,
    ReviewRow,
    SignatureRow,
    SiteRow,
    SupplierInfo,
)
from lotgate_tools.dossier_render import render_html, to_csv, to_json

# From proto messages


def _time(message: Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToJsonString()


def _order(message: Message, field: str) -> tuple[int, int]:
    """A sort key that orders by a timestamp field, unset first."""
    if not message.HasField(field):
        return (-(2**63), 0)
    stamp: Timestamp = getattr(message, field)
    return (stamp.seconds, stamp.nanos)


def _enum(enum_type: Any, value: int) -> str | None:
    """QUALIFICATION_STATUS_QUALIFIED -> QUALIFIED; None for UNSPECIFIED."""
    if value == 0:
        return None
    prefix = enum_type.Name(0).removesuffix("UNSPECIFIED")
    try:
        return str(enum_type.Name(value)).removeprefix(prefix)
    except ValueError:  # a value newer than this code
        return f"UNKNOWN_{value}"


def _evidence(evidence: suppliers_pb2.Evidence) -> dict[str, str]:
    return {"evidence_audit_id": evidence.audit_id,
            "evidence_audit_date": evidence.audit_date,
            "evidence_quality_agreement_ref": evidence.quality_agreement_ref,
            "evidence_questionnaire_ref": evidence.questionnaire_ref}


M = TypeVar("M", bound=Message)


def _checked(items: Iterable[M], supplier_id: str, owner: Callable[[M], str],
             key: Callable[[M], Any], what: str) -> list[M]:
    """The items sorted by key; refuses another supplier's record and conflicting copies.

    A record read twice (pages that overlapped while the data changed) is kept once.
    """
    unique: dict[Any, M] = {}
    for item in items:
        if owner(item) != supplier_id:
            raise ValueError(f"{what} {key(item)!r} belongs to supplier {owner(item)!r}, "
                             f"not {supplier_id!r}")
        k = key(item)
        if k in unique and unique[k] != item:
            raise ValueError(f"{what} {k!r} was returned twice with different content")
        unique[k] = item
    return [unique[k] for k in sorted(unique)]


def _in_force(q: suppliers_pb2.Qualification, at: datetime) -> str | None:
    status = _enum(suppliers_pb2.QualificationStatus, q.status)
    if (status == "QUALIFIED" and q.HasField("valid_until")
            and q.valid_until.ToDatetime(tzinfo=UTC) <= at):
        return "EXPIRED"
    return status


def build_dossier(supplier: suppliers_pb2.Supplier, *,
                  audits: Iterable[suppliers_pb2.Audit],
                  history: Iterable[suppliers_pb2.QualificationChange],
                  lots: Iterable[lots_pb2.Lot],
                  reviews: Iterable[lots_pb2.LotReview],
                  audit_trail: Iterable[audit_pb2.AuditEntry] = (),
                  audit_trail_verification: str = "",
                  generated_at: datetime, generated_by: str, generator: str,
                  sources: Mapping[str, str] | None = None) -> Dossier:
    """The dossier of `supplier` from what the services returned, in any order.

    Raises ValueError when a record belongs to another supplier or was returned twice
    with different content: such an export would mislead its reader.
    """
    if generated_at.tzinfo is None:
        raise ValueError("generated_at must be timezone-aware")
    generated_at = generated_at.astimezone(UTC)
    stamp = Timestamp()
    stamp.FromDatetime(generated_at)
    sid = supplier.supplier_id

    sites = _checked(supplier.sites, sid, lambda s: s.supplier_id, lambda s: s.site_id, "site")
    qualifications = _checked(
        supplier.qualifications, sid, lambda q: q.supplier_id,
        lambda q: (q.site_id, q.material_code), "qualification")
    changes = _checked(
        history, sid, lambda c: c.supplier_id,
        lambda c: (c.sequence, _order(c, "changed_at"), c.site_id, c.material_code, c.version),
        "qualification change")
    audit_list = _checked(audits, sid, lambda a: a.supplier_id,
                          lambda a: (a.audit_date, a.audit_id), "audit")
    lot_list = _checked(lots, sid, lambda lot: lot.supplier_id, lambda lot: lot.lot_id, "lot")
    review_list = _checked(reviews, sid, lambda r: r.supplier_id,
                           lambda r: (_order(r, "opened_at"), r.review_id), "lot review")

    status = suppliers_pb2.QualificationStatus
    return Dossier(
        generation=Generation(
            generated_at=stamp.ToJsonString(), generated_by=generated_by, generator=generator,
            sources=dict(sorted((sources or {}).items()))),
        supplier=SupplierInfo(sid, supplier.name, _time(supplier, "created_at")),
        sites=tuple(SiteRow(s.supplier_id, s.site_id, s.name, s.address, s.country,
                            _time(s, "created_at")) for s in sites),
        qualifications=tuple(QualificationRow(
            supplier_id=q.supplier_id, site_id=q.site_id, material_code=q.material_code,
            status=_enum(status, q.status), status_in_force=_in_force(q, generated_at),
            valid_until=_time(q, "valid_until"), version=q.version, reason=q.reason,
            changed_by=q.changed_by, changed_at=_time(q, "changed_at"),
            **_evidence(q.evidence)) for q in qualifications),
        history=tuple(HistoryRow(
            supplier_id=c.supplier_id, sequence=c.sequence, site_id=c.site_id,
            material_code=c.material_code, version=c.version,
            previous_status=_enum(status, c.previous_status),
            new_status=_enum(status, c.new_status), valid_until=_time(c, "valid_until"),
            reason=c.reason, changed_by=c.changed_by, changed_at=_time(c, "changed_at"),
            event_id=c.event_id, **_evidence(c.evidence)) for c in changes),
        audits=tuple(AuditRow(
            supplier_id=a.supplier_id, audit_id=a.audit_id, site_id=a.site_id,
            type=_enum(suppliers_pb2.AuditType, a.type), audit_date=a.audit_date,
            auditor=a.auditor, outcome=_enum(suppliers_pb2.AuditOutcome, a.outcome),
            critical_findings=a.critical_findings, major_findings=a.major_findings,
            minor_findings=a.minor_findings, next_audit_due=a.next_audit_due,
            summary=a.summary, recorded_by=a.recorded_by,
            recorded_at=_time(a, "recorded_at")) for a in audit_list),
        lots=tuple(LotRow(
            supplier_id=lot.supplier_id, lot_id=lot.lot_id,
            supplier_site_id=lot.supplier_site_id, material_code=lot.material_code,
            supplier_lot_number=lot.supplier_lot_number,
            quantity_value=lot.quantity.value if lot.HasField("quantity") else None,
            quantity_unit=lot.quantity.unit, container_count=lot.container_count,
            expiry_date=lot.expiry_date, received_at=_time(lot, "received_at"),
            release_status=_enum(lots_pb2.LotStatus, lot.release_status.status),
            release_status_version=lot.release_status.version,
            decided_at=_time(lot.release_status, "decided_at"),
            unmet=tuple(Condition(u.code, u.message, u.rule)
                        for u in lot.release_status.unmet)) for lot in lot_list),
        reviews=tuple(ReviewRow(
            supplier_id=r.supplier_id, review_id=r.review_id, lot_id=r.lot_id,
            supplier_site_id=r.supplier_site_id, material_code=r.material_code,
            qualification_status=r.qualification_status,
            qualification_version=r.qualification_version, reason=r.reason,
            opened_at=_time(r, "opened_at"), state=_enum(lots_pb2.ReviewState, r.state),
            conclusion=r.conclusion, closed_by=r.closed_by,
            closed_at=_time(r, "closed_at")) for r in review_list),
        audit_trail=tuple(AuditTrailRow(
            sequence=e.sequence, recorded_at=_time(e, "recorded_at"),
            principal_subject=e.principal_subject, principal_name=e.principal_name,
            record_type=e.record_type, record_id=e.record_id, action=e.action,
            reason=e.reason, old_values=e.old_values_json, new_values=e.new_values_json,
            request_id=e.request_id, entry_hash=e.entry_hash)
            for e in sorted({e.sequence: e for e in audit_trail}.values(),
                            key=lambda e: e.sequence)),
        audit_trail_verification=audit_trail_verification,
        signatures=_signatures(sid, [*changes, *review_list]),
    )


def _signatures(supplier_id: str, records: Iterable[Any]) -> tuple[SignatureRow, ...]:
    """The signatures the records show, each once, in the order they were given."""
    found: dict[str, SignatureRow] = {}
    for record in records:
        for s in record.signatures:
            found.setdefault(s.signature_id, SignatureRow(
                supplier_id=supplier_id, record_type=s.record_type, record_id=s.record_id,
                signer=s.signer, printed_name=s.printed_name,
                meaning=_enum(signatures_pb2.Meaning, s.meaning),
                signed_at=_time(s, "signed_at"), content_hash=s.content_hash,
                verified=s.verified, signature_id=s.signature_id))
    return tuple(sorted(found.values(), key=lambda r: (r.signed_at or "", r.signature_id)))


def directory_name(supplier_id: str) -> str:
    """The supplier id as one safe path component: anything but letters, digits and
    `-_.~` is percent-encoded (`ACME/BIO` -> `ACME%2FBIO`), so ids never collide."""
    name = quote(supplier_id, safe="")
    if name in ("", ".", ".."):
        raise ValueError(f"{supplier_id!r} is not a supplier id")
    return name


# Files


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def write_json(dossier: Dossier, path: Path) -> Path:
    return _write(Path(path), to_json(dossier))


def write_csv(dossier: Dossier, directory: Path) -> list[Path]:
    directory = Path(directory)
    return [_write(directory / name, to_csv(getattr(dossier, attribute), row_type))
            for name, attribute, row_type in CSV_TABLES]


def write_html(dossier: Dossier, path: Path) -> Path:
    return _write(Path(path), render_html(dossier))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_checksums(directory: Path, files: Iterable[Path]) -> Path:
    """SHA256SUMS in the format of `sha256sum` (`<hex>  <name>`), sorted by name."""
    directory = Path(directory)
    lines = [f"{sha256_of(f)}  {Path(f).name}\n"
             for f in sorted(files, key=lambda f: Path(f).name)]
    return _write(directory / CHECKSUM_FILE, "".join(lines))


def write_dossier(dossier: Dossier, directory: Path) -> list[Path]:
    """Write every file of the dossier into `directory`, SHA256SUMS last; the paths.

    An earlier SHA256SUMS is removed first, so an export that was interrupted has none
    and cannot pass for a complete one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CHECKSUM_FILE).unlink(missing_ok=True)
    written = [write_html(dossier, directory / HTML_FILE),
               write_json(dossier, directory / JSON_FILE),
               *write_csv(dossier, directory)]
    return [*written, write_checksums(directory, written)]
