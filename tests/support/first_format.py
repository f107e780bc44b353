"""Decision inputs as the first format stored them (before results were stored by
reference): every result's facts copied, no format marker. Records of that format are
still read (decision_record.inputs_from_json); this writer, as it was, makes such records
for the tests and the decision inputs benchmark.
"""

from __future__ import annotations

import json

from services.lots.domain import Decision, DecisionInputs


def first_format(inputs: DecisionInputs, decision: Decision) -> str:
    """The inputs as the first format wrote them: every result's facts copied."""
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
