"""Use cases of the results service: each one unit of work."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from lotgate.lots.v1 import events_pb2 as lots_events_pb2
from lotgate.results.v1 import events_pb2
from services.results import repository, signatures
from services.results.convert import result_to_proto, specification_to_proto, test_order
from services.results.domain import (
    InstrumentStatus,
    PriorResult,
    ResultState,
    Specification,
    SpecificationStatus,
    TestCriterion,
    calibration_problem,
    check_approval,
    check_confirmation,
    check_draft_change,
    check_invalidation,
    check_posting,
    check_status_change,
    evaluate,
    in_force,
)
from services.results.records import (
    Calibration,
    Instrument,
    RecordResult,
    Result,
    SpecificationDraft,
)
from services.results.repository import StoredResult
from shared import messaging
from shared.audit import record as audit_record
from shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from shared.logs import get_logger
from shared.protoconv import from_timestamp, timestamp_is_valid, to_timestamp
from shared.uow import UnitOfWork, as_retry_after_conflict, new_event_id

log = get_logger(__name__)


# Specifications


def _ordered(tests: Sequence[TestCriterion]) -> tuple[TestCriterion, ...]:
    return tuple(sorted(tests, key=lambda t: test_order(t.test)))


def _spec_subject(material_code: str, version: int) -> str:
    return f"materials/{material_code}/specifications/{version}"


async def create_specification_draft(uow: UnitOfWork,
                                     command: SpecificationDraft) -> Specification:
    """Start the next version of a material's specification as a DRAFT.

    Only one draft per material may be open: another one is FAILED_PRECONDITION naming it.
    """
    async with uow:
        versions = await repository.list_specifications(uow.conn,
                                                        material_code=command.material_code)
        draft = next((s for s in versions if s.status is SpecificationStatus.DRAFT), None)
        if draft is not None:
            raise FailedPrecondition(
                f"specification {command.material_code} version {draft.version} is an open "
                "DRAFT: change or approve it before another version is started",
                subject=_spec_subject(command.material_code, draft.version))
        spec = Specification(
            material_code=command.material_code,
            version=max((s.version for s in versions), default=0) + 1,
            status=SpecificationStatus.DRAFT, tests=_ordered(command.tests),
            effective_from=None, created_by=command.requested_by,
            created_at=uow.clock.now(), approved_by="", approved_at=None,
            change_reason=command.change_reason)
        try:
            await repository.add_specification(uow.conn, spec=spec)
            audit_record(uow, "specification", spec.material_code, spec.version,
                         action="create draft", reason=spec.change_reason)
            await uow.commit()
        except IntegrityError as exc:
            raise Aborted(f"another version of the specification of {command.material_code} "
                          "was started at the same time; read it and retry") from exc
        return spec


async def _stored_spec(uow: UnitOfWork, material_code: str,
                       version: int) -> repository.StoredSpecification:
    stored = await repository.get_specification(uow.conn, material_code=material_code,
                                                version=version, for_update=True)
    if stored is None:
        raise NotFound(f"material {material_code} has no specification version {version}",
                       field="version")
    return stored


async def update_specification_draft(uow: UnitOfWork, command: SpecificationDraft, *,
                                     version: int) -> Specification:
    """Replace the tests of a DRAFT; an EFFECTIVE version is never edited."""
    async with uow:
        stored = await _stored_spec(uow, command.material_code, version)
        spec = check_draft_change(stored.spec, material_code=command.material_code,
                                  version=version)
        authors = stored.authors
        if command.requested_by not in authors:
            authors = (*authors, command.requested_by)
        changed = replace(spec, tests=_ordered(command.tests),
                          change_reason=command.change_reason)
        if not await repository.update_draft(
                uow.conn, material_code=spec.material_code, version=spec.version,
                tests=changed.tests, change_reason=changed.change_reason, authors=authors):
            raise Aborted("the draft was approved concurrently; read it again")
        audit_record(uow, "specification", spec.material_code, spec.version,
                     action="update draft", reason=changed.change_reason)
        await uow.commit()
        return changed


async def approve_specification(uow: UnitOfWork, *, material_code: str, version: int,
                                effective_from: datetime | None,
                                approved_by: str) -> Specification:
    """Make a DRAFT EFFECTIVE from `effective_from` (now when None), and announce it.

    Four eyes: nobody who wrote the draft (its creator, or anyone who changed it) may
    approve it. The same approval again returns the effective version unchanged.
    """
    async with uow:
        stored = await _stored_spec(uow, material_code, version)
        spec, now = stored.spec, uow.clock.now()
        if (spec.status is SpecificationStatus.EFFECTIVE and spec.approved_by == approved_by
                and effective_from in (None, spec.effective_from)):
            return spec  # a retry
        when = effective_from or now
        check_approval(spec, approved_by=approved_by, effective_from=when, now=now)
        if approved_by in stored.authors:
            raise FailedPrecondition(
                f"{approved_by} changed this draft and cannot also approve it (four eyes)",
                type_="APPROVER", subject=_spec_subject(material_code, version))
        effective = replace(spec, status=SpecificationStatus.EFFECTIVE, effective_from=when,
                            approved_by=approved_by, approved_at=now)
        if not await repository.make_effective(uow.conn, spec=effective):
            raise Aborted("the specification was approved concurrently; read it again")
        audit_record(uow, "specification", material_code, version, action="approve")
        shown = specification_to_proto(effective)
        await signatures.sign_specification(uow, shown)
        uow.emit(messaging.SPECIFICATION_APPROVED, f"materials/{material_code}",
                 events_pb2.SpecificationApproved(
                     event_id=new_event_id(), specification=shown,
                     occurred_at=to_timestamp(now)))
        await uow.commit()
        return effective


async def get_specification(uow: UnitOfWork, *, material_code: str, version: int,
                            as_of: datetime | None) -> Specification:
    """The given version (drafts included), else the EFFECTIVE version in force at `as_of`
    (now when None)."""
    async with uow:
        if version:
            stored = await repository.get_specification(uow.conn, material_code=material_code,
                                                        version=version)
            if stored is None:
                raise NotFound(f"material {material_code} has no specification version "
                               f"{version}", field="version")
            return stored.spec
        versions = await repository.list_specifications(uow.conn, material_code=material_code)
        instant = as_of or uow.clock.now()
    spec = in_force(versions, instant)
    if spec is None:
        if not versions:
            raise NotFound(f"no specification for material {material_code}",
                           field="material_code")
        raise NotFound(f"no specification of material {material_code} was in force at "
                       f"{instant.isoformat()}", field="as_of" if as_of else "material_code")
    return spec


async def list_specification_versions(uow: UnitOfWork, *,
                                      material_code: str) -> list[Specification]:
    async with uow:
        return await repository.list_specifications(uow.conn, material_code=material_code)


# Instruments


def _instrument_subject(instrument_id: str) -> str:
    return f"instruments/{instrument_id}"


async def register_instrument(uow: UnitOfWork, instrument: Instrument,
                              first: Calibration) -> Instrument:
    """Register an instrument with its first calibration. The same registration again
    (also one that overlaps the original) returns the instrument; other details under its
    id are ALREADY_EXISTS. `registered_at` and the calibration's `recorded_at` are set
    here."""
    return await as_retry_after_conflict(
        lambda: _register_instrument(uow, instrument, first),
        conflict=f"instrument {instrument.instrument_id} was registered concurrently; retry")


async def _register_instrument(uow: UnitOfWork, instrument: Instrument,
                               first: Calibration) -> Instrument:
    async with uow:
        existing = await repository.get_instrument(uow.conn,
                                                   instrument_id=instrument.instrument_id)
        if existing is not None:
            registered = await repository.first_calibration(
                uow.conn, instrument_id=instrument.instrument_id)
            same = ((existing.type, existing.location) == (instrument.type, instrument.location)
                    and registered is not None
                    and (registered.calibrated_on, registered.calibration_due,
                         registered.certificate_ref)
                    == (first.calibrated_on, first.calibration_due, first.certificate_ref))
            if not same:
                raise AlreadyExists(
                    f"instrument {instrument.instrument_id} is registered with other details; "
                    "record a calibration or change its status instead")
            return existing
        now = uow.clock.now()
        instrument = replace(instrument, registered_at=now)
        calibration_id = await repository.add_instrument(
            uow.conn, instrument=instrument, first=replace(first, recorded_at=now))
        audit_record(uow, "instrument", instrument.instrument_id, action="register")
        audit_record(uow, "calibration", calibration_id, action="record")
        await uow.commit()
        return instrument


async def _instrument(uow: UnitOfWork, instrument_id: str) -> Instrument:
    found = await repository.get_instrument(uow.conn, instrument_id=instrument_id,
                                            for_update=True)
    if found is None:
        raise NotFound(f"instrument {instrument_id} is not registered", field="instrument_id")
    return found


async def record_calibration(uow: UnitOfWork, *, instrument_id: str,
                             calibration: Calibration) -> Instrument:
    """Append a calibration; the instrument's calibration_due becomes the due date of its
    latest calibration. The same calibration again changes nothing. `recorded_at` is
    set here."""
    async with uow:
        calibration = replace(calibration, recorded_at=uow.clock.now())
        instrument = await _instrument(uow, instrument_id)
        if instrument.status is InstrumentStatus.RETIRED:
            raise FailedPrecondition(f"instrument {instrument_id} is RETIRED; it is not "
                                     "calibrated any more", subject=_instrument_subject(
                                         instrument_id))
        history = await repository.list_calibrations(uow.conn, instrument_id=instrument_id)

        def key(c: Calibration) -> tuple[object, ...]:
            return (c.calibrated_on, c.calibration_due, c.certificate_ref)

        if any(key(c) == key(calibration) for c in history):
            return instrument
        audit_record(uow, "calibration", await repository.add_calibration(
            uow.conn, instrument_id=instrument_id, calibration=calibration), action="record")
        # The latest calibration: the last calibrated (the last recorded of equals).
        latest = max([*history, calibration], key=lambda c: c.calibrated_on)
        latest_due = max((c for c in [*history, calibration]
                          if c.calibrated_on == latest.calibrated_on),
                         key=lambda c: c.recorded_at).calibration_due
        if latest_due != instrument.calibration_due:
            await repository.set_calibration_due(uow.conn, instrument_id=instrument_id,
                                                 due=latest_due)
        await uow.commit()
        return replace(instrument, calibration_due=latest_due)


async def set_instrument_status(uow: UnitOfWork, *, instrument_id: str,
                                status: InstrumentStatus, reason: str,
                                requested_by: str) -> Instrument:
    """Take an instrument out of service, back in, or retire it; RETIRED is final."""
    async with uow:
        instrument = await _instrument(uow, instrument_id)
        if instrument.status is status and instrument.status_reason == reason:
            return instrument  # a retry
        check_status_change(instrument.status, instrument_id=instrument_id)
        await repository.set_instrument_status(
            uow.conn, instrument_id=instrument_id, status=status, reason=reason,
            changed_by=requested_by, changed_at=uow.clock.now())
        audit_record(uow, "instrument", instrument_id, action=f"set {status.value}",
                     reason=reason)
        await uow.commit()
        return replace(instrument, status=status, status_reason=reason)


async def get_instrument(uow: UnitOfWork, *,
                         instrument_id: str) -> tuple[Instrument, list[Calibration]]:
    async with uow:
        found = await repository.get_instrument(uow.conn, instrument_id=instrument_id)
        if found is None:
            raise NotFound(f"instrument {instrument_id} is not registered",
                           field="instrument_id")
        return found, await repository.list_calibrations(uow.conn, instrument_id=instrument_id)


# Results


class _KeyTaken(Exception):
    """A concurrent call stored a result under one of the batch's instrument_result_ids."""


