"""Hypothesis strategies that build a request for any protobuf message from its descriptor.

Every field gets either a *plausible* value (shaped like what a real caller sends, ids
taken from records the test created, so that calls get past validation into the
handlers and the database) or a *hostile* one: control characters, NUL, unusual
unicode, huge strings, integers at their limits, doubles such as 1e308, -0.0, NaN and
infinities, unknown enum values, dates and timestamps at and beyond their limits, and
repeated fields with up to 100,000 entries. Each request draws how hostile it is (from
none of its fields to all of them), and shrinking moves towards plausible values, so a
failure shrinks to the field that causes it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
# Timestamp.seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the valid range.
MIN_TIMESTAMP_S = -62_135_596_800
MAX_TIMESTAMP_S = 253_402_300_799
# Sizes of the huge repeated fields; each entry small, so the request stays under 4 MB.
HUGE_SIZES = (1_001, 10_000, 100_000)
MAX_DEPTH = 6
# A request with exactly one hostile field (see `messages`).
ONE = -1
# Put into a plausible value: what a database or a log line may choke on.
INJECTED = ("\x00", "\x01", "\x1b", "\x7f", "\n", "\r", "\u0085", "\u202e",
            "\u200b", "\ufffe", "\U0010ffff", "%", "'")

NASTY_TEXT = (
    "", " ", "\t\n", "A\x00B", "\x00", "\x00" * 64, "\x7f\x1b[31m", "\r\nX-Injected: 1",
    "\u202eRTL", "\ufeffBOM", "\u2028", "🧪⚗️", "Ωmega", "ß" * 300, "é" * 501, "%", "_", "*",
    "'; DROP TABLE lots; --", "../../etc/passwd", "null", "NaN", "-1", "0" * 80,
    "a" * 64, "a" * 65, "a" * 200, "a" * 201, "a" * 500, "a" * 501, "LOT-1 ", " LOT-1",
    "lot/../1", "x" * 10_000, "y" * 1_000_000,
)
NASTY_DATES = (
    "0001-01-01", "9999-12-31", "1970-01-01", "1900-02-29", "2026-02-30", "2026-13-01",
    "2026-00-10", "26-01-01", "2026-1-1", "2026-01-01T00:00:00Z", "2026-01-01\x00",
    "२०२६-०१-०१", "+2026-01-01", " 2026-01-01",
)
NASTY_TOKENS = (
    "AA==", "=", "!!!", "cA==", "cC0x", "cDk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk=",
    base64.urlsafe_b64encode(b"p-5").decode(), base64.urlsafe_b64encode(b"p1e9").decode(),
    base64.urlsafe_b64encode(b"p" + b"9" * 40).decode(), base64.urlsafe_b64encode(b"p 1").decode(),
    base64.urlsafe_b64encode(b"p\x00").decode(), base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    base64.urlsafe_b64encode(b"p" + str(2**63).encode()).decode(),
)
NASTY_DOUBLES = (
    0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 1e308, -1e308, 1.7976931348623157e308,
    5e-324, -5e-324, 2.2250738585072014e-308, 1e30, -1e30, 1e-30, 2.0**53 + 1, 1e16, 99.95,
    100.05, 101.99999999999999,
)
DAY_FIELDS = ("expiry_date", "retest_date", "audit_date", "next_audit_due", "calibrated_on",
              "calibration_due")


@dataclass
class Known:
    """Ids of records the test created (field name -> values), and the clock's today."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def of(self, name: str) -> list[str]:
        return self.ids.get(name, [])


@dataclass(frozen=True)
class FuzzRequest:
    """What is sent: the serialized bytes, and a short description for failure reports
    (a request with 100,000 entries would make an unreadable one)."""

    payload: bytes
    message: Message | None

    def __repr__(self) -> str:
        if self.message is None:
            return f"raw bytes ({len(self.payload)}): {self.payload[:80]!r}"
        return f"{self.message.DESCRIPTOR.name}({describe(self.message)})"


