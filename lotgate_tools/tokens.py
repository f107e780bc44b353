"""Tokens for local use: development keys, minting, and attaching tokens to calls.

`lotgate run` keeps an Ed25519 key pair under .lotgate/keys/ (never committed): the
services read `jwks.json` there, and `lotgate token`, the demo, the dossier command and the
benchmark sign tokens with `signing.pem`. In production an identity provider issues the
tokens and the services only see its public keys (LOTGATE_AUTH_JWKS_FILE or _URL).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from shared import access

DEV_ISSUER = "lotgate-local"
DEV_AUDIENCE = "lotgate"
SIGNING_KEY = "signing.pem"
JWKS = "jwks.json"


def _kid(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_jwk(private: Ed25519PrivateKey) -> dict[str, Any]:
    """The JWKS entry of a key pair's public half."""
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": _kid(private), "alg": "EdDSA", "use": "sig"}


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` at once, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    temporary.replace(path)


@dataclass
class DevKeys:
    """An Ed25519 signing key and the JWKS of every key still accepted, in one directory."""

    directory: Path
    private: Ed25519PrivateKey
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE

    @classmethod
    def ensure(cls, directory: str | Path) -> DevKeys:
        """Load the keys of `directory`; create them the first time."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = directory / SIGNING_KEY
        if pem.exists():
            private = serialization.load_pem_private_key(pem.read_bytes(), password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise ValueError(f"{pem} is not an Ed25519 key")
            return cls(directory, private)
        keys = cls(directory, Ed25519PrivateKey.generate())
        keys._save(previous=[])
        return keys

    @property
    def jwks_file(self) -> Path:
        return self.directory / JWKS

    @property
    def kid(self) -> str:
        return _kid(self.private)

    def public_keys(self) -> list[dict[str, Any]]:
        if not self.jwks_file.exists():
            return []
        return list(json.loads(self.jwks_file.read_text()).get("keys", []))

    def rotate(self, *, keep_previous: bool = True) -> str:
        """Sign with a new key from now on; the JWKS keeps the old key (its tokens stay
        valid until they expire) unless `keep_previous` is false. Returns the new kid."""
        previous = self.public_keys() if keep_previous else []
        self.private = Ed25519PrivateKey.generate()
        self._save(previous=previous)
        return self.kid

    def _save(self, *, previous: list[dict[str, Any]]) -> None:
        pem = self.private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        write_atomically(self.directory / SIGNING_KEY, pem.decode(), mode=0o600)
        current = public_jwk(self.private)
        others = [k for k in previous if k.get("kid") != current["kid"]]
        write_atomically(self.jwks_file, json.dumps({"keys": [current, *others]}, indent=2))

    def mint(self, subject: str, roles: list[str] | tuple[str, ...], *, name: str = "",
             instrument_id: str = "", ttl_seconds: float = 3600, **claims: Any) -> str:
        """A signed token for `subject` with `roles`; `claims` override the defaults."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": subject,
            "iat": now, "nbf": now, "exp": now + int(ttl_seconds), "roles": list(roles)}
        if name:
            payload["name"] = name
        if instrument_id:
            payload["instrument_id"] = instrument_id
        payload.update(claims)
        return jwt.encode(payload, self.private, algorithm="EdDSA", headers={"kid": self.kid})

    def service_env(self) -> dict[str, str]:
        """The settings that make a service trust these keys."""
        return {"LOTGATE_AUTH_JWKS_FILE": str(self.jwks_file),
                "LOTGATE_AUTH_ISSUER": self.issuer, "LOTGATE_AUTH_AUDIENCE": self.audience}


# Attaching tokens to calls

# (method path, request) -> the token to send with that call.
TokenSource = Callable[[str, Message], str]


def static_token(token: str) -> TokenSource:
    """One token for every call (the caller's own, from an identity provider)."""
    return lambda _method, _request: token


class ActingTokens:
    """For local tools and tests that play several people: each call gets a token of the
    person it is for. Its roles are the roles the RPC needs (shared.access); its subject is
    the request's actor field (requested_by, approved_by) when given, else
    `<role>.local`; a result's post gets an instrument token for the request's
    instrument_id. Holds a signing key, so never for production use.
    """

    def __init__(self, keys: DevKeys, *, ttl_seconds: float = 3600) -> None:
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self._minted: dict[tuple[str, frozenset[str], str, str], tuple[str, float]] = {}

    def __call__(self, method: str, request: Message | bytes) -> str:
        if not isinstance(request, Message):
            request = _parsed(method, request)
        roles = access.allowed_roles(method)
        instrument_id = ""
        if access.rpc_name(method) in access.INSTRUMENT_POSTS:
            entries = getattr(request, "results", None)
            instrument_id = (entries[0].instrument_id if entries else
                             getattr(request, "instrument_id", ""))
        subject = _actor_of(request) or (
            f"instrument:{instrument_id}" if instrument_id else
            f"{min(roles) if roles else 'nobody'}.local")
        key = (subject, roles, instrument_id, self.keys.kid)
        found = self._minted.get(key)
        if found is not None and found[1] > time.time() + 60:
            return found[0]
        token = self.keys.mint(subject, sorted(roles), instrument_id=instrument_id,
                               ttl_seconds=self.ttl_seconds)
        self._minted[key] = (token, time.time() + self.ttl_seconds)
        return token


def _parsed(method: str, raw: bytes) -> Message | bytes:
    """A request sent as raw bytes (as a fuzzer sends it), read as the method's request
    type so that its actor can be seen; the bytes themselves when they do not parse."""
    try:
        service, name = method.strip("/").rsplit("/", 1)
        descriptor = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
        return message_factory.GetMessageClass(descriptor.input_type).FromString(raw)
    except Exception:  # any unreadable request simply names no actor
        return raw


def _actor_of(request: Message | bytes) -> str:
    if not isinstance(request, Message):
        return ""
    fields = request.DESCRIPTOR.fields_by_name
    for name in access.ACTOR_FIELDS:
        if name in fields and _could_be_subject(getattr(request, name)):
            return str(getattr(request, name))
    return ""


def _could_be_subject(name: str) -> bool:
    """Whether a token could carry `name` as its subject: not blank, and short enough for a
    request header. A request that names no such subject is sent under the role's own
    subject (and is then refused as acting in another's name). Odd characters are kept, so
    that the service's own validation of the field is what answers them."""
    return 0 < len(name) <= 1000 and name.strip() != ""


class _Bearer:
    """Adds `authorization: Bearer <token>` from a TokenSource to a call."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def _details(self, details: grpc.aio.ClientCallDetails,
                 request: Message) -> grpc.aio.ClientCallDetails:
        method = details.method
        path = method.decode() if isinstance(method, bytes) else str(method)
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self.source(path, request)}")
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                          details.credentials, details.wait_for_ready)


# grpc.aio files an interceptor under the first call kind it implements, so each kind
# needs its own class.
class UnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details, request), request)


class StreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details, request), request)


def bearer_interceptors(source: TokenSource) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send a token from `source` with every unary and
    server-streaming call."""
    return [UnaryBearer(source), StreamBearer(source)]


def channel(address: str, source: TokenSource | None) -> grpc.aio.Channel:
    """A plaintext channel to `address` that sends a token from `source` with each call."""
    interceptors = bearer_interceptors(source) if source is not None else None
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
