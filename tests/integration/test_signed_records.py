"""Every QA decision of the suppliers and results services carries its electronic
signature, shown on every read of the record it signs (21 CFR 11.50, 11.70), over real
gRPC and a real database; four eyes on a specification compares the signers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import update

from lotgate.results.v1 import results_pb2 as pb
from lotgate.signatures.v1 import signatures_pb2 as spb
from lotgate.suppliers.v1 import suppliers_pb2 as sup
from shared.tables import SIGNATURES
from tests.integration.test_lots import System, running_system
from tests.support.results import (  # noqa: F401 (fixtures)
    approve,
    confirm,
    draft,
    instruments,
    js,
    list_results,
    post,
    refused,
    service,
    specified_lot,
    sterility,
    stub,
)
from tests.support.services import ref

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server) as system:
        yield system


def signers(signatures) -> list[tuple[str, int, bool]]:
    return [(s.signer, s.meaning, s.verified) for s in signatures]


async def test_qualification_decisions_show_their_signatures(system: System) -> None:
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    suspended = await system.suspend(supplier_id, material)

    assert signers(suspended.signatures) == [("qa.jane", spb.MEANING_RESPONSIBILITY, True)]
    current = (await system.suppliers.GetQualification(sup.GetQualificationRequest(
        supplier_id=supplier_id, site_id="MAIN", material_code=material))).qualification
    assert list(current.signatures) == list(suspended.signatures)
    history = (await system.suppliers.ListQualificationHistory(
        sup.ListQualificationHistoryRequest(supplier_id=supplier_id))).changes
    # Opening is not a signed decision; qualifying and suspending are.
    assert [signers(c.signatures) for c in history] == [
        [], [("qa.jane", spb.MEANING_APPROVAL, True)],
        [("qa.jane", spb.MEANING_RESPONSIBILITY, True)]]
    assert history[-1].signatures[0].record_id == (
        f"{supplier_id}/MAIN/{material}/{suspended.version}")


async def test_a_specification_approval_is_signed_by_a_second_person(stub) -> None:  # noqa: F811
    material = ref("MAT")
    written = await draft(stub, material, by="qa.author")

    own = await refused(approve(stub, material, written.version, by="qa.author"))
    approved = await approve(stub, material, written.version, by="qa.approver")

    assert own.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "four eyes" in own.details()
    assert signers(approved.signatures) == [("qa.approver", spb.MEANING_APPROVAL, True)]
    got = (await stub.GetSpecification(pb.GetSpecificationRequest(
        material_code=material, version=written.version))).specification
    assert list(got.signatures) == list(approved.signatures)


async def test_a_confirmed_result_shows_its_signature_and_a_changed_one_does_not_verify(
        stub, js, service) -> None:  # noqa: F811
    _, lot_id = await specified_lot(stub, js)
    failing = await post(stub, sterility(lot_id, growth=True))

    confirmed = await confirm(stub, failing.result_id, by="qa.jane")

    assert signers(confirmed.signatures) == [("qa.jane", spb.MEANING_REVIEW, True)]
    assert (await list_results(stub, lot_id))[0].signatures == confirmed.signatures
    # Move the signature onto another result: it no longer fits the record it names.
    other = await post(stub, sterility(lot_id, growth=True))
    async with service.infra.engine.begin() as conn:
        await conn.execute(update(SIGNATURES).where(
            SIGNATURES.c.signature_id == confirmed.signatures[0].signature_id).values(
            record_id=other.result_id))
    shown = {r.result_id: signers(r.signatures) for r in await list_results(stub, lot_id)}
    assert shown[failing.result_id] == []
    assert shown[other.result_id] == [("qa.jane", spb.MEANING_REVIEW, False)]
