"""Electronic signatures on QA's decisions (21 CFR 11.50, 11.70, 11.100, 11.200), over real
gRPC, a real database and a real nats-server: a signed release shows its signature, a
wrong secret changes nothing and counts towards the lockout, a signature moved onto
another record does not verify, and a two-signature release needs two people.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import structlog
from sqlalchemy import insert, select

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.lots.v1 import lots_pb2_grpc as pb_grpc
from lotgate.signatures.v1 import signatures_pb2 as spb
from lotgate.signatures.v1 import signatures_pb2_grpc as spb_grpc
from shared.esign import content_hash
from shared.tables import SIGNATURES
from tests.integration.test_lots import System, running_system
from tests.support import auth
from tests.support.grpc_errors import field_violations
from tests.support.services import ref

pytestmark = pytest.mark.integration

MAX_FAILURES = 3


@pytest.fixture(scope="module")
async def system(databases, nats_server) -> AsyncIterator[System]:
    async with running_system(databases, nats_server,
                              lots={"esign_max_failures": MAX_FAILURES}) as system:
        yield system


def signed(secret: str = auth.TEST_SECRET,
           meaning: int = spb.MEANING_APPROVAL) -> spb.SignatureInput:
    return spb.SignatureInput(secret=secret, meaning=meaning)


async def enrol(system: System, subject: str, secret: str = auth.TEST_SECRET) -> None:
    async with auth.channel(system.lots_service.address, "qa", sub=subject) as channel:
        await spb_grpc.SignatureServiceStub(channel).EnrollSigner(
            spb.EnrollSignerRequest(new_secret=secret, current_secret=secret))


async def signer(system: System, subject: str) -> spb.Signer:
    async with auth.channel(system.lots_service.address, "admin", sub="admin.ops") as channel:
        return (await spb_grpc.SignatureServiceStub(channel).GetSigner(
            spb.GetSignerRequest(subject=subject))).signer


async def releasable(system: System, *, two_signatures: bool = False) -> str:
    """A lot waiting for QA's release under QA_RELEASE."""
    material = ref("MAT")
    supplier_id = await system.qualified_supplier(material)
    await system.lots.SetReleasePolicy(pb.SetReleasePolicyRequest(
        material_code=material, policy=pb.RELEASE_POLICY_QA_RELEASE, reason="QA releases",
        requested_by="qa.jane", two_signatures=two_signatures))
    lot = await system.receive(supplier_id, material)
    await system.post_all_passing(lot.lot_id, material)
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASABLE)
    return lot.lot_id


async def release(system: System, lot_id: str, by: str,
                  signature: spb.SignatureInput | None = None) -> pb.ReleaseLotResponse:
    request = pb.ReleaseLotRequest(lot_id=lot_id, reason="batch record reviewed",
                                   requested_by=by)
    if signature is not None:
        request.signature.CopyFrom(signature)
    return await system.lots.ReleaseLot(request)


async def decisions(system: System, lot_id: str) -> list[pb.ExplainedDecision]:
    return list((await system.lots.ListDecisions(pb.ListDecisionsRequest(lot_id=lot_id))
                 ).decisions)


async def test_a_signed_release_shows_its_signature_on_every_read(system: System) -> None:
    lot_id = await releasable(system)
    await enrol(system, "qa.max")

    reply = await release(system, lot_id, "qa.max", signed())

    assert reply.release_status.status == pb.LOT_STATUS_RELEASED
    last = (await decisions(system, lot_id))[-1]
    [signature] = last.signatures
    assert (signature.signer, signature.printed_name, signature.meaning) == (
        "qa.max", "qa.max", spb.MEANING_APPROVAL)
    assert (signature.record_type, signature.record_id) == (
        "lot_decision", f"{lot_id}/{last.decision.version}")
    assert signature.content_hash == content_hash(
        "lot_decision", signature.record_id,
        {"lot_id": lot_id, "version": last.decision.version, "status": "RELEASED"})
    assert signature.verified
    assert signature.signed_at.ToDatetime() == last.decision.decided_at.ToDatetime()
    explained = (await system.lots.ExplainDecision(pb.ExplainDecisionRequest(
        lot_id=lot_id))).explained
    assert list(explained.signatures) == [signature]
    # The decisions before it were made by the rule, and carry no signature.
    assert [len(d.signatures) for d in (await decisions(system, lot_id))[:-1]] == [0] * (
        len(await decisions(system, lot_id)) - 1)


