"""NATS connections and the JetStream streams that carry Lotgate's events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]


# One stream per producing service; any service may create any of them with the same config.
SUPPLIERS_STREAM = StreamSpec("LOTGATE_SUPPLIERS", ("lotgate.suppliers.v1.>",))
LOTS_STREAM = StreamSpec("LOTGATE_LOTS", ("lotgate.lots.v1.>",))
RESULTS_STREAM = StreamSpec("LOTGATE_RESULTS", ("lotgate.results.v1.>",))


# Event subjects: the contract between the services (payloads: protos/lotgate/*/v1/events.proto).
QUALIFICATION_CHANGED = "lotgate.suppliers.v1.qualification_changed"
QUALIFICATION_EXPIRING = "lotgate.suppliers.v1.qualification_expiring"
RESULT_RECORDED = "lotgate.results.v1.result_recorded"
RESULT_INVALIDATED = "lotgate.results.v1.result_invalidated"
RESULT_CONFIRMED = "lotgate.results.v1.result_confirmed"
SPECIFICATION_APPROVED = "lotgate.results.v1.specification_approved"
LOT_RECEIVED = "lotgate.lots.v1.lot_received"
LOT_STATUS_CHANGED = "lotgate.lots.v1.status_changed"
LOT_REVIEW_REQUIRED = "lotgate.lots.v1.review_required"
LOT_REVIEW_CLOSED = "lotgate.lots.v1.review_closed"


class UnsafeStreamError(RuntimeError):
    """An existing stream has settings that could lose events and cannot be fixed in place."""


async def connect(url: str, *, name: str, user: str = "", password: str = "") -> NATS:
    """Connect, retrying until the server answers; once connected, never give up reconnecting.

    With a `user`, replies come to that user's own inbox prefix (`_INBOX_<user>.`), the
    only inboxes its NATS permissions let it read (shared.nats_auth).
    """
    credentials: dict[str, str] = {}
    if user:
        credentials = {"user": user, "password": password, "inbox_prefix": inbox_prefix(user)}

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    delay = 0.2
    while True:
        try:
            return await nats.connect(
                servers=[url],
                name=name,
                connect_timeout=2,
                reconnect_time_wait=0.5,
                # -1: reconnect forever; the default gives up after about two minutes and
                # leaves the client closed for good.
                max_reconnect_attempts=-1,
                ping_interval=5,
                max_outstanding_pings=3,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                **credentials,  # type: ignore[arg-type]
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            log.warning("nats_connect_retry", url=url, error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def inbox_prefix(user: str) -> str:
    """Where a user's request replies and consumer deliveries come to."""
    return f"_INBOX_{user}"


def _wanted(spec: StreamSpec, duplicate_window_s: float, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=duplicate_window_s,
        num_replicas=replicas,
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, *, duplicate_window_s: float,
                        replicas: int = 1) -> None:
    """Create the stream, or bring an existing one to safe settings; refuse what cannot be fixed."""
    wanted = _wanted(spec, duplicate_window_s, replicas)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(wanted)
            log.info("stream_created", stream=spec.name)
            return
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(spec.name)  # another service created it first
    current = info.config
    if current.storage != StorageType.FILE:
        raise UnsafeStreamError(
            f"stream {spec.name} uses {current.storage} storage; events must be on file storage. "
            "Recreate the stream with file storage.")
    if (current.discard != DiscardPolicy.NEW
            or (current.duplicate_window or 0) < duplicate_window_s
            or sorted(current.subjects or []) != sorted(spec.subjects)
            or (current.num_replicas or 1) < replicas):
        current.discard = DiscardPolicy.NEW
        current.num_replicas = max(current.num_replicas or 1, replicas)
        current.duplicate_window = max(current.duplicate_window or 0, duplicate_window_s)
        current.subjects = list(spec.subjects)
        await js.update_stream(current)
        log.warning("stream_settings_fixed", stream=spec.name)
