"""Electronic signatures on QA decisions (21 CFR 11.50, 11.70, 11.100, 11.200).

Which calls need a signature is ONE table, `SIGNED_ACTIONS`: RPC -> the meaning the signer
must state. Such a request carries `signature {secret, meaning}`; the token proves who
calls (the first component), the secret is the second one, re-entered for every signature.

The modules, in the order a signed call meets them: shared.esign_policy (the table),
shared.esign_interceptor (step 1), shared.esign_signers (secrets, lockout,
SignatureService), this module (steps 2 and 3: what handlers call); the tables are in
shared.tables.

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

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from lotgate.signatures.v1 import signatures_pb2 as pb
from shared.errors import InvalidArgument
from shared.esign_policy import meaning_name
from shared.logs import get_logger
from shared.protoconv import to_timestamp
from shared.tables import SIGNATURES

log = get_logger(__name__)


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


@contextmanager
def signed_as(signing: Signing) -> Iterator[None]:
    """`signing` is `current_signing()` inside (the interceptor, while the handler runs)."""
    token = _signing.set(signing)
    try:
        yield
    finally:
        _signing.reset(token)


@contextmanager
def refused_with(refusal: InvalidArgument) -> Iterator[None]:
    """A handler that gets as far as `sign` inside raises `refusal`."""
    token = _refusal.set(refusal)
    try:
        yield
    finally:
        _refusal.reset(token)


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
