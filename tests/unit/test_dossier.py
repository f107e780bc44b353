"""The auditor's dossier from hand-built proto messages: CSV, JSON, HTML and checksums."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from lotgate.lots.v1 import lots_pb2 as lpb
from lotgate.signatures.v1 import signatures_pb2 as sigpb
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate_tools.dossier import (
    build_dossier,
    directory_name,
    write_csv,
    write_dossier,
    write_json,
)
from lotgate_tools.dossier_fetch import DossierFetchError, fetch_records
from lotgate_tools.dossier_model import Dossier
from lotgate_tools.dossier_render import render_html

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"
# A reason with every character CSV has to quote, and some that are not ASCII.
AWKWARD = 'OOS on lot 7, "growth" in 2/20 canisters;\nCAPA-12 opened — Müller'


def ts(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromJsonString(text)
    return stamp


EVIDENCE = spb.Evidence(audit_id="AUD-1", audit_date="2026-01-10",
                        quality_agreement_ref="QAG-7")
SUPPLIER = spb.Supplier(
    supplier_id="ACME-BIO", name=HOSTILE, created_at=ts("2026-01-02T08:00:00Z"),
    sites=[
        spb.Site(supplier_id="ACME-BIO", site_id="ZUG", name="Acme Zug", address="2 Lake Rd",
                 country="CH", created_at=ts("2026-01-03T08:00:00Z")),
        spb.Site(supplier_id="ACME-BIO", site_id="MAIN", name="Acme Basel & Co",
                 address="1 Industry Road", country="CH",
                 created_at=ts("2026-01-02T08:00:00Z")),
    ],
    qualifications=[
        spb.Qualification(supplier_id="ACME-BIO", site_id="MAIN", material_code="MEDIUM-X",
                          status=spb.QUALIFICATION_STATUS_SUSPENDED,
                          valid_until=ts("2027-12-31T00:00:00Z"), version=3, reason=AWKWARD,
                          changed_by="qa.bob", changed_at=ts("2026-03-01T09:30:00.250Z"),
                          evidence=EVIDENCE),
        # Still recorded QUALIFIED, but its valid_until is before NOW.
        spb.Qualification(supplier_id="ACME-BIO", site_id="MAIN", material_code="BUFFER-Y",
                          status=spb.QUALIFICATION_STATUS_QUALIFIED,
                          valid_until=ts("2026-06-30T00:00:00Z"), version=2,
                          reason="audit passed", changed_by="qa.jane",
                          changed_at=ts("2026-01-11T10:00:00Z"), evidence=EVIDENCE),
    ])
AUDITS = [
    spb.Audit(audit_id="AUD-1", supplier_id="ACME-BIO", site_id="MAIN",
              type=spb.AUDIT_TYPE_ON_SITE, audit_date="2026-01-10", auditor="auditor.kim",
              outcome=spb.AUDIT_OUTCOME_APPROVED_WITH_CONDITIONS, major_findings=1,
              minor_findings=3, next_audit_due="2028-01-10", summary="two-day GMP audit",
              recorded_by="qa.jane", recorded_at=ts("2026-01-10T17:00:00Z")),
]


def change(sequence: int, material: str, version: int, previous: int, new: int, by: str,
           reason: str, at: str) -> spb.QualificationChange:
    return spb.QualificationChange(
        supplier_id="ACME-BIO", site_id="MAIN", material_code=material, version=version,
        previous_status=previous, new_status=new, valid_until=ts("2027-12-31T00:00:00Z"),
        reason=reason, changed_by=by, changed_at=ts(at), event_id=f"EVT-{sequence}",
        evidence=EVIDENCE, sequence=sequence)


S = spb
HISTORY = [
    change(1, "MEDIUM-X", 1, S.QUALIFICATION_STATUS_UNSPECIFIED, S.QUALIFICATION_STATUS_PENDING,
           "qa.jane", "new supplier", "2026-01-04T09:00:00Z"),
    change(2, "BUFFER-Y", 1, S.QUALIFICATION_STATUS_UNSPECIFIED, S.QUALIFICATION_STATUS_PENDING,
           "qa.jane", "new supplier", "2026-01-04T09:05:00Z"),
    change(3, "MEDIUM-X", 2, S.QUALIFICATION_STATUS_PENDING, S.QUALIFICATION_STATUS_QUALIFIED,
           "qa.jane", "audit passed", "2026-01-11T10:00:00Z"),
    change(4, "BUFFER-Y", 2, S.QUALIFICATION_STATUS_PENDING, S.QUALIFICATION_STATUS_QUALIFIED,
           "qa.jane", "audit passed", "2026-01-11T10:00:00Z"),
    change(5, "MEDIUM-X", 3, S.QUALIFICATION_STATUS_QUALIFIED, S.QUALIFICATION_STATUS_SUSPENDED,
           "qa.bob", AWKWARD, "2026-03-01T09:30:00.250Z"),
]
# QA's qualification is signed (shared.esign); the dossier lists the signature.
HISTORY[2].signatures.append(sigpb.Signature(
    signature_id="SIG-1", signer="qa.jane", printed_name="Jane Doe",
    meaning=sigpb.MEANING_APPROVAL, signed_at=ts("2026-01-11T10:00:00Z"),
    content_hash="ab" * 32, record_type="qualification", record_id="ACME-BIO/MAIN/MEDIUM-X/2",
    verified=True))
LOTS = [
    lpb.Lot(lot_id="LOT-0002", material_code="MEDIUM-X", supplier_id="ACME-BIO",
            supplier_site_id="MAIN", supplier_lot_number="A-7782",
            quantity=lpb.Quantity(value=12.5, unit="kg"), container_count=2,
            expiry_date="2028-06-30", received_at=ts("2026-03-02T07:00:00Z"),
            release_status=lpb.ReleaseStatus(
                lot_id="LOT-0002", status=lpb.LOT_STATUS_QUARANTINE, version=2,
                decided_at=ts("2026-03-02T07:00:01Z"),
                unmet=[lpb.UnmetCondition(code="SUPPLIER_SUSPENDED",
                                          message="the supplier is suspended",
                                          rule="ICH Q7 7.12"),
                       lpb.UnmetCondition(code="STERILITY_MISSING", message="no result",
                                          rule="21 CFR 211.84(d)(6)")])),
    lpb.Lot(lot_id="LOT-0001", material_code="MEDIUM-X", supplier_id="ACME-BIO",
            supplier_site_id="MAIN", supplier_lot_number="A-7781",
            quantity=lpb.Quantity(value=25.0, unit="kg"), container_count=4,
            expiry_date="2028-06-30", received_at=ts("2026-02-01T07:00:00Z"),
            release_status=lpb.ReleaseStatus(lot_id="LOT-0001", status=lpb.LOT_STATUS_RELEASED,
                                              version=4, decided_at=ts("2026-02-03T11:00:00Z"))),
]
REVIEWS = [
    lpb.LotReview(review_id="LOT-0001/3", lot_id="LOT-0001", supplier_id="ACME-BIO",
                  supplier_site_id="MAIN", material_code="MEDIUM-X",
                  qualification_status="SUSPENDED", qualification_version=3, reason=AWKWARD,
                  opened_at=ts("2026-03-01T09:30:01Z"), state=lpb.REVIEW_STATE_OPEN),
]


def dossier(*, shuffle: int | None = None, generated_at: datetime = NOW,
            **changes: object) -> Dossier:
    parts: dict[str, object] = {"audits": AUDITS, "history": HISTORY, "lots": LOTS,
                                "reviews": REVIEWS}
    parts.update(changes)
    supplier = SUPPLIER
    if shuffle is not None:  # the same records, in another order
        rng = random.Random(shuffle)
        parts = {k: rng.sample(list(v), len(v)) for k, v in parts.items()}  # type: ignore[arg-type]
        supplier = spb.Supplier()
        supplier.CopyFrom(SUPPLIER)
        sites, quals = list(supplier.sites), list(supplier.qualifications)
        del supplier.sites[:], supplier.qualifications[:]
        supplier.sites.extend(rng.sample(sites, len(sites)))
        supplier.qualifications.extend(rng.sample(quals, len(quals)))
    return build_dossier(supplier, generated_at=generated_at, generated_by="jane@qa-laptop",
                         generator="lotgate 0.1.0 (lotgate dossier)",
                         sources={"suppliers": "127.0.0.1:50061", "lots": "127.0.0.1:50062"},
                         **parts)  # type: ignore[arg-type]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def header_of(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f))


# ---------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------

@pytest.mark.req("AUD-003")
def test_there_is_one_csv_per_table_each_with_a_header_row(tmp_path: Path) -> None:
    written = write_csv(dossier(), tmp_path)

    assert sorted(p.name for p in written) == sorted(
        ["sites.csv", "qualifications.csv", "history.csv", "audits.csv", "lots.csv",
         "reviews.csv", "audit_trail.csv", "signatures.csv"])
    assert header_of(tmp_path / "history.csv") == [
        "supplier_id", "sequence", "site_id", "material_code", "version", "previous_status",
        "new_status", "valid_until", "reason", "changed_by", "changed_at", "event_id",
        "evidence_audit_id", "evidence_audit_date", "evidence_quality_agreement_ref",
        "evidence_questionnaire_ref"]
    assert header_of(tmp_path / "lots.csv")[:3] == ["supplier_id", "lot_id", "supplier_site_id"]
    assert [len(read_csv(p)) for p in sorted(written)] == [0, 1, 5, 2, 2, 1, 1, 2]
    assert read_csv(tmp_path / "signatures.csv") == [{
        "supplier_id": "ACME-BIO", "record_type": "qualification",
        "record_id": "ACME-BIO/MAIN/MEDIUM-X/2", "signer": "qa.jane",
        "printed_name": "Jane Doe", "meaning": "APPROVAL",
        "signed_at": "2026-01-11T10:00:00Z", "content_hash": "ab" * 32, "verified": "True",
        "signature_id": "SIG-1"}]


@pytest.mark.req("AUD-003")
def test_history_csv_lists_every_change_in_the_order_recorded(tmp_path: Path) -> None:
    write_csv(dossier(), tmp_path)

    rows = read_csv(tmp_path / "history.csv")

    assert [(r["sequence"], r["material_code"], r["previous_status"], r["new_status"])
            for r in rows] == [
        ("1", "MEDIUM-X", "", "PENDING"), ("2", "BUFFER-Y", "", "PENDING"),
        ("3", "MEDIUM-X", "PENDING", "QUALIFIED"), ("4", "BUFFER-Y", "PENDING", "QUALIFIED"),
        ("5", "MEDIUM-X", "QUALIFIED", "SUSPENDED")]
    suspension = rows[-1]
    assert suspension["changed_by"] == "qa.bob"
    assert suspension["reason"] == AWKWARD  # commas, quotes, a newline and ü survive
    assert suspension["changed_at"] == "2026-03-01T09:30:00.250Z"
    assert suspension["valid_until"] == "2027-12-31T00:00:00Z"
    assert suspension["evidence_audit_id"] == "AUD-1"
    assert suspension["evidence_quality_agreement_ref"] == "QAG-7"


@pytest.mark.req("AUD-003")
def test_csv_cells_use_short_enum_names_and_iso_utc_times(tmp_path: Path) -> None:
    write_csv(dossier(), tmp_path)

    audit = read_csv(tmp_path / "audits.csv")[0]
    lots = read_csv(tmp_path / "lots.csv")
    review = read_csv(tmp_path / "reviews.csv")[0]
    sites = read_csv(tmp_path / "sites.csv")

    assert (audit["type"], audit["outcome"]) == ("ON_SITE", "APPROVED_WITH_CONDITIONS")
    assert (audit["major_findings"], audit["minor_findings"]) == ("1", "3")
    assert audit["recorded_at"] == "2026-01-10T17:00:00Z"
    assert [lot["lot_id"] for lot in lots] == ["LOT-0001", "LOT-0002"]
    assert lots[0]["release_status"] == "RELEASED" and lots[0]["unmet"] == ""
    assert lots[1]["release_status"] == "QUARANTINE"
    assert lots[1]["unmet"] == "SUPPLIER_SUSPENDED; STERILITY_MISSING"
    assert (lots[1]["quantity_value"], lots[1]["quantity_unit"]) == ("12.5", "kg")
    assert (review["state"], review["closed_at"], review["reason"]) == ("OPEN", "", AWKWARD)
    assert [s["site_id"] for s in sites] == ["MAIN", "ZUG"]


@pytest.mark.req("AUD-003")
def test_a_qualified_record_past_its_valid_until_is_expired_at_generation(
        tmp_path: Path) -> None:
    write_csv(dossier(), tmp_path)

    rows = {r["material_code"]: r for r in read_csv(tmp_path / "qualifications.csv")}

    assert (rows["BUFFER-Y"]["status"], rows["BUFFER-Y"]["status_in_force"]) == (
        "QUALIFIED", "EXPIRED")
    assert (rows["MEDIUM-X"]["status"], rows["MEDIUM-X"]["status_in_force"]) == (
        "SUSPENDED", "SUSPENDED")
    early = dossier(generated_at=datetime(2026, 6, 29, tzinfo=UTC))
    assert {q.material_code: q.status_in_force for q in early.qualifications}["BUFFER-Y"] == (
        "QUALIFIED")


# ---------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------

@pytest.mark.req("AUD-003")
def test_json_holds_every_section_with_plain_values(tmp_path: Path) -> None:
    path = write_json(dossier(), tmp_path / "dossier.json")

    document = json.loads(path.read_text(encoding="utf-8"))

    assert document["format"] == "lotgate-dossier/1"
    assert document["generation"] == {
        "generated_at": "2026-11-25T12:00:00Z", "generated_by": "jane@qa-laptop",
        "generator": "lotgate 0.1.0 (lotgate dossier)",
        "sources": {"lots": "127.0.0.1:50062", "suppliers": "127.0.0.1:50061"}}
    assert document["supplier"] == {"supplier_id": "ACME-BIO", "name": HOSTILE,
                                    "created_at": "2026-01-02T08:00:00Z"}
    assert [c["new_status"] for c in document["history"]] == [
        "PENDING", "PENDING", "QUALIFIED", "QUALIFIED", "SUSPENDED"]
    assert document["history"][0]["previous_status"] is None
    assert document["history"][-1]["reason"] == AWKWARD
    assert document["audits"][0]["audit_id"] == "AUD-1"
    assert document["lots"][1]["unmet"][0] == {
        "code": "SUPPLIER_SUSPENDED", "message": "the supplier is suspended",
        "rule": "ICH Q7 7.12"}
    assert document["lots"][0]["quantity_value"] == 25.0
    assert document["reviews"][0]["closed_at"] is None
    assert [s["site_id"] for s in document["sites"]] == ["MAIN", "ZUG"]


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------

@pytest.mark.req("AUD-003")
def test_html_escapes_hostile_text_and_loads_nothing_from_elsewhere() -> None:
    hostile_everywhere = dossier(reviews=[lpb.LotReview(
        review_id="R-1", lot_id='"><img src=x onerror=alert(2)>', supplier_id="ACME-BIO",
        qualification_status="<b>SUSPENDED</b>", conclusion="</td></tr></table><script>x")])

    page = render_html(hostile_everywhere)

    lowered = page.lower()
    assert "<script" not in lowered
    assert "<img" not in lowered and "<b>" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    for external in ("http://", "https://", "<link", "src=", "@import", "url("):
        assert external not in lowered.replace("src=x", ""), external
    assert "default-src 'none'" in page  # and a browser would refuse scripts anyway


@pytest.mark.req("AUD-003")
def test_html_names_the_supplier_and_who_generated_it_when() -> None:
    page = render_html(dossier())

    head = page[:page.index("</header>")]
    assert "ACME-BIO" in head
    assert "2026-11-25T12:00:00Z" in head
    assert "jane@qa-laptop" in head
    assert "lotgate 0.1.0 (lotgate dossier)" in head
    assert "Acme Basel &amp; Co" in page


@pytest.mark.req("AUD-003")
def test_html_summary_gives_each_site_and_material_its_status_and_valid_until() -> None:
    page = render_html(dossier())

    summary = page[page.index('<section id="summary">'):page.index('<section id="sites">')]
    rows = summary.split("<tr>")[2:]
    assert len(rows) == 2
    buffer, medium = rows  # ordered by site, then material
    assert "BUFFER-Y" in buffer and "EXPIRED" in buffer and "2026-06-30T00:00:00Z" in buffer
    assert "MEDIUM-X" in medium and "SUSPENDED" in medium and "2027-12-31T00:00:00Z" in medium
    for section in ("sites", "qualifications", "history", "audits", "lots", "reviews",
                    "signatures"):
        assert f'<section id="{section}">' in page
    assert "SUPPLIER_SUSPENDED (ICH Q7 7.12)" in page


@pytest.mark.req("AUD-003")
def test_html_says_so_when_a_section_is_empty() -> None:
    page = render_html(dossier(lots=[], reviews=[]))

    assert "No lot received from this supplier." in page
    assert "No lot review." in page


# ---------------------------------------------------------------------------------------
# Determinism and checksums
# ---------------------------------------------------------------------------------------

def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.req("AUD-003")
def test_the_same_records_in_any_order_give_byte_identical_files(tmp_path: Path) -> None:
    write_dossier(dossier(), tmp_path / "a")
    write_dossier(dossier(shuffle=1), tmp_path / "b")
    write_dossier(dossier(shuffle=2), tmp_path / "c")

    a, b, c = (files_of(tmp_path / name) for name in "abc")
    assert a == b == c
    assert sorted(a) == ["SHA256SUMS", "audit_trail.csv", "audits.csv", "dossier.html",
                         "dossier.json",
                         "history.csv", "lots.csv", "qualifications.csv", "reviews.csv",
                         "signatures.csv", "sites.csv"]


@pytest.mark.req("AUD-003")
def test_only_the_generation_time_differs_between_two_exports(tmp_path: Path) -> None:
    write_dossier(dossier(), tmp_path / "a")
    write_dossier(dossier(generated_at=datetime(2026, 11, 26, tzinfo=UTC)), tmp_path / "b")

    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert {name for name in a if a[name] != b[name]} == {
        "dossier.html", "dossier.json", "SHA256SUMS"}
    assert a["dossier.json"].replace(b"2026-11-25T12:00:00Z", b"2026-11-26T00:00:00Z") == (
        b["dossier.json"])


@pytest.mark.req("AUD-003")
def test_sha256sums_lists_every_other_file_with_its_digest(tmp_path: Path) -> None:
    written = write_dossier(dossier(), tmp_path)

    assert written[-1] == tmp_path / "SHA256SUMS"
    listed = {}
    for line in (tmp_path / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    assert list(listed) == sorted(listed)
    assert set(listed) == {p.name for p in written[:-1]}
    for name, digest in listed.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    (tmp_path / "history.csv").write_text("edited", encoding="utf-8")
    assert hashlib.sha256(b"edited").hexdigest() != listed["history.csv"]


@pytest.mark.req("AUD-003")
def test_writing_again_replaces_the_earlier_export(tmp_path: Path) -> None:
    write_dossier(dossier(), tmp_path)
    (tmp_path / "history.csv").write_text("edited", encoding="utf-8")

    write_dossier(dossier(), tmp_path)

    sums = (tmp_path / "SHA256SUMS").read_text(encoding="ascii")
    history = hashlib.sha256((tmp_path / "history.csv").read_bytes()).hexdigest()
    assert f"{history}  history.csv\n" in sums
    assert b"edited" not in (tmp_path / "history.csv").read_bytes()


# ---------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------

@pytest.mark.req("AUD-003")
def test_a_lot_of_another_supplier_is_refused_not_exported() -> None:
    other = lpb.Lot(lot_id="LOT-9", supplier_id="OTHER-CO")

    with pytest.raises(ValueError, match="OTHER-CO"):
        dossier(lots=[*LOTS, other])


@pytest.mark.req("AUD-003")
def test_a_change_returned_twice_with_other_content_is_refused() -> None:
    tampered = spb.QualificationChange()
    tampered.CopyFrom(HISTORY[2])
    tampered.changed_by = "someone.else"

    assert len(dossier(history=[*HISTORY, HISTORY[2]]).history) == 5  # an exact copy: once
    with pytest.raises(ValueError, match="twice"):
        dossier(history=[*HISTORY, tampered])


@pytest.mark.req("AUD-003")
def test_a_naive_generation_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        dossier(generated_at=datetime(2026, 11, 25, 12, 0))


@pytest.mark.req("AUD-003")
@pytest.mark.parametrize(("supplier_id", "directory"), [
    ("ACME-BIO", "ACME-BIO"), ("ACME/BIO", "ACME%2FBIO"), ("a:b.c_d", "a%3Ab.c_d")])
def test_a_supplier_id_becomes_one_path_component(supplier_id: str, directory: str) -> None:
    assert directory_name(supplier_id) == directory


@pytest.mark.req("AUD-003")
@pytest.mark.parametrize("supplier_id", ["", ".", ".."])
def test_a_supplier_id_that_names_no_directory_is_refused(supplier_id: str) -> None:
    with pytest.raises(ValueError):
        directory_name(supplier_id)


# ---------------------------------------------------------------------------------------
# The fetcher, on stand-in stubs
# ---------------------------------------------------------------------------------------

class Paged:
    """A paginated RPC: serves `items` `size` at a time and records each request."""

    def __init__(self, items: list[object], field: str, reply_type: type, size: int = 2):
        self.items, self.field, self.reply_type, self.size = items, field, reply_type, size
        self.requests: list[object] = []

    async def __call__(self, request: object, timeout: float | None = None) -> object:
        self.requests.append(request)
        start = int(request.page_token or 0)  # type: ignore[attr-defined]
        end = start + self.size
        token = str(end) if end < len(self.items) else ""
        return self.reply_type(**{self.field: self.items[start:end]}, next_page_token=token)


class Suppliers:
    def __init__(self) -> None:
        self.ListQualificationHistory = Paged(
            HISTORY, "changes", spb.ListQualificationHistoryResponse)

    async def GetSupplier(self, request: spb.GetSupplierRequest, timeout: float | None = None
                          ) -> spb.GetSupplierResponse:
        if request.supplier_id != "ACME-BIO":
            raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details="no such supplier")
        return spb.GetSupplierResponse(supplier=SUPPLIER)

    async def ListAudits(self, request: spb.ListAuditsRequest, timeout: float | None = None
                         ) -> spb.ListAuditsResponse:
        return spb.ListAuditsResponse(audits=AUDITS)


class Lots:
    def __init__(self) -> None:
        self.ListLots = Paged(LOTS, "lots", lpb.ListLotsResponse, size=1)
        self.ListLotReviews = Paged(REVIEWS, "reviews", lpb.ListLotReviewsResponse)


@pytest.mark.req("AUD-003")
async def test_the_fetcher_follows_every_page_keeping_the_supplier_filter() -> None:
    suppliers, lots = Suppliers(), Lots()

    records = await fetch_records(suppliers, lots, "ACME-BIO")  # type: ignore[arg-type]

    assert list(records.history) == HISTORY
    assert list(records.lots) == LOTS
    history_requests = suppliers.ListQualificationHistory.requests
    assert [r.page_token for r in history_requests] == ["", "2", "4"]
    assert {(r.supplier_id, r.page_size) for r in history_requests} == {("ACME-BIO", 1000)}
    assert {(r.supplier_id, r.page_size) for r in lots.ListLots.requests} == {("ACME-BIO", 1000)}
    assert lots.ListLotReviews.requests[0].supplier_id == "ACME-BIO"


@pytest.mark.req("AUD-003")
async def test_the_fetcher_reports_an_unknown_supplier_in_one_line_with_exit_code_1() -> None:
    with pytest.raises(DossierFetchError) as raised:
        await fetch_records(Suppliers(), Lots(), "NOBODY",  # type: ignore[arg-type]
                            addresses={"suppliers": "127.0.0.1:50061"})

    assert raised.value.exit_code == 1
    assert str(raised.value) == "supplier 'NOBODY' not found in the suppliers service at " \
                                "127.0.0.1:50061"


@pytest.mark.req("AUD-003")
async def test_the_fetcher_reports_an_unreachable_service_with_exit_code_2() -> None:
    lots = Lots()

    async def down(request: object, timeout: float | None = None) -> object:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), details="failed to connect\nrefused")

    lots.ListLots = down  # type: ignore[assignment]
    with pytest.raises(DossierFetchError) as raised:
        await fetch_records(Suppliers(), lots, "ACME-BIO",  # type: ignore[arg-type]
                            addresses={"lots": "127.0.0.1:50062"})

    assert raised.value.exit_code == 2
    assert "\n" not in str(raised.value)
    assert "lots service at 127.0.0.1:50062" in str(raised.value)


@pytest.mark.req("AUD-003")
def test_csv_text_is_utf8_with_rfc4180_line_ends(tmp_path: Path) -> None:
    write_csv(dossier(), tmp_path)

    raw = (tmp_path / "reviews.csv").read_bytes()

    assert raw.startswith(b"supplier_id,review_id,")
    assert b"\r\n" in raw and "Müller".encode() in raw
    assert list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))[1][7] == AWKWARD
