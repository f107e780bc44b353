"""`python -m tests.bench.history` (part of `make bench`): the auditor queries on 100,000
qualification history rows.

The history is written straight into the suppliers service's database (it would take
hours through the API), with the shape a real one has: 400 suppliers with 2 sites and
10 materials each, 10 changes per qualification, and one large supplier with 20,000
changes. The queries then go over gRPC to the suppliers service running as its own
process, one call at a time.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import func, insert, select

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from lotgate_tools.client import Lotgate
from lotgate_tools.stack import SERVICES, Stack, free_port
from services.suppliers.tables import qualification_history, qualifications, sites, suppliers
from shared import migrations
from shared.db import make_engine
from shared.protoconv import to_timestamp
from tests.bench.load import percentile, progress
from tests.bench.report import Row, render
from tests.support.databases import Databases

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "bench-results" / "history.md"

SMALL_SUPPLIERS = 400
SITES = ("MAIN", "SECOND")
MATERIALS = [f"MAT-{i:02d}" for i in range(10)]
CHANGES = 10
BIG_MATERIALS = [f"BIG-{i:03d}" for i in range(100)]
BIG_CHANGES = 100
START = datetime(2021, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=5 * 365)
CALLS = 200
# Unmeasured calls first: a fresh process prepares its statements and fills its caches.
WARMUP = 20
# A single answer an auditor waits for; a 1,000-row page; an approved supplier list that
# names hundreds of sites.
TARGET_P99_MS = 20.0
PAGE_P99_MS = 50.0
LIST_P99_MS = 100.0
# A supplier's status sequence: opened, approved, then suspended and reinstated in turn.
STATUSES = ["PENDING", "QUALIFIED"] + ["SUSPENDED", "QUALIFIED"] * 60


def _changes(supplier_id: str, site_id: str, material: str, count: int,
             rng: random.Random) -> list[dict[str, object]]:
    rows = []
    at = START + timedelta(seconds=rng.uniform(0, 86400 * 30))
    step = SPAN / (count + 1)
    previous = None
    for version in range(1, count + 1):
        status = STATUSES[version - 1]
        at += step * rng.uniform(0.5, 1.5)
        rows.append({
            "supplier_id": supplier_id, "site_id": site_id, "material_code": material,
            "version": version, "previous_status": previous, "new_status": status,
            "valid_until": at + timedelta(days=730) if status == "QUALIFIED" else None,
            "reason": "periodic review", "changed_by": "qa.bench", "changed_at": at,
            "event_id": f"{supplier_id}-{site_id}-{material}-{version}",
            "audit_id": f"AUD-{supplier_id}-{site_id}" if status == "QUALIFIED" else None,
            "audit_date": None, "quality_agreement_ref": None, "questionnaire_ref": None,
        })
        previous = status
    return rows


async def _fill(database_url: str) -> tuple[int, float]:
    """Write the history; (rows, seconds)."""
    engine = make_engine(database_url, pool_size=2, statement_timeout_s=600)
    started = time.perf_counter()
    rng = random.Random(7)
    try:
        await migrations.upgrade(engine, "suppliers")
        keys = [(f"SUP-{i:04d}", site, material, CHANGES)
                for i in range(SMALL_SUPPLIERS) for site in SITES for material in MATERIALS]
        keys += [("SUP-BIG", site, material, BIG_CHANGES)
                 for site in SITES for material in BIG_MATERIALS]
        supplier_ids = sorted({k[0] for k in keys})
        async with engine.begin() as conn:
            await conn.execute(insert(suppliers), [
                {"supplier_id": s, "name": f"Supplier {s}", "created_by": "qa.bench",
                 "created_at": START} for s in supplier_ids])
            await conn.execute(insert(sites), [
                {"supplier_id": s, "site_id": site, "name": f"{s} {site}", "address": "Road 1",
                 "country": "CH", "created_by": "qa.bench", "created_at": START}
                for s in supplier_ids for site in SITES])
        batch: list[dict[str, object]] = []
        current: list[dict[str, object]] = []
        total = 0
        for supplier_id, site, material, count in keys:
            rows = _changes(supplier_id, site, material, count, rng)
            batch.extend(rows)
            last = rows[-1]
            current.append({k: last[k] for k in (
                "supplier_id", "site_id", "material_code", "version", "valid_until", "reason",
                "changed_by", "changed_at", "audit_id")} | {"status": last["new_status"]})
            if len(batch) >= 5000:
                async with engine.begin() as conn:
                    await conn.execute(insert(qualification_history), batch)
                total += len(batch)
                batch = []
        async with engine.begin() as conn:
            if batch:
                await conn.execute(insert(qualification_history), batch)
                total += len(batch)
            await conn.execute(insert(qualifications), current)
            if engine.dialect.name == "postgresql":
                await conn.exec_driver_sql("ANALYZE")
            counted = (await conn.execute(
                select(func.count()).select_from(qualification_history))).scalar_one()
        assert counted == total
        return total, time.perf_counter() - started
    finally:
        await engine.dispose()


async def _time(calls: int, make_call, *, warmup: int = WARMUP) -> tuple[list[float], int]:
    """Latencies in ms of `calls` sequential calls after `warmup` unmeasured ones, and the
    items the last one returned."""
    for i in range(warmup):
        await make_call(i)
    samples = []
    returned = 0
    for i in range(calls):
        t0 = time.perf_counter()
        returned = await make_call(i)
        samples.append((time.perf_counter() - t0) * 1000)
    return sorted(samples), returned


def _row(number: str, name: str, samples: list[float], details: str,
         target_ms: float = TARGET_P99_MS) -> Row:
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    return Row(number, name, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
               f"p99 <= {target_ms:.0f} ms", p99 <= target_ms, details)


async def _measure(lg: Lotgate) -> list[Row]:
    rng = random.Random(11)
    s = lg.suppliers
    rows = []

    async def first_page(i: int) -> int:
        reply = await s.ListQualificationHistory(pb.ListQualificationHistoryRequest(
            supplier_id=f"SUP-{rng.randrange(SMALL_SUPPLIERS):04d}", page_size=100))
        return len(reply.changes)

    samples, n = await _time(CALLS, first_page)
    rows.append(_row("H1", "history of a supplier, first page", samples,
                     f"{n} of 200 changes per call; random supplier"))

    token = ""
    pages = 0

    async def big_pages(i: int) -> int:
        nonlocal token, pages
        reply = await s.ListQualificationHistory(pb.ListQualificationHistoryRequest(
            supplier_id="SUP-BIG", page_size=1000, page_token=token))
        token = reply.next_page_token
        pages += 1
        return len(reply.changes)

    samples, n = await _time(20, big_pages, warmup=0)
    rows.append(_row("H2", "history of the 20,000-change supplier, 1,000 per page",
                     samples, f"all {pages} pages, walked with page tokens",
                     PAGE_P99_MS))

    async def material_window(i: int) -> int:
        start = START + timedelta(days=rng.uniform(0, 5 * 365 - 90))
        reply = await s.ListQualificationHistory(pb.ListQualificationHistoryRequest(
            supplier_id="SUP-BIG", material_code=rng.choice(BIG_MATERIALS),
            changed_from=to_timestamp(start),
            changed_before=to_timestamp(start + timedelta(days=90)), page_size=100))
        return len(reply.changes)

    samples, n = await _time(CALLS, material_window)
    rows.append(_row("H3", "history filtered by material and a 90-day window", samples,
                     "large supplier; random material and window"))

    async def as_of(i: int) -> int:
        try:
            await s.GetQualification(pb.GetQualificationRequest(
                supplier_id=f"SUP-{rng.randrange(SMALL_SUPPLIERS):04d}",
                site_id=rng.choice(SITES), material_code=rng.choice(MATERIALS),
                as_of=to_timestamp(START + timedelta(days=rng.uniform(30, 5 * 365)))))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # not on record yet: an answer
                raise
        return 1

    samples, n = await _time(CALLS, as_of)
    rows.append(_row("H4", "status of a qualification as known on a past date", samples,
                     "random key and date"))

    sizes = []

    async def asl(i: int) -> int:
        reply = await s.ListApprovedSuppliers(pb.ListApprovedSuppliersRequest(
            material_code=rng.choice(MATERIALS),
            as_of=to_timestamp(START + timedelta(days=rng.uniform(200, 5 * 365)))))
        sizes.append(len(reply.suppliers))
        return len(reply.suppliers)

    samples, n = await _time(CALLS, asl)
    rows.append(_row("H5", "approved supplier list of a material on a past date", samples,
                     f"{min(sizes)}-{max(sizes)} approved sites of 800 per answer; "
                     "8,000 history rows per material", LIST_P99_MS))
    return rows


async def main_async() -> int:
    admin_url = os.environ.get("DATABASE_URL") or None
    workdir = Path(tempfile.mkdtemp(prefix="lotgate-bench-history-"))
    (workdir / "data").mkdir()
    databases = Databases(admin_url=admin_url, workdir=workdir / "data")
    stack = None
    try:
        urls = {name: await databases.create(f"benchh_{name}") for name in SERVICES}
        progress("writing 100,000 qualification history rows")
        total, seconds = await _fill(urls["suppliers"])
        progress(f"  {total} rows in {seconds:.0f} s")
        stack = Stack(workdir / "stack", database_urls=urls,
                      ports={name: free_port() for name in SERVICES}, log_level="warning")
        await stack.start()
        async with Lotgate.connect({n: stack.address(n) for n in SERVICES},
                                   stack.acting()) as lg:
            rows = await _measure(lg)
    finally:
        if stack is not None:
            await stack.stop()
        await databases.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    facts = [f"database: {'PostgreSQL' if admin_url else 'SQLite'}; {total:,} history rows "
             f"({SMALL_SUPPLIERS} suppliers x {len(SITES)} sites x {len(MATERIALS)} materials "
             f"x {CHANGES} changes, plus one supplier with "
             f"{BIG_CHANGES * len(BIG_MATERIALS) * len(SITES):,})",
             f"{CALLS} sequential calls per row over gRPC to the suppliers process, after "
             f"{WARMUP} unmeasured ones (H2: one call per page, none unmeasured)"]
    table = render("Lotgate benchmark: auditor queries", facts, rows, [])
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(table)
    print()
    print(table)
    return 0


def main() -> int:
    return asyncio.run(main_async())


if __name__ == "__main__":
    sys.exit(main())
