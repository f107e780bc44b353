"""The auditor's queries over real gRPC: a supplier's history, the status on a past date
and the approved supplier list.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
import pytest

from lotgate.suppliers.v1 import suppliers_pb2 as pb
from shared.protoconv import to_timestamp
from tests.support import suppliers as support
from tests.support.grpc_errors import field_violations
from tests.support.services import ref
from tests.support.suppliers import (
    DISQUALIFIED,
    PENDING,
    QUALIFIED,
    SUSPENDED,
    failure,
    new_qa,
)

pytestmark = pytest.mark.integration

# The fixtures of tests/support/suppliers.py that these tests use.
suppliers = support.suppliers
timed = support.timed


# Auditor queries


@pytest.mark.req("AUD-001")
async def test_history_is_paginated_in_a_stable_order_and_filtered(suppliers) -> None:
    qa = await new_qa(suppliers)
    await qa.approved("MAIN", "MAT-A")
    await qa.approved("OTHER", "MAT-B")
    await qa.suspend("MAIN", "MAT-A")
    await qa.disqualify("OTHER", "MAT-B")
    everything = await qa.history()

    pages, token = [], ""
    while True:
        reply = await suppliers.ListQualificationHistory(pb.ListQualificationHistoryRequest(
            supplier_id=qa.supplier_id, page_size=2, page_token=token))
        pages.append(list(reply.changes))
        token = reply.next_page_token
        if not token:
            break

    assert len(everything) == 6
    assert [c for page in pages for c in page] == everything
    assert all(len(page) <= 2 for page in pages)
    by_material = await qa.history(material_code="MAT-B")
    by_site = await qa.history(site_id="MAIN")
    assert [c.new_status for c in by_material] == [PENDING, QUALIFIED, DISQUALIFIED]
    assert [c.new_status for c in by_site] == [PENDING, QUALIFIED, SUSPENDED]
    third = everything[2].changed_at
    since_third = await qa.history(changed_from=third)
    before_third = await qa.history(changed_before=third)
    assert since_third + before_third == everything or (
        # two changes recorded in the same microsecond fall on the same side
        sorted(c.sequence for c in since_third + before_third)
        == [c.sequence for c in everything])


@pytest.mark.req("AUD-001")
async def test_bad_history_queries_name_the_field(suppliers) -> None:
    qa = await new_qa(suppliers)
    now = to_timestamp(qa.now)

    error = await failure(suppliers.ListQualificationHistory(pb.ListQualificationHistoryRequest(
        supplier_id=qa.supplier_id, page_size=5000, page_token="not-ours", site_id="bad site",
        changed_from=now, changed_before=now)))
    unknown = await failure(qa.stub.ListQualificationHistory(
        pb.ListQualificationHistoryRequest(supplier_id=ref("NOPE"))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"page_size", "page_token", "site_id",
                                            "changed_before"}
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("AUD-002")
async def test_the_status_as_known_on_a_past_date(timed) -> None:
    qa = await new_qa(timed.stub, timed.clock.now())
    start = timed.clock.now()
    await qa.approved(days=400)
    timed.clock.advance(timedelta(days=30))
    await qa.suspend()
    timed.clock.advance(timedelta(days=1))

    before_anything = await failure(qa.current(as_of=start - timedelta(days=1)))
    while_qualified = await qa.current(as_of=start + timedelta(days=10))
    after_suspension = await qa.current(as_of=start + timedelta(days=30, seconds=1))
    now = await qa.current()

    assert before_anything.code() == grpc.StatusCode.NOT_FOUND
    assert (while_qualified.qualification.status, while_qualified.status_in_force) == (
        QUALIFIED, QUALIFIED)
    assert while_qualified.qualification.version == 2
    assert after_suspension.qualification.status == SUSPENDED
    assert now.qualification == after_suspension.qualification


@pytest.mark.req("AUD-002")
async def test_the_approved_supplier_list_of_a_material_on_a_date(timed) -> None:
    material = ref("MAT")
    acme = await new_qa(timed.stub, timed.clock.now())
    beta = await new_qa(timed.stub, timed.clock.now())
    start = timed.clock.now()
    await acme.approved("MAIN", material, days=100)
    await acme.approved("SECOND", material, days=100)
    await beta.approved("MAIN", material, days=20)
    timed.clock.advance(timedelta(days=10))
    await acme.suspend("SECOND", material)
    timed.clock.advance(timedelta(days=15))

    async def listed(as_of: datetime | None) -> list[tuple[str, str]]:
        reply = await timed.stub.ListApprovedSuppliers(pb.ListApprovedSuppliersRequest(
            material_code=material, as_of=to_timestamp(as_of)))
        return [(s.qualification.supplier_id, s.site.site_id) for s in reply.suppliers]

    both = sorted([(acme.supplier_id, "MAIN"), (acme.supplier_id, "SECOND"),
                   (beta.supplier_id, "MAIN")])
    assert await listed(start + timedelta(days=5)) == both
    assert await listed(start + timedelta(days=12)) == sorted(
        [(acme.supplier_id, "MAIN"), (beta.supplier_id, "MAIN")])
    # beta's approval ran out on day 20: off the list whether or not the expiry was recorded
    assert await listed(start + timedelta(days=21)) == [(acme.supplier_id, "MAIN")]
    assert await listed(None) == [(acme.supplier_id, "MAIN")]
    assert await listed(start - timedelta(days=1)) == []
    reply = await timed.stub.ListApprovedSuppliers(pb.ListApprovedSuppliersRequest(
        material_code=material))
    assert reply.suppliers[0].supplier_name == "Acme Biochem"
    assert reply.suppliers[0].site.country == "CH"
