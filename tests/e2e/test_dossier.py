"""`lotgate dossier` against the running system: what an auditor receives for a supplier."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import html
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate_tools.client import DEFAULT_SITE, Lotgate, identity, purity, sterility
from lotgate_tools.stack import Stack, free_port
from tests.support import auth
from tests.support.services import ref
from tests.support.waiting import eventually, until_lot

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)
SUSPENSION_REASON = 'supplier reported "growth" in media fill MF-12; CAPA-31 opened'


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


async def lotgate_cli(*args: str) -> Run:
    """Run the installed `lotgate` command, as an auditor's QA contact would."""
    script = Path(sys.executable).parent / "lotgate"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lotgate_tools.cli"]
    process = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def addresses(stack: Stack) -> list[str]:
    """The services' addresses, and an auditor's token for them."""
    return ["--suppliers", stack.address("suppliers"), "--lots", stack.address("lots"),
            "--token", auth.token("auditor", "auditor.test")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def release(lg: Lotgate, lot: str, material: str, supplier: str) -> None:
    await lg.receive(lot, material, supplier)
    await lg.post(identity(lot, "FTIR-1", ref("K")))
    await lg.post(purity(lot, "HPLC-1", ref("K"), 99.5))
    await lg.post(sterility(lot, "BACT-1", ref("K")))
    await until_lot(lg.lots, lot, pb.LOT_STATUS_RELEASED, [])


@pytest.mark.req("AUD-003")
async def test_the_dossier_shows_a_suspended_supplier_with_its_history_audit_and_lots(
        stack: Stack, lotgate: Lotgate, tmp_path: Path) -> None:
    material, supplier, other = ref("MAT"), ref("SUP"), ref("SUP")
    name = "Acme Biologicals & Söhne <GmbH>"
    await lotgate.specify(material)
    await lotgate.qualify(supplier, name, material, NEXT_YEAR, by="qa.jane")
    released, quarantined = ref("LOT"), ref("LOT")
    await release(lotgate, released, material, supplier)
    await lotgate.suppliers.SuspendQualification(spb.SuspendQualificationRequest(
        supplier_id=supplier, site_id=DEFAULT_SITE, material_code=material,
        reason=SUSPENSION_REASON, requested_by="qa.bob"))
    await lotgate.receive(quarantined, material, supplier)
    # Another supplier's lot, which must stay out of this dossier.
    await lotgate.qualify(other, "Nordic Chemicals AB", material, NEXT_YEAR)
    await lotgate.receive(ref("LOT"), material, other)
    # The lots service learns of the suspension from an event: the new lot waits on it,
    # and the lot released before it is put up for QA's review.
    await until_lot(lotgate.lots, quarantined, pb.LOT_STATUS_QUARANTINE, [
        "SUPPLIER_SUSPENDED", "IDENTITY_MISSING", "PURITY_MISSING", "STERILITY_MISSING"])
    await eventually(lambda: lotgate.lots.ListLotReviews(
        pb.ListLotReviewsRequest(supplier_id=supplier)), lambda r: len(r.reviews) == 1)

    run = await lotgate_cli("dossier", supplier, "--out", str(tmp_path), *addresses(stack))

    assert run.code == 0, run.stderr
    folder = tmp_path / supplier
    expected = ["dossier.html", "dossier.json", "sites.csv", "qualifications.csv",
                "history.csv", "audits.csv", "lots.csv", "reviews.csv", "audit_trail.csv",
                "signatures.csv",
                "SHA256SUMS"]
    assert run.stdout.splitlines() == [str(folder / name) for name in expected]
    assert names_in(folder) == sorted(expected)

    history = read_csv(folder / "history.csv")
    assert [(c["previous_status"], c["new_status"]) for c in history] == [
        ("", "PENDING"), ("PENDING", "QUALIFIED"), ("QUALIFIED", "SUSPENDED")]
    qualified, suspended = history[1], history[2]
    assert (qualified["changed_by"], qualified["evidence_audit_id"]) == (
        "qa.jane", f"AUD-{supplier}-{DEFAULT_SITE}-{NEXT_YEAR.date().isoformat()}")
    assert (suspended["changed_by"], suspended["reason"]) == ("qa.bob", SUSPENSION_REASON)
    assert {(c["site_id"], c["material_code"]) for c in history} == {(DEFAULT_SITE, material)}
    assert all(c["changed_at"].endswith("Z") for c in history)

    [current] = read_csv(folder / "qualifications.csv")
    assert (current["site_id"], current["status"], current["status_in_force"]) == (
        DEFAULT_SITE, "SUSPENDED", "SUSPENDED")
    [audit] = read_csv(folder / "audits.csv")
    assert (audit["audit_id"], audit["type"], audit["outcome"]) == (
        qualified["evidence_audit_id"], "ON_SITE", "APPROVED")
    [site] = read_csv(folder / "sites.csv")
    assert site["site_id"] == DEFAULT_SITE

    lots = {lot["lot_id"]: lot for lot in read_csv(folder / "lots.csv")}
    assert set(lots) == {released, quarantined}
    assert lots[released]["release_status"] == "RELEASED"
    assert lots[quarantined]["release_status"] == "QUARANTINE"
    assert "SUPPLIER_SUSPENDED" in lots[quarantined]["unmet"].split("; ")
    [review] = read_csv(folder / "reviews.csv")
    assert (review["lot_id"], review["qualification_status"], review["state"]) == (
        released, "SUSPENDED", "OPEN")

    trail = read_csv(folder / "audit_trail.csv")
    assert [(t["record_type"], t["action"]) for t in trail] == [
        ("supplier", "create"), ("site", "create"), ("audit", "record"),
        ("qualification", "set PENDING"), ("qualification", "set QUALIFIED"),
        ("qualification", "set SUSPENDED")]
    assert {t["record_id"] for t in trail} >= {supplier, f"{supplier}/{DEFAULT_SITE}"}
    assert (trail[-1]["principal_subject"], trail[-1]["reason"]) == ("qa.bob",
                                                                    SUSPENSION_REASON)
    assert json.loads(trail[-1]["old_values"])["status"] == "QUALIFIED"
    assert json.loads(trail[-1]["new_values"])["status"] == "SUSPENDED"
    # QA's qualification and suspension were signed; the dossier prints both signatures.
    signatures = read_csv(folder / "signatures.csv")
    assert [(s["signer"], s["meaning"], s["verified"]) for s in signatures] == [
        ("qa.jane", "APPROVAL", "True"), ("qa.bob", "RESPONSIBILITY", "True")]
    assert all(len(s["content_hash"]) == 64 for s in signatures)

    document = json.loads((folder / "dossier.json").read_text(encoding="utf-8"))
    assert document["audit_trail_verification"].startswith("verified, ")
    assert document["supplier"]["name"] == name
    assert document["history"][-1]["reason"] == SUSPENSION_REASON
    assert document["generation"]["sources"]["suppliers"] == stack.address("suppliers")

    page = (folder / "dossier.html").read_text(encoding="utf-8")
    assert "Acme Biologicals &amp; Söhne &lt;GmbH&gt;" in page
    assert supplier in page and released in page and html.escape(SUSPENSION_REASON) in page
    assert "<GmbH>" not in page

    for line in (folder / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        digest, file = line.split("  ")
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest


@pytest.mark.req("AUD-003")
async def test_an_unknown_supplier_is_one_clear_line_and_exit_code_1(
        stack: Stack, tmp_path: Path) -> None:
    run = await lotgate_cli("dossier", "NO-SUCH-SUPPLIER", "--out", str(tmp_path),
                            *addresses(stack))

    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "lotgate dossier: supplier 'NO-SUCH-SUPPLIER' not found in the suppliers service at "
        f"{stack.address('suppliers')}"]
    assert not (tmp_path / "NO-SUCH-SUPPLIER").exists()


@pytest.mark.req("AUD-003")
async def test_an_unreachable_service_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    nothing = f"127.0.0.1:{free_port()}"

    run = await lotgate_cli("dossier", "ACME-BIO", "--out", str(tmp_path),
                            "--suppliers", nothing, "--lots", nothing)

    assert run.code == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"lotgate dossier: cannot reach the suppliers service at {nothing}")
    assert "Traceback" not in run.stderr
    assert names_in(tmp_path) == []


