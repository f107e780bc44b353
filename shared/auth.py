"""Who is calling: bearer tokens verified on every RPC, and the principal they prove.

A caller sends `authorization: Bearer <JWT>`. The token must be signed with EdDSA
(Ed25519) or ES256 by a key of the configured JWKS (looked up by the token's `kid`), and
name our issuer and audience; `exp` is required, `nbf` is honoured. `none`, HS* and every
other algorithm are refused before any key is looked at, so a public key can never serve
as an HMAC secret. Keys come from a JWKS file, re-read when it changes (rotation needs no
restart), or a JWKS URL, cached and fetched again when a token names an unknown key.

Claims: `sub` (the subject recorded as the actor), `name` (display name), `roles` (a list
of shared.access roles) and, for an instrument, `instrument_id`.

The `Gate` admits a call: no or bad credentials are UNAUTHENTICATED; a known caller
without one of the RPC's roles, or naming someone else as the actor, is PERMISSION_DENIED
with the reason. The admitted principal is `current_principal()` for the handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from google.protobuf.message import Message

from shared import access
from shared.errors import PermissionDenied, Unauthenticated
from shared.logs import get_logger

log = get_logger(__name__)

ALGORITHMS = ("EdDSA", "ES256")
# The JWKS file is looked at (one stat) at most this often, and at once for an unknown kid.
FILE_CHECK_SECONDS = 1.0
# A JWKS URL is fetched again after this long, or on an unknown kid but not more often
# than every URL_MIN_REFETCH_SECONDS (a stream of made-up kids must not hammer it).
URL_TTL_SECONDS = 300.0
URL_MIN_REFETCH_SECONDS = 10.0
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: what the services record as the actor."""

    subject: str
    name: str
    roles: frozenset[str]
    instrument_id: str = ""

    def describe(self) -> str:
        return f"{self.subject} (roles: {', '.join(sorted(self.roles)) or 'none'})"


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "lotgate_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being handled; only inside an admitted call."""
    principal = _principal.get()
    if principal is None:
        raise RuntimeError("no authenticated caller in this context")
    return principal


def bind_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    return _principal.set(principal)


def unbind_principal(token: contextvars.Token[Principal | None]) -> None:
    _principal.reset(token)


# Keys


def _parse_jwks(text: str, source: str) -> dict[str, jwt.PyJWK]:
    """kid -> key, for the keys of a JWKS usable with our algorithms."""
    document = json.loads(text)
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys", []):
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            log.warning("jwks_key_without_kid", source=source)
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as error:
            log.warning("jwks_key_unusable", source=source, kid=kid, error=str(error))
            continue
        if key.algorithm_name not in ALGORITHMS:
            log.warning("jwks_key_algorithm_refused", source=source, kid=kid,
                        algorithm=key.algorithm_name)
            continue
        keys[kid] = key
    return keys


class KeySet:
    """Public keys by kid; `generation` changes whenever the set does."""

    generation: int = 0

    async def get(self, kid: str) -> jwt.PyJWK | None:
        raise NotImplementedError


class FileKeySet(KeySet):
    """A JWKS file, re-read when its modification time, size or inode changes.

    To rotate: add the new key to the file, start issuing tokens with it, and remove the
    old key once its last token has expired. Write the file atomically (write a temporary
    file, then rename it over the old one).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._reload(force=True)

    def _reload(self, *, force: bool = False) -> None:
        self._checked = time.monotonic()
        stat = os.stat(self.path)
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen and not force:
            return
        try:
            keys = _parse_jwks(self.path.read_text(), str(self.path))
        except (OSError, ValueError) as error:
            if force:
                raise
            # A half-written file: keep the keys we have and look again next time.
            log.warning("jwks_unreadable", path=str(self.path), error=str(error))
            return
        self._seen = seen
        self._keys = keys
        self.generation += 1
        log.info("jwks_loaded", path=str(self.path), kids=sorted(keys))

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if kid not in self._keys or time.monotonic() - self._checked >= FILE_CHECK_SECONDS:
            try:
                self._reload()
            except OSError as error:
                log.warning("jwks_unreadable", path=str(self.path), error=str(error))
        return self._keys.get(kid)


class UrlKeySet(KeySet):
    """A JWKS served over HTTPS by the identity provider, cached for URL_TTL_SECONDS."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    def _fetch(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as reply:
            return str(reply.read().decode())

    def _due(self, kid: str) -> bool:
        age = time.monotonic() - self._fetched
        return age >= URL_TTL_SECONDS or (
            kid not in self._keys and age >= URL_MIN_REFETCH_SECONDS)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if self._due(kid):
            async with self._lock:
                if self._due(kid):
                    await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched = time.monotonic()
        try:
            text = await asyncio.to_thread(self._fetch)
            keys = _parse_jwks(text, self.url)
        except (OSError, ValueError) as error:
            log.warning("jwks_fetch_failed", url=self.url, error=str(error))
            return
        if set(keys) != set(self._keys):
            log.info("jwks_loaded", url=self.url, kids=sorted(keys))
        self._keys = keys
        self.generation += 1


# Tokens


@dataclass(frozen=True)
class VerifierConfig:
    issuer: str
    audience: str
    leeway_seconds: float = 30.0


