"""A lone write's CPU, in process: `python -m tests.bench.lone [N]` (DATABASE_URL, else a
SQLite file).

What a write costs when nothing shares its transaction (the path of `make bench`'s rows 5
and 5b): N `RecordResult` calls one after another, each a new result, through the results
service's servicer; and N `ResultRecorded` events applied one at a time by the lots
service's handler, each in its own unit of work as the inbox applies a lone message (the
inbox's claim of the event id is left out). The services' code runs in this process, on
uvloop, against a real database, logging at 'warning' as `make bench` runs them: no gRPC,
no relay, no nats-server, so that the figures are the writes' own. Prints a table: CPU
and wall time per write, medians of three rounds.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.suppliers.v1 import suppliers_pb2
from shared.clock import SystemClock
from shared.logs import configure_logging
from shared.protoconv import to_timestamp
from tests.bench.statements import (
    MATERIAL,
    SITE,
    SUPPLIER,
    Call,
    _consume,
    _qualification,
    _result,
    lots_service,
    results_service,
)

ROUNDS = 3
WARM_UP = 100


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _timed(calls: list[Any]) -> tuple[float, float]:
    """CPU and wall milliseconds per call of `calls` (coroutine factories), in turn."""
    cpu, wall = _cpu(), time.perf_counter()
    for call in calls:
        await call()
    return (_cpu() - cpu) * 1000 / len(calls), (time.perf_counter() - wall) * 1000 / len(calls)


async def posts(url: str, n: int) -> list[tuple[float, float]]:
    clock = SystemClock()
    lots = [f"LOT-{i}" for i in range(2000)]
    api, engine = await results_service(url, clock, group_commit=True,
                                        instruments=["HPLC-1"], lot_ids=lots)
    now = clock.now()

    def post(k: int) -> Any:
        request = rpb.RecordResultRequest(
            lot_id=lots[k % len(lots)], test=rpb.TEST_KIND_PURITY, instrument_id="HPLC-1",
            instrument_result_id=f"RUN-{k}", quantity=rpb.Quantity(value=99.0, unit="%"),
            measured_at=to_timestamp(now))
        return lambda: api.RecordResult(request, Call())

    await _timed([post(k) for k in range(WARM_UP)])
    rounds = [await _timed([post(WARM_UP + r * n + k) for k in range(n)])
              for r in range(ROUNDS)]
    await engine.dispose()
    return rounds


async def events(url: str, n: int) -> list[tuple[float, float]]:
    clock = SystemClock()
    service = await lots_service(url, clock)
    uow, on_results = service.uow, service.on_results
    now = clock.now()
    await _consume(service.on_qualifications, uow, [_qualification(
        suppliers_pb2.QUALIFICATION_STATUS_QUALIFIED, 1, now)])
    count = WARM_UP + ROUNDS * n
    lots = [f"LOT-{i:05d}" for i in range(count // 3 + 1)]
    for lot in lots:
        await service.api.ReceiveLot(lots_pb2.ReceiveLotRequest(
            lot_id=lot, material_code=MATERIAL, supplier_id=SUPPLIER, supplier_site_id=SITE,
            supplier_lot_number="S-1", quantity=lots_pb2.Quantity(value=1.0, unit="kg"),
            container_count=1, expiry_date="2030-01-01", requested_by="warehouse"), None)
    tests = (rpb.TEST_KIND_IDENTITY, rpb.TEST_KIND_PURITY, rpb.TEST_KIND_STERILITY)
    recorded = [_result(lot, test, k + 1, now) for lot in lots
                for k, test in enumerate(tests)]

    def apply(k: int) -> Any:
        return lambda: _consume(on_results, uow, [recorded[k]])

    await _timed([apply(k) for k in range(WARM_UP)])
    rounds = [await _timed([apply(WARM_UP + r * n + k) for k in range(n)])
              for r in range(ROUNDS)]
    await service.engine.dispose()
    return rounds


def _row(what: str, rounds: list[tuple[float, float]]) -> str:
    cpu = statistics.median(c for c, _ in rounds)
    wall = statistics.median(w for _, w in rounds)
    each = ", ".join(f"{c:.2f}" for c, _ in rounds)
    return f"| {what} | {cpu:.2f} ms ({each}) | {wall:.2f} ms |"


async def _main(n: int, admin_url: str | None) -> None:
    from tests.support.databases import Databases
    with tempfile.TemporaryDirectory() as tmp:
        databases = Databases(admin_url=admin_url, workdir=Path(tmp))
        try:
            posted = await posts(await databases.create("lone_posts"), n)
            applied = await events(await databases.create("lone_events"), n)
        finally:
            await databases.drop_all()
    database = "PostgreSQL" if admin_url else "SQLite"
    print(f"\nA lone write in process, {database}, {ROUNDS} rounds of {n} "
          "(median, and each round)\n")
    print("| write | CPU per write | wall per write |")
    print("| --- | --- | --- |")
    print(_row("RecordResult alone, a new result (results service)", posted))
    print(_row("ResultRecorded applied alone, deciding its lot (lots service)", applied))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    configure_logging("bench", "warning")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_main(n, os.environ.get("DATABASE_URL")))


if __name__ == "__main__":
    main()
