"""`python -m tests.bench.scale` (`make bench-scale`): the lots service's reads at 10,000
lots and at N lots (SCALE_LOTS, default 1,000,000), measured in one run, with the ratio.

PostgreSQL only (DATABASE_URL). For each size a fresh database is migrated and filled
with COPY (asyncpg's copy_records_to_table): the lots, their results and three decisions
per lot. The decisions are made by the domain's own path (lifecycle.decide_lots, the
same `transition` as the live service and its replay, stored with inputs_to_json, which
names the results a decision saw and reads their facts from lot_results) for a handful of
lot shapes, once per shape and supplier key with placeholder ids and dates, and then
copied for every lot with its own lot id, result ids, dates and expiry date, so that
ExplainDecision's replay agrees with every stored decision (checked on every call).

Then nats-server and the three services start on that database; the lots service is
restarted to time its start (process start to SERVING), and each call runs 200 times,
one at a time over gRPC, after 20 unmeasured ones: GetReleaseStatus of a random lot,
GetReleaseStatuses of 1,000 random distinct lots, ListLots of a 100-lot page at a random
place in the id order, ExplainDecision of a random lot's latest decision. Then a
warehouse-like read of up to 50,000 distinct lots (GetReleaseStatuses, 1,000 a call)
before the lots process's peak memory (VmHWM) is read, and the size on disk of its
tables (pg_total_relation_size) per lot, and the decisions' inputs per decision
(pg_column_size). Last, with the lots service idle, the statement the batch runs for the
lots not in memory (queries._STORED_BY_ARRAY, compiled as the service sends it) is timed
alone over asyncpg, 200 times after 20 with 1,000 random distinct lots, and one of them
explained with its buffers: what the database alone costs the batch at each size. The
table is printed and written to bench-results/scale.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate_tools.client import Lotgate
from lotgate_tools.stack import SERVICES, Stack, free_port
from services.lots import queries
from services.lots.convert import release_status
from services.lots.decision_record import (
    inputs_from_json,
    inputs_to_json,
    unmet_from_json,
    unmet_to_json,
)
from services.lots.domain.lifecycle import decide_lots
from services.lots.domain.lot import Lot
from services.lots.domain.replay import replay, replay_difference
from services.lots.domain.rule import (
    LotStatus,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Verdict,
)
from services.lots.records import result_from_row, tests_to_text
from shared import migrations
from shared.paging import encode_key
from tests.bench.load import machine_busy, percentile, progress, vm_hwm_mb
from tests.support.databases import Databases

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "bench-results" / "scale.md"

SMALL = 10_000
DEFAULT_LOTS = 1_000_000
CALLS = 200
WARMUP = 20
BATCH = 1000  # ids per GetReleaseStatuses: the API's most
PAGE = 100  # lots per ListLots page
WAREHOUSE_LOTS = 50_000  # distinct lots read before the peak memory is taken
TARGET_RATIO = 1.2  # the target: every call at N within 1.2x of its 10k figure
MEMORY_MB = 200.0
COPY_LOTS = 25_000  # lots per COPY round
DECISIONS_PER_LOT = 3
# The lots service's tables the loader fills; their size on disk is the one reported.
TABLES = ("lots", "lot_results", "decisions")

# -- the lots: shapes decided once by the domain, copied with their own ids and dates ---

# Placeholders in the decided templates, replaced per lot. The placeholder dates keep the
# order the real ones have (decision times before the expiry date and before the end of
# the qualification), so `decide` gives the same answer for the real values.
TEMPLATE_LOT = "LOT-TPL"
TEMPLATE_EXPIRY = date(2099, 12, 31)
TEMPLATE_TIMES = (datetime(2001, 1, 1, 8, tzinfo=UTC), datetime(2001, 1, 3, 8, tzinfo=UTC),
                  datetime(2001, 1, 10, 8, tzinfo=UTC))
# Days after receipt of the second and third decision.
DECISION_DAYS = (0, 2, 9)
QUALIFIED_UNTIL = datetime(2031, 1, 1, tzinfo=UTC)
# Received over two and a half years before the run's date; expiring four years after
# receipt, so that nothing expires while the benchmark runs.
FIRST_RECEIPT = datetime(2024, 1, 1, 6, tzinfo=UTC)
RECEIPT_SPAN = timedelta(days=900)
SHELF_LIFE = timedelta(days=4 * 365)
SUPPLIER_KEYS = tuple((f"SUP-{s:03d}", "MAIN", f"MAT-{m:02d}") for s in range(5) for m in range(4))
QA_RELEASED_MATERIAL = "MAT-03"  # released by QA: its complete lots stay RELEASABLE
RETEST_SPEC = 2  # specification version that also requires an assay

T = TestKind
PASS, FAIL = Verdict.PASS, Verdict.FAIL
STANDARD = (T.IDENTITY, T.PURITY, T.STERILITY)
WITH_ASSAY = (T.IDENTITY, T.PURITY, T.STERILITY, T.ASSAY)


@dataclass(frozen=True)
class Result:
    """A result of a shape: its number (its id is <lot id>-R<number>), test, verdict and
    the decision (1-3) at which it is known, and its QA state from some decision on."""

    number: int
    test: TestKind
    verdict: Verdict
    known_from: int
    spec_version: int = 1
    required: tuple[TestKind, ...] = STANDARD
    state: ResultState = ResultState.VALID
    state_from: int = 0
    state_reason: str = ""


# name -> (share of the lots in %, results). Three decisions each: on receipt, and two
# later batches of results (or QA's confirmation of a failure).
SHAPES: dict[str, tuple[int, tuple[Result, ...]]] = {
    "released": (70, (Result(1, T.IDENTITY, PASS, 2), Result(2, T.PURITY, PASS, 2),
                      Result(3, T.STERILITY, PASS, 3))),
    "released with assay": (10, (
        Result(1, T.IDENTITY, PASS, 2, RETEST_SPEC, WITH_ASSAY),
        Result(2, T.PURITY, PASS, 2, RETEST_SPEC, WITH_ASSAY),
        Result(3, T.ASSAY, PASS, 2, RETEST_SPEC, WITH_ASSAY),
        Result(4, T.STERILITY, PASS, 3, RETEST_SPEC, WITH_ASSAY))),
    "waiting for sterility": (8, (Result(1, T.IDENTITY, PASS, 2),
                                  Result(2, T.PURITY, PASS, 3))),
    "out of specification": (6, (Result(1, T.IDENTITY, PASS, 2), Result(2, T.PURITY, PASS, 2),
                                 Result(3, T.STERILITY, FAIL, 3))),
    "rejected": (6, (Result(1, T.IDENTITY, PASS, 2),
                     Result(2, T.PURITY, FAIL, 2, state=ResultState.CONFIRMED, state_from=3,
                            state_reason="OOS confirmed by the investigation"))),
}
assert sum(share for share, _ in SHAPES.values()) == 100

LOT_COLUMNS = ("lot_id", "material_code", "supplier_id", "supplier_site_id",
               "supplier_lot_number", "quantity_value", "quantity_unit", "container_count",
               "expiry_date", "received_at", "received_by", "fingerprint", "status",
               "status_version", "unmet", "decided_at", "retest_date", "qa_released",
               "qa_hold_reason", "qa_rejection_reason", "status_reply", "status_reply_version")
RESULT_COLUMNS = ("result_id", "lot_id", "material_code", "test", "verdict", "sequence",
                  "spec_version", "recorded_at", "lot_result_number", "state",
                  "state_reason", "retest_of", "required_tests")
DECISION_COLUMNS = ("lot_id", "version", "previous_status", "status", "unmet", "inputs",
                    "cause", "decided_at")


@dataclass(frozen=True)
class DecisionTemplate:
    version: int
    previous_status: str | None
    status: str
    unmet: str
    inputs: str
    cause: str


@dataclass(frozen=True)
class Template:
    """One shape decided for one supplier key, with placeholder ids and dates."""

    shape: str
    key: tuple[str, str, str]
    decisions: tuple[DecisionTemplate, ...]
    results: tuple[Result, ...]
    status: str
    unmet: str
    qa_released: bool


def lot_id(i: int) -> str:
    return f"LOT-{i:07d}"


def _facts(r: Result, decision: int) -> ResultFacts:
    state = r.state if r.state_from and decision >= r.state_from else ResultState.VALID
    reason = r.state_reason if state is not ResultState.VALID else ""
    return ResultFacts(f"{TEMPLATE_LOT}-R{r.number}", r.test, r.verdict, r.number,
                       r.spec_version, r.number, state=state, state_reason=reason,
                       required_tests=r.required)


def _cause(results: Sequence[Result], decision: int) -> str:
    if decision == 1:
        return "received by warehouse"
    new = [f"{TEMPLATE_LOT}-R{r.number}" for r in results if r.known_from == decision]
    if new:
        return f"results {', '.join(new)}"
    confirmed = [f"{TEMPLATE_LOT}-R{r.number}" for r in results if r.state_from == decision]
    return f"confirmed {', '.join(confirmed)}"


def decide_template(shape: str, key: tuple[str, str, str]) -> Template:
    """The three decisions of a lot of `shape` from supplier key `key`, as the live path
    makes and stores them (decide_lots, inputs_to_json, unmet_to_json)."""
    supplier, site, material = key
    _, results = SHAPES[shape]
    policy = (ReleasePolicy.QA_RELEASE if material == QA_RELEASED_MATERIAL
              else ReleasePolicy.AUTOMATIC)
    qualification = QualificationFacts("QUALIFIED", QUALIFIED_UNTIL, 1)
    lot = Lot(TEMPLATE_LOT, material, supplier, site, "S1", 25.0, "kg", 2, TEMPLATE_EXPIRY,
              None, TEMPLATE_TIMES[0], "warehouse", "0" * 64, LotStatus.QUARANTINE, 0, (),
              TEMPLATE_TIMES[0])
    decisions = []
    for number, now in enumerate(TEMPLATE_TIMES, start=1):
        known = [_facts(r, number) for r in results if r.known_from <= number]
        decided = decide_lots([lot], {key: qualification}, {TEMPLATE_LOT: known},
                              {material: policy}, now, first=number == 1)
        if len(decided) != 1:
            raise AssertionError(f"shape {shape!r}: decision {number} changes nothing")
        [d] = decided
        decisions.append(DecisionTemplate(
            d.version, d.previous_status.value if d.previous_status else None,
            d.step.status.value, unmet_to_json(d.step.unmet),
            inputs_to_json(d.inputs, d.step.rule), _cause(results, number)))
        lot = dataclasses.replace(lot, status=d.step.status, status_version=d.version,
                                  unmet=d.step.unmet, decided_at=now,
                                  qa_released=d.step.qa_released)
    return Template(shape, key, tuple(decisions), results, lot.status.value,
                    unmet_to_json(lot.unmet), lot.qa_released)


@dataclass
class Population:
    """Which template each lot takes: by its number, the same at every size."""

    templates: dict[tuple[str, tuple[str, str, str]], Template] = field(default_factory=dict)
    wheel: list[str] = field(default_factory=list)

    @classmethod
    def build(cls) -> Population:
        population = cls()
        for shape, (share, _) in SHAPES.items():
            population.wheel += [shape] * share
            for key in SUPPLIER_KEYS:
                population.templates[(shape, key)] = decide_template(shape, key)
        random.Random(18).shuffle(population.wheel)
        return population

    def template(self, i: int) -> Template:
        shape = self.wheel[(i * 37) % len(self.wheel)]
        return self.templates[(shape, SUPPLIER_KEYS[(i // 7) % len(SUPPLIER_KEYS)])]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


TEMPLATE_EXPIRY_TEXT = TEMPLATE_EXPIRY.isoformat()
TEMPLATE_TIME_TEXTS = tuple(_iso(t) for t in TEMPLATE_TIMES)


@dataclass
class Rows:
    lots: list[tuple[Any, ...]] = field(default_factory=list)
    results: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)


def make_rows(population: Population, first: int, count: int, total: int) -> Rows:
    """The rows of lots first .. first+count-1 of `total`."""
    rows = Rows()
    step = RECEIPT_SPAN / total
    for i in range(first, first + count):
        t = population.template(i)
        lid = lot_id(i)
        received = (FIRST_RECEIPT + step * i).replace(microsecond=0)
        expiry = (received + SHELF_LIFE).date()
        expiry_text = expiry.isoformat()
        times = [received + timedelta(days=days) for days in DECISION_DAYS]
        for d, now, template_now in zip(t.decisions, times, TEMPLATE_TIME_TEXTS, strict=True):
            rows.decisions.append((
                lid, d.version, d.previous_status, d.status,
                d.unmet.replace(TEMPLATE_LOT, lid),
                d.inputs.replace(TEMPLATE_LOT, lid).replace(template_now, _iso(now))
                .replace(TEMPLATE_EXPIRY_TEXT, expiry_text),
                d.cause.replace(TEMPLATE_LOT, lid), now))
        material = t.key[2]
        unmet = t.unmet.replace(TEMPLATE_LOT, lid)
        # The status as the service writes it with each decision (tables.lots.status_reply).
        reply = release_status(lid, LotStatus(t.status), len(t.decisions),
                               unmet_from_json(unmet), times[-1]).SerializeToString()
        for r in t.results:
            state = r.state.value if r.state_from else ResultState.VALID.value
            rows.results.append((
                f"{lid}-R{r.number}", lid, material, r.test.value, r.verdict.value, r.number,
                r.spec_version, times[r.known_from - 1] - timedelta(minutes=5), r.number, state,
                r.state_reason, None, tests_to_text(r.required)))
        rows.lots.append((
            lid, material, t.key[0], t.key[1], f"S{i}", 25.0, "kg", 2, expiry, received,
            "warehouse", f"{i:064x}", t.status, len(t.decisions), unmet, times[-1], None,
            t.qa_released, "", "", reply, len(t.decisions)))
    return rows


def check_replays(population: Population, total: int, sample: Sequence[int]) -> None:
    """Every decision of the sampled lots replays to what is stored (as ExplainDecision
    checks it), and each next decision's previous status is the one before."""
    for i in sample:
        rows = make_rows(population, i, 1, total)
        # The lot's results as lot_results holds them, which its decisions name.
        results = {r.result_id: r for r in (
            result_from_row(SimpleNamespace(**dict(zip(RESULT_COLUMNS, row, strict=True))))
            for row in rows.results)}
        previous = None
        for row in rows.decisions:
            lid, version, previous_status, status, unmet, inputs = row[:6]
            stored = inputs_from_json(lid, inputs, results)
            prior_status = LotStatus(previous[3]) if previous else None
            prior_unmet = unmet_from_json(previous[4]) if previous else ()
            replayed = replay(stored.inputs, prior_status, prior_unmet)
            difference = replay_difference(
                replayed, status=LotStatus(status), unmet=unmet_from_json(unmet),
                rule_status=stored.rule_status, required_tests=stored.required_tests,
                counted=stored.counted)
            if difference or previous_status != (previous[3] if previous else None):
                raise AssertionError(f"{lid} decision {version} does not replay: "
                                     f"{difference or 'previous status'}")
            previous = row


