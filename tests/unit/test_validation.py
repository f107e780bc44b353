"""The validation helpers every API uses: text, identifiers, page tokens, and how database
errors become a gRPC status."""

from __future__ import annotations

import base64

import grpc
import pytest
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError

from shared.errors import Violations, is_code, shown
from shared.grpc_server import status_for
from shared.paging import (
    MAX_POSITION,
    decode_key,
    decode_position,
    encode_key,
    encode_position,
)


def problems(check) -> dict[str, str]:
    v = Violations()
    check(v)
    return {i.field: i.description for i in v.items}


# Text and identifiers


@pytest.mark.parametrize("text", ["A\x00B", "A\x01", "line\nbreak", "tab\t", "\r", "\x1b[1m",
                                  "\x7f", "\x85", "\x9f"])
def test_a_name_holds_no_control_character(text: str) -> None:
    assert "name" in problems(lambda v: v.text("name", text))


@pytest.mark.parametrize("text", ["first line\nsecond line", "a\ttab", "windows\r\nbreak"])
def test_prose_may_break_lines_and_tab(text: str) -> None:
    assert problems(lambda v: v.text("reason", text, prose=True)) == {}


@pytest.mark.parametrize("text", ["A\x00B", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"])
def test_prose_holds_no_other_control_character(text: str) -> None:
    assert "reason" in problems(lambda v: v.text("reason", f"why {text}", prose=True))


def test_ordinary_text_in_any_script_is_taken() -> None:
    assert problems(lambda v: v.text("name", "Müller & Søn — 株式会社 «Basel»")) == {}


@pytest.mark.parametrize("value", ["LOT-1\n", "LOT-1\x00", "\nLOT-1", "LOT 1", "-LOT"])
def test_an_identifier_must_match_its_pattern_in_full(value: str) -> None:
    assert "lot_id" in problems(lambda v: v.code("lot_id", value))
    assert not is_code(value)


def test_an_identifier_of_letters_digits_and_punctuation_is_taken() -> None:
    assert problems(lambda v: v.code("lot_id", "LOT-2026/001_a:b.c")) == {}
    assert is_code("LOT-2026/001_a:b.c")


def test_a_repeated_value_is_shown_short_and_escaped() -> None:
    assert shown("A\x00B") == "A\\x00B"
    assert len(shown("x" * 10_000)) < 100


# Page tokens


def test_a_position_token_round_trips() -> None:
    v = Violations()
    assert decode_position(v, encode_position(12345)) == 12345
    assert decode_position(v, encode_position(MAX_POSITION)) == MAX_POSITION
    assert decode_position(v, "") == 0
    assert v.items == []


@pytest.mark.parametrize("token", [
    "AA==", "garbage!", "%%%", "QUFB" * 100, encode_position(MAX_POSITION + 1),
    encode_position(0), encode_position(-1),
    base64.urlsafe_b64encode(b"p+5").decode(), base64.urlsafe_b64encode(b"p 5").decode(),
    base64.urlsafe_b64encode("p\u0665".encode()).decode(),  # an Arabic-Indic digit
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
])
def test_a_position_token_the_service_never_gave_out_is_refused(token: str) -> None:
    assert list(problems(lambda v: decode_position(v, token))) == ["page_token"]


def test_a_key_token_round_trips() -> None:
    v = Violations()
    assert decode_key(v, encode_key("LOT-0001")) == "LOT-0001"
    assert decode_key(v, "") == ""
    assert v.items == []


@pytest.mark.parametrize("key", ["\x00", "LOT-1\n", "x" * 65, "LOT 1", ""])
def test_a_key_token_holding_no_identifier_is_refused(key: str) -> None:
    token = base64.urlsafe_b64encode(key.encode()).decode() or "===="
    assert list(problems(lambda v: decode_key(v, token))) == ["page_token"]


# Database errors: only an unreachable database is UNAVAILABLE


class _Orig(Exception):
    def __init__(self, sqlstate: str | None = None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["22021", "22003", "22P02", "54000"])
def test_a_value_the_database_refuses_is_invalid_argument(sqlstate: str) -> None:
    error = DBAPIError("INSERT ...", {}, _Orig(sqlstate))
    assert status_for(error, "req").code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_data_error_is_invalid_argument() -> None:
    assert status_for(DataError("SELECT", {}, _Orig()), "req").code == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_a_value_the_driver_cannot_encode_is_invalid_argument() -> None:
    orig = _Orig()
    try:
        raise orig from OverflowError("value out of int64 range")
    except _Orig:
        pass
    error = InterfaceError("SELECT", {}, orig)
    assert status_for(error, "req").code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("error", [
    OperationalError("SELECT", {}, _Orig("08006")),
    InterfaceError("SELECT", {}, _Orig()),
    DBAPIError("SELECT", {}, _Orig("57P01")),
    ConnectionRefusedError(),
])
def test_an_unreachable_database_is_unavailable(error: Exception) -> None:
    assert status_for(error, "req").code == grpc.StatusCode.UNAVAILABLE