async def record_results(uow: UnitOfWork, commands: Sequence[RecordResult], *,
                         batch: bool = False) -> list[Result]:
    """Judge results of one instrument against the specification version in force when
    each was measured, store them and announce each one; all or, when any is refused,
    none. The answers are in the order of `commands`.

    Idempotent on (instrument_id, instrument_result_id): a retry with the same content
    gets the stored original (and no new event); other content is ALREADY_EXISTS. This
    holds also for a retry that overlaps its original: it starts again once the original
    is stored, and is answered from it. With `batch`, what is wrong with an entry names
    it as results[i].
    """
    for _ in range(2):
        try:
            return await _record_results(uow, commands, batch)
        except _KeyTaken as taken:
            conflict = taken  # a concurrent request with the same id won: answer as a retry
    raise Aborted("the results could not be stored because of concurrent posts with the same "
                  "instrument_result_id; retry") from conflict


async def _record_results(uow: UnitOfWork, commands: Sequence[RecordResult],
                          batch: bool) -> list[Result]:
    def field(i: int) -> str:
        return f"results[{i}]." if batch else ""

    def said(i: int, message: str) -> str:
        return f"results[{i}]: {message}" if batch else message

    instrument_id = commands[0].instrument_id
    async with uow:
        previous = await repository.results_by_keys(
            uow.conn, instrument_id=instrument_id,
            instrument_result_ids=[c.instrument_result_id for c in commands])
        answers: list[Result | None] = []
        for i, c in enumerate(commands):
            stored = previous.get(c.instrument_result_id)
            answers.append(_original(stored, c, said(i, "")) if stored else None)
        todo = [i for i, answer in enumerate(answers) if answer is None]
        if not todo:
            return [a for a in answers if a is not None]

        status, intervals = await repository.instrument_standing(uow.conn,
                                                                 instrument_id=instrument_id)
        for i in todo:
            # The day an instrument measured on is the UTC day of measured_at.
            problem = calibration_problem(
                instrument_id=instrument_id, status=status, calibrations=intervals,
                measured_on=commands[i].measured_at.date())
            if problem:
                raise FailedPrecondition(said(i, problem), type_="INSTRUMENT",
                                         subject=_instrument_subject(instrument_id))

        counts = Counter(commands[i].lot_id for i in todo)
        numbers = await repository.take_result_numbers(uow.conn, counts=dict(counts))
        for i in todo:
            if commands[i].lot_id not in numbers:
                raise NotFound(
                    said(i, f"lot {commands[i].lot_id} is not known to the results service "
                            "yet; if it was just received, retry shortly"),
                    field=f"{field(i)}lot_id")
        materials = {lot: material for lot, (material, _) in numbers.items()}
        next_number = {lot: first for lot, (_, first) in numbers.items()}
        specs = await repository.effective_specifications(uow.conn,
                                                          material_codes=materials.values())
        # Read only now that the lots are locked: a copy of this very call that was
        # stored while this one waited is among them, and is answered as the original
        # before any rule could take it for an earlier result (an out-of-specification
        # one would refuse its own retry as "under investigation").
        priors, stored_keys = await repository.prior_results(uow.conn,
                                                             lot_ids=sorted(counts))
        if any((instrument_id, commands[i].instrument_result_id) in stored_keys for i in todo):
            raise _KeyTaken()

        now = uow.clock.now()
        invalid: list[FieldViolation] = []
        new: list[tuple[int, Result, str]] = []
        for i in todo:
            c = commands[i]
            material = materials[c.lot_id]
            spec = in_force(specs.get(material, ()), c.measured_at)
            if spec is None:
                raise FailedPrecondition(
                    said(i, f"material {material} had no EFFECTIVE specification in force at "
                            f"{c.measured_at.isoformat()}: QA must approve one before results "
                            "measured then can be judged"),
                    type_="SPECIFICATION", subject=f"materials/{material}")
            criterion = spec.criterion(c.test)
            if criterion is None:
                invalid.append(FieldViolation(
                    f"{field(i)}test",
                    f"{c.test} is not a test of specification version {spec.version} of "
                    f"{material} (its tests: {', '.join(spec.test_kinds)})"))
                continue
            try:
                judgement = evaluate(c.measurement, criterion, material_code=material,
                                     spec_version=spec.version)
            except InvalidArgument as bad:
                invalid += [FieldViolation(f"{field(i)}{v.field}", v.description)
                            for v in bad.violations]
                continue
            prior = priors.setdefault((c.lot_id, c.test), [])
            try:
                check_posting(prior, test=c.test, retest_of=c.retest_of)
            except FailedPrecondition as refused:
                if not batch:
                    raise
                raise FailedPrecondition(said(i, refused.message), type_=refused.type_,
                                         subject=refused.subject) from None
            result = Result(
                result_id=str(uuid.uuid4()), lot_id=c.lot_id, material_code=material,
                test=c.test, instrument_id=instrument_id,
                instrument_result_id=c.instrument_result_id, measurement=c.measurement,
                verdict=judgement.verdict, verdict_reason=judgement.reason,
                spec_version=spec.version, required_tests=spec.test_kinds,
                measured_at=c.measured_at, recorded_at=now, judged=judgement.judged,
                retest_of=c.retest_of, lot_result_number=next_number[c.lot_id])
            next_number[c.lot_id] += 1
            # Later entries of the batch are checked against this one too.
            if c.retest_of:
                prior[:] = [replace(p, retested=True) if p.result_id == c.retest_of else p
                            for p in prior]
            prior.append(PriorResult(result.result_id, result.verdict, ResultState.VALID,
                                     retested=False))
            new.append((i, result, c.fingerprint))
        if invalid:
            raise InvalidArgument(invalid)

        try:
            sequences = await repository.add_results(
                uow.conn, new=[(result, fp) for _, result, fp in new])
        except IntegrityError as exc:
            raise _KeyTaken() from exc
        occurred_at = to_timestamp(now)
        for (i, result, _), sequence in zip(new, sequences, strict=True):
            result = replace(result, sequence=sequence)
            answers[i] = result
            audit_record(uow, "result", result.result_id, action="record")
            uow.emit(messaging.RESULT_RECORDED, result.lot_id, events_pb2.ResultRecorded(
                event_id=new_event_id(), result=result_to_proto(result),
                occurred_at=occurred_at))
        await uow.commit()
    return [a for a in answers if a is not None]


