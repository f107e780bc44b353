"""The stored format of a decision: its conditions and its inputs as JSON (the `unmet`
and `inputs` columns), and the content QA's electronic signatures sign.

The inputs hold everything `decide` was given (the lot id is the record's), so that the
decision can be replayed with the same `transition` (domain/replay.py), and what the rule
made of it. The results the rule saw are named, not copied: each by its id and the state
QA had given it then; the rest of a result's facts never change and are read back from
lot_results (`queries.results_of`). Records of the first format, which copied every
result's facts, are read as they were written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from services.lots.domain.rule import (
    REQUIRED_TESTS,
    Decision,
    DecisionInputs,
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Unmet,
    Verdict,
)

# Record types of the signatures (shared.esign) on decisions and on reviews. A QA action
# signs the decision it makes: the lot, the decision's version and the status it gives.
# That content is known before the decision, so the first of two release signatures can
# sign it too.
DECISION = "lot_decision"
REVIEW = "lot_review"


def unmet_to_json(unmet: Iterable[Unmet]) -> str:
    return json.dumps([[u.code, u.message, u.rule] for u in unmet], separators=(",", ":"))


def unmet_from_json(text: str) -> tuple[Unmet, ...]:
    return tuple(Unmet(*item) for item in json.loads(text))


# The inputs' format: 2 names each result by its id (and QA's state of it at decision time)
# and reads its facts from lot_results; a record without "v" is of the first format, which
# copied each result's facts, and is read as it was written.
FORMAT = 2
_VALID = ResultState.VALID
# The names the first format gave the facts stored under the short keys (said when one
# is missing).
_LONG = {"exp": "expiry_date", "sup": "supplier_id", "site": "supplier_site_id",
         "mat": "material_code", "r": "results", "rs": "rule_status"}


def inputs_to_json(inputs: DecisionInputs, decision: Decision) -> str:
    """The `inputs` of a decision record: everything `decide` was given, and what the rule
    made of it.

    A result is stored by reference: its id, with QA's state of it and the reason when
    not VALID (the state is the one fact of a result that changes: lot_results keeps the
    rest as it was recorded, and is never deleted).
    Facts at their usual value are left out (no retest date, the AUTOMATIC policy, no QA
    action, the three tests every lot requires); "c" holds the positions, in "r", of the
    results that counted.
    """
    lot, qualification, qa = inputs.lot, inputs.qualification, inputs.qa
    results = sorted(inputs.results, key=_by_sequence)
    data: dict[str, Any] = {
        "v": FORMAT, "now": inputs.now.isoformat(), "exp": lot.expiry_date.isoformat(),
        "sup": lot.supplier_id, "site": lot.supplier_site_id, "mat": lot.material_code}
    if lot.retest_date is not None:
        data["retest"] = lot.retest_date.isoformat()
    if qa.policy is not ReleasePolicy.AUTOMATIC:
        data["policy"] = qa.policy.value
    if qa.released:
        data["released"] = True
    if qa.hold_reason:
        data["hold"] = qa.hold_reason
    if qa.rejection_reason:
        data["reject"] = qa.rejection_reason
    if qualification is not None:
        data["q"] = [qualification.status, qualification.version,
                     qualification.valid_until.isoformat()
                     if qualification.valid_until else None]
    data["r"] = [r.result_id if r.state is _VALID and not r.state_reason
                 else [r.result_id, r.state.value, r.state_reason] for r in results]
    if decision.required_tests != REQUIRED_TESTS:
        data["req"] = [t.value for t in decision.required_tests]
    position = {r.result_id: n for n, r in enumerate(results)}
    data["c"] = [position[r.result_id] for r in decision.used_results]
    data["rs"] = decision.status.value
    return json.dumps(data, separators=(",", ":"))


def _by_sequence(r: ResultFacts) -> tuple[int, str]:
    return r.sequence, r.result_id


@dataclass(frozen=True)
class StoredInputs:
    """The inputs of a decision record, read back: what the rule was given, and what the
    record says it made of them."""

    inputs: DecisionInputs
    rule_status: LotStatus | None
    required_tests: tuple[TestKind, ...] | None
    counted: tuple[str, ...] | None


def inputs_from_json(lot_id: str, text: str,
                     results: Mapping[str, ResultFacts] | None = None) -> StoredInputs:
    """Parse a record's inputs, either format; `results`: the lot's results as lot_results
    holds them (by id), which a record of format 2 names. ValueError naming what is
    missing or malformed."""
    try:
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        if data.get("v") == FORMAT:
            return _stored(lot_id, data, results or {})
        if "v" in data:
            raise ValueError(f"unknown inputs format {data['v']!r}")
        return _first_format(lot_id, data)
    except KeyError as missing:
        raise ValueError(f"{_LONG.get(missing.args[0], missing.args[0])} is not stored"
                         ) from None
    except (TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"malformed inputs: {error}") from None


def _stored(lot_id: str, data: dict[str, Any],
            known: Mapping[str, ResultFacts]) -> StoredInputs:
    q = data.get("q")
    qualification = None if q is None else QualificationFacts(
        q[0], _instant(q[2]), int(q[1]))
    results = tuple(_referenced(entry, known) for entry in data["r"])
    retest = data.get("retest")
    lot = LotFacts(lot_id, data["mat"], data["sup"], data["site"],
                   date.fromisoformat(data["exp"]),
                   date.fromisoformat(retest) if retest is not None else None)
    qa = QaFacts(ReleasePolicy(data.get("policy", ReleasePolicy.AUTOMATIC.value)),
                 bool(data.get("released", False)), str(data.get("hold", "")),
                 str(data.get("reject", "")))
    now = _instant(data["now"])
    if now is None:
        raise ValueError("now is not stored")
    required = data.get("req")
    counted = tuple(results[_position(n, len(results))].result_id for n in data["c"])
    return StoredInputs(DecisionInputs(lot, qualification, results, now, qa),
                        LotStatus(data["rs"]),
                        REQUIRED_TESTS if required is None
                        else tuple(TestKind(t) for t in required),
                        counted)


def _position(n: Any, count: int) -> int:
    if not isinstance(n, int) or not 0 <= n < count:
        raise ValueError(f"malformed inputs: no result at position {n!r}")
    return n


def _referenced(entry: str | list[str], known: Mapping[str, ResultFacts]) -> ResultFacts:
    """A result as the rule saw it: its facts from lot_results, with the state it had."""
    if isinstance(entry, str):
        result_id, state, reason = entry, _VALID.value, ""
    elif isinstance(entry, list) and len(entry) == 3:
        result_id, state, reason = entry
    else:
        raise ValueError(f"malformed inputs: result {entry!r}")
    found = known.get(result_id)
    if found is None:
        raise ValueError(f"result {result_id} is not stored")
    state_then = ResultState(state)
    if found.state is state_then and found.state_reason == reason:
        return found
    return replace(found, state=state_then, state_reason=reason)


def _first_format(lot_id: str, data: dict[str, Any]) -> StoredInputs:
    """The first format: every result's facts copied into the record."""
    q = data["qualification"]
    qualification = None if q is None else QualificationFacts(
        q["status"], _instant(q["valid_until"]), int(q["version"]))
    results = tuple(ResultFacts(
        r["result_id"], TestKind(r["test"]), Verdict(r["verdict"]), int(r["sequence"]),
        int(r["spec_version"]), int(r["number"]), state=ResultState(r["state"]),
        state_reason=r["state_reason"], retest_of=r["retest_of"],
        required_tests=tuple(TestKind(t) for t in r["required_tests"]))
        for r in data["results"])
    retest = data["retest_date"]
    lot = LotFacts(lot_id, data["material_code"], data["supplier_id"],
                   data["supplier_site_id"], date.fromisoformat(data["expiry_date"]),
                   date.fromisoformat(retest) if retest is not None else None)
    qa = QaFacts(ReleasePolicy(data["release_policy"]), bool(data["qa_released"]),
                 str(data["qa_hold_reason"]), str(data["qa_rejection_reason"]))
    now = _instant(data["now"])
    if now is None:
        raise ValueError("now is not stored")
    rule_status = data.get("rule_status")
    required = data.get("required_tests")
    counted = data.get("counted")
    return StoredInputs(
        DecisionInputs(lot, qualification, results, now, qa),
        LotStatus(rule_status) if rule_status is not None else None,
        tuple(TestKind(t) for t in required) if required is not None else None,
        tuple(counted) if counted is not None else None)


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def signed_decision(lot_id: str, version: int) -> str:
    """The record id a decision's signatures name."""
    return f"{lot_id}/{version}"


def decision_content(lot_id: str, version: int, status: LotStatus) -> dict[str, Any]:
    """What a signature on a decision signs."""
    return {"lot_id": lot_id, "version": version, "status": status.value}


def review_content(review_id: str, lot_id: str, state: str, conclusion: str | None,
                   closed_by: str | None) -> dict[str, Any]:
    """What a signature on a review signs."""
    return {"review_id": review_id, "lot_id": lot_id, "state": state,
            "conclusion": conclusion, "closed_by": closed_by}