def describe(msg: Message, limit: int = 60) -> str:
    parts = []
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            items = list(value)
            shown = ", ".join(_short(v, limit) for v in items[:3])
            more = f", ... {len(items):,} in all" if len(items) > 3 else ""
            parts.append(f"{fd.name}=[{shown}{more}]")
        else:
            parts.append(f"{fd.name}={_short(value, limit)}")
    return ", ".join(parts)


def _short(value: Any, limit: int) -> str:
    if isinstance(value, Message):
        return f"{value.DESCRIPTOR.name}({describe(value, limit)})"
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} long)"
    return repr(value)


def requests(descriptor: Descriptor, known: Known) -> st.SearchStrategy[FuzzRequest]:
    """A request for the message `descriptor`: mostly built field by field, sometimes
    random bytes, or a built message with bytes appended."""
    built = messages(descriptor, known)
    # Eight in ten built field by field; shrinking goes towards those (the low numbers).
    return st.integers(0, 9).flatmap(lambda n: (
        built.map(lambda m: FuzzRequest(m.SerializeToString(), m)) if n < 8
        else st.binary(max_size=256).map(lambda b: FuzzRequest(b, None)) if n == 8
        else st.tuples(built, st.binary(min_size=1, max_size=32)).map(
            lambda mb: FuzzRequest(mb[0].SerializeToString() + mb[1], None))))


def messages(descriptor: Descriptor, known: Known) -> st.SearchStrategy[Message]:
    """A message of `descriptor`. Each request draws how hostile it is: most have ONE
    hostile field (at any depth) among plausible ones, which reaches the code behind the
    validation of the others; the rest are plausible, or hostile in 30 % or all of their
    fields."""
    return st.sampled_from((ONE, 0, ONE, 30, ONE, 100)).flatmap(
        lambda rate: _message(descriptor, known, rate, depth=0))


def _message(descriptor: Descriptor, known: Known, rate: int, *, depth: int, name: str = ""
             ) -> st.SearchStrategy[Message]:
    """`rate`: the percentage of hostile fields, or ONE."""
    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Message:
        msg = cls()
        if depth > MAX_DEPTH:
            return msg
        if descriptor.full_name == "google.protobuf.Timestamp":
            seconds, nanos = draw(_timestamp(known, rate, name))
            msg.seconds, msg.nanos = seconds, nanos
            return msg
        skipped: set[str] = set()
        for oneof in descriptor.oneofs:
            members = list(oneof.fields)
            chosen = draw(st.sampled_from([None, *members]) if len(members) > 1
                          else st.sampled_from([members[0], None]))
            skipped.update(f.name for f in members if f is not chosen)
        fields = [fd for fd in descriptor.fields if fd.name not in skipped]
        target = draw(st.integers(0, len(fields) - 1)) if rate == ONE and fields else -1
        for i, fd in enumerate(fields):
            if rate == ONE:
                hostile, field_rate = i == target, ONE if i == target else 0
            else:
                hostile, field_rate = draw(st.integers(0, 99)) < rate, rate
            if fd.is_repeated:
                getattr(msg, fd.name).extend(
                    draw(_repeated(fd, known, field_rate, hostile, depth)))
                continue
            if fd.type == F.TYPE_MESSAGE:
                if draw(st.integers(0, 9)) == 0 and fd.containing_oneof is None:
                    continue  # left unset
                sub = draw(_message(fd.message_type, known, field_rate, depth=depth + 1,
                                    name=fd.name))
                getattr(msg, fd.name).CopyFrom(sub)
                continue
            setattr(msg, fd.name, draw(_scalar(fd, known, hostile)))
        return msg

    return build()


