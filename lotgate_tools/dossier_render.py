"""A supplier's dossier as text: one JSON document, one CSV per table, one HTML page.

Pure functions of the plain records (lotgate_tools.dossier_model): the same dossier always
gives byte-identical text. Writing the files is lotgate_tools.dossier's job.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import Any

from lotgate_tools.dossier_model import (
    CHECKSUM_FILE,
    FORMAT,
    Dossier,
    HistoryRow,
    LotRow,
    QualificationRow,
)

# JSON and CSV


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


# HTML

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
