"""The lots process's memory is bounded by LOTGATE_STATUS_CACHE_MB, not by how many
distinct lots are read (with the cache bounded by entries only, 200,000 distinct lots read
took the process to 432-455 MB).

The lots service runs as its own process with a small cache budget; many times more lots
than the cache holds are written straight into its database and each is read over gRPC.
The process's peak resident memory (VmHWM) must stay within what it reached before the
reads plus the budget and a margin: without the bound the reads below would add about
1.8 KB per lot, 70 MB.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate_tools.stack import SERVICES, Stack, free_port
from services.lots.read_model import ENTRY_BYTES, FLOOR_BYTES
from shared.db import make_engine
from tests.support import auth
from tests.support.auth import TEST_KEYS
from tests.support.databases import Databases
from tests.support.lot_rows import add_lot_rows, lot_rows

pytestmark = pytest.mark.integration

BUDGET_MB = 8
HELD = int(BUDGET_MB * 1024 * 1024) // (ENTRY_BYTES + FLOOR_BYTES)  # 2,978 entries
# Of each status, so that half the lots carry an unmet requirement in their answer.
PER_STATUS = 20_000
BATCH = 1_000
# What the process may add beyond the budget: the transient of a batch call (rows,
# protos, the reply), allocator fragmentation. Measured on a busy 2-core machine: the
# peak rose 3.3-5.4 MB past its value after the first batch with the 8 MB budget, and
# 71 MB with a budget too large to bind: the bound (+32 MB) is 6 times the first and
# well under the second.
MARGIN_MB = 24


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.fixture(scope="module")
async def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Stack]:
    urls = {name: await databases.create(f"mem_{name}") for name in SERVICES}
    running = Stack(tmp_path_factory.mktemp("memory"), database_urls=urls,
                    ports={n: free_port() for n in SERVICES},
                    extra_env={"LOTGATE_STATUS_CACHE_MB": str(BUDGET_MB),
                               "LOTGATE_EXPIRY_CHECK_SECONDS": "3600"},
                    keys=TEST_KEYS)
    await running.start()
    engine = make_engine(urls["lots"])
    try:
        # Written to the database only: the service learns of each lot on its first read.
        await add_lot_rows(engine, lot_rows(PER_STATUS, prefix="MEM-R"))
        await add_lot_rows(engine, lot_rows(PER_STATUS, prefix="MEM-Q", status="QUARANTINE"))
    finally:
        await engine.dispose()
    yield running
    await running.stop()


def check(replies: list[pb.ReleaseStatus], asked: list[str]) -> None:
    assert [r.lot_id for r in replies] == asked
    for reply in replies:
        if reply.lot_id.startswith("MEM-R"):
            assert (reply.status, reply.version, list(reply.unmet)) == (
                pb.LOT_STATUS_RELEASED, 2, []), reply
        else:
            assert (reply.status, reply.version) == (pb.LOT_STATUS_QUARANTINE, 2), reply
            assert [u.code for u in reply.unmet] == ["RESULTS_MISSING"], reply


async def test_reading_more_lots_than_the_cache_holds_keeps_memory_within_the_budget(
        stack: Stack) -> None:
    pid = stack.services["lots"].pid
    assert pid is not None
    every = [f"MEM-{kind}-{i:06d}" for i in range(PER_STATUS) for kind in ("R", "Q")]
    assert len(every) > 10 * HELD
    async with auth.channel(stack.address("lots")) as channel:
        stub = pb_grpc.LotServiceStub(channel)
        # One batch first: the code paths, the pool's connections and a batch's transient.
        first = every[:BATCH]
        check(list((await stub.GetReleaseStatuses(
            pb.GetReleaseStatusesRequest(lot_ids=first))).statuses), first)
        before = vm_hwm_mb(pid)
        for start in range(BATCH, len(every), BATCH):
            asked = every[start:start + BATCH]
            reply = await stub.GetReleaseStatuses(pb.GetReleaseStatusesRequest(lot_ids=asked))
            check(list(reply.statuses), asked)
        # The first lots were evicted long ago: read again from the database, still right.
        again = await stub.GetReleaseStatuses(pb.GetReleaseStatusesRequest(lot_ids=first))
        check(list(again.statuses), first)
        one = await stub.GetReleaseStatus(pb.GetReleaseStatusRequest(lot_id=every[1]))
        check([one.release_status], [every[1]])
    peak = vm_hwm_mb(pid)
    print(f"lots process: VmHWM {before:.1f} MB after one batch, {peak:.1f} MB after "
          f"{len(every)} distinct lots with a {BUDGET_MB} MB cache ({HELD} entries)")
    assert peak <= before + BUDGET_MB + MARGIN_MB, (
        f"the lots process peaked at {peak:.1f} MB reading {len(every)} distinct lots, "
        f"{peak - before:.1f} MB more than after its first batch ({before:.1f} MB); the "
        f"cache's budget is {BUDGET_MB} MB")
