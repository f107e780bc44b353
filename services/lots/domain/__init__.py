"""The lots service's domain, pure (no I/O, no clock of its own):

- `rule`: the release rule (`decide`) and the facts it decides from;
- `lifecycle`: statuses a lot can leave, the one `transition` every decision takes, time;
- `lot`: a received lot as the decision path sees it;
- `projection`: what other services announced (results, qualifications), as facts;
- `qa_actions`: QA's actions on a lot, as rules;
- `reviews`: reviews of released lots whose supplier lost its approval;
- `replay`: a stored decision recomputed from its inputs.

The names below are the domain's vocabulary, re-exported for callers that use many.
"""

from services.lots.domain.lifecycle import (
    DECIDED_ON_POLICY,
    DECIDED_ON_QUALIFICATION,
    FINAL,
    USABLE,
    Step,
    keeps_qa_release,
    moved_by_time,
    next_status,
    receipt_date_problems,
    retest_date_problem,
    transition,
)
from services.lots.domain.lot import Key, Lot
from services.lots.domain.replay import Replayed, replay, replay_difference
from services.lots.domain.reviews import (
    WITHDRAWN,
    ReviewState,
    must_close,
    needs_review,
    review_id_of,
)
from services.lots.domain.rule import (
    NO_QA,
    REQUIRED_TESTS,
    SUPPLIER_CODES,
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
    decide,
    lot_expired,
    missing_results,
    qualification_unmet,
    required_tests,
    retest_date_reached,
)

__all__ = [
    "DECIDED_ON_POLICY", "DECIDED_ON_QUALIFICATION", "FINAL", "NO_QA", "REQUIRED_TESTS",
    "SUPPLIER_CODES", "USABLE", "WITHDRAWN", "Decision", "DecisionInputs", "Key", "Lot",
    "LotFacts", "LotStatus", "QaFacts", "QualificationFacts", "ReleasePolicy", "Replayed",
    "ResultFacts", "ResultState", "ReviewState", "Step", "TestKind", "Unmet", "Verdict",
    "decide", "keeps_qa_release", "lot_expired", "missing_results", "moved_by_time",
    "must_close", "needs_review", "next_status", "qualification_unmet",
    "receipt_date_problems", "replay", "replay_difference", "required_tests",
    "retest_date_problem", "retest_date_reached", "review_id_of", "transition",
]