async def test_a_decision_without_a_signature_is_refused_with_the_field(system: System) -> None:
    lot_id = await releasable(system)
    token = auth.token("qa", "qa.max")
    async with grpc.aio.insecure_channel(system.lots_service.address) as bare:
        stub = pb_grpc.LotServiceStub(bare)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ReleaseLot(pb.ReleaseLotRequest(lot_id=lot_id, reason="ok",
                                                       requested_by="qa.max"),
                                  metadata=[("authorization", f"Bearer {token}")])
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature" in field_violations(missing.value)

    with pytest.raises(grpc.aio.AioRpcError) as meaning:
        await release(system, lot_id, "qa.max", signed(meaning=spb.MEANING_AUTHORSHIP))
    assert meaning.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MEANING_APPROVAL" in field_violations(meaning.value)["signature.meaning"]
    assert (await system.status(lot_id)).status == pb.LOT_STATUS_RELEASABLE


async def test_a_wrong_secret_is_unauthenticated_and_the_decision_does_not_happen(
        system: System) -> None:
    lot_id = await releasable(system)
    await enrol(system, "qa.kim")
    before = await decisions(system, lot_id)

    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await release(system, lot_id, "qa.kim", signed("not-the-secret"))

    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not-the-secret" not in wrong.value.details()
    assert (await system.status(lot_id)).status == pb.LOT_STATUS_RELEASABLE
    assert await decisions(system, lot_id) == before
    assert (await signer(system, "qa.kim")).failures == 1
    # The right secret resets the count.
    assert (await release(system, lot_id, "qa.kim", signed())).release_status.status == (
        pb.LOT_STATUS_RELEASED)
    assert (await signer(system, "qa.kim")).failures == 0


async def test_repeated_wrong_secrets_lock_the_signer_until_an_admin_resets_them(
        system: System) -> None:
    lot_id = await releasable(system)
    await enrol(system, "qa.lou")
    for _ in range(MAX_FAILURES):
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await release(system, lot_id, "qa.lou", signed("guess-guess"))
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "locked" in wrong.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as locked:
        await release(system, lot_id, "qa.lou", signed())
    assert locked.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await system.status(lot_id)).status == pb.LOT_STATUS_RELEASABLE
    assert (await signer(system, "qa.lou")).locked

    async with auth.channel(system.lots_service.address, "admin", sub="admin.ops") as channel:
        reset = (await spb_grpc.SignatureServiceStub(channel).ResetSigner(
            spb.ResetSignerRequest(subject="qa.lou", reason="identity checked, DEV-9"))).signer
    assert (reset.enrolled, reset.locked, reset.failures) == (False, False, 0)
    await enrol(system, "qa.lou", "a-brand-new-secret")
    reply = await release(system, lot_id, "qa.lou", signed("a-brand-new-secret"))
    assert reply.release_status.status == pb.LOT_STATUS_RELEASED


async def test_a_signature_copied_onto_another_record_fails_verification(
        system: System) -> None:
    first, second = await releasable(system), await releasable(system)
    await release(system, first, "qa.max", signed())
    await release(system, second, "qa.max", signed())
    [original] = (await decisions(system, first))[-1].signatures
    target = (await decisions(system, second))[-1].decision
    engine = system.lots_service.infra.engine
    async with engine.begin() as conn:
        row = (await conn.execute(select(SIGNATURES).where(
            SIGNATURES.c.signature_id == original.signature_id))).one()
        copy = {**row._mapping, "signature_id": str(uuid.uuid4()),
                "record_id": f"{second}/{target.version}"}
        await conn.execute(insert(SIGNATURES).values(**copy))

    shown = (await decisions(system, second))[-1].signatures
    assert sorted((s.signer, s.verified) for s in shown) == [("qa.max", False),
                                                            ("qa.max", True)]
    assert [s.verified for s in (await decisions(system, first))[-1].signatures] == [True]


async def test_one_person_cannot_give_both_signatures_of_a_two_signature_release(
        system: System) -> None:
    lot_id = await releasable(system, two_signatures=True)

    first = await release(system, lot_id, "qa.jane")
    assert (first.release_status.status, first.signatures_awaited) == (
        pb.LOT_STATUS_RELEASABLE, 1)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await release(system, lot_id, "qa.jane")

    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "another person" in again.value.details()
    assert (await system.status(lot_id)).status == pb.LOT_STATUS_RELEASABLE