# -- loading ---------------------------------------------------------------------------

def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Loaded:
    lots: int
    results: int
    decisions: int
    copy_seconds: float
    vacuum_seconds: float
    bytes_by_table: dict[str, int]
    inputs_bytes: float  # the decisions' inputs, per decision (pg_column_size)

    @property
    def bytes_per_lot(self) -> float:
        return sum(self.bytes_by_table.values()) / self.lots


async def _reference_rows(conn: asyncpg.Connection) -> None:
    """The qualifications and the release policy the lots were decided with."""
    await conn.copy_records_to_table(
        "qualifications", columns=("supplier_id", "site_id", "material_code", "status",
                                   "valid_until", "version"),
        records=[(*key, "QUALIFIED", QUALIFIED_UNTIL, 1) for key in SUPPLIER_KEYS])
    values = (QA_RELEASED_MATERIAL, "QA_RELEASE", "released by QA", "qa.bench",
              FIRST_RECEIPT - timedelta(days=30), False)
    columns = ("material_code", "policy", "reason", "set_by", "set_at", "two_signatures")
    await conn.copy_records_to_table("release_policies", columns=columns, records=[values])
    await conn.copy_records_to_table("release_policy_history", columns=columns,
                                     records=[values])


async def load(url: str, population: Population, total: int) -> Loaded:
    """Migrate the lots database at `url` and fill it with `total` lots."""
    await migrations.migrate("lots", url)
    conns = [await asyncpg.connect(_dsn(url)) for _ in range(3)]
    counts = [0, 0, 0]
    started = time.perf_counter()
    try:
        await _reference_rows(conns[0])

        async def copy(rows: Rows) -> None:
            await asyncio.gather(*(
                conn.copy_records_to_table(table, columns=columns, records=records)
                for conn, table, columns, records in zip(conns, TABLES, (
                    LOT_COLUMNS, RESULT_COLUMNS, DECISION_COLUMNS), (
                    rows.lots, rows.results, rows.decisions), strict=True)))
            for index, records in enumerate((rows.lots, rows.results, rows.decisions)):
                counts[index] += len(records)

        pending: asyncio.Future[None] | None = None
        for first in range(0, total, COPY_LOTS):
            # The next rows are made while the previous ones are copied.
            rows = await asyncio.to_thread(make_rows, population, first,
                                           min(COPY_LOTS, total - first), total)
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(copy(rows))
            if first and first % (10 * COPY_LOTS) == 0:
                progress(f"  {first:,} lots in {time.perf_counter() - started:.0f} s")
        if pending is not None:
            await pending
        copied = time.perf_counter() - started
        # A database that has run for years has been vacuumed (visibility map, hint bits)
        # and analysed.
        started = time.perf_counter()
        await conns[0].execute(f"VACUUM (ANALYZE) {', '.join(TABLES)}")
        vacuumed = time.perf_counter() - started
        sizes = {table: await conns[0].fetchval("SELECT pg_total_relation_size($1)", table)
                 for table in TABLES}
        inputs_bytes = float(await conns[0].fetchval(
            "SELECT avg(pg_column_size(inputs)) FROM decisions"))
        stored = await conns[0].fetchval("SELECT count(*) FROM lots")
        if stored != total:
            raise AssertionError(f"{stored} lots stored of {total}")
    finally:
        for conn in conns:
            await conn.close()
    return Loaded(counts[0], counts[1], counts[2], copied, vacuumed, sizes, inputs_bytes)


