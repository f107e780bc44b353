"""Errors the use cases raise. They name no transport; the gRPC layer maps them to status codes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from shared.dates import EPOCH, bounds_problem
from shared.protoconv import from_timestamp, timestamp_is_valid


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class LotgateError(Exception):
    """Base of the errors that a caller is meant to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# A status travels in gRPC trailers (8 KiB at most by default): its message says the first
# problems, up to this many characters, and how many there are in all.
MAX_MESSAGE = 500


class InvalidArgument(LotgateError):
    """The request's problems: `violations` (at most MAX_VIOLATIONS of them) and how many
    more there were (`more`), so that one absurd request cannot build a huge answer."""

    def __init__(self, violations: list[FieldViolation], *, more: int = 0) -> None:
        super().__init__(_summary(violations, more))
        self.violations = violations
        self.more = more


def _summary(violations: list[FieldViolation], more: int) -> str:
    text = "; ".join(f"{v.field}: {v.description}" for v in violations)
    total = len(violations) + more
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE].rsplit("; ", 1)[0] + " ..."
    if total > 1 and (more or text.endswith(" ...")):
        text += f" ({total:,} problems in all)"
    return text


class NotFound(LotgateError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FailedPrecondition(LotgateError):
    """The record is not in a state that allows this call; `subject` names the record."""

    def __init__(self, message: str, *, type_: str = "STATE", subject: str = "") -> None:
        super().__init__(message)
        self.type_ = type_
        self.subject = subject


class AlreadyExists(LotgateError):
    pass


class PermissionDenied(LotgateError):
    """The caller may not do this, whatever the request says (for example an instrument
    posting under another instrument's id)."""


class Unauthenticated(LotgateError):
    """The call carries no credentials, or credentials that do not prove who is calling
    (expired, not yet valid, signed by an unknown key, for another audience ...)."""


class Aborted(LotgateError):
    """A concurrent change won; the caller may read again and retry."""


class Unavailable(LotgateError):
    """A dependency (the database) cannot be reached; the call changed nothing."""


_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
# Control characters (C0, DEL, C1). PostgreSQL refuses NUL in text, and none of them belongs
# in a name or a reference; prose (reasons, conclusions, addresses) may break lines and tab.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PROSE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# The most violations a request collects: the rest are only counted ("and N more").
MAX_VIOLATIONS = 100
# The most characters of a caller's value that a description repeats.
MAX_SHOWN = 64


def is_code(value: str, *, max_length: int = 64) -> bool:
    """Whether `value` is an identifier as Violations.code wants it."""
    return 0 < len(value) <= max_length and _CODE.fullmatch(value) is not None


def shown(value: str) -> str:
    """A caller's value as a description may repeat it: short, control characters escaped."""
    if len(value) > MAX_SHOWN:
        value = value[:MAX_SHOWN] + "..."
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


class Violations:
    """Collects every problem of a request, so that the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        # Problems found beyond MAX_VIOLATIONS: counted, not kept.
        self.more = 0

    def __len__(self) -> int:
        return len(self.items) + self.more

    def add(self, field: str, description: str) -> None:
        if len(self.items) < MAX_VIOLATIONS:
            self.items.append(FieldViolation(field, description))
        else:
            self.more += 1

    def at_most(self, field: str, values: Any, max_items: int) -> bool:
        """Whether a repeated field holds at most `max_items` entries (noted if not). Check
        this before looking at the entries: a request may carry millions of them."""
        if len(values) <= max_items:
            return True
        self.add(field, f"must hold at most {max_items:,} entries, not {len(values):,}")
        return False

    def code(self, field: str, value: str, *, max_length: int = 64) -> None:
        """A required identifier: letters, digits and . _ : / - , not too long."""
        if not value:
            self.add(field, "is required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters")
        elif not _CODE.fullmatch(value):
            self.add(field, "may hold only letters, digits and . _ : / - and must start with a "
                            "letter or digit")

    def codes(self, field: str, values: list[str], *, max_items: int) -> None:
        """A list of at most `max_items` identifiers, each given once (an empty list is the
        caller's to judge)."""
        if not self.at_most(field, values, max_items):
            return
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            if value in first:
                self.add(f"{field}[{i}]", f"repeats {field}[{first[value]}] ({shown(value)})")
                continue
            first[value] = i
            self.code(f"{field}[{i}]", value)

    def text(self, field: str, value: str, *, max_length: int = 500, required: bool = True,
             prose: bool = False) -> None:
        """Free text: a name, a reference, or with `prose` a reason or an address, which may
        also hold line breaks and tabs. No other control character is taken: NUL cannot be
        stored, and the others only garble what auditors read."""
        if required and not value.strip():
            self.add(field, "is required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters")
        elif (_PROSE_CONTROL if prose else _CONTROL).search(value):
            allowed = " other than line breaks and tabs" if prose else ""
            self.add(field, f"may not hold control characters{allowed} (NUL, escapes, ...)")

    def day(self, field: str, value: str, *, required: bool = True) -> date | None:
        """A calendar day written YYYY-MM-DD; None when absent or invalid (and noted)."""
        if not value:
            if required:
                self.add(field, "is required (YYYY-MM-DD)")
            return None
        try:
            if len(value) != 10:
                raise ValueError
            return date.fromisoformat(value)
        except ValueError:
            self.add(field, "must be a date as YYYY-MM-DD")
            return None

    def day_between(self, field: str, value: str, earliest: date | None = EPOCH,
                    latest: date | None = None, *, required: bool = True) -> date | None:
        """A calendar day (as `day`) within [earliest, latest]; no day before the system's
        epoch unless told otherwise (shared/dates.py). None when absent, invalid or out of
        bounds (and noted)."""
        day = self.day(field, value, required=required)
        problem = bounds_problem(day, earliest, latest) if day is not None else None
        if problem:
            self.add(field, problem)
            return None
        return day

    def instant(self, request: Any, field: str) -> datetime | None:
        """An optional Timestamp field of a proto request; None when unset or invalid (and
        noted)."""
        if not request.HasField(field):
            return None
        ts = getattr(request, field)
        if not timestamp_is_valid(ts):
            self.add(field, "is not a valid timestamp")
            return None
        return from_timestamp(ts)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items, more=self.more)
