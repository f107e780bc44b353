"""Conversions between protobuf well-known types and Python values."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

# Timestamp's valid range (RFC 3339): years 0001 to 9999.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def fingerprint(message: Message) -> str:
    """A hash of a request's content: tells an idempotent retry from a reused key."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def to_timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def timestamp_is_valid(ts: Timestamp) -> bool:
    return _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000
