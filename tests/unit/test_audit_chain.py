"""The audit trail's canonical form and entry hash: the same content always gives the same
text and hash, and any change of any hashed field gives another hash."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from shared import audit_chain

ENTRY = {"sequence": 7, "recorded_at": "2026-12-01T02:30:00+00:00",
         "principal_subject": "qa.jane", "principal_name": "Jane Doe", "record_type": "lot",
         "record_id": "LOT-1", "action": "QA release", "reason": "batch record reviewed",
         "old_values": '{"status":"RELEASABLE"}', "new_values": '{"status":"RELEASED"}',
         "request_id": "r-1", "previous_hash": "a" * 64}


def test_canonical_text_is_one_per_value_whatever_the_key_order_or_time_zone() -> None:
    berlin = timezone(timedelta(hours=1))
    one = {"b": datetime(2026, 12, 1, 3, 30, tzinfo=berlin), "a": date(2027, 1, 31),
           "c": Decimal("1.50"), "d": "Söhne"}
    other = {"d": "Söhne", "c": Decimal("1.50"), "a": date(2027, 1, 31),
             "b": datetime(2026, 12, 1, 2, 30, tzinfo=UTC)}

    assert audit_chain.canonical(one) == audit_chain.canonical(other) == (
        '{"a":"2027-01-31","b":"2026-12-01T02:30:00+00:00","c":"1.50","d":"Söhne"}')


def test_the_hash_is_stable_and_ignores_only_the_entrys_own_hash() -> None:
    assert audit_chain.entry_hash(ENTRY) == audit_chain.entry_hash(
        {**ENTRY, "entry_hash": "anything"})
    assert len(audit_chain.entry_hash(ENTRY)) == 64


@pytest.mark.parametrize("field", sorted(ENTRY))
def test_a_change_of_any_hashed_field_changes_the_hash(field: str) -> None:
    changed = {**ENTRY, field: 8 if field == "sequence" else f"{ENTRY[field]}x"}

    assert audit_chain.entry_hash(changed) != audit_chain.entry_hash(ENTRY)


def test_a_value_without_a_canonical_form_is_refused() -> None:
    with pytest.raises(TypeError, match="no canonical form"):
        audit_chain.canonical({"x": object()})
