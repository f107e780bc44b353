"""`python -m tests.bench.decision_inputs`: the CPU and the size of a decision's stored
inputs, in the format written today (results by reference, decision_record.inputs_to_json)
and in the first format (every result's facts copied), over the scale benchmark's
decisions (tests/bench/scale.py: its lot shapes, each decided for every supplier key).

Encoding runs on the decision path, once per decision recorded (every result that moves
a lot), so it must cost no more than the first format did; reading back runs for
ExplainDecision and ListDecisions. Each figure is the best of REPEATS passes over
DECISIONS decisions, in microseconds per decision, on one core.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import mean

from services.lots.decision_record import inputs_from_json, inputs_to_json
from services.lots.domain.lifecycle import Decided, decide_lots
from services.lots.domain.rule import ResultFacts
from tests.bench import scale
from tests.support.first_format import first_format

DECISIONS = 3000
REPEATS = 15


def decided() -> list[Decided]:
    """The scale benchmark's decisions (its shapes for every supplier key), repeated to
    DECISIONS."""
    made: list[Decided] = []
    for template in scale.Population.build().templates.values():
        _, results = scale.SHAPES[template.shape]
        policy = scale.ReleasePolicy.QA_RELEASE if (
            template.key[2] == scale.QA_RELEASED_MATERIAL) else scale.ReleasePolicy.AUTOMATIC
        qualification = scale.QualificationFacts("QUALIFIED", scale.QUALIFIED_UNTIL, 1)
        lot = scale.Lot(scale.TEMPLATE_LOT, template.key[2], template.key[0], template.key[1],
                        "S1", 25.0, "kg", 2, scale.TEMPLATE_EXPIRY, None,
                        scale.TEMPLATE_TIMES[0], "warehouse", "0" * 64,
                        scale.LotStatus.QUARANTINE, 0, (), scale.TEMPLATE_TIMES[0])
        for number, now in enumerate(scale.TEMPLATE_TIMES, start=1):
            known = [scale._facts(r, number) for r in results if r.known_from <= number]
            made += decide_lots([lot], {template.key: qualification},
                                {scale.TEMPLATE_LOT: known}, {lot.material_code: policy}, now,
                                first=True)
    return (made * (DECISIONS // len(made) + 1))[:DECISIONS]


def best(work: Callable[[], object]) -> float:
    """Microseconds per decision, best of REPEATS passes."""
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) / DECISIONS * 1e6


def main() -> None:
    decisions = decided()
    results: dict[str, ResultFacts] = {
        r.result_id: r for d in decisions for r in d.inputs.results}
    rows = [(d.lot.lot_id, inputs_to_json(d.inputs, d.step.rule)) for d in decisions]
    first_rows = [(d.lot.lot_id, first_format(d.inputs, d.step.rule)) for d in decisions]
    encode_first = best(lambda: [first_format(d.inputs, d.step.rule) for d in decisions])
    encode_now = best(lambda: [inputs_to_json(d.inputs, d.step.rule) for d in decisions])
    read_first = best(lambda: [inputs_from_json(lot, text) for lot, text in first_rows])
    read_now = best(lambda: [inputs_from_json(lot, text, results) for lot, text in rows])
    print(f"{DECISIONS} decisions, best of {REPEATS} passes, per decision:")
    print("| format | encode, us | read back, us | bytes |")
    print("|---|---|---|---|")
    print(f"| first (results copied) | {encode_first:.1f} | {read_first:.1f} | "
          f"{mean(len(text) for _, text in first_rows):.0f} |")
    print(f"| today (results by reference) | {encode_now:.1f} | {read_now:.1f} | "
          f"{mean(len(text) for _, text in rows):.0f} |")


if __name__ == "__main__":
    main()