# -- measuring -------------------------------------------------------------------------

@dataclass
class Timed:
    samples: list[float]  # ms, ascending

    @property
    def p50(self) -> float:
        return percentile(self.samples, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)


async def _time(make_call: Callable[[int], Awaitable[None]]) -> Timed:
    """CALLS sequential calls after WARMUP unmeasured ones, in ms."""
    for i in range(WARMUP):
        await make_call(i)
    samples = []
    for i in range(CALLS):
        t0 = time.perf_counter()
        await make_call(i)
        samples.append((time.perf_counter() - t0) * 1000)
    return Timed(sorted(samples))


# The statement GetReleaseStatuses runs for the lots not in memory, as the service's
# driver (SQLAlchemy's asyncpg dialect) sends it: one array parameter, the ids.
BATCH_STATEMENT = str(queries._STORED_BY_ARRAY.compile(dialect=PGDialect_asyncpg()))
DATABASE_NAME = (f"the database alone: the batch's statement, {BATCH:,} random ids, "
                 "p50 / p99 ms")


@dataclass
class DatabaseAlone:
    """BATCH_STATEMENT timed alone, and one call of it explained."""

    timed: Timed
    shared_hit: int  # blocks found in shared_buffers by the explained call
    shared_read: int  # blocks read from the OS (its page cache or the disk)
    execution_ms: float  # the explained call's execution time, as PostgreSQL gives it
    planning_ms: float  # its planning time (a custom plan: the ids are known)
    scan: str  # its plan's top node, e.g. "Index Scan"


