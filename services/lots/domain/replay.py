"""Decision replay: recompute a stored decision from its stored inputs with the one
`transition` the live path takes, and say what differs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.lots.domain.lifecycle import transition
from services.lots.domain.rule import DecisionInputs, LotStatus, TestKind, Unmet


@dataclass(frozen=True)
class Replayed:
    """A decision recomputed from its inputs."""

    status: LotStatus  # after the transition policy
    unmet: tuple[Unmet, ...]
    rule_status: LotStatus  # what the rule alone decided
    required_tests: tuple[TestKind, ...]
    counted: tuple[str, ...]  # ids of the results that counted


def replay(inputs: DecisionInputs, previous_status: LotStatus | None,
           previous_unmet: Iterable[Unmet]) -> Replayed:
    """The decision the live path takes from `inputs` for a lot whose previous decision
    was `previous_status` with `previous_unmet` (None and () for a lot's first decision):
    `transition`, with what the record keeps of it."""
    step = transition(inputs, previous_status, previous_unmet)
    return Replayed(step.status, step.unmet, step.rule.status, step.rule.required_tests,
                    tuple(r.result_id for r in step.rule.used_results))


def _shown(unmet: Unmet) -> str:
    return f"[{unmet.code}: {unmet.message} ({unmet.rule})]"


def replay_difference(replayed: Replayed, *, status: LotStatus, unmet: Iterable[Unmet],
                      rule_status: LotStatus | None,
                      required_tests: Iterable[TestKind] | None = None,
                      counted: Iterable[str] | None = None) -> str:
    """What differs between a stored decision and its replay; "" when they agree.

    `rule_status`, `required_tests` and `counted` are what the record says the rule gave
    (None: not recorded, which is itself a difference for the rule status).
    """
    differences: list[str] = []
    if replayed.status is not status:
        differences.append(f"status: stored {status.value}, replayed {replayed.status.value}")
    if rule_status is None:
        differences.append("rule_status: not stored")
    elif replayed.rule_status is not rule_status:
        differences.append(f"rule_status: stored {rule_status.value}, "
                           f"replayed {replayed.rule_status.value}")
    stored = tuple(unmet)
    if stored != replayed.unmet:
        stored_codes = [u.code for u in stored]
        replayed_codes = [u.code for u in replayed.unmet]
        if stored_codes != replayed_codes:
            differences.append(f"unmet codes: stored {stored_codes}, replayed {replayed_codes}")
        else:
            for mine, theirs in zip(stored, replayed.unmet, strict=True):
                if mine != theirs:
                    differences.append(f"unmet {mine.code}: stored {_shown(mine)}, "
                                       f"replayed {_shown(theirs)}")
    if required_tests is not None:
        stored_tests = [t.value for t in required_tests]
        replayed_tests = [t.value for t in replayed.required_tests]
        if stored_tests != replayed_tests:
            differences.append(f"required_tests: stored {stored_tests}, "
                               f"replayed {replayed_tests}")
    if counted is not None:
        stored_counted = sorted(counted)
        replayed_counted = sorted(replayed.counted)
        if stored_counted != replayed_counted:
            differences.append(f"counted results: stored {stored_counted}, "
                               f"replayed {replayed_counted}")
    return "; ".join(differences)
