"""Signers: each person's signing secret (an Argon2id hash), failure count and lockout,
and SignatureService (enrol, reset, look up) over them.

Every enrolment, change of secret, reset and lockout is a change of a `signer` record in
the service's audit trail (21 CFR 11.300), written in the same unit of work as the row:
who, when, why, and the signer's state (enrolled, secret version, locked, failures); never
the secret nor its hash.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import argon2
import grpc
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lotgate.signatures.v1 import signatures_pb2 as pb
from lotgate.signatures.v1 import signatures_pb2_grpc as pb_grpc
from shared import audit
from shared.auth import current_principal
from shared.clock import Clock
from shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Violations,
)
from shared.esign_policy import DEFAULT_MAX_FAILURES, MAX_SECRET, MIN_SECRET, SERVICE
from shared.logs import get_logger
from shared.protoconv import to_timestamp
from shared.tables import SIGNERS
from shared.uow import UnitOfWork, UnitOfWorkFactory

log = get_logger(__name__)

# Argon2id as OWASP recommends it (19 MiB, 2 passes, 1 lane): tens of milliseconds per
# check, run in a thread so the event loop keeps serving other calls.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1,
                                type=argon2.Type.ID)


# Signers


def _hash(secret: str) -> str:
    return _HASHER.hash(secret)


def _verify(secret_hash: str, secret: str) -> bool:
    try:
        return _HASHER.verify(secret_hash, secret)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


SIGNER = "signer"  # the audit trail's record type


async def _audit(uow: UnitOfWork, row: Any, action: str, reason: str = "", *,
                 new_secret: bool = False) -> None:
    """Note the signer's change in `uow`: its state and secret version, never the hash."""
    last = await audit.last_values(uow.conn, uow.metadata, SIGNER, row.subject)
    version = json.loads(last).get("secret_version", 0) if last else 0
    audit.record_values(uow, SIGNER, row.subject, {
        "subject": row.subject, "enrolled": row.secret_hash is not None,
        "secret_version": version + 1 if new_secret else version, "locked": row.locked,
        "failures": row.failures}, action=action, reason=reason)


