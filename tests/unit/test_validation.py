"""The validation helpers every API uses: text, identifiers, page tokens, caps, and how the
errors they raise become a gRPC status."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError

from shared import logs
from shared.errors import MAX_VIOLATIONS, InvalidArgument, Violations, is_code, shown
from shared.grpc_server import MAX_DETAIL_BYTES, status_for
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


@pytest.mark.req("INP-001")
@pytest.mark.parametrize("text", ["A\x00B", "A\x01", "line\nbreak", "tab\t", "\r", "\x1b[1m",
                                  "\x7f", "\x85", "\x9f"])
def test_a_name_holds_no_control_character(text: str) -> None:
    assert "name" in problems(lambda v: v.text("name", text))


@pytest.mark.req("INP-001")
@pytest.mark.parametrize("text", ["first line\nsecond line", "a\ttab", "windows\r\nbreak"])
def test_prose_may_break_lines_and_tab(text: str) -> None:
    assert problems(lambda v: v.text("reason", text, prose=True)) == {}


@pytest.mark.req("INP-001")
@pytest.mark.parametrize("text", ["A\x00B", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"])
def test_prose_holds_no_other_control_character(text: str) -> None:
    assert "reason" in problems(lambda v: v.text("reason", f"why {text}", prose=True))


@pytest.mark.req("INP-001")
def test_ordinary_text_in_any_script_is_taken() -> None:
    assert problems(lambda v: v.text("name", "Müller & Søn — 株式会社 «Basel»")) == {}


@pytest.mark.req("INP-001")
@pytest.mark.parametrize("value", ["LOT-1\n", "LOT-1\x00", "\nLOT-1", "LOT 1", "-LOT"])
def test_an_identifier_must_match_its_pattern_in_full(value: str) -> None:
    assert "lot_id" in problems(lambda v: v.code("lot_id", value))
    assert not is_code(value)


@pytest.mark.req("INP-001")
def test_an_identifier_of_letters_digits_and_punctuation_is_taken() -> None:
    assert problems(lambda v: v.code("lot_id", "LOT-2026/001_a:b.c")) == {}
    assert is_code("LOT-2026/001_a:b.c")


@pytest.mark.req("INP-002")
def test_a_repeated_value_is_shown_short_and_escaped() -> None:
    assert shown("A\x00B") == "A\\x00B"
    assert len(shown("x" * 10_000)) < 100


# Caps


@pytest.mark.req("INP-002")
def test_a_repeated_field_over_its_cap_is_one_violation_and_its_entries_are_not_read() -> None:
    v = Violations()
    assert not v.at_most("resume_from", [object()] * 100_000, 1000)
    assert [i.field for i in v.items] == ["resume_from"]
    assert v.at_most("lot_ids", ["a"] * 1000, 1000)


@pytest.mark.req("INP-002")
def test_codes_over_the_cap_is_one_violation() -> None:
    assert list(problems(lambda v: v.codes("lot_ids", ["\x00"] * 5000, max_items=1000))) == [
        "lot_ids"]


@pytest.mark.req("INP-002")
def test_violations_beyond_the_cap_are_counted_not_kept() -> None:
    v = Violations()
    for i in range(10_000):
        v.add(f"lot_ids[{i}]", "is required")
    assert len(v.items) == MAX_VIOLATIONS
    assert len(v) == 10_000
    with pytest.raises(InvalidArgument) as raised:
        v.raise_if_any()
    assert raised.value.more == 10_000 - MAX_VIOLATIONS
    assert len(raised.value.message) < 600
    assert raised.value.message.endswith("(10,000 problems in all)")


@pytest.mark.req("INP-002")
def test_the_bad_request_detail_stays_small_and_says_how_many_more() -> None:
    v = Violations()
    for i in range(10_000):
        v.add(f"results[{i}].instrument_result_id", "x" * 150)
    with pytest.raises(InvalidArgument) as raised:
        v.raise_if_any()

    status = status_for(raised.value, "req")
    bad = _bad_request(status)
    assert bad.ByteSize() <= MAX_DETAIL_BYTES + 100
    assert bad.field_violations[0].field == "results[0].instrument_result_id"
    last = bad.field_violations[-1]
    assert last.field == ""
    shown_count = len(bad.field_violations) - 1
    assert last.description == f"and {10_000 - shown_count:,} more problems"
    assert sum(len(k) + len(val) for k, val in status.trailing_metadata) < 4096


@pytest.mark.req("INP-001")
def test_a_few_violations_are_all_reported() -> None:
    status = status_for(_raised(
        lambda v: (v.add("a", "is required"), v.add("b", "is required"))), "req")
    assert [f.field for f in _bad_request(status).field_violations] == ["a", "b"]
    assert status.details == "a: is required; b: is required"


def _raised(check) -> InvalidArgument:
    v = Violations()
    check(v)
    with pytest.raises(InvalidArgument) as raised:
        v.raise_if_any()
    return raised.value


def _bad_request(status: grpc.Status) -> error_details_pb2.BadRequest:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            rich = status_pb2.Status.FromString(value)
            bad = error_details_pb2.BadRequest()
            rich.details[0].Unpack(bad)
            return bad
    raise AssertionError("no BadRequest detail")


# Page tokens


@pytest.mark.req("INP-002")
def test_a_position_token_round_trips() -> None:
    v = Violations()
    assert decode_position(v, encode_position(12345)) == 12345
    assert decode_position(v, encode_position(MAX_POSITION)) == MAX_POSITION
    assert decode_position(v, "") == 0
    assert v.items == []


@pytest.mark.req("INP-002")
@pytest.mark.parametrize("token", [
    "AA==", "garbage!", "%%%", "QUFB" * 100, encode_position(MAX_POSITION + 1),
    encode_position(0), encode_position(-1),
    base64.urlsafe_b64encode(b"p+5").decode(), base64.urlsafe_b64encode(b"p 5").decode(),
    base64.urlsafe_b64encode("p\u0665".encode()).decode(),  # an Arabic-Indic digit
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
])
def test_a_position_token_the_service_never_gave_out_is_refused(token: str) -> None:
    assert list(problems(lambda v: decode_position(v, token))) == ["page_token"]


@pytest.mark.req("INP-002")
def test_a_key_token_round_trips() -> None:
    v = Violations()
    assert decode_key(v, encode_key("LOT-0001")) == "LOT-0001"
    assert decode_key(v, "") == ""
    assert v.items == []


@pytest.mark.req("INP-002")
@pytest.mark.parametrize("key", ["\x00", "LOT-1\n", "x" * 65, "LOT 1", ""])
def test_a_key_token_holding_no_identifier_is_refused(key: str) -> None:
    token = base64.urlsafe_b64encode(key.encode()).decode() or "===="
    assert list(problems(lambda v: decode_key(v, token))) == ["page_token"]


# Database errors: only an unreachable database is UNAVAILABLE


class _Orig(Exception):
    def __init__(self, sqlstate: str | None = None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


@pytest.mark.req("INP-001")
@pytest.mark.parametrize("sqlstate", ["22021", "22003", "22P02", "54000"])
def test_a_value_the_database_refuses_is_invalid_argument(sqlstate: str) -> None:
    error = DBAPIError("INSERT ...", {}, _Orig(sqlstate))
    assert status_for(error, "req").code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.req("INP-001")
def test_a_data_error_is_invalid_argument() -> None:
    assert status_for(DataError("SELECT", {}, _Orig()), "req").code == \
        grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.req("INP-001")
def test_a_value_the_driver_cannot_encode_is_invalid_argument() -> None:
    orig = _Orig()
    try:
        raise orig from OverflowError("value out of int64 range")
    except _Orig:
        pass
    error = InterfaceError("SELECT", {}, orig)
    assert status_for(error, "req").code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.req("DEL-003")
@pytest.mark.parametrize("error", [
    OperationalError("SELECT", {}, _Orig("08006")),
    InterfaceError("SELECT", {}, _Orig()),
    DBAPIError("SELECT", {}, _Orig("57P01")),
    ConnectionRefusedError(),
])
def test_an_unreachable_database_is_unavailable(error: Exception) -> None:
    assert status_for(error, "req").code == grpc.StatusCode.UNAVAILABLE


# Log lines


@pytest.mark.req("INP-002")
def test_a_log_line_carries_at_most_a_thousand_characters_of_a_value() -> None:
    event = logs._truncate_values(None, "info", {"event": "rpc", "error": "x" * 1_000_000,
                                                  "code": "INVALID_ARGUMENT", "ms": 1.5})
    line = json.dumps(event)
    assert len(line) < 1500
    assert event["error"].endswith("... (1,000,000 characters)")
    assert event["code"] == "INVALID_ARGUMENT" and event["ms"] == 1.5