async def time_statement(url: str, total: int) -> DatabaseAlone:
    """BATCH_STATEMENT over asyncpg on the lots database at `url`: WARMUP then CALLS
    calls of BATCH random distinct lots (the ids drawn before each call's clock starts),
    then one more explained with ANALYZE and BUFFERS."""
    rng = random.Random(total + 2)

    def ids() -> list[str]:
        return [lot_id(n) for n in rng.sample(range(total), BATCH)]

    batches = iter([ids() for _ in range(WARMUP + CALLS)])
    conn = await asyncpg.connect(_dsn(url))
    try:
        async def call(i: int) -> None:
            rows = await conn.fetch(BATCH_STATEMENT, next(batches))
            assert len(rows) == BATCH, len(rows)

        timed = await _time(call)
        explained = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {BATCH_STATEMENT}", ids())
    finally:
        await conn.close()
    [plan] = json.loads(explained) if isinstance(explained, str) else explained
    top = plan["Plan"]
    return DatabaseAlone(timed, top["Shared Hit Blocks"], top["Shared Read Blocks"],
                         plan["Execution Time"], plan["Planning Time"], top["Node Type"])


CALL_NAMES = ("`GetReleaseStatus`", f"`GetReleaseStatuses` of {BATCH:,} ids",
              f"`ListLots`, a deep page ({PAGE} lots)", "`ExplainDecision`")


