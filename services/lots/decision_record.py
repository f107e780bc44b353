"""The stored format of a decision: its conditions and its inputs as JSON (the `unmet`
and `inputs` columns), and the content QA's electronic signatures sign.

The inputs hold everything `decide` was given (the lot id is the record's), so that the
decision can be replayed with the same `transition` (domain/replay.py), and what the rule
made of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from services.lots.domain.rule import (
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


def inputs_to_json(inputs: DecisionInputs, decision: Decision) -> str:
    """The `inputs` of a decision record: everything `decide` was given, and what the rule
    made of it."""
    lot, qualification, qa = inputs.lot, inputs.qualification, inputs.qa
    return json.dumps({
        "now": inputs.now.isoformat(),
        "expiry_date": lot.expiry_date.isoformat(),
        "retest_date": lot.retest_date.isoformat() if lot.retest_date else None,
        "release_policy": qa.policy.value,
        "qa_released": qa.released,
        "qa_hold_reason": qa.hold_reason,
        "qa_rejection_reason": qa.rejection_reason,
        "supplier_id": lot.supplier_id,
        "supplier_site_id": lot.supplier_site_id,
        "material_code": lot.material_code,
        "qualification": None if qualification is None else {
            "status": qualification.status, "version": qualification.version,
            "valid_until": (qualification.valid_until.isoformat()
                            if qualification.valid_until else None)},
        # Every result the rule saw, with QA's state of it, and which of them counted.
        "results": [{"result_id": r.result_id, "test": r.test.value,
                     "verdict": r.verdict.value, "sequence": r.sequence,
                     "number": r.number, "spec_version": r.spec_version,
                     "state": r.state.value, "state_reason": r.state_reason,
                     "retest_of": r.retest_of,
                     "required_tests": [t.value for t in r.required_tests]}
                    for r in sorted(inputs.results, key=lambda r: (r.sequence, r.result_id))],
        "required_tests": [t.value for t in decision.required_tests],
        "counted": [r.result_id for r in decision.used_results],
        "rule_status": decision.status.value,
    }, separators=(",", ":"))


@dataclass(frozen=True)
class StoredInputs:
    """The inputs of a decision record, read back: what the rule was given, and what the
    record says it made of them."""

    inputs: DecisionInputs
    rule_status: LotStatus | None
    required_tests: tuple[TestKind, ...] | None
    counted: tuple[str, ...] | None


def inputs_from_json(lot_id: str, text: str) -> StoredInputs:
    """Parse a record's inputs; ValueError naming what is missing or malformed."""
    try:
        data: Any = json.loads(text)
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
    except KeyError as missing:
        raise ValueError(f"{missing.args[0]} is not stored") from None
    except (TypeError, AttributeError) as error:
        raise ValueError(f"malformed inputs: {error}") from None


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
