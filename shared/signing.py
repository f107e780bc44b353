"""Signed events: every event a service publishes carries its producer's Ed25519 signature.

NATS permissions keep a service from publishing another's subjects; a signature keeps a
stolen NATS password (or a broker that lets something through) from inventing inputs:
a consumer applies an event only when it was signed by a key of the service that owns
its subject. The signature covers the payload and the headers that say what the event
is (subject, event id = Nats-Msg-Id, producer, time, key id), so none of them can be
changed or moved to another subject without breaking it.

Keys: each service holds its private key (a PEM file, `LOTGATE_SIGNING_KEY_FILE`); every
consumer reads the producers' public keys from one JSON file
(`LOTGATE_EVENT_PUBLIC_KEYS_FILE`) and reads it again when it changes, so a key is rotated
without a restart: add the new public key, switch the producer to its new private key,
remove the old public key once no event signed with it is still unconsumed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.logs import get_logger

log = get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
PRODUCER_HEADER = "Lotgate-Producer"
KEY_ID_HEADER = "Lotgate-Key-Id"
TIME_HEADER = "Lotgate-Time"
SIGNATURE_HEADER = "Lotgate-Signature"

# Which service owns which subjects: an event is accepted only from its subject's owner.
SUBJECT_OWNERS: Mapping[str, str] = {
    "lotgate.suppliers.v1.": "suppliers",
    "lotgate.lots.v1.": "lots",
    "lotgate.results.v1.": "results",
}

_DOMAIN = b"lotgate-event-signature-v1"


class Unverified(Exception):
    """An event whose signature does not prove that its subject's owner sent it."""


def owner_of(subject: str) -> str | None:
    for prefix, owner in SUBJECT_OWNERS.items():
        if subject.startswith(prefix):
            return owner
    return None


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A key's id: derived from the key itself, so it can never name another key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_bytes(*, subject: str, event_id: str, producer: str, time: str, key_id: str,
                 payload: bytes) -> bytes:
    """What is signed: the header values, one per line (none may hold a line break),
    then the payload, so that no two different events give the same bytes."""
    fields = (subject, event_id, producer, time, key_id)
    for value in fields:
        if not value or "\n" in value or "\r" in value:
            raise Unverified(f"header value {value!r} is empty or holds a line break")
    return b"\n".join((_DOMAIN, *(v.encode() for v in fields), payload))


class SignedHere:
    """The signatures this process made lately, with a digest of what each one signed.

    A service hears some of its own events back from the broker (the lots service's
    change feed hears every LotStatusChanged, its own too). An event whose signature and
    signed bytes are exactly ones this process signed is valid by construction: it is
    recognised here, with a hash, instead of an Ed25519 verification (about 0.1 ms). Any
    other event, and any change to one of these, is verified as always; the key must
    still be among the producers' public keys.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._made: OrderedDict[bytes, bytes] = OrderedDict()

    def add(self, signature: bytes, signed: bytes) -> None:
        self._made[signature] = hashlib.sha256(signed).digest()
        if len(self._made) > self._size:
            self._made.popitem(last=False)

    def made(self, signature: bytes, signed: bytes) -> bool:
        digest = self._made.get(signature)
        return digest is not None and digest == hashlib.sha256(signed).digest()


@dataclass(frozen=True)
class EventSigner:
    """A producer's private key: adds the signature headers to each event it publishes."""

    producer: str
    private_key: Ed25519PrivateKey
    # What it signs is noted here too, for this process's EventVerifier (None: nowhere).
    signed_here: SignedHere | None = field(default=None, compare=False)

    @functools.cached_property
    def key_id(self) -> str:
        return key_id_of(self.private_key.public_key())

    def headers(self, subject: str, event_id: str, payload: bytes, *,
                now: datetime | None = None) -> dict[str, str]:
        time = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
        key_id = self.key_id
        signed = signed_bytes(subject=subject, event_id=event_id, producer=self.producer,
                              time=time, key_id=key_id, payload=payload)
        signature = self.private_key.sign(signed)
        if self.signed_here is not None:
            self.signed_here.add(signature, signed)
        return {
            MSG_ID_HEADER: event_id,
            PRODUCER_HEADER: self.producer,
            KEY_ID_HEADER: key_id,
            TIME_HEADER: time,
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        }

    @classmethod
    def from_file(cls, producer: str, path: str | Path, *,
                  signed_here: SignedHere | None = None) -> EventSigner:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(producer, key, signed_here)