@dataclass
class Measured:
    lots: int
    loaded: Loaded
    startup_s: float
    calls: dict[str, Timed]
    peak_mb: float
    warehouse_lots: int
    replay_disagreements: int
    explained: int
    seconds: float
    busy: float  # share of all cores busy just before the calls (1 s sample)
    database: DatabaseAlone


async def _measure_calls(lg: Lotgate, total: int) -> tuple[dict[str, Timed], int, int]:
    rng = random.Random(total)
    lots = lg.lots
    calls: dict[str, Timed] = {}
    disagreements = explained = 0

    async def status(i: int) -> None:
        reply = await lots.GetReleaseStatus(pb.GetReleaseStatusRequest(
            lot_id=lot_id(rng.randrange(total))))
        assert reply.release_status.status != pb.LOT_STATUS_UNSPECIFIED

    calls[CALL_NAMES[0]] = await _time(status)

    async def statuses(i: int) -> None:
        ids = [lot_id(n) for n in rng.sample(range(total), BATCH)]
        reply = await lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(lot_ids=ids))
        assert len(reply.statuses) == BATCH, len(reply.statuses)

    calls[CALL_NAMES[1]] = await _time(statuses)

    async def page(i: int) -> None:
        after = lot_id(rng.randrange(total - PAGE))
        reply = await lots.ListLots(pb.ListLotsRequest(page_size=PAGE,
                                                       page_token=encode_key(after)))
        assert len(reply.lots) == PAGE and reply.lots[0].lot_id > after

    calls[CALL_NAMES[2]] = await _time(page)

    async def explain(i: int) -> None:
        nonlocal disagreements, explained
        reply = await lots.ExplainDecision(pb.ExplainDecisionRequest(
            lot_id=lot_id(rng.randrange(total))))
        assert reply.explained.decision.version == DECISIONS_PER_LOT
        explained += 1
        disagreements += not reply.explained.replay.agrees

    calls[CALL_NAMES[3]] = await _time(explain)
    return calls, disagreements, explained