def _repeated(fd: FieldDescriptor, known: Known, rate: int, hostile: bool, depth: int
              ) -> st.SearchStrategy[list[Any]]:
    if fd.type == F.TYPE_MESSAGE:
        element = _message(fd.message_type, known, rate, depth=depth + 1)
    else:
        element = _scalar(fd, known, hostile)
    if not hostile:
        return st.lists(element, max_size=4)
    # Huge: one small entry many times (the same, or numbered so that they differ).
    small = (_message(fd.message_type, known, 0, depth=MAX_DEPTH + 1)
             if fd.type == F.TYPE_MESSAGE else _scalar(fd, known, False))
    huge = st.tuples(small, st.sampled_from(HUGE_SIZES), st.booleans()).map(
        lambda t: _copies(*t))
    return st.one_of(st.lists(element, max_size=8), huge)


def _copies(value: Any, size: int, numbered: bool) -> list[Any]:
    if numbered and isinstance(value, str):
        return [f"{value[:20]}-{i}" for i in range(size)]
    return [value] * size


def _scalar(fd: FieldDescriptor, known: Known, hostile: bool) -> st.SearchStrategy[Any]:
    kind = fd.type
    if kind == F.TYPE_STRING:
        return _hostile_string(fd.name, known) if hostile else _plausible_string(fd.name, known)
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=1_000 if hostile else 16)
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_ENUM:
        values = [v.number for v in fd.enum_type.values]
        if hostile:
            return st.sampled_from([*values, -1, 99, INT32[0], INT32[1]])
        return st.sampled_from([v for v in values if v != 0] or values)
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        if hostile:
            nasty = st.sampled_from(NASTY_DOUBLES)
            return st.one_of(nasty, nasty, st.floats(width=32 if kind == F.TYPE_FLOAT else 64))
        return st.sampled_from(_plausible_doubles(fd.name))
    bounds = _int_bounds(kind)
    if hostile:
        lo, hi = bounds
        return st.one_of(st.sampled_from(sorted({lo, hi, lo + 1, hi - 1, 0, 1, -1 if lo else 0})),
                         st.integers(lo, hi))
    return st.integers(*_plausible_ints(fd.name))


def _int_bounds(kind: int) -> tuple[int, int]:
    if kind in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return INT32
    if kind in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return UINT32
    if kind in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return UINT64
    return INT64


def _plausible_ints(name: str) -> tuple[int, int]:
    if name == "page_size":
        return 0, 1_000
    if name in ("version", "expected_version"):
        return 0, 4
    if name == "container_count":
        return 1, 40
    if name == "decimals":
        return 0, 3
    return 0, 5


def _plausible_doubles(name: str) -> tuple[float, ...]:
    if name in ("min_score", "identity_score"):
        return 0.95, 0.9, 0.5, 1.0
    return 99.4, 96.0, 98.0, 102.0, 25.0, 994.0, 0.5, 100.0, 10.0


def _days_from_today(known: Known, low: int, high: int) -> st.SearchStrategy[str]:
    today = known.now.date()
    return st.integers(low, high).map(lambda n: (today + timedelta(days=n)).isoformat())


def _plausible_string(name: str, known: Known) -> st.SearchStrategy[str]:
    ids = known.of(name)
    fresh = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=4, max_size=8)
    if name in DAY_FIELDS:
        if name == "calibrated_on" or name == "audit_date":
            return _days_from_today(known, -60, 0)
        return _days_from_today(known, -5, 900)
    if name == "page_token":
        return st.just("")
    if name == "review_id":
        return st.tuples(st.sampled_from(known.of("lot_id") or ["LOT-1"]),
                         st.integers(1, 4)).map(lambda t: f"{t[0]}/{t[1]}")
    if name == "country":
        return st.sampled_from(("CH", "DE", "US", "FR"))
    if name == "unit":
        return st.sampled_from(("%", "mg/g", "kg", "g", "CFU/g", "CFU/mg", "L"))
    if name in ("requested_by", "approved_by", "auditor"):
        return st.sampled_from(("qa.jane", "qa.lead", "qc.lab", "wms", "auditor.max"))
    if name == "retest_of":  # mostly a first result, which names none
        return st.integers(0, 3).flatmap(
            lambda n: st.just("") if n < 3 else st.sampled_from(ids or [""]))
    if name == "result_id":
        return st.one_of(st.sampled_from(ids), st.uuids().map(str)) if ids else st.uuids().map(str)
    if name == "instrument_result_id":
        return fresh.map(lambda s: f"IR-{s}")
    if ids:  # mostly a known id, sometimes a new one
        return st.integers(0, 4).flatmap(
            lambda n: st.sampled_from(ids) if n < 4 else fresh.map(lambda s: f"FZ-{s}"))
    if name.endswith(("_id", "_code", "_ids")):
        return fresh.map(lambda s: f"FZ-{s}")
    return st.sampled_from((
        "CC-2026-101: first specification", "audit passed", "label mix-up reported",
        "HPLC, Ph. Eur. 2.2.29", "QC lab 2", "CAL-2026-118", "1 Industry Road, Basel",
        "Acme Bio", "no findings", "lot consumed in batch B-77; no impact"))