def _original(previous: StoredResult, command: RecordResult, where: str) -> Result:
    if previous.fingerprint != command.fingerprint:
        raise AlreadyExists(
            f"{where}instrument {command.instrument_id} already recorded result "
            f"{previous.result.result_id} under instrument_result_id "
            f"{command.instrument_result_id} with other content; a new result needs a new id")
    return previous.result


async def invalidate_result(uow: UnitOfWork, *, result_id: str, reason: str,
                            requested_by: str) -> Result:
    """QA found a laboratory error: the result stays, no longer counts, and awaits a retest."""
    return await _handle(uow, result_id, ResultState.INVALIDATED, reason, requested_by)


async def confirm_result(uow: UnitOfWork, *, result_id: str, reason: str,
                         requested_by: str) -> Result:
    """QA confirms an out-of-specification result: the lot is to be rejected."""
    return await _handle(uow, result_id, ResultState.CONFIRMED, reason, requested_by)


async def _handle(uow: UnitOfWork, result_id: str, target: ResultState, reason: str,
                  requested_by: str) -> Result:
    """Move a VALID result to `target` with its event; the exact same call again returns
    the result as it is. The measurement and verdict are never touched."""
    async with uow:
        current = await repository.get_result(uow.conn, result_id=result_id, for_update=True)
        if current is None:
            raise NotFound(f"no result {result_id}", field="result_id")
        if (current.state is target and current.state_reason == reason
                and current.state_changed_by == requested_by):
            return current  # a retry
        if target is ResultState.INVALIDATED:
            check_invalidation(current.state, result_id=result_id)
        else:
            check_confirmation(current.state, current.verdict, result_id=result_id)
        now = uow.clock.now()
        if not await repository.change_state(uow.conn, result_id=result_id, state=target,
                                             reason=reason, changed_by=requested_by,
                                             changed_at=now):
            raise Aborted(f"result {result_id} was changed concurrently; read it again")
        audit_record(uow, "result", result_id, action=f"set {target.value}", reason=reason)
        changed = replace(current, state=target, state_reason=reason,
                          state_changed_by=requested_by, state_changed_at=now)
        message = result_to_proto(changed)
        await signatures.sign_result(uow, message)
        if target is ResultState.INVALIDATED:
            uow.emit(messaging.RESULT_INVALIDATED, changed.lot_id, events_pb2.ResultInvalidated(
                event_id=new_event_id(), result=message, occurred_at=to_timestamp(now)))
        else:
            uow.emit(messaging.RESULT_CONFIRMED, changed.lot_id, events_pb2.ResultConfirmed(
                event_id=new_event_id(), result=message, occurred_at=to_timestamp(now)))
        await uow.commit()
        return changed