async def test_two_people_release_a_lot_under_the_two_signature_policy(
        system: System) -> None:
    lot_id = await releasable(system, two_signatures=True)
    policy = (await system.lots.GetReleasePolicy(pb.GetReleasePolicyRequest(
        material_code=(await system.lots.GetLot(pb.GetLotRequest(lot_id=lot_id))
                       ).lot.material_code))).policy
    assert policy.two_signatures

    await release(system, lot_id, "qa.jane")
    second = await release(system, lot_id, "qa.max")

    assert (second.release_status.status, second.signatures_awaited) == (
        pb.LOT_STATUS_RELEASED, 0)
    last = (await decisions(system, lot_id))[-1]
    assert [(s.signer, s.meaning, s.verified) for s in last.signatures] == [
        ("qa.jane", spb.MEANING_APPROVAL, True), ("qa.max", spb.MEANING_APPROVAL, True)]


async def test_two_signatures_only_with_a_qa_release_policy(system: System) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await system.lots.SetReleasePolicy(pb.SetReleasePolicyRequest(
            material_code=ref("MAT"), policy=pb.RELEASE_POLICY_AUTOMATIC, reason="r",
            requested_by="qa.jane", two_signatures=True))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "two_signatures" in field_violations(refused.value)


async def test_the_secret_never_reaches_a_log_line(system: System) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    lot_id = await releasable(system)
    with structlog.testing.capture_logs() as logs:
        async with auth.channel(system.lots_service.address, "qa", sub="qa.ray") as channel:
            stub = spb_grpc.SignatureServiceStub(channel)
            await stub.EnrollSigner(spb.EnrollSignerRequest(new_secret=secret))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.EnrollSigner(spb.EnrollSignerRequest(
                    new_secret=secret + "x", current_secret=secret + "wrong"))
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await release(system, lot_id, "qa.ray", signed(secret + "wrong"))
        await release(system, lot_id, "qa.ray", signed(secret))

    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert any(entry.get("event") == "record_signed" for entry in logs)
    assert any(entry.get("code") == "UNAUTHENTICATED" for entry in logs)
    assert secret not in repr(logs)


async def test_a_signer_changes_their_secret_only_with_the_current_one(system: System) -> None:
    address = system.lots_service.address
    async with auth.channel(address, "qa", sub="qa.ann") as channel:
        stub = spb_grpc.SignatureServiceStub(channel)
        first = (await stub.EnrollSigner(spb.EnrollSignerRequest(
            new_secret="first-secret"))).signer
        with pytest.raises(grpc.aio.AioRpcError) as without:
            await stub.EnrollSigner(spb.EnrollSignerRequest(new_secret="second-secret"))
        with pytest.raises(grpc.aio.AioRpcError) as short:
            await stub.EnrollSigner(spb.EnrollSignerRequest(new_secret="short",
                                                            current_secret="first-secret"))
        changed = (await stub.EnrollSigner(spb.EnrollSignerRequest(
            new_secret="second-secret", current_secret="first-secret"))).signer
    async with auth.channel(address, "qa", sub="qa.ann") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as not_admin:
            await spb_grpc.SignatureServiceStub(channel).ResetSigner(
                spb.ResetSignerRequest(subject="qa.ann", reason="forgot it"))

    assert (first.subject, first.enrolled, first.locked) == ("qa.ann", True, False)
    assert without.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "current_secret" in field_violations(without.value)
    assert "new_secret" in field_violations(short.value)
    assert "short" not in short.value.details()
    assert changed.enrolled
    assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
    lot_id = await releasable(system)
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await release(system, lot_id, "qa.ann", signed("first-secret"))
    assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await release(system, lot_id, "qa.ann", signed("second-secret"))
            ).release_status.status == pb.LOT_STATUS_RELEASED


async def test_a_signer_who_never_enrolled_is_told_to_enrol(system: System) -> None:
    lot_id = await releasable(system)

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await release(system, lot_id, "qa.new", signed())

    assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "EnrollSigner" in unknown.value.details()
    assert (await system.status(lot_id)).status == pb.LOT_STATUS_RELEASABLE