async def _warehouse_read(lg: Lotgate, total: int) -> int:
    """GetReleaseStatuses over up to WAREHOUSE_LOTS distinct lots, BATCH a call."""
    chosen = random.Random(total + 1).sample(range(total), min(WAREHOUSE_LOTS, total))
    for start in range(0, len(chosen), BATCH):
        ids = [lot_id(n) for n in chosen[start:start + BATCH]]
        reply = await lg.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(lot_ids=ids))
        assert len(reply.statuses) == len(ids)
    return len(chosen)


async def _serving_after(address: str, t0: float) -> float:
    """Seconds from `t0` until `address` answers SERVING, polled every 20 ms, each time on
    a new channel (a channel's reconnect back-off would hide when the port opened)."""
    while True:
        async with grpc.aio.insecure_channel(address) as channel:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=False)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - t0
        if time.perf_counter() - t0 > 120:
            raise TimeoutError(f"{address} did not become SERVING within 120 s")
        await asyncio.sleep(0.02)


async def run_size(admin_url: str, population: Population, total: int,
                   workdir: Path) -> Measured:
    """Load `total` lots into fresh databases, start the stack on them, measure, drop."""
    started = time.perf_counter()
    databases = Databases(admin_url=admin_url, workdir=workdir)
    stack: Stack | None = None
    ok = False
    try:
        urls = {name: await databases.create(f"scale_{name}") for name in SERVICES}
        progress(f"{total:,} lots: loading with COPY")
        loaded = await load(urls["lots"], population, total)
        progress(f"  {loaded.lots:,} lots, {loaded.results:,} results, {loaded.decisions:,} "
                 f"decisions copied in {loaded.copy_seconds:.0f} s; VACUUM ANALYZE "
                 f"{loaded.vacuum_seconds:.0f} s; {loaded.bytes_per_lot:,.0f} bytes per lot, "
                 f"{loaded.inputs_bytes:,.0f} bytes of inputs per decision")
        stack = Stack(workdir / f"stack-{total}", database_urls=urls,
                      ports={name: free_port() for name in SERVICES}, log_level="warning")
        await stack.start()
        # Started again alone, with nats-server and the other services up: the time from
        # the process's start to SERVING on this database.
        lots_process = stack.services["lots"]
        await lots_process.stop()
        t0 = time.perf_counter()
        starting = asyncio.ensure_future(lots_process.start())
        startup = await _serving_after(lots_process.address, t0)
        await starting
        progress(f"  lots service: SERVING {startup:.2f} s after its start")
        pid = lots_process.pid
        assert pid is not None
        busy = await machine_busy()
        progress(f"  machine busy before the calls: {busy * 100:.0f}% of all cores")
        async with Lotgate.connect({n: stack.address(n) for n in SERVICES},
                                   stack.acting()) as lg:
            calls, disagreements, explained = await _measure_calls(lg, total)
            for name, timed in calls.items():
                progress(f"  {name}: p50 {timed.p50:.1f} ms, p99 {timed.p99:.1f} ms")
            read = await _warehouse_read(lg, total)
        peak = vm_hwm_mb(pid)
        progress(f"  lots process peak memory after reading {read:,} distinct lots: "
                 f"{peak:.0f} MB")
        database = await time_statement(urls["lots"], total)
        progress(f"  the batch's statement alone: p50 {database.timed.p50:.1f} ms, p99 "
                 f"{database.timed.p99:.1f} ms; explained: shared hit "
                 f"{database.shared_hit:,}, read {database.shared_read:,}, planning "
                 f"{database.planning_ms:.1f} ms, execution {database.execution_ms:.1f} ms "
                 f"({database.scan})")
        ok = True
    finally:
        if stack is not None:
            if not ok:
                with contextlib.suppress(OSError):
                    tail = stack.services["lots"].log_path.read_text(errors="replace")[-3000:]
                    print(f"--- lots log ends with:\n{tail}", file=sys.stderr)
            await stack.stop()
        with contextlib.suppress(Exception):
            await databases.drop_all()
    return Measured(total, loaded, startup, calls, peak, read, disagreements, explained,
                    time.perf_counter() - started, busy, database)


