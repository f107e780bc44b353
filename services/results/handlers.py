"""Writes of the results service: each takes a command, runs in one unit of work (load,
decide with the domain's rules, save with events), and returns domain values. The SQL is
the repository's; the messages are convert's. Posting results (RecordResult, RecordResults)
is posting.py's."""

from __future__ import annotations

from dataclasses import replace

from services.results import repository
from services.results.commands import (
    ApproveSpecification,
    HandleResult,
    RecordCalibration,
    RegisterInstrument,
    SetInstrumentStatus,
    SpecificationDraft,
)
from services.results.convert import (
    RESULT,
    SPECIFICATION,
    result_handled,
    signed_result,
    signed_specification,
    specification_approved,
)
from services.results.domain.instruments import (
    Calibration,
    Instrument,
    check_calibration,
    check_same_registration,
    check_status_change,
    is_recorded,
    is_repeated_status,
    latest_due,
    registered,
)
from services.results.domain.oos import check_handling, is_repeated_handling
from services.results.domain.results import KnownLot, Result
from services.results.domain.specifications import (
    Specification,
    approved,
    changed_draft,
    check_approval,
    check_draft_change,
    is_repeated_approval,
    new_draft,
    with_author,
)
from services.results.queries import instrument_or_not_found, stored_specification
from shared import esign, messaging
from shared.audit import record as audit_record
from shared.contract import ResultState
from shared.errors import Aborted, NotFound
from shared.logs import get_logger
from shared.uow import UnitOfWork, as_retry_after_conflict, new_event_id

log = get_logger(__name__)


# Specifications


async def create_specification_draft(uow: UnitOfWork,
                                     command: SpecificationDraft) -> Specification:
    """Start the next version of a material's specification as a DRAFT.

    Only one draft per material may be open: another one is FAILED_PRECONDITION naming it.
    """
    async with uow:
        versions = await repository.list_specifications(uow.conn,
                                                        material_code=command.material_code)
        spec = new_draft(versions, material_code=command.material_code, tests=command.tests,
                         change_reason=command.change_reason, created_by=command.requested_by,
                         now=uow.clock.now())
        await repository.add_specification(uow.conn, spec=spec)
        audit_record(uow, "specification", spec.material_code, spec.version,
                     action="create draft", reason=spec.change_reason)
        await uow.commit()
        return spec


async def update_specification_draft(uow: UnitOfWork, command: SpecificationDraft, *,
                                     version: int) -> Specification:
    """Replace the tests of a DRAFT; an EFFECTIVE version is never edited."""
    async with uow:
        stored = await stored_specification(uow, command.material_code, version,
                                            for_update=True)
        spec = check_draft_change(stored.spec, material_code=command.material_code,
                                  version=version)
        changed = changed_draft(spec, tests=command.tests, change_reason=command.change_reason)
        if not await repository.update_draft(
                uow.conn, material_code=spec.material_code, version=spec.version,
                tests=changed.tests, change_reason=changed.change_reason,
                authors=with_author(stored.authors, command.requested_by)):
            raise Aborted("the draft was approved concurrently; read it again")
        audit_record(uow, "specification", spec.material_code, spec.version,
                     action="update draft", reason=changed.change_reason)
        await uow.commit()
        return changed


async def approve_specification(uow: UnitOfWork,
                                command: ApproveSpecification) -> Specification:
    """Make a DRAFT EFFECTIVE from `effective_from` (now when None), signed, and announce
    it. Four eyes: nobody who wrote the draft may approve it. The same approval again
    returns the effective version unchanged."""
    async with uow:
        stored = await stored_specification(uow, command.material_code, command.version,
                                            for_update=True)
        spec, now = stored.spec, uow.clock.now()
        if is_repeated_approval(spec, approved_by=command.approved_by,
                                effective_from=command.effective_from):
            return spec
        when = command.effective_from or now
        check_approval(spec, approved_by=command.approved_by, effective_from=when, now=now,
                       authors=stored.authors)
        effective = approved(spec, approved_by=command.approved_by, effective_from=when,
                             now=now)
        if not await repository.make_effective(uow.conn, spec=effective):
            raise Aborted("the specification was approved concurrently; read it again")
        audit_record(uow, "specification", spec.material_code, spec.version,
                     action="approve")
        record_id, content = signed_specification(effective)
        signature = await esign.sign(uow.conn, now=uow.clock.now(), record_type=SPECIFICATION,
                                     record_id=record_id, fields=content)
        uow.emit(messaging.SPECIFICATION_APPROVED, f"materials/{spec.material_code}",
                 specification_approved(effective, signature=signature,
                                        event_id=new_event_id(), now=now))
        await uow.commit()
        return effective


# Instruments


async def register_instrument(uow: UnitOfWork, command: RegisterInstrument) -> Instrument:
    """Register an instrument with its first calibration. The same registration again
    (also one that overlaps the original) returns the instrument; other details under its
    id are ALREADY_EXISTS."""
    return await as_retry_after_conflict(
        lambda: _register_instrument(uow, command),
        conflict=f"instrument {command.instrument_id} was registered concurrently; retry")


