"""Checking the signature of a signed call before its handler runs (step 1 of
shared.esign): the signature field, then the secret against the signer's hash
(shared.esign_signers); the handler then runs with `current_signing()` set.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from lotgate.signatures.v1 import signatures_pb2 as pb
from shared import access
from shared.auth import current_principal
from shared.errors import InvalidArgument, Violations
from shared.esign import Signing, refused_with, signed_as
from shared.esign_policy import MAX_SECRET, SIGNED_ACTIONS, meaning_name
from shared.esign_signers import SignerStore

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

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
                with refused_with(refusal):
                    return await inner(request, context)
            with signed_as(await admit(store, rpc, request)):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
