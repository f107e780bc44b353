"""Receipts written together (services/lots/receipts.py), over real gRPC, a real database
and a real nats-server.

Concurrent receipts of one supplier site and material share transactions; each caller
must still get exactly its own answer, and each lot its own decision, its own audit entry
naming its own caller and request, and its own events carrying that request. A receipt
that fails (other details under a received lot's id, the same lot twice at once) gets
the answer it gets alone, and the receipts beside it are stored. Whether calls really
went together is read from the service's group-commit counters; each test sends rounds
of concurrent calls until one formed the kind of group it is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from services.lots.receipts import GROUP
from shared import messaging
from shared.outbox import AGGREGATE_HEADER
from shared.tracing import REQUEST_ID_HEADER
from tests.integration.test_lots import SITE, System, running_system
from tests.support import auth
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

CALLS = 12
ROUNDS = 8
WAITING = ["IDENTITY_MISSING", "PURITY_MISSING", "STERILITY_MISSING"]


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


@dataclass
class Receipt:
    """One warehouse call: its lot, its caller, its request id."""

    lot_id: str
    who: str
    request_id: str = field(default_factory=lambda: ref("REQ"))
    container_count: int = 4

    async def send(self, system: System, supplier_id: str, material: str) -> pb.Lot:
        reply = await system.lots.ReceiveLot(pb.ReceiveLotRequest(
            lot_id=self.lot_id, material_code=material, supplier_id=supplier_id,
            supplier_site_id=SITE, supplier_lot_number="S-77",
            quantity=pb.Quantity(value=25.0, unit="kg"),
            container_count=self.container_count, expiry_date="2030-01-31",
            requested_by=self.who), metadata=[("x-request-id", self.request_id)])
        return reply.lot


def new_receipts(count: int) -> list[Receipt]:
    return [Receipt(ref("LOT"), f"wms.dock{i}") for i in range(count)]


def counters(system: System) -> dict[str, float]:
    """The lots service's group-commit counters of receipts."""
    assert system.lots_service.metrics is not None
    registry = system.lots_service.metrics.registry

    def sample(suffix: str, outcome: str) -> float:
        return registry.get_sample_value(f"lotgate_group_commit_calls_{suffix}",
                                         {"group": GROUP, "outcome": outcome}) or 0.0

    outcomes = ("committed", "fell_back")
    return {"groups": sum(sample("count", o) for o in outcomes),
            "calls": sum(sample("sum", o) for o in outcomes),
            "failed_groups": sample("count", "fell_back")}


async def send_together(system: System, supplier_id: str, material: str,
                        receipts: list[Receipt]) -> list[Any]:
    """All at once; each answer or error, in order."""
    return await asyncio.gather(*(r.send(system, supplier_id, material) for r in receipts),
                                return_exceptions=True)


async def qualified(system: System) -> tuple[str, str]:
    """A supplier site qualified for a new material, known to the lots service."""
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    probe = await system.receive(supplier_id, material)
    await system.wait_unmet(probe.lot_id, WAITING)
    return supplier_id, material


async def read_events(sub: Any, lot_ids: set[str], found: dict[tuple[str, str], str]) -> None:
    """Read `sub` until LotReceived and LotStatusChanged of each of `lot_ids` are in."""
    wanted = {(subject, lot_id) for lot_id in lot_ids
              for subject in (messaging.LOT_RECEIVED, messaging.LOT_STATUS_CHANGED)}
    while not wanted <= found.keys():
        try:
            msg = await sub.next_msg(timeout=30)
        except nats.errors.TimeoutError:
            break  # the assertion below names what is missing
        headers = msg.headers or {}
        if headers.get(AGGREGATE_HEADER) in lot_ids:
            found[(msg.subject, headers[AGGREGATE_HEADER])] = headers.get(REQUEST_ID_HEADER, "")
    assert wanted <= found.keys(), sorted(wanted - found.keys())


async def audit_entries(system: System, lot_id: str) -> list[apb.AuditEntry]:
    async with auth.channel(system.lots_service.address) as channel:
        reply = await apb_grpc.AuditServiceStub(channel).ListAuditTrail(
            apb.ListAuditTrailRequest(record_type="lot", record_id=lot_id, page_size=100))
    return list(reply.entries)


async def stored_once(system: System, receipt: Receipt, material: str) -> None:
    """The lot was received once, by `receipt`, and decided once on that receipt: one
    decision, one audit entry naming its caller and request."""
    decisions = (await system.lots.ListDecisions(
        pb.ListDecisionsRequest(lot_id=receipt.lot_id))).decisions
    assert [(d.decision.version, d.decision.cause) for d in decisions] == [
        (1, f"received by {receipt.who}")]
    assert [u.code for u in decisions[0].decision.unmet] == WAITING
    assert decisions[0].replay.agrees
    trail = await audit_entries(system, receipt.lot_id)
    assert [(e.action, e.principal_subject, e.request_id) for e in trail] == [
        ("receive", receipt.who, receipt.request_id)]
    lot = (await system.lots.GetLot(pb.GetLotRequest(lot_id=receipt.lot_id))).lot
    assert (lot.material_code, lot.container_count) == (material, receipt.container_count)


