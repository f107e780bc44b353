"""Any interleaving and duplication of the same events ends in the same state.

A stateful property test (Hypothesis) of the pure release rule with the lots service's
projection of its events, as the service applies them (services/lots/handlers.py and
repository.py):

- a recorded result is stored unless the projection holds it already (a redelivery, or
  its invalidation or confirmation that came first and carried the whole result);
- QA's invalidation or confirmation stores the result if it is not there yet, else moves
  it out of VALID; a result out of VALID keeps its state;
- a qualification change counts only when its version is higher than the one held, and
  decides the lot again only while the lot is open (QUARANTINE, ON_HOLD, RELEASABLE);
- the release policy, likewise by version; QA's hold and rejection are facts of the lot;
- events for a lot not received yet wait in the projection and count at its receipt;
- every event that concerns a received lot decides it again: `next_status(current,
  decide(...))`.

The machine issues events (results, invalidations, confirmations, qualification changes,
QA facts, the receipt) and delivers them in any order, any number of times. After every
step the projection must equal the projection of the same set of events applied in one
canonical order, the decision must not depend on the order of the results, and the lot's
status must be the status that set of events decides, with the one documented
exception: a released lot stays RELEASED when, since its release, only its supplier's
standing lapsed or its material's policy came to want QA's release (QA reviews such
lots). A lot is never RELEASED unless the rule, at some moment, found nothing unmet.

STATEFUL_EXAMPLES sets how many sequences run (25 by default, for CI; `make stateful` runs
2,000), STATEFUL_STEPS how many steps each may take (60).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.lots.domain import (
    SUPPLIER_CODES,
    Decision,
    LotFacts,
    LotStatus,
    QaFacts,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    TestKind,
    Verdict,
    decide,
    next_status,
)

EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "25"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "60"))

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LOT = LotFacts("LOT-1", "MAT-1", "SUP-1", "SITE-1", expiry_date=date(2028, 6, 30))
OPEN = (LotStatus.QUARANTINE, LotStatus.ON_HOLD, LotStatus.RELEASABLE)
# Why a released lot may stay RELEASED where the same events, all known at once, decide
# otherwise: its supplier lapsed after its release, or the policy now wants QA.
KEPT_RELEASED_FOR = SUPPLIER_CODES | {"QA_RELEASE_REQUIRED"}

# Events. Each is issued once; the broker may deliver it any number of times.


@dataclass(frozen=True)
class Received:
    order = 0


@dataclass(frozen=True)
class QualificationChanged:
    facts: QualificationFacts
    order = 1


@dataclass(frozen=True)
class PolicySet:
    version: int
    policy: ReleasePolicy
    order = 2


@dataclass(frozen=True)
class QaHeld:
    reason: str
    order = 3


@dataclass(frozen=True)
class QaRejected:
    reason: str
    order = 4


@dataclass(frozen=True)
class ResultRecorded:
    result: ResultFacts
    order = 5


@dataclass(frozen=True)
class ResultStateChanged:
    """QA's invalidation or confirmation: the event carries the whole result."""

    result: ResultFacts
    order = 6


Event = (Received | QualificationChanged | PolicySet | QaHeld | QaRejected | ResultRecorded
         | ResultStateChanged)


def canonical_key(event: Event) -> tuple[int, int, str]:
    if isinstance(event, QualificationChanged):
        return (event.order, event.facts.version, "")
    if isinstance(event, PolicySet):
        return (event.order, event.version, "")
    if isinstance(event, ResultRecorded | ResultStateChanged):
        return (event.order, event.result.sequence, event.result.result_id)
    return (event.order, 0, "")


@dataclass
class Projection:
    """What the lots service keeps of the events, and the status it decided."""

    received: bool = False
    results: dict[str, ResultFacts] = field(default_factory=dict)  # in arrival order
    qualification: QualificationFacts | None = None
    policy: tuple[int, ReleasePolicy] = (0, ReleasePolicy.AUTOMATIC)
    hold_reason: str = ""
    rejection_reason: str = ""
    status: LotStatus | None = None
    # Whether the rule ever decided RELEASED for this lot (a release needs one).
    rule_released: bool = False

    def qa(self) -> QaFacts:
        return QaFacts(policy=self.policy[1], hold_reason=self.hold_reason,
                       rejection_reason=self.rejection_reason)

    def decision(self, results: list[ResultFacts] | None = None) -> Decision:
        listed = list(self.results.values()) if results is None else results
        return decide(LOT, self.qualification, listed, NOW, self.qa())

    def facts(self) -> tuple[object, ...]:
        """Everything but the status and the arrival order."""
        return (self.received, dict(sorted(self.results.items())), self.qualification,
                self.policy, self.hold_reason, self.rejection_reason)

    def apply(self, event: Event) -> None:
        redecide = self.received
        match event:
            case Received():
                redecide = not self.received
                self.received = True
            case ResultRecorded(result=r):
                self.results.setdefault(r.result_id, r)
            case ResultStateChanged(result=r):
                held = self.results.get(r.result_id)
                if held is None:
                    self.results[r.result_id] = r
                elif held.state is ResultState.VALID:
                    self.results[r.result_id] = dataclasses.replace(
                        held, state=r.state, state_reason=r.state_reason)
            case QualificationChanged(facts=q):
                held_version = self.qualification.version if self.qualification else 0
                if q.version <= held_version:
                    return  # older or repeated announcement
                self.qualification = q
                redecide = self.received and self.status in OPEN
            case PolicySet(version=version, policy=policy):
                if version <= self.policy[0]:
                    return
                self.policy = (version, policy)
            case QaHeld(reason=reason):
                self.hold_reason = reason
            case QaRejected(reason=reason):
                self.rejection_reason = reason
        if redecide:
            decision = self.decision()
            self.rule_released |= decision.status is LotStatus.RELEASED
            self.status = next_status(self.status, decision)


