"""The results service's rules, pure (no I/O): the handlers load what a rule needs and
pass it in.

- specifications.py: acceptance criteria, drafts, four eyes, the version in force;
- units.py: the units Lotgate knows and the conversions between them;
- evaluation.py: what an instrument reports and the verdict on it;
- instruments.py: instruments, calibrations, and when an instrument may post;
- results.py: a result as it is kept, and the lots results are posted for;
- posting.py: the rules of posting results, once what they need is loaded;
- oos.py: QA's handling of results and out-of-specification investigations.

The public names can also be taken from the package (`from services.results.domain
import evaluate`); they are imported on first use, so that commands.py, which takes the
domain's value types, may be imported before or after the domain.
"""

from __future__ import annotations

from importlib import import_module

_MODULES = {
    "specifications": ("REQUIRED_TESTS", "CRITERION_OF", "MAX_DECIMALS", "Bound", "Criterion",
                       "IdentityCriterion", "RangeCriterion", "Specification",
                       "SpecificationStatus", "SterilityCriterion", "TestCriterion",
                       "check_approval", "check_draft_change", "check_tests", "in_force",
                       "range_problems"),
    "units": ("UNITS", "canonical_unit", "convert"),
    "evaluation": ("IdentityOutcome", "IdentityScore", "Judgement", "Measurement", "Quantity",
                   "SterilityOutcome", "evaluate", "rounded"),
    "instruments": ("Calibration", "Instrument", "InstrumentStatus",
                    "calibration_problem", "calibration_record_problems",
                    "check_status_change"),
    "results": ("KnownLot", "Result"),
    "oos": ("PriorResult", "check_confirmation", "check_invalidation", "check_posting"),
}
_HOME = {name: f"{__name__}.{module}" for module, names in _MODULES.items() for name in names}
# The contract's types, which the lots service uses as well (shared/contract.py).
_HOME.update(dict.fromkeys(("ResultState", "TestKind", "Verdict"), "shared.contract"))
__all__ = sorted(_HOME)


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__} has no attribute {name}")
    return getattr(import_module(_HOME[name]), name)
