"""Authentication for tests: one test key pair, and channels that carry its tokens.

Every service a test starts (`start_in_process`, the e2e `Stack`) trusts `TEST_KEYS`.
To talk to one, use `channel` instead of `grpc.aio.insecure_channel`:

    async with channel(service.address) as ch:              # acts as whoever each call is for
        stub = pb_grpc.LotServiceStub(ch)
    async with channel(address, role="qa", sub="qa.jane") as ch:   # one fixed caller
    async with channel(address, token=expired) as ch:       # a token of your own, or "" for none

Without `role`, each call gets a token with the roles that RPC needs (shared.access), the
subject its requested_by/approved_by names (else "<role>.local"), and for a result's post
the instrument_id it posts as: tests that are not about access keep working unchanged.
A signed call (shared.esign_policy.SIGNED_ACTIONS) without a signature is signed with TEST_SECRET
by its caller, enrolled first; a test about signatures sends its own.
`token(...)` mints one token; `bad_tokens(role)` gives every kind of token that must be
refused; `TEST_KEYS.rotate()` rotates the key the services trust.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import jwt

from lotgate_tools.autosign import AutoSign
from lotgate_tools.tokens import (
    ActingTokens,
    DevKeys,
    TokenSource,
    bearer_interceptors,
    static_token,
)

# The signing secret the test channels enrol and sign with for every subject (a test of
# signatures themselves sends its own).
TEST_SECRET = "test-signing-secret"

ISSUER = "lotgate-test"
AUDIENCE = "lotgate-test-services"

_directory = Path(tempfile.mkdtemp(prefix="lotgate-test-keys-"))
atexit.register(shutil.rmtree, _directory, ignore_errors=True)
TEST_KEYS = DevKeys.ensure(_directory)
TEST_KEYS.issuer, TEST_KEYS.audience = ISSUER, AUDIENCE


def settings_overrides() -> dict[str, Any]:
    """What `settings_for` needs for a service to trust TEST_KEYS."""
    return {"auth_jwks_file": str(TEST_KEYS.jwks_file), "auth_jwks_url": "",
            "auth_issuer": ISSUER, "auth_audience": AUDIENCE}


def token(role: str | None = None, sub: str = "", *, roles: list[str] | None = None,
          instrument_id: str = "", **claims: Any) -> str:
    """A valid token of TEST_KEYS; `claims` override any claim (exp, aud, iss ...)."""
    granted = roles if roles is not None else ([role] if role else [])
    subject = sub or (f"instrument:{instrument_id}" if instrument_id else
                      f"{role or granted[0]}.test")
    return TEST_KEYS.mint(subject, granted, instrument_id=instrument_id, **claims)


def acting() -> TokenSource:
    """Tokens for each call's own caller (see the module's docstring)."""
    return ActingTokens(TEST_KEYS)


def channel(address: str, role: str | None = None, *, sub: str = "", instrument_id: str = "",
            roles: list[str] | None = None, token: str | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `address` whose calls carry a test token (see above)."""
    if token is not None:
        source: TokenSource | None = static_token(token) if token else None
    elif role is None and roles is None:
        source = acting()
    else:
        source = static_token(_token(role, sub, roles=roles, instrument_id=instrument_id))
    if source is None:
        return grpc.aio.insecure_channel(address)
    # Signed calls without a signature are signed with TEST_SECRET (enrolled first).
    signer = AutoSign(address, source, lambda _subject: TEST_SECRET)
    return grpc.aio.insecure_channel(address,
                                     interceptors=[signer, *bearer_interceptors(source)])


_token = token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(role: str, sub: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now,
            "exp": now + 600, "roles": [role], **overrides}


_OTHER_KEYS: DevKeys | None = None


def _other_keys() -> DevKeys:
    """A key pair the services do not trust."""
    global _OTHER_KEYS
    if _OTHER_KEYS is None:
        _OTHER_KEYS = DevKeys.ensure(_directory / "untrusted")
        _OTHER_KEYS.issuer, _OTHER_KEYS.audience = ISSUER, AUDIENCE
    return _OTHER_KEYS


def bad_tokens(role: str, sub: str = "") -> dict[str, str]:
    """Tokens that prove nothing, by what is wrong with them ("" is no token at all).

    Each would carry `role` if it were valid: a refusal must come from authentication.
    """
    sub = sub or f"{role}.test"
    now = int(time.time())
    header = {"alg": "EdDSA", "typ": "JWT", "kid": TEST_KEYS.kid}
    # HS256 keyed with the public key, the classic algorithm-confusion forgery.
    secret = json.dumps(TEST_KEYS.public_keys()[0]).encode()
    hs_input = _unsigned({**header, "alg": "HS256"}, _claims(role, sub))
    hs_signature = _b64(hmac.new(secret, hs_input.encode(), hashlib.sha256).digest())
    other = _other_keys()
    forged = jwt.encode(_claims(role, sub), other.private, algorithm="EdDSA",
                        headers={"kid": TEST_KEYS.kid})
    return {
        "no token": "",
        "expired": token(role, sub, exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not yet valid": token(role, sub, nbf=now + 3600, exp=now + 7200),
        "wrong audience": token(role, sub, aud="another-system"),
        "wrong issuer": token(role, sub, iss="https://issuer.invalid"),
        "unknown key": other.mint(sub, [role]),
        "wrong key": forged,
        "alg none": _unsigned({**header, "alg": "none"}, _claims(role, sub)) + ".",
        "HS256": f"{hs_input}.{hs_signature}",
        "not a JWT": "not-a-token",
    }