# -- the table -------------------------------------------------------------------------

def _size(lots: int) -> str:
    if lots % 1_000_000 == 0:
        return f"{lots // 1_000_000}M"
    if lots % 1000 == 0:
        return f"{lots // 1000}k"
    return f"{lots:,}"


def _ratio(large: float, small: float) -> float:
    return large / small if small else float("inf")


def render(small: Measured, large: Measured, facts: Sequence[str]) -> str:
    s, n = _size(small.lots), _size(large.lots)
    lines = [f"# Lotgate scale benchmark: {s} and {n} lots", ""]
    lines += [f"- {fact}" for fact in facts]
    lines += ["", f"| measurement | {s} | {n} | {n} / {s} | target | met |",
              "|---|---|---|---|---|---|"]
    met_all = True
    for name in CALL_NAMES:
        a, b = small.calls[name], large.calls[name]
        r50, r99 = _ratio(b.p50, a.p50), _ratio(b.p99, a.p99)
        met = r50 <= TARGET_RATIO and r99 <= TARGET_RATIO
        met_all &= met
        lines.append(f"| {name}, p50 / p99 ms | {a.p50:.1f} / {a.p99:.1f} | "
                     f"{b.p50:.1f} / {b.p99:.1f} | {r50:.2f}x / {r99:.2f}x | "
                     f"<= {TARGET_RATIO:g}x | {'yes' if met else '**NO**'} |")
        if name == CALL_NAMES[1]:
            lines.append(_database_row(small.database.timed, large.database.timed))
    lines.append(f"| start-up, process start to SERVING | {small.startup_s:.2f} s | "
                 f"{large.startup_s:.2f} s | {_ratio(large.startup_s, small.startup_s):.2f}x "
                 "| - | - |")
    memory_met = max(small.peak_mb, large.peak_mb) < MEMORY_MB
    lines.append(f"| peak memory (VmHWM) of the lots process, after reading "
                 f"{small.warehouse_lots:,} / {large.warehouse_lots:,} distinct lots | "
                 f"{small.peak_mb:.0f} MB | {large.peak_mb:.0f} MB | "
                 f"{_ratio(large.peak_mb, small.peak_mb):.2f}x | < {MEMORY_MB:g} MB | "
                 f"{'yes' if memory_met else '**NO**'} |")
    lines.append(f"| bytes on disk per lot ({', '.join(TABLES)}) | "
                 f"{small.loaded.bytes_per_lot:,.0f} | {large.loaded.bytes_per_lot:,.0f} | "
                 f"{_ratio(large.loaded.bytes_per_lot, small.loaded.bytes_per_lot):.2f}x "
                 "| - | - |")
    lines.append(f"| inputs per decision (pg_column_size), bytes | "
                 f"{small.loaded.inputs_bytes:,.0f} | {large.loaded.inputs_bytes:,.0f} | "
                 f"{_ratio(large.loaded.inputs_bytes, small.loaded.inputs_bytes):.2f}x "
                 "| - | - |")
    by_table = ", ".join(f"{table} {size / 1e6:,.0f} MB ({size / large.lots:,.0f} B/lot)"
                         for table, size in large.loaded.bytes_by_table.items())
    lines += [
        "",
        f"- On disk at {n}: {by_table}; "
        f"total {sum(large.loaded.bytes_by_table.values()) / 1e9:.2f} GB.",
        f"- Every call at {n} within {TARGET_RATIO:g}x of {s} (p50 and p99): "
        f"{'yes' if met_all else 'no'}.",
        f"- ExplainDecision replays that disagreed with the stored decision: "
        f"{small.replay_disagreements} of {small.explained} at {s}, "
        f"{large.replay_disagreements} of {large.explained} at {n}.",
        f"- Time per size (load, start, measure, drop): {s} {small.seconds:.0f} s, "
        f"{n} {large.seconds:.0f} s.",
        f"- Machine busy just before the calls (1 s sample, all cores): {s} "
        f"{small.busy * 100:.0f}%, {n} {large.busy * 100:.0f}%; the ratios mean something "
        "only on an otherwise idle machine.",
        *database_facts(small, large),
    ]
    return "\n".join(lines) + "\n"


def _database_row(a: Timed, b: Timed) -> str:
    return (f"| {DATABASE_NAME} | {a.p50:.1f} / {a.p99:.1f} | {b.p50:.1f} / {b.p99:.1f} | "
            f"{_ratio(b.p50, a.p50):.2f}x / {_ratio(b.p99, a.p99):.2f}x | - | - |")


