"""Page tokens: opaque to callers, checked when they come back.

A token is decoded strictly (URL-safe base64 of what the service encoded) and what it
holds is checked before the database sees it: a position must fit the 64-bit columns it is
compared with, a key must be an identifier. Anything else is INVALID_ARGUMENT on
`page_token`, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import re

from shared.errors import Violations, is_code

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# Longer than any token given out (a 64-character key encodes to 88 characters).
MAX_TOKEN = 200
# Positions are row ids and sequence numbers: 64-bit integers, above zero.
MAX_POSITION = 2**63 - 1
_POSITION = re.compile(r"p([0-9]{1,19})", re.ASCII)
_NOT_OURS = "is not a token this service gave out"


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
    match = _POSITION.fullmatch(_decoded(token) or "")
    if match is None or not 0 < int(match.group(1)) <= MAX_POSITION:
        v.add(field, _NOT_OURS)
        return 0
    return int(match.group(1))


def encode_key(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_key(v: Violations, token: str, *, field: str = "page_token") -> str:
    """The identifier a token points after (a lot id, say); "" for no token."""
    if not token:
        return ""
    key = _decoded(token)
    if key is None or not is_code(key):
        v.add(field, _NOT_OURS)
        return ""
    return key


def _decoded(token: str) -> str | None:
    """The text a token encodes; None when it is not strict URL-safe base64 of UTF-8."""
    if len(token) > MAX_TOKEN:
        return None
    try:
        return base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        return None