def canonical(events: set[Event]) -> Projection:
    """The projection of a set of events applied in one fixed order, the lot last: every
    fact known before its one decision."""
    projection = Projection()
    for event in sorted(events - {Received()}, key=canonical_key):
        projection.apply(event)
    if Received() in events:
        projection.apply(Received())
    return projection


QUALIFICATION_STATUSES = ("QUALIFIED", "QUALIFIED", "QUALIFIED", "PENDING", "SUSPENDED",
                          "DISQUALIFIED", "EXPIRED")
TESTS = (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY, TestKind.ASSAY)


class LotEvents(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.issued: list[Event] = [Received()]
        self.delivered: list[Event] = []
        self.projection = Projection()
        self.results: list[ResultFacts] = []
        self.handled: set[str] = set()  # results QA has invalidated or confirmed
        self.qualification_version = 0
        self.policy_version = 0

    # Issuing: what the other services and QA do.

    @initialize()
    def a_qualified_supplier_and_three_passing_results(self) -> None:
        """A lot that would be released: what happens after a release is explored too."""
        self.change_qualification("QUALIFIED", lapsed=False)
        for test in (TestKind.IDENTITY, TestKind.PURITY, TestKind.STERILITY):
            self.record_result(test, Verdict.PASS, spec_version=1)

    # Mostly passing results of the first specification version, so that lots get
    # released often enough for what may happen to a released lot to be explored.
    @rule(test=st.sampled_from(TESTS),
          verdict=st.sampled_from((Verdict.PASS,) * 7 + (Verdict.FAIL,)),
          spec_version=st.sampled_from((1, 1, 1, 2)))
    def record_result(self, test: TestKind, verdict: Verdict, spec_version: int) -> None:
        number = len(self.results) + 1
        # Version 2 of the specification adds an assay.
        required = (TestKind.ASSAY,) if spec_version == 2 else ()
        result = ResultFacts(f"R-{number}", test, verdict, sequence=number,
                             spec_version=spec_version, number=number,
                             required_tests=required)
        self.results.append(result)
        self.issued.append(ResultRecorded(result))

    def _unhandled(self, *, failures_only: bool) -> list[ResultFacts]:
        return [r for r in self.results if r.result_id not in self.handled
                and (r.verdict is Verdict.FAIL or not failures_only)]

    @precondition(lambda self: self._unhandled(failures_only=False))
    @rule(data=st.data())
    def invalidate(self, data: st.DataObject) -> None:
        result = data.draw(st.sampled_from(self._unhandled(failures_only=False)))
        self._handle(result, ResultState.INVALIDATED, "sample diluted twice")

    @precondition(lambda self: self._unhandled(failures_only=True))
    @rule(data=st.data(), rarely=st.integers(0, 3))
    def confirm(self, data: st.DataObject, rarely: int) -> None:
        result = data.draw(st.sampled_from(self._unhandled(failures_only=True)))
        if rarely == 0:
            self._handle(result, ResultState.CONFIRMED, "no laboratory error")

    def _handle(self, result: ResultFacts, state: ResultState, reason: str) -> None:
        self.handled.add(result.result_id)
        self.issued.append(ResultStateChanged(
            dataclasses.replace(result, state=state, state_reason=reason)))

    @rule(status=st.sampled_from(QUALIFICATION_STATUSES),
          lapsed=st.sampled_from((False, False, False, True)))
    def change_qualification(self, status: str, lapsed: bool) -> None:
        self.qualification_version += 1
        valid_until = NOW + (timedelta(days=-1) if lapsed else timedelta(days=365))
        self.issued.append(QualificationChanged(
            QualificationFacts(status, valid_until, self.qualification_version)))

    @rule(policy=st.sampled_from(ReleasePolicy))
    def set_policy(self, policy: ReleasePolicy) -> None:
        self.policy_version += 1
        self.issued.append(PolicySet(self.policy_version, policy))

    # QA's hold and rejection (and confirmations, below) end most sequences in ON_HOLD or
    # REJECTED; drawn rarely, they leave room for releases and what follows them.

    @precondition(lambda self: QaHeld("DEV-1: label mix-up") not in self.issued)
    @rule(rarely=st.integers(0, 15))
    def hold(self, rarely: int) -> None:
        if rarely == 0:
            self.issued.append(QaHeld("DEV-1: label mix-up"))

    @precondition(lambda self: QaRejected("DEV-2: container damaged") not in self.issued)
    @rule(rarely=st.integers(0, 15))
    def reject(self, rarely: int) -> None:
        if rarely == 0:
            self.issued.append(QaRejected("DEV-2: container damaged"))

    # Delivering: in any order, any number of times.

    def _undelivered(self) -> list[Event]:
        return [e for e in self.issued if e not in self.delivered]

    @precondition(lambda self: self._undelivered())
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        self._apply(data.draw(st.sampled_from(self._undelivered())))

    @precondition(lambda self: len(self._undelivered()) > 1)
    @rule(data=st.data())
    def deliver_the_rest(self, data: st.DataObject) -> None:
        """Everything issued so far, in a drawn order (a backlog arriving at once)."""
        for event in data.draw(st.permutations(self._undelivered())):
            self._apply(event)

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def deliver_again(self, data: st.DataObject) -> None:
        self._apply(data.draw(st.sampled_from(self.delivered)))

    def _apply(self, event: Event) -> None:
        self.delivered.append(event)
        self.projection.apply(event)


    # What must hold after every step.

    @invariant()
    def the_facts_do_not_depend_on_order_or_copies(self) -> None:
        expected = canonical(set(self.delivered))
        assert self.projection.facts() == expected.facts()

    @invariant()
    def the_decision_does_not_depend_on_the_order_of_the_results(self) -> None:
        arrived = list(self.projection.results.values())
        by_id = sorted(arrived, key=lambda r: r.result_id, reverse=True)
        assert self.projection.decision(arrived) == self.projection.decision(by_id)

    @invariant()
    def the_status_is_the_one_the_events_decide(self) -> None:
        got = self.projection.status
        expected = canonical(set(self.delivered))
        if got == expected.status:
            return
        decided = expected.decision()
        assert got is LotStatus.RELEASED, (got, expected.status, decided.unmet)
        assert expected.status in (LotStatus.QUARANTINE, LotStatus.RELEASABLE), decided
        assert {u.code for u in decided.unmet} <= KEPT_RELEASED_FOR, decided.unmet

    @invariant()
    def a_lot_is_released_only_after_the_rule_found_nothing_unmet(self) -> None:
        if self.projection.status is LotStatus.RELEASED:
            assert self.projection.rule_released

    @invariant()
    def rejected_is_final_and_follows_from_the_events(self) -> None:
        if self.projection.status is LotStatus.REJECTED:
            confirmed = any(r.state is ResultState.CONFIRMED and r.verdict is Verdict.FAIL
                            for r in self.projection.results.values())
            assert confirmed or self.projection.rejection_reason


@pytest.mark.req("REL-007", "DEL-002", "DEL-004", "REL-010")
def test_any_interleaving_and_duplication_of_the_same_events_ends_in_the_same_state() -> None:
    run_state_machine_as_test(LotEvents, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))


@pytest.mark.req("REL-007", "DEL-004")
def test_the_canonical_projection_of_a_release_then_a_suspension_keeps_the_lot_released() -> (
        None):
    """The exception the property allows, shown once by hand: released first, suspended
    after, the lot stays RELEASED; the same events known at once keep it in QUARANTINE."""
    passing = [ResultRecorded(ResultFacts(f"R-{n}", test, Verdict.PASS, n, 1, n))
               for n, test in enumerate(TESTS[:3], start=1)]
    qualified = QualificationChanged(QualificationFacts("QUALIFIED", NOW + timedelta(days=9), 1))
    suspended = QualificationChanged(QualificationFacts("SUSPENDED", NOW + timedelta(days=9), 2))
    lot = Projection()
    for event in [Received(), qualified, *passing, suspended]:
        lot.apply(event)

    all_at_once = canonical({Received(), qualified, *passing, suspended})

    assert lot.status is LotStatus.RELEASED
    assert all_at_once.status is LotStatus.QUARANTINE
    assert [u.code for u in all_at_once.decision().unmet] == ["SUPPLIER_SUSPENDED"]
    assert lot.facts() == all_at_once.facts()