def _explained(database: DatabaseAlone, size: str) -> str:
    return (f"{database.shared_hit:,} / {database.shared_read:,} at {size} "
            f"({database.scan}, planning {database.planning_ms:.1f} ms, execution "
            f"{database.execution_ms:.1f} ms)")


def database_facts(small: Measured, large: Measured) -> list[str]:
    """The bullets of the database-alone row: its buffers, and how long the statement may
    take at the large size for the batch to stay within TARGET_RATIO of the small size.

    The large batch does what the small one does (the call, the cache's lookups, the
    answer) and runs the statement besides; at p50 the rest of its time is its whole time
    less the statement's. What the statement may take is TARGET_RATIO of the small call
    less that rest."""
    s, n = _size(small.lots), _size(large.lots)
    batch = CALL_NAMES[1]
    db = large.database.timed.p50
    small_call, large_call = small.calls[batch].p50, large.calls[batch].p50
    rest = max(large_call - db, 0.0)
    allowed = small_call * TARGET_RATIO - rest
    return [
        f"- The database alone (the batch's statement over asyncpg, as the service sends "
        f"it; one call of {BATCH:,} random ids explained with ANALYZE and BUFFERS): "
        f"shared buffers hit / read per call {_explained(small.database, s)}, "
        f"{_explained(large.database, n)}.",
        f"- At p50 the {n} batch takes {large_call:.2f} ms, of which the statement alone "
        f"{db:.2f} ms and the rest {rest:.2f} ms (the whole {s} call, answered from "
        f"memory: {small_call:.2f} ms). Within {TARGET_RATIO:g}x of it the statement "
        f"could take {max(allowed, 0.0):.2f} ms: "
        + ("it takes more, so no work saved around it in the service meets the target "
           "while these rows are read from the database." if db > allowed else
           "it takes less; the rest of the call is where the time goes."),
    ]


async def _postgres_version(admin_url: str) -> str:
    conn = await asyncpg.connect(_dsn(admin_url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _lots_wanted() -> int:
    text = os.environ.get("SCALE_LOTS", str(DEFAULT_LOTS)).replace("_", "").replace(",", "")
    try:
        lots = int(text)
    except ValueError:
        raise SystemExit(f"SCALE_LOTS must be a whole number of lots, not {text!r}") from None
    if lots < SMALL:
        raise SystemExit(f"SCALE_LOTS must be at least {SMALL:,} (the small size)")
    return lots


def _shape_mix() -> Iterator[str]:
    for shape, (share, results) in SHAPES.items():
        yield f"{share}% {shape} ({len(results)} results)"


async def main_async() -> int:
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url or not make_url(admin_url).drivername.startswith("postgresql"):
        print("make bench-scale measures PostgreSQL only: set DATABASE_URL to a PostgreSQL "
              "server this benchmark may create and drop databases on, e.g. "
              "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres (SQLite is not "
              "supported: the million-lot figures are about PostgreSQL's plans and storage)",
              file=sys.stderr)
        return 2
    total = _lots_wanted()
    started = time.perf_counter()
    population = Population.build()
    check_replays(population, total, range(0, len(population.wheel) * 7 * 4, 3))
    version = await _postgres_version(admin_url)
    workdir = Path(tempfile.mkdtemp(prefix="lotgate-bench-scale-"))
    try:
        small = await run_size(admin_url, population, SMALL, workdir)
        large = await run_size(admin_url, population, total, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    facts = [
        f"when: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; PostgreSQL {version}; "
        f"{os.cpu_count()} cores; Python {platform.python_version()}",
        f"a fresh database per size, filled with COPY; {DECISIONS_PER_LOT} decisions per "
        f"lot made by the domain's decide_lots; lots: {', '.join(_shape_mix())}; "
        f"{len(SUPPLIER_KEYS)} supplier keys",
        f"load at {_size(total)}: COPY {large.loaded.copy_seconds:.0f} s "
        f"({total / large.loaded.copy_seconds:,.0f} lots/s), VACUUM ANALYZE "
        f"{large.loaded.vacuum_seconds:.0f} s",
        f"{CALLS} sequential calls each over gRPC to the lots process after {WARMUP} "
        "unmeasured ones, random lots; the status cache at its default budget unless "
        f"LOTGATE_STATUS_CACHE_MB is set (here: "
        f"{os.environ.get('LOTGATE_STATUS_CACHE_MB', 'default')})",
        f"total run time {time.perf_counter() - started:.0f} s",
    ]
    table = render(small, large, facts)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(table)
    print()
    print(table)
    print(f"(written to {OUTPUT})")
    return 0


def main() -> int:
    return asyncio.run(main_async())


if __name__ == "__main__":
    sys.exit(main())