class SignerStore:
    """The signers of one service's database: enrolment, secret checks and lockout."""

    def __init__(self, uow: UnitOfWorkFactory, *,
                 max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        self.uow = uow
        self.engine: AsyncEngine = uow.engine
        self.clock: Clock = uow.clock
        self.max_failures = max_failures

    async def _row(self, conn: AsyncConnection, subject: str, *, lock: bool = False) -> Any:
        query = select(SIGNERS).where(SIGNERS.c.subject == subject)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return (await conn.execute(query)).first()

    async def check(self, subject: str, secret: str) -> None:
        """Pass when `secret` is the subject's; otherwise count the failure (committed
        whatever the call does next) and raise.

        The hash is checked outside any transaction (tens of milliseconds: no lock is held
        meanwhile); the count then changes with one atomic UPDATE, so concurrent wrong
        secrets are all counted."""
        async with self.engine.connect() as conn:
            row = await self._row(conn, subject)
        if row is None or row.secret_hash is None:
            raise FailedPrecondition(
                f"{subject} has no signing secret; enrol first (EnrollSigner)",
                type_="SIGNER", subject=f"signers/{subject}")
        if row.locked:
            raise self._locked(subject, row.failures)
        right = await asyncio.to_thread(_verify, row.secret_hash, secret)
        now = self.clock.now()
        locks = False
        async with self.uow() as uow:
            conn = uow.conn
            if right:
                if row.failures:
                    await conn.execute(update(SIGNERS).where(
                        SIGNERS.c.subject == subject, SIGNERS.c.locked.is_(False)).values(
                        failures=0, updated_at=now))
            else:
                # Exactly one failure locks (the row lock orders concurrent ones): it is
                # the lockout the trail records.
                locks = (await conn.execute(update(SIGNERS).where(
                    SIGNERS.c.subject == subject, SIGNERS.c.locked.is_(False),
                    SIGNERS.c.failures + 1 >= self.max_failures).values(
                    failures=SIGNERS.c.failures + 1, locked=True,
                    updated_at=now))).rowcount == 1
                if not locks:
                    await conn.execute(update(SIGNERS).where(
                        SIGNERS.c.subject == subject).values(
                        failures=SIGNERS.c.failures + 1, updated_at=now))
            after = await self._row(conn, subject)
            if locks:
                await _audit(uow, after, "lock",
                             f"locked after {after.failures} wrong signing secrets")
            await uow.commit()
        if after.locked:
            # Locked meanwhile (a concurrent wrong secret) or by this one.
            if right:
                raise self._locked(subject, after.failures)
            log.warning("signer_locked", alert=True, subject=subject, failures=after.failures)
        if right:
            return
        raise Unauthenticated(
            f"the signing secret of {subject} is wrong; nothing was changed"
            + (" (now locked: an administrator must unlock)" if after.locked else
               f" ({self.max_failures - after.failures} more wrong secrets lock the signer)"))

    def _locked(self, subject: str, failures: int) -> PermissionDenied:
        return PermissionDenied(
            f"{subject} may not sign: locked after {failures} wrong secrets; an "
            "administrator must unlock (ResetSigner)")

    async def enrol(self, subject: str, new_secret: str, current_secret: str) -> Any:
        """Set the caller's secret; once enrolled only with the current secret."""
        async with self.engine.connect() as conn:
            row = await self._row(conn, subject)
        if row is not None and row.secret_hash is not None:
            if not current_secret:
                raise InvalidArgument([FieldViolation(
                    "current_secret", "is required: you are enrolled already")])
            await self.check(subject, current_secret)
        secret_hash = await asyncio.to_thread(_hash, new_secret)
        values = {"secret_hash": secret_hash, "failures": 0, "locked": False,
                  "updated_at": self.clock.now()}
        action = "enrol" if row is None or row.secret_hash is None else "change secret"
        async with self.uow() as uow:
            conn = uow.conn
            if row is None:
                await conn.execute(SIGNERS.insert().values(subject=subject, **values))
            else:
                await conn.execute(update(SIGNERS).where(SIGNERS.c.subject == subject)
                                   .values(**values))
            row = await self._row(conn, subject)
            await _audit(uow, row, action, new_secret=True)
            await uow.commit()
        log.info("signer_enrolled", subject=subject)
        return row

    async def reset(self, subject: str, *, by: str, reason: str) -> Any:
        async with self.uow() as uow:
            conn = uow.conn
            row = await self._row(conn, subject, lock=True)
            if row is None:
                raise NotFound(f"no signer {subject}", field="subject")
            await conn.execute(update(SIGNERS).where(SIGNERS.c.subject == subject).values(
                secret_hash=None, failures=0, locked=False, updated_at=self.clock.now()))
            row = await self._row(conn, subject)
            await _audit(uow, row, "reset", reason)
            await uow.commit()
        log.info("signer_reset", subject=subject, by=by, reason=reason[:200])
        return row

    async def get(self, subject: str) -> Any:
        async with self.engine.connect() as conn:
            return await self._row(conn, subject)


def signer_to_proto(row: Any, subject: str) -> pb.Signer:
    if row is None:
        return pb.Signer(subject=subject)
    return pb.Signer(subject=row.subject, enrolled=row.secret_hash is not None,
                     locked=row.locked, failures=row.failures,
                     updated_at=to_timestamp(row.updated_at))


def _secret(v: Violations, field: str, secret: str) -> None:
    """A secret's length; the value itself is never repeated in a description."""
    if len(secret) < MIN_SECRET:
        v.add(field, f"must be at least {MIN_SECRET} characters")
    elif len(secret) > MAX_SECRET:
        v.add(field, f"must be at most {MAX_SECRET} characters")


class SignatureApi(pb_grpc.SignatureServiceServicer):
    """SignatureService over one service's signers."""

    def __init__(self, store: SignerStore) -> None:
        self.store = store

    async def EnrollSigner(self, request: pb.EnrollSignerRequest,
                           context: grpc.aio.ServicerContext) -> pb.EnrollSignerResponse:
        v = Violations()
        _secret(v, "new_secret", request.new_secret)
        if request.current_secret and len(request.current_secret) > MAX_SECRET:
            v.add("current_secret", f"must be at most {MAX_SECRET} characters")
        v.raise_if_any()
        subject = current_principal().subject
        row = await self.store.enrol(subject, request.new_secret, request.current_secret)
        return pb.EnrollSignerResponse(signer=signer_to_proto(row, subject))

    async def ResetSigner(self, request: pb.ResetSignerRequest,
                          context: grpc.aio.ServicerContext) -> pb.ResetSignerResponse:
        v = Violations()
        v.text("subject", request.subject, max_length=200)
        v.text("reason", request.reason, max_length=2000, prose=True)
        v.raise_if_any()
        row = await self.store.reset(request.subject, by=current_principal().subject,
                                     reason=request.reason)
        return pb.ResetSignerResponse(signer=signer_to_proto(row, request.subject))

    async def GetSigner(self, request: pb.GetSignerRequest,
                        context: grpc.aio.ServicerContext) -> pb.GetSignerResponse:
        subject = request.subject or current_principal().subject
        v = Violations()
        v.text("subject", subject, max_length=200)
        v.raise_if_any()
        return pb.GetSignerResponse(signer=signer_to_proto(await self.store.get(subject),
                                                           subject))


def register(server: grpc.aio.Server, store: SignerStore) -> str:
    pb_grpc.add_SignatureServiceServicer_to_server(SignatureApi(store), server)
    return SERVICE
