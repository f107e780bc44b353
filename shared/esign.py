"""Electronic signatures on QA decisions (21 CFR 11.50, 11.70, 11.100, 11.200).

Which calls need a signature is ONE table, `SIGNED_ACTIONS`: RPC -> the meaning the signer
must state. Such a request carries `signature {secret, meaning}`; the token proves who
calls (the first component), the secret is the second one, re-entered for every signature.

How a signed call runs:
1. `SignatureInterceptor` (inside the authenticating one, so the principal is known)
   checks the signature field (INVALID_ARGUMENT with the field when missing or with the
   wrong meaning), then the secret against the signer's Argon2id hash, in a transaction of
   its own so that a wrong secret is counted even though the call then fails
   (UNAUTHENTICATED, the decision does not happen). After `max_failures` wrong secrets in a
   row the signer is locked (PERMISSION_DENIED) until an administrator resets them: no
   timeout, so guessing stays impossible and every lockout is looked at by a person.
   The secret is then cleared from the request: no handler, fingerprint or log sees it.
2. The handler records the signature with `sign(...)` in the transaction of the decision:
   signer subject, printed name (the token's name claim), meaning, UTC time and the SHA-256
   of the canonical content of exactly what was signed: record type, record id and the
   decision's fields. A handler that answers a retry without deciding records nothing.
3. Every read of a signed record shows its signatures (`signatures_of`), each `verified`
   only when its hash is the hash of the record as it is now: a signature copied onto
   another record, or a record edited after signing, shows verified=false.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import argon2
import grpc
from google.protobuf.message import Message
from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lotgate.signatures.v1 import signatures_pb2 as pb
from lotgate.signatures.v1 import signatures_pb2_grpc as pb_grpc
from shared import access
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
from shared.logs import get_logger
from shared.protoconv import to_timestamp
from shared.tables import SIGNATURES, SIGNERS

log = get_logger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

SERVICE = pb.DESCRIPTOR.services_by_name["SignatureService"].full_name

AUTHORSHIP = pb.MEANING_AUTHORSHIP
REVIEW = pb.MEANING_REVIEW
APPROVAL = pb.MEANING_APPROVAL
RESPONSIBILITY = pb.MEANING_RESPONSIBILITY

_SUPPLIERS = "lotgate.suppliers.v1.SupplierService"
_LOTS = "lotgate.lots.v1.LotService"
_RESULTS = "lotgate.results.v1.ResultService"

# The one table: which RPC needs a signature, and the meaning its signer states.
SIGNED_ACTIONS: dict[str, int] = {
    f"{_SUPPLIERS}/QualifySupplier": APPROVAL,
    f"{_SUPPLIERS}/SuspendQualification": RESPONSIBILITY,
    f"{_SUPPLIERS}/DisqualifySupplier": RESPONSIBILITY,
    f"{_RESULTS}/ApproveSpecification": APPROVAL,
    f"{_RESULTS}/InvalidateResult": RESPONSIBILITY,
    f"{_RESULTS}/ConfirmResult": REVIEW,
    f"{_LOTS}/ReleaseLot": APPROVAL,
    f"{_LOTS}/HoldLot": RESPONSIBILITY,
    f"{_LOTS}/ReleaseHold": RESPONSIBILITY,
    f"{_LOTS}/RejectLot": RESPONSIBILITY,
    f"{_LOTS}/CloseLotReview": REVIEW,
}

DEFAULT_MAX_FAILURES = 5
MIN_SECRET = 8
MAX_SECRET = 200

# Argon2id as OWASP recommends it (19 MiB, 2 passes, 1 lane): tens of milliseconds per
# check, run in a thread so the event loop keeps serving other calls.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1,
                                type=argon2.Type.ID)


def meaning_name(meaning: int) -> str:
    return pb.Meaning.Name(meaning)


# What was signed


def content_hash(record_type: str, record_id: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a record's signed content: keys sorted, no spaces,
    dates and times as ISO text. The record's type and id are part of it, so the same
    hash never fits another record."""
    content = {"record_type": record_type, "record_id": record_id, **fields}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


@dataclass(frozen=True)
class Signing:
    """The verified signer of the call being handled."""

    subject: str
    printed_name: str
    meaning: int


_signing: ContextVar[Signing | None] = ContextVar("lotgate_signing", default=None)
# Why the call's signature cannot be checked (its actor field is not a storable subject):
# the handler's own validation names that field with the request's other problems; should
# a handler ever get as far as signing, `sign` raises this instead.
_refusal: ContextVar[InvalidArgument | None] = ContextVar("lotgate_signing_refusal",
                                                          default=None)


def current_signing() -> Signing | None:
    """The verified signature of the call being handled (None outside a signed call)."""
    return _signing.get()