@dataclass(frozen=True)
class PublicKey:
    producer: str
    key: Ed25519PublicKey


def parse_public_keys(text: str) -> dict[str, PublicKey]:
    """`{"keys": [{"producer": "lots", "public_key": "<base64 of the 32 raw bytes>"}]}`,
    by key id. A key belongs to one producer: it is accepted for that producer only."""
    document = json.loads(text)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected {"keys": [...]}')
    keys: dict[str, PublicKey] = {}
    for i, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict):
            raise ValueError(f"keys[{i}]: expected an object")
        producer = entry.get("producer", "")
        if producer not in SUBJECT_OWNERS.values():
            raise ValueError(f"keys[{i}].producer: unknown producer {producer!r}")
        raw = base64.b64decode(entry.get("public_key", ""), validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
        keys[key_id_of(key)] = PublicKey(producer, key)
    return keys


def public_key_entry(producer: str, key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"producer": producer, "key_id": key_id_of(key),
            "public_key": base64.b64encode(raw).decode()}


class PublicKeyFile:
    """The producers' public keys, read again whenever the file changes (rotation).

    A file that cannot be read or parsed keeps the keys read before (with an alert):
    a half-written file must not make every event unverifiable, nor accept any.
    """

    def __init__(self, path: str | Path) -> None:
        """A file that cannot be read or parsed at start-up is an error (the service does
        not start)."""
        self._path = Path(path)
        self._stamp = self._stat()
        self._keys = parse_public_keys(self._path.read_text())

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self._path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def keys(self) -> dict[str, PublicKey]:
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp  # a broken version is reported once, not per event
                self._keys = parse_public_keys(self._path.read_text())
                log.info("event_public_keys_loaded", path=str(self._path),
                         key_ids=sorted(self._keys))
        except (OSError, ValueError) as exc:
            log.error("event_public_keys_unreadable", alert=True, path=str(self._path),
                      error=repr(exc))
        return self._keys


class EventVerifier:
    """Checks that an event was signed by a key of the service that owns its subject."""

    def __init__(self, keys: PublicKeyFile | Mapping[str, PublicKey], *,
                 signed_here: SignedHere | None = None) -> None:
        self._keys = keys
        self._signed_here = signed_here

    def _current(self) -> Mapping[str, PublicKey]:
        if isinstance(self._keys, PublicKeyFile):
            return self._keys.keys()
        return self._keys

    def verify(self, subject: str, headers: Mapping[str, str] | None, payload: bytes) -> str:
        """Return the producer, or raise Unverified saying why the event is not trusted."""
        headers = headers or {}
        missing = [h for h in (MSG_ID_HEADER, PRODUCER_HEADER, KEY_ID_HEADER, TIME_HEADER,
                               SIGNATURE_HEADER) if not headers.get(h)]
        if missing:
            raise Unverified(f"unsigned: missing {', '.join(missing)}")
        producer = headers[PRODUCER_HEADER]
        owner = owner_of(subject)
        if owner is None or producer != owner:
            raise Unverified(f"producer {producer!r} may not publish {subject}")
        key_id = headers[KEY_ID_HEADER]
        known = self._current().get(key_id)
        if known is None:
            raise Unverified(f"unknown key id {key_id!r}")
        if known.producer != producer:
            raise Unverified(f"key {key_id} belongs to {known.producer!r}, not {producer!r}")
        try:
            signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
        except ValueError as exc:
            raise Unverified("signature is not base64") from exc
        signed = signed_bytes(subject=subject, event_id=headers[MSG_ID_HEADER],
                              producer=producer, time=headers[TIME_HEADER], key_id=key_id,
                              payload=payload)
        if self._signed_here is not None and self._signed_here.made(signature, signed):
            return producer
        try:
            known.key.verify(signature, signed)
        except InvalidSignature:
            raise Unverified(f"bad signature (key {key_id})") from None
        return producer


def new_private_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def public_key_of_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key.public_key()