async def test_the_audit_command_exports_a_records_trail_with_its_verification(
        stack: Stack, lotgate: Lotgate, tmp_path: Path) -> None:
    material, supplier, lot = ref("MAT"), ref("SUP"), ref("LOT")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme", material, NEXT_YEAR, by="qa.jane")
    await release(lotgate, lot, material, supplier)
    token = ["--token", auth.token("auditor", "auditor.test")]
    # The lots service's chain head, published now rather than on its next round, and
    # kept by the suppliers service.
    async with auth.channel(stack.address("lots"), "admin") as ch:
        head = await apb_grpc.AuditServiceStub(ch).PublishAuditAnchor(
            apb.PublishAuditAnchorRequest())
    async with auth.channel(stack.address("suppliers"), "auditor") as ch:
        async def kept() -> int:
            try:
                reply = await apb_grpc.AuditServiceStub(ch).GetAuditAnchor(
                    apb.GetAuditAnchorRequest(service="lots"))
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
                return 0
            return reply.anchor.sequence

        await eventually(kept, lambda sequence: sequence >= head.sequence)

    run = await lotgate_cli("audit", "--service", "lots", "--address", stack.address("lots"),
                            "--anchor-from", stack.address("suppliers"),
                            "--record-type", "lot", "--record-id", lot, "--format", "json",
                            *token)

    assert run.code == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["verification"]["ok"] is True
    assert document["verification"]["anchor_kept_by"] == "suppliers"
    assert int(document["verification"]["anchor_sequence"]) >= head.sequence
    entries = document["entries"]
    assert entries[0]["action"] == "receive" and entries[0]["old_values_json"] == ""
    assert json.loads(entries[-1]["new_values_json"])["status"] == "RELEASED"
    assert {e["record_id"] for e in entries} == {lot}
    assert "audit trail of lots: verified" in run.stderr

    out = tmp_path / "trail.csv"
    run = await lotgate_cli("audit", "--service", "suppliers", "--address",
                            stack.address("suppliers"), "--principal", "qa.jane",
                            "--anchor-from", stack.address("lots"),
                            "--since", "2020-01-01T00:00:00Z", "--format", "csv",
                            "--out", str(out), *token)

    assert run.code == 0, run.stderr
    rows = read_csv(out)
    assert rows and {r["principal_subject"] for r in rows} == {"qa.jane"}
    assert [int(r["sequence"]) for r in rows] == sorted(int(r["sequence"]) for r in rows)
