"""Clients that sign for the people they play: the demo, the tests, local tools.

Never for production use: the secrets are derived from a local key.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from lotgate.signatures.v1 import signatures_pb2 as pb
from lotgate.signatures.v1 import signatures_pb2_grpc as pb_grpc
from shared import access
from shared.esign_policy import SIGNED_ACTIONS


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
