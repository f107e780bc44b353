"""Page tokens: opaque to callers, checked when they come back."""

from __future__ import annotations

import base64
import binascii

from shared.errors import Violations

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_size(v: Violations, value: int, *, field: str = "page_size") -> int:
    """The number of items to return: the default for 0, INVALID_ARGUMENT out of range."""
    if not 0 <= value <= MAX_PAGE:
        v.add(field, f"must be between 0 and {MAX_PAGE}")
    return value or DEFAULT_PAGE


def encode_position(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode()


def decode_position(v: Violations, token: str, *, field: str = "page_token") -> int:
    """The position a token points after; 0 for no token."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("p"):
            raise ValueError
        position = int(text[1:])
        if position < 0:
            raise ValueError
        return position
    except (binascii.Error, UnicodeDecodeError, ValueError):
        v.add(field, "is not a token this service gave out")
        return 0
