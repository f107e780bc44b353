"""A supplier's qualification dossier for an auditor: plain records, CSV, JSON and HTML.

`build_dossier` turns what the services return (proto messages) into plain values;
`write_dossier` writes them as one CSV per table, one JSON document and one
self-contained HTML page, then `SHA256SUMS` with the digest of every file it wrote
(`sha256sum -c SHA256SUMS` checks them). Nothing here talks to a service
(`shared/dossier_fetch.py` does), reads a clock or the environment: the same records
and the same generation details give byte-identical files.

Conventions in every output: times are ISO 8601 in UTC (`2026-11-25T12:00:00Z`, with a
fraction only when there is one); enums are their short names (`QUALIFIED`, `ON_SITE`),
null / empty when unset; rows are in a stable order whatever order the services sent.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
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

FORMAT = "lotgate-dossier/1"
JSON_FILE = "dossier.json"
HTML_FILE = "dossier.html"
CHECKSUM_FILE = "SHA256SUMS"


# ---------------------------------------------------------------------------------------
# Plain records
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Generation:
    """When, by whom and with what the dossier was generated, and from which services."""

    generated_at: str
    generated_by: str
    generator: str
    sources: dict[str, str]


@dataclass(frozen=True)
class SupplierInfo:
    supplier_id: str
    name: str
    created_at: str | None


@dataclass(frozen=True)
class SiteRow:
    supplier_id: str
    site_id: str
    name: str
    address: str
    country: str
    created_at: str | None


@dataclass(frozen=True)
class QualificationRow:
    """The current qualification of one site for one material."""

    supplier_id: str
    site_id: str
    material_code: str
    status: str | None
    # What applied when the dossier was generated: EXPIRED when the record still says
    # QUALIFIED but valid_until had passed; otherwise the recorded status.
    status_in_force: str | None
    valid_until: str | None
    version: int
    reason: str
    changed_by: str
    changed_at: str | None
    evidence_audit_id: str
    evidence_audit_date: str
    evidence_quality_agreement_ref: str
    evidence_questionnaire_ref: str


@dataclass(frozen=True)
class HistoryRow:
    """One recorded change of a qualification."""

    supplier_id: str
    sequence: int
    site_id: str
    material_code: str
    version: int
    previous_status: str | None
    new_status: str | None
    valid_until: str | None
    reason: str
    changed_by: str
    changed_at: str | None
    event_id: str
    evidence_audit_id: str
    evidence_audit_date: str
    evidence_quality_agreement_ref: str
    evidence_questionnaire_ref: str


@dataclass(frozen=True)
class AuditRow:
    supplier_id: str
    audit_id: str
    site_id: str
    type: str | None
    audit_date: str
    auditor: str
    outcome: str | None
    critical_findings: int
    major_findings: int
    minor_findings: int
    next_audit_due: str
    summary: str
    recorded_by: str
    recorded_at: str | None


@dataclass(frozen=True)
class Condition:
    """One reason why a lot is not released."""

    code: str
    message: str
    rule: str


@dataclass(frozen=True)
class LotRow:
    supplier_id: str
    lot_id: str
    supplier_site_id: str
    material_code: str
    supplier_lot_number: str
    quantity_value: float | None
    quantity_unit: str
    container_count: int
    expiry_date: str
    received_at: str | None
    release_status: str | None
    release_status_version: int
    decided_at: str | None
    # In CSV: the codes, separated by "; ". In JSON: code, message and rule of each.
    unmet: tuple[Condition, ...]


@dataclass(frozen=True)
class ReviewRow:
    supplier_id: str
    review_id: str
    lot_id: str
    supplier_site_id: str
    material_code: str
    qualification_status: str
    qualification_version: int
    reason: str
    opened_at: str | None
    state: str | None
    conclusion: str
    closed_by: str
    closed_at: str | None


@dataclass(frozen=True)
class AuditTrailRow:
    """An entry of the suppliers service's audit trail about one of the supplier's
    records (the supplier, its sites, audits and qualifications)."""

    sequence: int
    recorded_at: str | None
    principal_subject: str
    principal_name: str
    record_type: str
    record_id: str
    action: str
    reason: str
    old_values: str
    new_values: str
    request_id: str
    entry_hash: str


@dataclass(frozen=True)
class SignatureRow:
    """An electronic signature on one of the supplier's records (a qualification change or
    a lot review), as the services showed it: verified when it fits the record."""

    supplier_id: str
    record_type: str
    record_id: str
    signer: str
    printed_name: str
    meaning: str | None
    signed_at: str | None
    content_hash: str
    verified: bool
    signature_id: str


@dataclass(frozen=True)
class Dossier:
    generation: Generation
    supplier: SupplierInfo
    sites: tuple[SiteRow, ...]
    qualifications: tuple[QualificationRow, ...]
    history: tuple[HistoryRow, ...]
    audits: tuple[AuditRow, ...]
    lots: tuple[LotRow, ...]
    reviews: tuple[ReviewRow, ...]
    audit_trail: tuple[AuditTrailRow, ...] = ()
    # What VerifyAuditTrail of the suppliers service said when the dossier was read.
    audit_trail_verification: str = ""
    signatures: tuple[SignatureRow, ...] = ()


# One CSV per table: file name, the Dossier attribute, the row type (its fields are the header).
CSV_TABLES: tuple[tuple[str, str, type], ...] = (
    ("sites.csv", "sites", SiteRow),
    ("qualifications.csv", "qualifications", QualificationRow),
    ("history.csv", "history", HistoryRow),
    ("audits.csv", "audits", AuditRow),
    ("lots.csv", "lots", LotRow),
    ("reviews.csv", "reviews", ReviewRow),
    ("audit_trail.csv", "audit_trail", AuditTrailRow),
    ("signatures.csv", "signatures", SignatureRow),
)


# ---------------------------------------------------------------------------------------
# From proto messages
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# JSON and CSV
# ---------------------------------------------------------------------------------------

def to_json(dossier: Dossier) -> str:
    document = {"format": FORMAT, **asdict(dossier)}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):  # a lot's unmet conditions
        return "; ".join(c.code for c in value)
    return str(value)


def to_csv(rows: Sequence[Any], row_type: type) -> str:
    """RFC 4180 CSV: a header row of the field names, then one row per record."""
    names = [f.name for f in fields(row_type)]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in names])
    return buffer.getvalue()


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


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------

_STYLE = """
:root { color-scheme: light; }
body { font: 10pt/1.35 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
       color: #111; margin: 1.5rem; }
h1 { font-size: 16pt; margin: 0 0 .4rem; }
h2 { font-size: 12.5pt; margin: 1.6rem 0 .3rem; border-bottom: 1px solid #999; }
p.count, p.note { color: #444; margin: .2rem 0 .5rem; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; margin: 0; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
table { border-collapse: collapse; width: 100%; margin: .3rem 0; }
th, td { border: 1px solid #888; padding: .15rem .35rem; text-align: left;
         vertical-align: top; overflow-wrap: anywhere; white-space: pre-line; }
th { background: #e8e8e8; }
td.num { text-align: right; }
.none { color: #777; }
.status { font-weight: 600; }
.QUALIFIED, .RELEASED, .APPROVED { color: #0a5d1a; }
.SUSPENDED, .EXPIRED, .PENDING, .QUARANTINE, .APPROVED_WITH_CONDITIONS, .OPEN { color: #8a4b00; }
.DISQUALIFIED, .REJECTED, .NOT_APPROVED { color: #a00000; }
footer { margin-top: 2rem; color: #444; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; font-size: 8.5pt; }
  thead { display: table-header-group; }
  tr, dl.meta { break-inside: avoid; }
  h2 { break-after: avoid; }
  .status { color: #000 !important; }
}
"""

# CSS classes only for values from this fixed set; anything else gets none.
_STATUS_CLASSES = {"QUALIFIED", "RELEASED", "APPROVED", "SUSPENDED", "EXPIRED", "PENDING",
                   "QUARANTINE", "APPROVED_WITH_CONDITIONS", "OPEN", "DISQUALIFIED",
                   "REJECTED", "NOT_APPROVED"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _td(value: Any, *, status: bool = False) -> str:
    if value is None or value == "":
        return '<td class="none">&mdash;</td>'
    if isinstance(value, int | float):
        return f'<td class="num">{_e(value)}</td>'
    if status:
        known = f" {value}" if value in _STATUS_CLASSES else ""
        return f'<td class="status{known}">{_e(value)}</td>'
    return f"<td>{_e(value)}</td>"


Column = tuple[str, Callable[[Any], Any], bool]  # header, value, rendered as a status


def _table(rows: Sequence[Any], columns: Sequence[Column], empty: str) -> str:
    if not rows:
        return f'<p class="none">{_e(empty)}</p>'
    head = "".join(f'<th scope="col">{_e(label)}</th>' for label, _, _ in columns)
    body = "".join(
        "<tr>" + "".join(_td(get(row), status=status) for _, get, status in columns) + "</tr>\n"
        for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _evidence_text(row: QualificationRow | HistoryRow) -> str:
    parts = [("audit", row.evidence_audit_id), ("audit date", row.evidence_audit_date),
             ("quality agreement", row.evidence_quality_agreement_ref),
             ("questionnaire", row.evidence_questionnaire_ref)]
    return "; ".join(f"{label} {value}" for label, value in parts if value)


def _unmet_text(lot: LotRow) -> str:
    return "; ".join(f"{c.code} ({c.rule})" if c.rule else c.code for c in lot.unmet)


def _section(anchor: str, title: str, count: str, content: str) -> str:
    return (f'<section id="{anchor}">\n<h2>{_e(title)}</h2>\n'
            f'<p class="count">{_e(count)}</p>\n{content}\n</section>\n')


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_html(dossier: Dossier) -> str:
    """One self-contained page: no scripts, no external assets, every value escaped."""
    g, s = dossier.generation, dossier.supplier
    site_names = {site.site_id: site.name for site in dossier.sites}
    title = f"Qualification dossier of supplier {s.supplier_id}"
    sources = "; ".join(f"{name} {address}" for name, address in g.sources.items())
    meta = [("Supplier", s.supplier_id), ("Supplier name", s.name),
            ("Registered", s.created_at), ("Generated at", g.generated_at),
            ("Generated by", g.generated_by), ("Generated with", g.generator),
            ("Read from", sources)]
    header = ("<header>\n"
              f"<h1>{_e(title)}: {_e(s.name)}</h1>\n<dl class=\"meta\">\n"
              + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v) if v else '&mdash;'}</dd>\n"
                        for k, v in meta)
              + "</dl>\n<p class=\"note\">Times are UTC (ISO 8601). The CSV and JSON files "
              "beside this page hold the same records. "
              f"{_e(CHECKSUM_FILE)} lists the SHA-256 of every file of this export; "
              f"<code>sha256sum -c {_e(CHECKSUM_FILE)}</code> checks them.</p>\n</header>\n")

    summary = _table(dossier.qualifications, [
        ("Site", lambda q: q.site_id, False),
        ("Site name", lambda q: site_names.get(q.site_id), False),
        ("Material", lambda q: q.material_code, False),
        ("Status at generation", lambda q: q.status_in_force, True),
        ("Valid until", lambda q: q.valid_until, False),
        ("Recorded status", lambda q: q.status, True),
        ("Version", lambda q: q.version, False),
        ("Last changed", lambda q: q.changed_at, False),
        ("By", lambda q: q.changed_by, False),
    ], "No qualification recorded for this supplier.")
    sites = _table(dossier.sites, [
        ("Site", lambda r: r.site_id, False), ("Name", lambda r: r.name, False),
        ("Address", lambda r: r.address, False), ("Country", lambda r: r.country, False),
        ("Registered", lambda r: r.created_at, False),
    ], "No site recorded.")
    current = _table(dossier.qualifications, [
        ("Site", lambda q: q.site_id, False), ("Material", lambda q: q.material_code, False),
        ("Status", lambda q: q.status, True), ("Valid until", lambda q: q.valid_until, False),
        ("Version", lambda q: q.version, False), ("Reason", lambda q: q.reason, False),
        ("Changed by", lambda q: q.changed_by, False),
        ("Changed at", lambda q: q.changed_at, False),
        ("Evidence", _evidence_text, False),
    ], "No qualification recorded.")
    history = _table(dossier.history, [
        ("#", lambda c: c.sequence, False), ("Changed at", lambda c: c.changed_at, False),
        ("Site", lambda c: c.site_id, False), ("Material", lambda c: c.material_code, False),
        ("Version", lambda c: c.version, False),
        ("From", lambda c: c.previous_status, True), ("To", lambda c: c.new_status, True),
        ("Valid until", lambda c: c.valid_until, False),
        ("By", lambda c: c.changed_by, False), ("Reason", lambda c: c.reason, False),
        ("Evidence", _evidence_text, False), ("Event", lambda c: c.event_id, False),
    ], "No change recorded.")
    audits = _table(dossier.audits, [
        ("Audit", lambda a: a.audit_id, False), ("Site", lambda a: a.site_id, False),
        ("Type", lambda a: a.type, False), ("Date", lambda a: a.audit_date, False),
        ("Auditor", lambda a: a.auditor, False), ("Outcome", lambda a: a.outcome, True),
        ("Critical", lambda a: a.critical_findings, False),
        ("Major", lambda a: a.major_findings, False),
        ("Minor", lambda a: a.minor_findings, False),
        ("Next audit due", lambda a: a.next_audit_due, False),
        ("Summary", lambda a: a.summary, False),
        ("Recorded by", lambda a: a.recorded_by, False),
        ("Recorded at", lambda a: a.recorded_at, False),
    ], "No audit recorded.")
    lots = _table(dossier.lots, [
        ("Lot", lambda r: r.lot_id, False), ("Site", lambda r: r.supplier_site_id, False),
        ("Material", lambda r: r.material_code, False),
        ("Supplier lot", lambda r: r.supplier_lot_number, False),
        ("Quantity", lambda r: (None if r.quantity_value is None
                                else f"{r.quantity_value:g} {r.quantity_unit}".strip()), False),
        ("Containers", lambda r: r.container_count, False),
        ("Expiry", lambda r: r.expiry_date, False),
        ("Received at", lambda r: r.received_at, False),
        ("Status", lambda r: r.release_status, True),
        ("Decided at", lambda r: r.decided_at, False),
        ("Unmet conditions", _unmet_text, False),
    ], "No lot received from this supplier.")
    reviews = _table(dossier.reviews, [
        ("Review", lambda r: r.review_id, False), ("Lot", lambda r: r.lot_id, False),
        ("Site", lambda r: r.supplier_site_id, False),
        ("Material", lambda r: r.material_code, False),
        ("Qualification became", lambda r: r.qualification_status, True),
        ("Version", lambda r: r.qualification_version, False),
        ("Reason", lambda r: r.reason, False), ("Opened at", lambda r: r.opened_at, False),
        ("State", lambda r: r.state, True), ("Conclusion", lambda r: r.conclusion, False),
        ("Closed by", lambda r: r.closed_by, False),
        ("Closed at", lambda r: r.closed_at, False),
    ], "No lot review.")
    signed = _table(dossier.signatures, [
        ("Record", lambda r: f"{r.record_type} {r.record_id}", False),
        ("Signed by", lambda r: f"{r.printed_name} ({r.signer})", False),
        ("Meaning", lambda r: r.meaning, False), ("Signed at", lambda r: r.signed_at, False),
        ("Verified", lambda r: "yes" if r.verified else "NO: does not fit the record", False),
        ("Content SHA-256", lambda r: r.content_hash, False),
    ], "No electronic signature.")

    trail = _table(dossier.audit_trail, [
        ("#", lambda t: t.sequence, False), ("Recorded at", lambda t: t.recorded_at, False),
        ("By", lambda t: t.principal_subject, False),
        ("Record", lambda t: f"{t.record_type} {t.record_id}", False),
        ("Action", lambda t: t.action, False), ("Reason", lambda t: t.reason, False),
        ("Old values", lambda t: t.old_values, False),
        ("New values", lambda t: t.new_values, False),
    ], "No audit trail entry.")
    d = dossier
    body = "".join([
        header,
        _section("summary", "1. Qualification status by site and material",
                 f"As applied at {g.generated_at}: a qualification whose valid-until date "
                 "had passed counts as EXPIRED.", summary),
        _section("sites", "2. Manufacturing sites", _plural(len(d.sites), "site"), sites),
        _section("qualifications", "3. Current qualifications and their evidence",
                 _plural(len(d.qualifications), "qualification"), current),
        _section("history", "4. Qualification history",
                 f"{_plural(len(d.history), 'change')}, in the order recorded.", history),
        _section("audits", "5. Audits", _plural(len(d.audits), "audit"), audits),
        _section("lots", "6. Lots received from the supplier", _plural(len(d.lots), "lot"),
                 lots),
        _section("reviews", "7. Lot reviews",
                 f"{_plural(len(d.reviews), 'review')} of released lots whose supplier "
                 "qualification was later withdrawn or lapsed.", reviews),
        _section("audit-trail", "8. Audit trail of the supplier's records",
                 f"{len(d.audit_trail)} {'entry' if len(d.audit_trail) == 1 else 'entries'} "
                 "of the suppliers service's "
                 "hash-chained trail. Verification when read: "
                 f"{d.audit_trail_verification or 'not asked'}.", trail),
        _section("signatures", "9. Electronic signatures",
                 f"{_plural(len(d.signatures), 'signature')} of QA's decisions on these "
                 "records (21 CFR 11.50): who signed, meaning, when, and whether the "
                 "signature still fits the record it signs.", signed),
        f"<footer>End of the dossier of supplier {_e(s.supplier_id)}, "
        f"generated at {_e(g.generated_at)} ({_e(FORMAT)}).</footer>\n",
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" "
            "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"{body}</body>\n</html>\n")