async def sign(conn: AsyncConnection, *, now: datetime, record_type: str, record_id: str,
               fields: Mapping[str, Any], signing: Signing | None = None
               ) -> pb.Signature | None:
    """Record the call's signature on a record, in the caller's transaction, and return
    its manifestation (for the answer and the event that announce the decision).

    `fields` are the decision's fields as the record stores them (the same that
    `signatures_of` is given to verify). Nothing outside a signed call.
    """
    signing = signing or current_signing()
    if signing is None:
        refusal = _refusal.get()
        if refusal is not None:
            raise refusal
        return None
    values = {"signature_id": str(uuid.uuid4()), "record_type": record_type,
              "record_id": record_id, "signer": signing.subject,
              "printed_name": signing.printed_name, "meaning": meaning_name(signing.meaning),
              "signed_at": now, "content_hash": content_hash(record_type, record_id, fields)}
    await conn.execute(SIGNATURES.insert().values(**values))
    log.info("record_signed", record_type=record_type, record_id=record_id,
             signer=signing.subject, meaning=meaning_name(signing.meaning))
    return signature_to_proto(SimpleNamespace(**values), fields)


async def signature_rows(conn: AsyncConnection, *, record_type: str,
                         record_ids: Iterable[str]) -> list[Any]:
    ids = sorted(set(record_ids))
    if not ids:
        return []
    return list((await conn.execute(
        select(SIGNATURES).where(SIGNATURES.c.record_type == record_type,
                                 SIGNATURES.c.record_id.in_(ids))
        .order_by(SIGNATURES.c.signed_at, SIGNATURES.c.signature_id))).all())


def signature_to_proto(row: Any, fields: Mapping[str, Any] | None) -> pb.Signature:
    """A stored signature; verified when `fields` (the record as it is now) hash to it."""
    verified = fields is not None and row.content_hash == content_hash(
        row.record_type, row.record_id, fields)
    return pb.Signature(
        signature_id=row.signature_id, signer=row.signer, printed_name=row.printed_name,
        meaning=pb.Meaning.Value(row.meaning), signed_at=to_timestamp(row.signed_at),
        content_hash=row.content_hash, record_type=row.record_type, record_id=row.record_id,
        verified=verified)


async def signatures_of(conn: AsyncConnection, *, record_type: str,
                        contents: Mapping[str, Mapping[str, Any]]
                        ) -> dict[str, list[pb.Signature]]:
    """record id -> its signatures, each verified against `contents[record id]`."""
    found: dict[str, list[pb.Signature]] = {record_id: [] for record_id in contents}
    for row in await signature_rows(conn, record_type=record_type, record_ids=contents):
        found[row.record_id].append(signature_to_proto(row, contents[row.record_id]))
    return found


# Signers


def _hash(secret: str) -> str:
    return _HASHER.hash(secret)


