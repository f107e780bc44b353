"""Errors the use cases raise. They name no transport; the gRPC layer maps them to status codes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

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


class InvalidArgument(LotgateError):
    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


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


_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


class Violations:
    """Collects every problem of a request, so that the caller learns them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def code(self, field: str, value: str, *, max_length: int = 64) -> None:
        """A required identifier: letters, digits and . _ : / - , not too long."""
        if not value:
            self.add(field, "is required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters")
        elif not _CODE.match(value):
            self.add(field, "may hold only letters, digits and . _ : / - and must start with a "
                            "letter or digit")

    def codes(self, field: str, values: list[str], *, max_items: int) -> None:
        """A list of at most `max_items` identifiers, each given once (an empty list is the
        caller's to judge)."""
        if len(values) > max_items:
            self.add(field, f"must hold at most {max_items:,} ids, not {len(values):,}")
            return
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            if value in first:
                self.add(f"{field}[{i}]", f"repeats {field}[{first[value]}] ({value})")
                continue
            first[value] = i
            self.code(f"{field}[{i}]", value)

    def text(self, field: str, value: str, *, max_length: int = 500, required: bool = True) -> None:
        if required and not value.strip():
            self.add(field, "is required")
        elif len(value) > max_length:
            self.add(field, f"must be at most {max_length} characters")

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
            raise InvalidArgument(self.items)
