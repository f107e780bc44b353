"""Posting results: the rules of RecordResult(s) once what they need is loaded. An entry
is judged under the specification version in force when it was measured, by an
instrument within calibration that day, and refused while an earlier result of its test
is under investigation; a batch is all or nothing, and names the entry at fault as
results[i].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import TYPE_CHECKING

from services.results.domain.evaluation import evaluate
from services.results.domain.instruments import InstrumentStatus, calibration_problem
from services.results.domain.instruments import subject as instrument_subject
from services.results.domain.oos import PriorResult, check_posting
from services.results.domain.results import Result
from services.results.domain.specifications import Specification, in_force
from shared.contract import ResultState, TestKind
from shared.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from services.results.commands import RecordResult

Priors = Mapping[tuple[str, TestKind], Sequence[PriorResult]]


def entry_field(i: int, batch: bool) -> str:
    """The prefix of a field of entry `i` in a violation."""
    return f"results[{i}]." if batch else ""


def entry_said(i: int, batch: bool, message: str) -> str:
    """A message about entry `i`."""
    return f"results[{i}]: {message}" if batch else message


def check_original(stored: Result, fingerprint: str, command: RecordResult,
                   where: str) -> Result:
    """The stored result a repeated post gets, when it repeats the same content."""
    if fingerprint != command.fingerprint:
        raise AlreadyExists(
            f"{where}instrument {command.instrument_id} already recorded result "
            f"{stored.result_id} under instrument_result_id "
            f"{command.instrument_result_id} with other content; a new result needs a new id")
    return stored


def check_instrument(status: InstrumentStatus | None,
                     calibrations: Sequence[tuple[date, date]], *, instrument_id: str,
                     measured: Sequence[tuple[int, datetime]], batch: bool) -> None:
    """Whether the instrument may post each (entry, measured_at) of `measured`."""
    for i, measured_at in measured:
        # The day an instrument measured on is the UTC day of measured_at.
        problem = calibration_problem(instrument_id=instrument_id, status=status,
                                      calibrations=calibrations,
                                      measured_on=measured_at.date())
        if problem:
            raise FailedPrecondition(entry_said(i, batch, problem), type_="INSTRUMENT",
                                     subject=instrument_subject(instrument_id))


def judge(commands: Sequence[RecordResult], todo: Sequence[int], *,
          materials: Mapping[str, str], first_numbers: Mapping[str, int],
          specs: Mapping[str, Sequence[Specification]], priors: Priors, now: datetime,
          batch: bool, new_id: Callable[[], str]) -> list[tuple[int, Result]]:
    """The new results of entries `todo` of `commands`, numbered per lot from
    `first_numbers`, or why the post is refused (see `Judging`)."""
    return Judging(materials=materials, first_numbers=first_numbers, specs=specs,
                   priors=priors, now=now, new_id=new_id).judge(commands, todo, batch=batch)


class Judging:
    """Posts judged one after another against what the lots hold: each entry is checked
    against the lot's earlier results (`priors`, by lot and test, in recording order) and
    against the entries judged before it, of its own post or of an earlier one, and is
    numbered after them."""

    def __init__(self, *, materials: Mapping[str, str], first_numbers: Mapping[str, int],
                 specs: Mapping[str, Sequence[Specification]], priors: Priors,
                 now: datetime, new_id: Callable[[], str]) -> None:
        self._materials = materials
        self._specs = specs
        self._now = now
        self._new_id = new_id
        self._numbers = dict(first_numbers)
        self._seen = {key: list(prior) for key, prior in priors.items()}

    def judge(self, commands: Sequence[RecordResult], todo: Sequence[int], *,
              batch: bool) -> list[tuple[int, Result]]:
        """The new results of entries `todo` of `commands`, or why the post is refused."""
        numbers, seen = self._numbers, self._seen
        invalid: list[FieldViolation] = []
        new: list[tuple[int, Result]] = []
        for i in todo:
            c = commands[i]
            material = self._materials[c.lot_id]
            spec = in_force(self._specs.get(material, ()), c.measured_at)
            if spec is None:
                raise FailedPrecondition(
                    entry_said(i, batch, f"material {material} had no EFFECTIVE specification "
                                         f"in force at {c.measured_at.isoformat()}: QA must "
                                         "approve one before results measured then can be "
                                         "judged"),
                    type_="SPECIFICATION", subject=f"materials/{material}")
            criterion = spec.criterion(c.test)
            if criterion is None:
                invalid.append(FieldViolation(
                    f"{entry_field(i, batch)}test",
                    f"{c.test} is not a test of specification version {spec.version} of "
                    f"{material} (its tests: {', '.join(spec.test_kinds)})"))
                continue
            try:
                judgement = evaluate(c.measurement, criterion, material_code=material,
                                     spec_version=spec.version)
            except InvalidArgument as bad:
                invalid += [FieldViolation(f"{entry_field(i, batch)}{v.field}", v.description)
                            for v in bad.violations]
                continue
            prior = seen.setdefault((c.lot_id, c.test), [])
            try:
                check_posting(prior, test=c.test, retest_of=c.retest_of)
            except FailedPrecondition as refused:
                if not batch:
                    raise
                raise FailedPrecondition(entry_said(i, batch, refused.message),
                                         type_=refused.type_, subject=refused.subject) from None
            result = Result(
                result_id=self._new_id(), lot_id=c.lot_id, material_code=material,
                test=c.test, instrument_id=c.instrument_id,
                instrument_result_id=c.instrument_result_id, measurement=c.measurement,
                verdict=judgement.verdict, verdict_reason=judgement.reason,
                spec_version=spec.version, required_tests=spec.test_kinds,
                measured_at=c.measured_at, recorded_at=self._now, judged=judgement.judged,
                retest_of=c.retest_of, lot_result_number=numbers[c.lot_id])
            numbers[c.lot_id] += 1
            # Later entries are checked against this one too.
            if c.retest_of:
                prior[:] = [replace(p, retested=True) if p.result_id == c.retest_of else p
                            for p in prior]
            prior.append(PriorResult(result.result_id, result.verdict, ResultState.VALID,
                                     retested=False))
            new.append((i, result))
        if invalid:
            raise InvalidArgument(invalid)
        return new