def _verify(secret_hash: str, secret: str) -> bool:
    try:
        return _HASHER.verify(secret_hash, secret)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class SignerStore:
    """The signers of one service's database: enrolment, secret checks and lockout."""

    def __init__(self, engine: AsyncEngine, clock: Clock, *,
                 max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        self.engine = engine
        self.clock = clock
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
        async with self.engine.begin() as conn:
            if right:
                if row.failures:
                    await conn.execute(update(SIGNERS).where(
                        SIGNERS.c.subject == subject, SIGNERS.c.locked.is_(False)).values(
                        failures=0, updated_at=now))
            else:
                await conn.execute(update(SIGNERS).where(SIGNERS.c.subject == subject).values(
                    failures=SIGNERS.c.failures + 1,
                    locked=SIGNERS.c.failures + 1 >= self.max_failures, updated_at=now))
            after = await self._row(conn, subject)
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
        async with self.engine.begin() as conn:
            if row is None:
                await conn.execute(SIGNERS.insert().values(subject=subject, **values))
            else:
                await conn.execute(update(SIGNERS).where(SIGNERS.c.subject == subject)
                                   .values(**values))
            row = await self._row(conn, subject)
        log.info("signer_enrolled", subject=subject)
        return row

    async def reset(self, subject: str, *, by: str, reason: str) -> Any:
        async with self.engine.begin() as conn:
            row = await self._row(conn, subject, lock=True)
            if row is None:
                raise NotFound(f"no signer {subject}", field="subject")
            await conn.execute(update(SIGNERS).where(SIGNERS.c.subject == subject).values(
                secret_hash=None, failures=0, locked=False, updated_at=self.clock.now()))
            row = await self._row(conn, subject)
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


# Checking the signature of a call


def _actor_problems(request: Any) -> InvalidArgument | None:
    """The signer is the caller, whom the actor field names (shared.auth.bind_actor): one
    that no signers table can hold is refused with that field."""
    v = Violations()
    fields = request.DESCRIPTOR.fields_by_name
    for name in access.ACTOR_FIELDS:
        if name in fields:
            v.text(name, getattr(request, name), max_length=200)
    return InvalidArgument(v.items, more=v.more) if v.items else None


def _signature_problems(rpc: str, request: Any) -> None:
    required = SIGNED_ACTIONS[rpc]
    v = Violations()
    if not request.HasField("signature"):
        v.add("signature", f"is required: this decision is signed with your signing secret "
                           f"and the meaning {meaning_name(required)}")
        v.raise_if_any()
    signature = request.signature
    if not signature.secret:
        v.add("signature.secret", "is required")
    elif len(signature.secret) > MAX_SECRET:
        v.add("signature.secret", f"must be at most {MAX_SECRET} characters")
    elif _CONTROL.search(signature.secret):
        v.add("signature.secret", "may not hold control characters (NUL, escapes, ...)")
    if signature.meaning == pb.MEANING_UNSPECIFIED:
        v.add("signature.meaning", f"is required ({meaning_name(required)} for this action)")
    elif signature.meaning != required:
        given = (pb.Meaning.Name(signature.meaning)
                 if signature.meaning in pb.Meaning.values() else str(signature.meaning))
        v.add("signature.meaning", f"must be {meaning_name(required)} for this action, not "
                                   f"{given}")
    v.raise_if_any()


async def admit(store: SignerStore, rpc: str, request: Any) -> Signing:
    """The verified signing of a signed call; the secret is cleared from the request."""
    _signature_problems(rpc, request)
    principal = current_principal()
    secret = request.signature.secret
    meaning = request.signature.meaning
    request.ClearField("signature")
    await store.check(principal.subject, secret)
    return Signing(principal.subject, principal.name, meaning)


class SignatureInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handlers of SIGNED_ACTIONS: the signature is checked before the handler
    runs, and is `current_signing()` while it does. It sits inside the authenticating
    interceptor (shared.grpc_server), whose principal it signs for and which maps its
    errors to statuses."""

    def __init__(self, store: SignerStore) -> None:
        self.store = store

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        rpc = access.rpc_name(details.method)
        if handler is None or rpc not in SIGNED_ACTIONS or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        store = self.store

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = _actor_problems(request)
            if refusal is not None:
                # The handler refuses the actor field with the request's other problems.
                _signature_problems(rpc, request)
                request.ClearField("signature")
                refused = _refusal.set(refusal)
                try:
                    return await inner(request, context)
                finally:
                    _refusal.reset(refused)
            signing = await admit(store, rpc, request)
            token = _signing.set(signing)
            try:
                return await inner(request, context)
            finally:
                _signing.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


# Clients that sign for the people they play (the demo, the tests, local tools)


class AutoSign(grpc.aio.UnaryUnaryClientInterceptor):
    """Signs each signed call that carries no signature yet, with `secret_for(subject)`
    and the meaning the table asks, enrolling the subject first (EnrollSigner with the
    same secret as the current one, so enrolling again is harmless). For tools that play
    QA locally; a person's client asks them for the secret instead."""

    def __init__(self, address: str, tokens: Callable[[str, Any], str],
                 secret_for: Callable[[str], str]) -> None:
        self.address = address
        self.tokens = tokens
        self.secret_for = secret_for
        self._enrolled: set[str] = set()
        self._lock = asyncio.Lock()

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        method = client_call_details.method
        path = method.decode() if isinstance(method, bytes) else str(method)
        rpc = access.rpc_name(path)
        if (rpc in SIGNED_ACTIONS and isinstance(request, Message)
                and not request.HasField("signature")):
            subject = _subject_of(self.tokens(path, request))
            secret = self.secret_for(subject)
            await self._enrol(subject, self.tokens(path, request), secret)
            signed = type(request)()
            signed.CopyFrom(request)
            signed.signature.CopyFrom(pb.SignatureInput(secret=secret,
                                                        meaning=SIGNED_ACTIONS[rpc]))
            request = signed
        return await continuation(client_call_details, request)

    async def _enrol(self, subject: str, token: str, secret: str) -> None:
        async with self._lock:
            if subject in self._enrolled:
                return
            async with grpc.aio.insecure_channel(self.address) as channel:
                try:
                    await pb_grpc.SignatureServiceStub(channel).EnrollSigner(
                        pb.EnrollSignerRequest(new_secret=secret, current_secret=secret),
                        metadata=[("authorization", f"Bearer {token}")])
                except grpc.aio.AioRpcError:
                    # A caller who may not sign (or a signer enrolled otherwise): the
                    # signed call itself answers why, as it would for anyone.
                    return
            self._enrolled.add(subject)


def _subject_of(token: str) -> str:
    import jwt
    return str(jwt.decode(token, options={"verify_signature": False}).get("sub", ""))


def local_secret(seed: bytes) -> Callable[[str], str]:
    """A signing secret per subject derived from a local key (`seed`): stable across runs
    of the local tools, never written anywhere."""
    def secret_for(subject: str) -> str:
        return hashlib.sha256(seed + b"\0signing-secret\0" + subject.encode()).hexdigest()
    return secret_for
