"""Publishing events in tests as the services do: signed, over an authenticated connection.

The broker refuses anonymous clients and every consumer drops unsigned events, so a test
that stands in for a producer uses a `harness`:

    h = await harness(nats_server)          # connects as the admin user
    await h.js.publish(subject, payload, headers={"Nats-Msg-Id": event_id})
    ...                                     # signed as the subject's owning service
    await h.close()

`h.js` is the connection's JetStream context whose `publish` adds the signature headers
(shared.signing) with the owning service's development key; everything else is the
plain context. `h.raw` publishes exactly what it is given (forgeries).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from lotgate_tools.dev_secrets import DevSecrets
from lotgate_tools.stack import NatsServer
from shared.signing import EventSigner, owner_of


class SignedJetStream:
    """A JetStream context that signs what it publishes as the subject's owner would."""

    def __init__(self, js: JetStreamContext, secrets: DevSecrets) -> None:
        self._js = js
        self._secrets = secrets

    @functools.cache  # noqa: B019 (a handful of producers per harness)
    def _signer(self, producer: str) -> EventSigner:
        return self._secrets.signer(producer)

    async def publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,
                      stream: str | None = None, headers: dict[str, str] | None = None) -> Any:
        headers = dict(headers or {})
        event_id = headers.get("Nats-Msg-Id") or str(uuid.uuid4())
        owner = owner_of(subject)
        if owner is not None:
            headers.update(self._signer(owner).headers(subject, event_id, payload))
        return await self._js.publish(subject, payload, timeout=timeout, stream=stream,
                                      headers=headers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)


@dataclass
class Harness:
    nc: NATS
    js: SignedJetStream
    raw: JetStreamContext

    async def close(self) -> None:
        await self.nc.close()


async def harness(server: NatsServer, **options: Any) -> Harness:
    """An admin connection to `server` that publishes signed events (see the module)."""
    assert server.secrets is not None, "start the server first"
    nc = await server.connect(**options)
    return Harness(nc, SignedJetStream(nc.jetstream(), server.secrets), nc.jetstream())