async def _register_instrument(uow: UnitOfWork, command: RegisterInstrument) -> Instrument:
    async with uow:
        now = uow.clock.now()
        first = Calibration(
            calibrated_on=command.first.calibrated_on,
            calibration_due=command.first.calibration_due,
            certificate_ref=command.first.certificate_ref, recorded_by=command.requested_by,
            recorded_at=now)
        instrument = registered(instrument_id=command.instrument_id, type_=command.type,
                                location=command.location, first=first,
                                registered_by=command.requested_by, now=now)
        existing = await repository.get_instrument(uow.conn,
                                                   instrument_id=command.instrument_id)
        if existing is not None:
            check_same_registration(
                existing, await repository.first_calibration(
                    uow.conn, instrument_id=command.instrument_id),
                instrument=instrument, first=first)
            return existing
        calibration_id = await repository.add_instrument(uow.conn, instrument=instrument,
                                                         first=first)
        audit_record(uow, "instrument", instrument.instrument_id, action="register")
        audit_record(uow, "calibration", calibration_id, action="record")
        await uow.commit()
        return instrument


async def record_calibration(uow: UnitOfWork, command: RecordCalibration) -> Instrument:
    """Append a calibration; the instrument's calibration_due becomes the due date of its
    latest calibration. The same calibration again changes nothing."""
    async with uow:
        report = command.calibration
        calibration = Calibration(
            calibrated_on=report.calibrated_on, calibration_due=report.calibration_due,
            certificate_ref=report.certificate_ref, recorded_by=command.requested_by,
            recorded_at=uow.clock.now())
        instrument = await instrument_or_not_found(uow, command.instrument_id,
                                                   for_update=True)
        check_calibration(instrument)
        history = await repository.list_calibrations(uow.conn,
                                                     instrument_id=command.instrument_id)
        if is_recorded(history, calibration):
            return instrument
        audit_record(uow, "calibration", await repository.add_calibration(
            uow.conn, instrument_id=command.instrument_id, calibration=calibration),
            action="record")
        due = latest_due([*history, calibration])
        if due != instrument.calibration_due:
            await repository.set_calibration_due(uow.conn, instrument_id=command.instrument_id,
                                                 due=due)
        await uow.commit()
        return replace(instrument, calibration_due=due)


async def set_instrument_status(uow: UnitOfWork, command: SetInstrumentStatus) -> Instrument:
    """Take an instrument out of service, back in, or retire it; RETIRED is final."""
    async with uow:
        instrument = await instrument_or_not_found(uow, command.instrument_id,
                                                   for_update=True)
        if is_repeated_status(instrument, command.status, command.reason):
            return instrument
        check_status_change(instrument.status, instrument_id=command.instrument_id)
        await repository.set_instrument_status(
            uow.conn, instrument_id=command.instrument_id, status=command.status,
            reason=command.reason, changed_by=command.requested_by,
            changed_at=uow.clock.now())
        audit_record(uow, "instrument", command.instrument_id,
                     action=f"set {command.status.value}", reason=command.reason)
        await uow.commit()
        return replace(instrument, status=command.status, status_reason=command.reason)


# Results


async def handle_result(uow: UnitOfWork, command: HandleResult) -> Result:
    """Move a VALID result to INVALIDATED (QA found a laboratory error: the result stays,
    no longer counts, and awaits a retest) or CONFIRMED (out of specification: the lot is
    to be rejected), signed, with its event. The exact same call again returns the result
    as it is. The measurement and verdict are never touched."""
    async with uow:
        current = await repository.get_result(uow.conn, result_id=command.result_id,
                                              for_update=True)
        if current is None:
            raise NotFound(f"no result {command.result_id}", field="result_id")
        if is_repeated_handling(current.state, current.state_reason, current.state_changed_by,
                                target=command.target, asked_reason=command.reason,
                                asked_by=command.requested_by):
            return current
        check_handling(current.state, current.verdict, command.target,
                       result_id=command.result_id)
        now = uow.clock.now()
        if not await repository.change_state(uow.conn, result_id=command.result_id,
                                             state=command.target, reason=command.reason,
                                             changed_by=command.requested_by, changed_at=now):
            raise Aborted(f"result {command.result_id} was changed concurrently; read it again")
        audit_record(uow, "result", command.result_id, action=f"set {command.target.value}",
                     reason=command.reason)
        changed = replace(current, state=command.target, state_reason=command.reason,
                          state_changed_by=command.requested_by, state_changed_at=now)
        record_id, content = signed_result(changed)
        signature = await esign.sign(uow.conn, now=uow.clock.now(), record_type=RESULT,
                                     record_id=record_id, fields=content)
        subject = (messaging.RESULT_INVALIDATED if command.target is ResultState.INVALIDATED
                   else messaging.RESULT_CONFIRMED)
        uow.emit(subject, changed.lot_id, result_handled(
            changed, signature=signature, event_id=new_event_id(), now=now))
        await uow.commit()
        return changed


# What the lots service tells


async def learn_lot(uow: UnitOfWork, lot: KnownLot) -> None:
    """Remember a received lot, in the consumer's unit of work; a lot already known stays
    as it is (another material for it is an alert)."""
    if not await repository.add_known_lot(uow.conn, lot=lot):
        known = await repository.known_lot_material(uow.conn, lot_id=lot.lot_id)
        if known != lot.material_code:
            log.warning("lot_received_with_other_material", alert=True, lot_id=lot.lot_id,
                        known_material=known, event_material=lot.material_code)
