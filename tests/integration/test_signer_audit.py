"""Signers' credentials in the audit trail (21 CFR 11.300), over real gRPC, a real database
and a real nats-server: enrolment, change of secret, reset and lockout each leave one
`signer` entry naming who did it, never the secret nor its hash, and the chain verifies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import select

from lotgate.audit.v1 import audit_pb2 as apb
from lotgate.audit.v1 import audit_pb2_grpc as apb_grpc
from lotgate.signatures.v1 import signatures_pb2 as spb
from lotgate.signatures.v1 import signatures_pb2_grpc as spb_grpc
from shared.runtime import RunningService
from shared.tables import AUDIT_TRAIL, SIGNERS
from tests.support import auth
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration

MAX_FAILURES = 3
FIRST = "first-signing-secret"
SECOND = "second-signing-secret"


@pytest.fixture(scope="module")
async def lots(databases, nats_server) -> AsyncIterator[RunningService]:
    running = await start_in_process("lots", databases=databases, nats=nats_server,
                                     esign_max_failures=MAX_FAILURES)
    try:
        yield running
    finally:
        await running.stop()


async def enrol(lots: RunningService, subject: str, new: str, current: str = "") -> None:
    async with auth.channel(lots.address, "qa", sub=subject) as channel:
        await spb_grpc.SignatureServiceStub(channel).EnrollSigner(
            spb.EnrollSignerRequest(new_secret=new, current_secret=current))


async def reset(lots: RunningService, subject: str, reason: str) -> None:
    async with auth.channel(lots.address, "admin", sub="admin.ops") as channel:
        await spb_grpc.SignatureServiceStub(channel).ResetSigner(
            spb.ResetSignerRequest(subject=subject, reason=reason))


async def trail(lots: RunningService, subject: str) -> list[apb.AuditEntry]:
    async with auth.channel(lots.address, "auditor", sub="auditor.max") as channel:
        return list((await apb_grpc.AuditServiceStub(channel).ListAuditTrail(
            apb.ListAuditTrailRequest(record_type="signer", record_id=subject,
                                      page_size=100))).entries)


async def verified(lots: RunningService) -> apb.VerifyAuditTrailResponse:
    async with auth.channel(lots.address, "auditor", sub="auditor.max") as channel:
        return await apb_grpc.AuditServiceStub(channel).VerifyAuditTrail(
            apb.VerifyAuditTrailRequest())


async def secret_hash(lots: RunningService, subject: str) -> str:
    async with lots.infra.engine.connect() as conn:
        return (await conn.execute(select(SIGNERS.c.secret_hash)
                                   .where(SIGNERS.c.subject == subject))).scalar_one()


async def stored_rows(lots: RunningService, subject: str) -> list[str]:
    """Every column of the subject's stored trail rows, as text."""
    trail_table = lots.infra.uow.outbox.metadata.tables[AUDIT_TRAIL]
    async with lots.infra.engine.connect() as conn:
        rows = (await conn.execute(select(trail_table).where(
            trail_table.c.record_type == "signer", trail_table.c.record_id == subject))).all()
    return [" ".join(str(v) for v in row) for row in rows]


def state(entry: apb.AuditEntry) -> tuple[bool, int, bool]:
    values = json.loads(entry.new_values_json)
    return values["enrolled"], values["secret_version"], values["locked"]


async def test_enrolment_change_and_reset_each_leave_one_entry_without_the_secret(
        lots: RunningService) -> None:
    subject = ref("qa").lower()
    hashes = []
    await enrol(lots, subject, FIRST)
    hashes.append(await secret_hash(lots, subject))
    await enrol(lots, subject, SECOND, current=FIRST)
    hashes.append(await secret_hash(lots, subject))
    await reset(lots, subject, "left the QA team, ticket DEV-31")

    entries = await trail(lots, subject)
    assert [(e.action, e.principal_subject) for e in entries] == [
        ("enrol", subject), ("change secret", subject), ("reset", "admin.ops")]
    assert entries[2].reason == "left the QA team, ticket DEV-31"
    assert [state(e) for e in entries] == [(True, 1, False), (True, 2, False),
                                           (False, 2, False)]
    assert entries[1].old_values_json == entries[0].new_values_json
    rows = await stored_rows(lots, subject)
    assert len(rows) == 3
    for row in rows:
        for secret in (FIRST, SECOND, *hashes, "argon2"):
            assert secret not in row
    assert (await verified(lots)).ok


async def test_the_wrong_secret_that_locks_a_signer_leaves_one_entry(
        lots: RunningService) -> None:
    subject = ref("qa").lower()
    await enrol(lots, subject, FIRST)
    for _ in range(MAX_FAILURES):
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await enrol(lots, subject, SECOND, current="not-the-signing-secret")
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as locked:
        await enrol(lots, subject, SECOND, current=FIRST)
    assert locked.value.code() == grpc.StatusCode.PERMISSION_DENIED

    entries = await trail(lots, subject)
    assert [(e.action, e.principal_subject) for e in entries] == [
        ("enrol", subject), ("lock", subject)]
    assert state(entries[1]) == (True, 1, True)
    assert json.loads(entries[1].new_values_json)["failures"] == MAX_FAILURES
    assert f"after {MAX_FAILURES} wrong" in entries[1].reason
    hashed = await secret_hash(lots, subject)
    for row in await stored_rows(lots, subject):
        assert FIRST not in row and hashed not in row
    answer = await verified(lots)
    assert answer.ok, answer

    await reset(lots, subject, "locked out, identity checked")
    await enrol(lots, subject, SECOND)
    assert [e.action for e in await trail(lots, subject)][2:] == ["reset", "enrol"]
    assert (await verified(lots)).ok