@pytest.mark.req("WMS-003")
async def test_concurrent_receipts_of_one_site_and_material_are_each_stored_and_audited(
        system: System) -> None:
    supplier_id, material = await qualified(system)
    before = counters(system)
    earlier: tuple[Receipt, pb.Lot] | None = None
    for round_ in range(ROUNDS):
        receipts = new_receipts(CALLS)
        # A retry of a lot received in the round before, among them: answered as before.
        retry = [earlier[0]] if earlier else []
        sub = await system.js.subscribe(
            "lotgate.lots.v1.>", ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
        try:
            answers = await send_together(system, supplier_id, material,
                                          [*receipts[:6], *retry, *receipts[6:]])
            found: dict[tuple[str, str], str] = {}
            await read_events(sub, {r.lot_id for r in receipts}, found)
        finally:
            await sub.unsubscribe()
        errors = [a for a in answers if isinstance(a, BaseException)]
        assert not errors, errors
        if earlier:
            assert answers.pop(6) == earlier[1]
            await stored_once(system, earlier[0], material)
        for receipt, answer in zip(receipts, answers, strict=True):
            assert answer.lot_id == receipt.lot_id
            assert answer.release_status.status == pb.LOT_STATUS_QUARANTINE
            assert [u.code for u in answer.release_status.unmet] == WAITING
            await stored_once(system, receipt, material)
            # Both events of the lot carry the request that received it.
            assert found[(messaging.LOT_RECEIVED, receipt.lot_id)] == receipt.request_id
            assert found[(messaging.LOT_STATUS_CHANGED, receipt.lot_id)] == receipt.request_id
        earlier = (receipts[-1], answers[-1])
        if round_ and counters(system)["groups"] > before["groups"]:
            break
    now = counters(system)
    assert now["groups"] > before["groups"], "no receipts went together"
    assert now["calls"] - before["calls"] >= 2 * (now["groups"] - before["groups"])
    assert now["failed_groups"] == before["failed_groups"]


@pytest.mark.req("WMS-003")
async def test_other_details_under_a_received_lot_id_are_refused_and_the_rest_stored(
        system: System) -> None:
    supplier_id, material = await qualified(system)
    first = Receipt(ref("LOT"), "wms.first")
    original = await first.send(system, supplier_id, material)
    before = counters(system)
    for _ in range(ROUNDS):
        receipts = new_receipts(CALLS)
        late = Receipt(first.lot_id, "wms.late", container_count=9)
        answers = await send_together(system, supplier_id, material,
                                      [*receipts[:6], late, *receipts[6:]])
        refused = answers.pop(6)
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.ALREADY_EXISTS
        assert first.lot_id in (refused.details() or "")
        for receipt, answer in zip(receipts, answers, strict=True):
            assert isinstance(answer, pb.Lot), answer
            await stored_once(system, receipt, material)
        if counters(system)["failed_groups"] > before["failed_groups"]:
            break
    assert counters(system)["failed_groups"] > before["failed_groups"], \
        "the refused receipt never went in a group"
    # The lot received first is as it was received.
    await stored_once(system, first, material)
    assert (await system.lots.GetLot(pb.GetLotRequest(lot_id=first.lot_id))).lot == original


@pytest.mark.req("WMS-003")
async def test_overlapping_copies_of_a_receipt_store_one_lot_and_answer_each_copy(
        system: System) -> None:
    supplier_id, material = await qualified(system)
    before = counters(system)
    for _ in range(ROUNDS):
        receipts = new_receipts(CALLS)
        # Not the first: the first call finding nothing running is written alone at once.
        copy = receipts[3]
        answers = await send_together(system, supplier_id, material,
                                      [*receipts[:6], copy, *receipts[6:]])
        errors = [a for a in answers if isinstance(a, BaseException)]
        assert not errors, errors
        assert answers.pop(6) == answers[3]  # the copy is answered as the original
        for receipt, answer in zip(receipts, answers, strict=True):
            assert answer.lot_id == receipt.lot_id
            await stored_once(system, receipt, material)
        if counters(system)["failed_groups"] > before["failed_groups"]:
            break
    assert counters(system)["failed_groups"] > before["failed_groups"], \
        "the copies never went in one group"


@pytest.mark.req("WMS-003")
async def test_with_group_commit_off_each_receipt_is_written_alone(
        databases, nats_server, system: System) -> None:
    """A second lots replica, on the module system's database, with group commit off.
    (A second system on its own databases would share the broker's durable consumers with
    the module's: an event could go to the other system's lots service.)"""
    replica = await start_in_process(
        "lots", databases=databases, nats=nats_server, group_commit=False,
        database_url=system.lots_service.infra.settings.database_url)
    try:
        async with auth.channel(replica.address) as channel:
            alone = replace(system, lots=pb_grpc.LotServiceStub(channel),
                            lots_service=replica, numbers={})
            supplier_id, material = await qualified(alone)
            receipts = new_receipts(CALLS)
            answers = await send_together(alone, supplier_id, material, receipts)

            errors = [a for a in answers if isinstance(a, BaseException)]
            assert not errors, errors
            for receipt in receipts:
                await stored_once(alone, receipt, material)
            assert counters(alone) == {"groups": 0.0, "calls": 0.0, "failed_groups": 0.0}
    finally:
        await replica.stop()
