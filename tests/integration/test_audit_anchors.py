"""Audit trail anchors: the suppliers service's chain head, published as a signed event
and kept by the lots service, catches a chain rebuilt or cut as a whole. On a broker of
their own, so that no other test's anchors reach the keeper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select, update

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.suppliers.v1 import suppliers_pb2 as spb
from lotgate.suppliers.v1 import suppliers_pb2_grpc as spb_grpc
from lotgate_tools.stack import NatsServer
from services.suppliers.tables import metadata
from shared import audit_chain
from shared.runtime import RunningService
from tests.integration.test_audit_trail import around_the_trigger, as_superuser, verified
from tests.support import auth
from tests.support.services import start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-anchors")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def pair(databases, broker) -> AsyncIterator[dict[str, RunningService]]:
    services = {name: await start_in_process(name, databases=databases, nats=broker)
                for name in ("suppliers", "lots")}
    yield services
    for running in services.values():
        await running.stop()


async def kept_anchor(stub: apb_grpc.AuditServiceStub,
                      service: str) -> apb.GetAuditAnchorResponse | None:
    try:
        return await stub.GetAuditAnchor(apb.GetAuditAnchorRequest(service=service))
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def rebuild_chain(service: RunningService, *, reason: str) -> None:
    """What someone with write access to the database could do: change an entry, then
    give every entry fresh hashes, so that the chain alone verifies again."""
    trail = metadata.tables["audit_trail"]
    async with service.infra.engine.begin() as conn:
        await around_the_trigger(conn)
        previous = audit_chain.GENESIS
        for row in (await conn.execute(select(trail).order_by(trail.c.sequence))).all():
            values = dict(row._mapping)
            if values["sequence"] == 2:
                values["reason"] = reason
            values["previous_hash"] = previous
            values["entry_hash"] = previous = audit_chain.entry_hash(
                {**values, "recorded_at": audit_chain.canonical(values["recorded_at"]).strip('"')})
            await conn.execute(update(trail).where(trail.c.sequence == values["sequence"])
                               .values(reason=values["reason"],
                                       previous_hash=values["previous_hash"],
                                       entry_hash=values["entry_hash"]))


async def test_the_keeper_keeps_the_head_and_a_rebuilt_or_cut_chain_is_named(
        pair: dict[str, RunningService]) -> None:
    suppliers, lots = pair["suppliers"], pair["lots"]
    async with auth.channel(suppliers.address) as ch, \
            auth.channel(suppliers.address, "admin") as admin, \
            auth.channel(suppliers.address, "auditor") as auditor, \
            auth.channel(lots.address, "auditor") as keeper:
        for supplier in ("SUP-A", "SUP-B", "SUP-C"):
            await spb_grpc.SupplierServiceStub(ch).CreateSupplier(spb.CreateSupplierRequest(
                supplier_id=supplier, name=f"{supplier} Ltd", requested_by="qa.jane"))
        published = await apb_grpc.AuditServiceStub(admin).PublishAuditAnchor(
            apb.PublishAuditAnchorRequest())
        kept = await eventually(lambda: kept_anchor(apb_grpc.AuditServiceStub(keeper),
                                                    "suppliers"),
                                lambda k: k is not None and k.anchor.sequence == 3)
        trail = apb_grpc.AuditServiceStub(auditor)
        anchored = apb.VerifyAuditTrailRequest(anchor_sequence=kept.anchor.sequence,
                                               anchor_hash=kept.anchor.entry_hash,
                                               anchor_kept_by=kept.kept_by)

        assert (published.sequence, published.entry_hash) == (3, kept.anchor.entry_hash)
        assert kept.kept_by == "lots"
        intact = await trail.VerifyAuditTrail(anchored)
        assert intact.ok and (intact.anchor_sequence, intact.anchor_kept_by) == (3, "lots")

        await rebuild_chain(suppliers, reason="rewritten afterwards")

        assert (await verified(trail)).ok  # the chain alone cannot tell
        rebuilt = await trail.VerifyAuditTrail(anchored)
        assert (rebuilt.ok, rebuilt.problem, rebuilt.sequence) == (
            False, apb.AUDIT_PROBLEM_ANCHOR_MISMATCH, 3)
        assert "rewritten" in rebuilt.detail and "lots" in rebuilt.detail

        await as_superuser(suppliers, "DELETE FROM audit_trail WHERE sequence = 3")
        cut = await trail.VerifyAuditTrail(anchored)
        assert (cut.problem, cut.sequence) == (apb.AUDIT_PROBLEM_ANCHOR_MISMATCH, 3)
        assert "ends at entry 2" in cut.detail


async def test_a_keeper_answers_only_for_the_services_it_keeps(
        pair: dict[str, RunningService]) -> None:
    async with auth.channel(pair["lots"].address, "auditor") as keeper:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await apb_grpc.AuditServiceStub(keeper).GetAuditAnchor(
                apb.GetAuditAnchorRequest(service="results"))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
