"""Expiry as time over real gRPC: approvals lapse when their date passes, with nobody
acting, exactly once across replicas, with a warning ahead.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from lotgate.suppliers.v1 import events_pb2
from shared.protoconv import from_timestamp
from tests.support import suppliers as support
from tests.support.services import start_in_process
from tests.support.suppliers import (
    EXPIRED,
    QUALIFIED,
    Events,
    changed_events,
    failure,
    new_qa,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

# The fixtures of tests/support/suppliers.py that these tests use.
timed = support.timed


# Expiry as time


@pytest.mark.req("SUP-006")
async def test_an_approval_expires_by_itself_when_its_date_passes(timed, nats_server) -> None:
    qa = await new_qa(timed.stub, timed.clock.now())
    q = await qa.approved(days=10)
    due = from_timestamp(q.valid_until)

    timed.clock.advance(timedelta(days=10, seconds=1))
    expired = await eventually(qa.current, lambda r: r.qualification.status == EXPIRED)

    assert expired.qualification.changed_by == "lotgate:expiry"
    assert expired.qualification.evidence == q.evidence
    last = (await qa.history())[-1]
    assert (last.previous_status, last.new_status) == (QUALIFIED, EXPIRED)
    [event] = await changed_events(nats_server).collect(
        lambda e: e.qualification.supplier_id == qa.supplier_id
        and e.qualification.status == EXPIRED, count=1)
    assert event.previous_status == QUALIFIED
    # As known just after the date and before the expiry was recorded: already lapsed.
    asof = await qa.current(as_of=due)
    assert (asof.qualification.status, asof.status_in_force) == (QUALIFIED, EXPIRED)
    # EXPIRED may be requalified with fresh evidence, or disqualified; not suspended.
    error = await failure(qa.suspend())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "EXPIRED" in error.details()
    audit = await qa.audit(audit_date=timed.clock.now().date().isoformat())
    requalified = await qa.qualify(audit_id=audit.audit_id, days=300)
    assert requalified.status == QUALIFIED


@pytest.mark.req("SUP-006")
async def test_two_replicas_expire_each_approval_exactly_once(
        timed, databases, nats_server) -> None:
    second = await start_in_process("suppliers", databases=databases, nats=nats_server,
                                    clock=timed.clock, database_url=timed.database_url,
                                    expiry_check_seconds=0.05)
    try:
        qa = await new_qa(timed.stub, timed.clock.now())
        materials = [f"MAT-{i}" for i in range(12)]
        await qa.site()
        audit = await qa.audit()
        for material in materials:
            await qa.open("MAIN", material)
            await qa.qualify("MAIN", material, audit_id=audit.audit_id, days=5)

        timed.clock.advance(timedelta(days=6))
        await eventually(qa.history, lambda h: sum(c.new_status == EXPIRED for c in h) == 12)
        events = await changed_events(nats_server).collect(
            lambda e: e.qualification.supplier_id == qa.supplier_id
            and e.qualification.status == EXPIRED, count=12, to_end=True)
    finally:
        await second.stop()

    history = await qa.history()
    assert sum(c.new_status == EXPIRED for c in history) == 12
    assert sorted(e.qualification.material_code for e in events) == sorted(materials)


@pytest.mark.req("SUP-006")
async def test_a_warning_is_sent_once_ahead_of_expiry(timed, nats_server) -> None:
    qa = await new_qa(timed.stub, timed.clock.now())
    q = await qa.approved(days=40)
    warnings = Events(nats_server, "lotgate.suppliers.v1.qualification_expiring",
                      events_pb2.QualificationExpiring)

    timed.clock.advance(timedelta(days=11))  # 29 days left: inside the 30-day warning
    [warning] = await warnings.collect(lambda e: e.qualification.supplier_id == qa.supplier_id,
                                       count=1)
    timed.clock.advance(timedelta(days=1))
    renewed = await qa.qualify(audit_id=q.evidence.audit_id, days=25)  # a new date: warn again
    again = await warnings.collect(lambda e: e.qualification.supplier_id == qa.supplier_id,
                                   count=2, to_end=True)

    assert warning.expires_at == q.valid_until
    assert [e.expires_at for e in again] == [q.valid_until, renewed.valid_until]
    assert (await qa.current()).qualification.status == QUALIFIED