async def list_lot_results(uow: UnitOfWork, *, lot_id: str) -> list[Result]:
    async with uow:
        if await repository.known_lot_material(uow.conn, lot_id=lot_id) is None:
            raise NotFound(f"lot {lot_id} is not known to the results service", field="lot_id")
        return await repository.list_lot_results(uow.conn, lot_id=lot_id)


async def instrument_results_page(uow: UnitOfWork, *, instrument_id: str,
                                  measured_from: datetime | None,
                                  measured_before: datetime | None, after_sequence: int,
                                  limit: int) -> list[Result]:
    """An instrument's results, oldest first by measured_at (then recording order), after
    the result whose sequence the page token names."""
    async with uow:
        if await repository.get_instrument(uow.conn, instrument_id=instrument_id) is None:
            raise NotFound(f"instrument {instrument_id} is not registered",
                           field="instrument_id")
        after = None
        if after_sequence:
            measured_at = await repository.measured_at_of(uow.conn, sequence=after_sequence)
            if measured_at is None:
                raise InvalidArgument([FieldViolation(
                    "page_token", "is not a token this service gave out")])
            after = (measured_at, after_sequence)
        return await repository.instrument_results_page(
            uow.conn, instrument_id=instrument_id, measured_from=measured_from,
            measured_before=measured_before, after=after, limit=limit)


async def lot_received(uow: UnitOfWork, event: lots_events_pb2.LotReceived) -> None:
    """Learn a lot's material from the lots service; a lot already known stays as it is."""
    lot = event.lot
    if not lot.lot_id or not lot.material_code:
        raise ValueError(f"LotReceived {event.event_id} has no lot_id or material_code")
    if lot.HasField("received_at") and timestamp_is_valid(lot.received_at):
        received_at = from_timestamp(lot.received_at)
    elif event.HasField("occurred_at") and timestamp_is_valid(event.occurred_at):
        received_at = from_timestamp(event.occurred_at)
    else:
        received_at = uow.clock.now()
    added = await repository.add_known_lot(uow.conn, lot_id=lot.lot_id,
                                           material_code=lot.material_code,
                                           received_at=received_at)
    if not added:
        known = await repository.known_lot_material(uow.conn, lot_id=lot.lot_id)
        if known != lot.material_code:
            log.warning("lot_received_with_other_material", alert=True, lot_id=lot.lot_id,
                        known_material=known, event_material=lot.material_code)
