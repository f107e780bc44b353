"""A lot's life after release, over the running processes: QA release and retest dates.

This module's stack runs with a movable clock (LOTGATE_CLOCK_FILE, shared.clock.FileClock,
a test-only device): writing an offset into the file moves every service's time. Only
this module's stack has it: the `stack` fixture below overrides the suite's.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate_tools.client import Lotgate, identity, purity, sterility
from lotgate_tools.stack import SERVICES, Stack, free_port
from tests.support import auth
from tests.support.databases import Databases
from tests.support.services import ref
from tests.support.waiting import until_lot

pytestmark = pytest.mark.e2e

NEXT_YEAR = datetime.now(UTC) + timedelta(days=365)


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clock") / "offset-seconds"


@pytest.fixture(scope="module")
async def stack(databases: Databases, tmp_path_factory: pytest.TempPathFactory,
                clock_file: Path) -> AsyncIterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    urls = {name: await databases.create(f"e2e_{name}") for name in SERVICES}
    running = Stack(workdir, database_urls=urls, ports={n: free_port() for n in SERVICES},
                    extra_env={"LOTGATE_CLOCK_FILE": str(clock_file),
                               "LOTGATE_EXPIRY_CHECK_SECONDS": "0.2",
                               "LOTGATE_OUTBOX_POLL_SECONDS": "0.2"}, keys=auth.TEST_KEYS)
    await running.start()
    yield running
    await running.stop()


def jump(clock_file: Path, days: float) -> None:
    """Move every service's clock `days` ahead of the system time (written atomically)."""
    partial = clock_file.with_suffix(".partial")
    partial.write_text(str(days * 86400))
    os.replace(partial, clock_file)


def services_today(clock_file: Path) -> datetime:
    offset = float(clock_file.read_text()) if clock_file.exists() else 0.0
    return datetime.now(UTC) + timedelta(seconds=offset)


async def all_passing(lg: Lotgate, lot_id: str) -> None:
    await lg.post(identity(lot_id, "FTIR-1", ref("K")))
    await lg.post(purity(lot_id, "HPLC-1", ref("K"), 99.5))
    await lg.post(sterility(lot_id, "BACT-1", ref("K")))


@pytest.mark.req("QA-001", "WMS-002")
async def test_a_releasable_lot_is_not_picked_until_qa_releases_it(lotgate: Lotgate) -> None:
    material, supplier, lot_id = ref("MAT"), ref("SUP"), ref("LOT")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme Biologicals", material, NEXT_YEAR)
    await lotgate.lots.SetReleasePolicy(pb.SetReleasePolicyRequest(
        material_code=material, policy=pb.RELEASE_POLICY_QA_RELEASE,
        reason="new material: QA releases each lot", requested_by="qa.jane"))
    await lotgate.receive(lot_id, material, supplier)

    await all_passing(lotgate, lot_id)

    await until_lot(lotgate.lots, lot_id, pb.LOT_STATUS_RELEASABLE, ["QA_RELEASE_REQUIRED"])
    picked = await lotgate.lots.GetReleaseStatuses(pb.GetReleaseStatusesRequest(
        lot_ids=[lot_id]))
    assert picked.statuses[0].status == pb.LOT_STATUS_RELEASABLE
    released = await lotgate.lots.ReleaseLot(pb.ReleaseLotRequest(
        lot_id=lot_id, reason="batch record reviewed", requested_by="qa.jane"))
    assert released.release_status.status == pb.LOT_STATUS_RELEASED
    assert (await lotgate.status(lot_id)).status == pb.LOT_STATUS_RELEASED


@pytest.mark.req("QA-003")
async def test_a_released_lot_goes_back_to_quarantine_when_its_retest_date_passes(
        lotgate: Lotgate, clock_file: Path) -> None:
    material, supplier, lot_id = ref("MAT"), ref("SUP"), ref("LOT")
    await lotgate.specify(material)
    await lotgate.qualify(supplier, "Acme Biologicals", material, NEXT_YEAR)
    retest = (services_today(clock_file) + timedelta(days=1)).date().isoformat()
    await lotgate.receive(lot_id, material, supplier, retest_date=retest)
    await all_passing(lotgate, lot_id)
    released = await until_lot(lotgate.lots, lot_id, pb.LOT_STATUS_RELEASED, [])

    jump(clock_file, 2)

    # Reads say QUARANTINE from the first moment; the scheduler then records the decision.
    # (Waits for the recorded decision, a new version; fails naming the last status seen.)
    back = await lotgate.wait_until(lot_id, lambda s: s.version > released.version)
    assert back.status == pb.LOT_STATUS_QUARANTINE
    assert [u.code for u in back.unmet] == ["RETEST_DATE_REACHED"]
    last = (await lotgate.lots.ExplainDecision(pb.ExplainDecisionRequest(lot_id=lot_id))
            ).explained
    assert last.decision.cause == "retest date reached"
    assert last.decision.inputs.retest_date == retest
    assert last.replay.agrees