def _hostile_string(name: str, known: Known) -> st.SearchStrategy[str]:
    def inject(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.tuples(_plausible_string(name, known), chars, st.integers(0, 40)).map(
            lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])

    nul = inject(st.just("\x00"))
    choices: list[st.SearchStrategy[str]] = [
        nul,
        nul,
        inject(st.sampled_from(INJECTED)),
        st.sampled_from(NASTY_TEXT),
        st.text(max_size=40),
        st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=10),
        # Protobuf strings are UTF-8: lone surrogates cannot be sent at all.
        st.text(st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF,
                              exclude_categories=("Cs",)), max_size=20),
    ]
    ids = known.of(name)
    if ids:
        # A real id with one hostile character: gets past lookups that trim or fold case.
        choices.append(st.tuples(st.sampled_from(ids), st.sampled_from(
            ("\x00", " ", "\n", "\u200b", "%"))).map(lambda t: t[0] + t[1]))
        choices.append(st.sampled_from(ids).map(str.lower))
    if name in DAY_FIELDS:
        choices.append(st.sampled_from(NASTY_DATES))
        choices.append(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(
            date.isoformat))
    if name == "page_token":
        choices[:2] = [st.sampled_from(NASTY_TOKENS)] * 2
        choices.append(st.binary(max_size=24).map(lambda b: base64.urlsafe_b64encode(b).decode()))
        choices.append(st.integers(INT64[0], 2**70).map(
            lambda n: base64.urlsafe_b64encode(f"p{n}".encode()).decode()))
    return st.one_of(choices)


DAY_S = 86_400
# Timestamp fields -> the plausible range in seconds from Known.now. Results are measured
# after the seeded specification took effect, and at most minutes ahead of the clock.
TIMESTAMP_S = {"measured_at": (0, 120), "valid_until": (DAY_S, 390 * DAY_S),
               "effective_from": (0, 30 * DAY_S)}


def _timestamp(known: Known, rate: int, name: str) -> st.SearchStrategy[tuple[int, int]]:
    """(seconds, nanos): around now, or at and beyond the limits of the valid range."""
    now = int(known.now.timestamp())
    low, high = TIMESTAMP_S.get(name, (-400 * DAY_S, 400 * DAY_S))
    plausible = st.tuples(st.integers(now + low, now + high),
                          st.integers(0, 999_999_999))
    # Shrinking goes to the first branch: the plausible one.
    if rate == 0:
        return plausible
    hostile = st.tuples(
        st.one_of(st.sampled_from((MIN_TIMESTAMP_S, MAX_TIMESTAMP_S, MIN_TIMESTAMP_S - 1,
                                   MAX_TIMESTAMP_S + 1, 0, -1, INT64[0], INT64[1],
                                   now + 1_000 * 365 * 86_400)),
                  st.integers(INT64[0], INT64[1])),
        st.sampled_from((0, -1, 999_999_999, 1_000_000_000, INT32[0], INT32[1])),
    )
    if rate == ONE:
        return hostile
    return st.one_of(plausible, hostile) if rate < 100 else st.one_of(hostile, plausible)