class TokenVerifier:
    """Verifies bearer tokens; remembers the ones it verified until they expire."""

    def __init__(self, keys: KeySet, config: VerifierConfig) -> None:
        self.keys = keys
        self.config = config
        self._verified: dict[str, tuple[Principal, float, int, str]] = {}

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires, generation, kid = cached
            # Looking the key up again notices a changed key set (rotation, removal).
            key = await self.keys.get(kid)
            if key is not None and generation == self.keys.generation and time.time() < expires:
                return principal
            del self._verified[token]
        principal, expires, kid = await self._verify(token)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = (principal, expires, self.keys.generation, kid)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"the bearer token is not a JWT: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(f"token algorithm {str(algorithm)[:16]!r} is refused; "
                                  f"tokens must be signed with {' or '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no key id (kid)")
        key = await self.keys.get(kid)
        if key is None:
            raise Unauthenticated(f"the token is signed with an unknown key {kid[:64]!r}")
        if key.algorithm_name != algorithm:
            raise Unauthenticated(f"key {kid[:64]!r} is for {key.algorithm_name}, not "
                                  f"{algorithm}")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=self.config.audience,
                issuer=self.config.issuer, leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"the token is not for this audience ({self.config.audience})") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"the token is not from this issuer ({self.config.issuer})") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"the token is not valid: {error}") from None
        return _principal_from(claims), float(claims["exp"]), kid


def _principal_from(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise Unauthenticated("the token's subject (sub) must be a non-empty name")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthenticated("the token's roles must be a list of names")
    name = claims.get("name")
    instrument_id = claims.get("instrument_id", "")
    if not isinstance(instrument_id, str):
        raise Unauthenticated("the token's instrument_id must be a string")
    return Principal(subject=subject, name=name if isinstance(name, str) and name else subject,
                     roles=frozenset(roles), instrument_id=instrument_id)


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The token of the call's `authorization: Bearer ...` metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization must be 'Bearer <token>'")
            return token.strip()
    raise Unauthenticated("this call needs a bearer token (metadata authorization: "
                          "Bearer <token>)")


# Admission


def certificate_principal(common_name: str) -> Principal:
    """The caller a verified client certificate names (mutual TLS): `instrument:<id>` is
    that instrument, with the instrument role; any other name is known but has no role
    (it needs a token for anything)."""
    kind, _, name = common_name.partition(":")
    if kind == "instrument" and name:
        return Principal(common_name, name, frozenset({access.INSTRUMENT}), name)
    return Principal(common_name, common_name, frozenset())


class Gate:
    """Admits a call: authenticates it, checks the RPC's roles and the actor fields."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def admit(self, method: str, request: Message | None,
                    metadata: Sequence[tuple[str, Any]] | None,
                    certificate_name: str = "") -> Principal:
        """A bearer token names the caller; without one, a client certificate verified by
        mutual TLS (`certificate_name`, its common name) does."""
        if certificate_name and not any(key == "authorization" for key, _ in metadata or ()):
            principal = certificate_principal(certificate_name)
        else:
            principal = await self.verifier.verify(bearer_token(metadata))
        authorize(method, principal)
        if request is not None:
            bind_actor(method, request, principal)
        return principal


def authorize(method: str, principal: Principal) -> None:
    """PERMISSION_DENIED unless the principal holds one of the roles `method` needs."""
    allowed = access.allowed_roles(method)
    rpc = access.rpc_name(method)
    if not allowed:
        raise PermissionDenied(f"{rpc} is open to no role (not in the access table)")
    if not principal.roles & allowed:
        raise PermissionDenied(f"{principal.describe()} may not call {rpc}; it needs one of "
                               f"the roles {', '.join(sorted(allowed))}")


def bind_actor(method: str, request: Message, principal: Principal) -> None:
    """The actor fields must name the caller; an empty one is set to the caller's subject.

    So the services record the authenticated subject, and four eyes compares subjects.
    """
    fields = request.DESCRIPTOR.fields_by_name
    for name in access.ACTOR_FIELDS:
        if name not in fields:
            continue
        given = getattr(request, name)
        if not given:
            setattr(request, name, principal.subject)
        elif given != principal.subject:
            raise PermissionDenied(f"{name} is {given[:200]!r} but the caller is "
                                   f"{principal.subject!r}: nobody acts in another's name "
                                   f"(leave {name} empty or give your own subject)")
    if access.rpc_name(method) in access.INSTRUMENT_POSTS:
        _check_instrument(request, principal)


def _check_instrument(request: Message, principal: Principal) -> None:
    """The instrument a post names must be the token's. A batch names it in results[0]
    (the service refuses a batch whose entries differ); an empty one is left to the
    service's validation, which refuses it with the field."""
    entries = getattr(request, "results", None)
    if entries is not None:
        named = entries[0].instrument_id if entries else ""
    else:
        named = getattr(request, "instrument_id", "")
    if not named or named == principal.instrument_id:
        return
    if not principal.instrument_id:
        raise PermissionDenied(f"{principal.subject!r} posts results but its token names no "
                               "instrument_id")
    raise PermissionDenied(f"this call comes from instrument {principal.instrument_id}; it "
                           f"may not post results as {named[:64]!r}")


def gate_from(*, jwks_file: str, jwks_url: str, issuer: str, audience: str,
              leeway_seconds: float) -> Gate:
    """The gate of a service, from its settings."""
    if bool(jwks_file) == bool(jwks_url):
        raise ValueError("set exactly one of LOTGATE_AUTH_JWKS_FILE and LOTGATE_AUTH_JWKS_URL: "
                         "every call is authenticated")
    if not issuer or not audience:
        raise ValueError("LOTGATE_AUTH_ISSUER and LOTGATE_AUTH_AUDIENCE are required")
    keys: KeySet = FileKeySet(jwks_file) if jwks_file else UrlKeySet(jwks_url)
    return Gate(TokenVerifier(keys, VerifierConfig(issuer, audience, leeway_seconds)))
