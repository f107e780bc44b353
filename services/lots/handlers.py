"""Use cases of the lots service: each one unit of work.

Every path that can change a lot's status goes through `_decide_and_record`, which runs
the pure rule, applies the transition policy, and writes the new status, its decision
record and its LotStatusChanged event together. Results come from three events of the
results service, which may arrive in any order relative to each other: ResultRecorded,
ResultInvalidated and ResultConfirmed; each carries the full result, so whichever comes
first puts the result in the projection, and a state once INVALIDATED or CONFIRMED is
never set back to VALID. A qualification withdrawn after release
does not change a released lot: it opens a review of it for QA (`lot_reviews`), with its
LotReviewRequired event, in the same unit of work as the projection update.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from types import SimpleNamespace
from typing import Any

from lotgate.lots.v1 import events_pb2, lots_pb2
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from lotgate.suppliers.v1 import suppliers_pb2
from services.lots import repository
from services.lots.convert import (
    STATUS_TO_PROTO,
    decision_to_proto,
    lot_to_proto,
    policy_to_proto,
    review_to_proto,
    unmet_to_proto,
)
from services.lots.domain import (
    FINAL,
    DecisionInputs,
    LotFacts,
    LotStatus,
    QualificationFacts,
    ReleasePolicy,
    ResultFacts,
    ResultState,
    ReviewState,
    TestKind,
    Unmet,
    decision_step,
    must_close,
    needs_review,
    receipt_date_problems,
    replay,
    replay_difference,
    retest_date_problem,
    review_id_of,
)
from services.lots.read_model import StatusCache, StatusEntry
from services.lots.repository import Key, key_of
from shared import esign, messaging, tracing
from shared.audit import record as audit_record
from shared.crash import crash_point
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from shared.logs import get_logger
from shared.metrics import count_decision
from shared.protoconv import from_timestamp, to_timestamp
from shared.uow import UnitOfWork, as_retry_after_conflict, new_event_id

log = get_logger(__name__)

_TESTS = {
    results_pb2.TEST_KIND_IDENTITY: TestKind.IDENTITY,
    results_pb2.TEST_KIND_PURITY: TestKind.PURITY,
    results_pb2.TEST_KIND_STERILITY: TestKind.STERILITY,
    results_pb2.TEST_KIND_ASSAY: TestKind.ASSAY,
    results_pb2.TEST_KIND_BIOBURDEN: TestKind.BIOBURDEN,
}
_VERDICTS = {results_pb2.VERDICT_PASS: "PASS", results_pb2.VERDICT_FAIL: "FAIL"}
_STATES = {
    results_pb2.RESULT_STATE_VALID: ResultState.VALID,
    results_pb2.RESULT_STATE_INVALIDATED: ResultState.INVALIDATED,
    results_pb2.RESULT_STATE_CONFIRMED: ResultState.CONFIRMED,
}
_QUALIFICATION = {
    suppliers_pb2.QUALIFICATION_STATUS_PENDING: "PENDING",
    suppliers_pb2.QUALIFICATION_STATUS_QUALIFIED: "QUALIFIED",
    suppliers_pb2.QUALIFICATION_STATUS_SUSPENDED: "SUSPENDED",
    suppliers_pb2.QUALIFICATION_STATUS_DISQUALIFIED: "DISQUALIFIED",
    suppliers_pb2.QUALIFICATION_STATUS_EXPIRED: "EXPIRED",
}


@dataclass(frozen=True)
class ReceiveLot:
    """Command: the warehouse has a new lot in quarantine."""

    lot_id: str
    material_code: str
    supplier_id: str
    supplier_site_id: str
    supplier_lot_number: str
    quantity_value: float
    quantity_unit: str
    container_count: int
    expiry_date: date
    requested_by: str
    fingerprint: str
    retest_date: date | None = None


async def receive_lot(uow: UnitOfWork, cmd: ReceiveLot, cache: StatusCache) -> lots_pb2.Lot:
    """Put a lot into QUARANTINE and decide it at once from what is already known.

    The same receipt again, also one that overlaps the original, returns the lot; other
    details under its id are ALREADY_EXISTS."""
    return await as_retry_after_conflict(
        lambda: _receive_lot(uow, cmd, cache),
        conflict=f"lot {cmd.lot_id} was received concurrently; retry")


async def _receive_lot(uow: UnitOfWork, cmd: ReceiveLot, cache: StatusCache) -> lots_pb2.Lot:
    async with uow:
        existing = await repository.get_lot(uow.conn, lot_id=cmd.lot_id)
        if existing is not None:
            if existing.fingerprint != cmd.fingerprint:
                raise AlreadyExists(f"lot {cmd.lot_id} was received with other details")
            return await _lot_view(uow, existing, cache)
        now = uow.clock.now()
        problems = receipt_date_problems(cmd.expiry_date, cmd.retest_date, now.date())
        if problems:
            raise InvalidArgument([FieldViolation(f, d) for f, d in problems])
        key = (cmd.supplier_id, cmd.supplier_site_id, cmd.material_code)
        qualification = (await repository.lock_qualifications(uow.conn, keys=[key]))[key]
        values = {
            "lot_id": cmd.lot_id, "material_code": cmd.material_code,
            "supplier_id": cmd.supplier_id, "supplier_site_id": cmd.supplier_site_id,
            "supplier_lot_number": cmd.supplier_lot_number,
            "quantity_value": cmd.quantity_value, "quantity_unit": cmd.quantity_unit,
            "container_count": cmd.container_count, "expiry_date": cmd.expiry_date,
            "retest_date": cmd.retest_date, "qa_released": False, "qa_hold_reason": "",
            "qa_rejection_reason": "", "received_at": now, "received_by": cmd.requested_by,
            "fingerprint": cmd.fingerprint,
            # Written properly by the first decision below, in this same transaction.
            "status": LotStatus.QUARANTINE.value, "status_version": 0, "unmet": "[]",
            "decided_at": now,
        }
        await repository.add_lot(uow.conn, values=values)
        audit_record(uow, "lot", cmd.lot_id, action="receive",
                     reason=f"received by {cmd.requested_by}")
        row = (await repository.lots_by_id(uow.conn, lot_ids=[cmd.lot_id], for_update=True))[0]
        received = events_pb2.LotReceived(event_id=new_event_id(), occurred_at=to_timestamp(now))
        received.lot.CopyFrom(lot_to_proto(row, lots_pb2.ReleaseStatus()))
        uow.emit(messaging.LOT_RECEIVED, cmd.lot_id, received)
        results = await repository.results_of(uow.conn, lot_ids=[cmd.lot_id])
        [entry] = await _decide_and_record(uow, [row], {key: qualification}, results, cache,
                                           cause=f"received by {cmd.requested_by}", first=True)
        await uow.commit()
    return lot_to_proto(row, entry.as_of(now))


def _result_row(r: results_pb2.Result, state: ResultState | None) -> dict[str, Any]:
    """A lot_results row from a result as the results service published it.

    `state` is the one the event stands for (None: the result's own, VALID when unset).
    Anything this service cannot read is refused (the event is parked): a test it does
    not know could be a required one, and must never be skipped.
    """
    if r.test not in _TESTS or r.verdict not in _VERDICTS:
        raise ValueError(f"result {r.result_id} has an unknown test or verdict")
    unknown = [t for t in r.required_tests if t not in _TESTS]
    if unknown:
        raise ValueError(f"result {r.result_id} requires unknown tests {unknown}")
    own = ResultState.VALID if r.state == results_pb2.RESULT_STATE_UNSPECIFIED else (
        _STATES.get(r.state))
    if own is None or (state is not None and own not in (ResultState.VALID, state)):
        raise ValueError(f"result {r.result_id} has state {r.state}, not {state}")
    return {
        "result_id": r.result_id, "lot_id": r.lot_id, "material_code": r.material_code,
        "test": _TESTS[r.test].value, "verdict": _VERDICTS[r.verdict],
        "sequence": r.sequence, "spec_version": r.spec_version,
        "recorded_at": from_timestamp(r.recorded_at), "lot_result_number": r.lot_result_number,
        "state": (state or own).value, "state_reason": r.state_reason,
        "retest_of": r.retest_of or None,
        "required_tests": repository.tests_to_text(
            sorted({_TESTS[t] for t in r.required_tests}, key=list(TestKind).index)),
    }


async def apply_results(uow: UnitOfWork, events: Sequence[result_events.ResultRecorded],
                        cache: StatusCache) -> None:
    """Project recorded results and decide every lot they concern.

    A result the projection holds already (from a redelivery, or from its invalidation
    or confirmation arriving first) is left as it is.
    """
    # In result id order, like apply_result_states: two consumers writing the same
    # results take their row locks in the same order, never crosswise.
    rows = sorted((_result_row(event.result, None) for event in events),
                  key=lambda row: row["result_id"])
    await repository.add_results(uow.conn, rows=rows)
    causes = ", ".join(sorted({row["result_id"] for row in rows}))
    await _redecide(uow, {row["lot_id"] for row in rows}, cache, cause=f"results {causes}")


async def apply_result_states(
        uow: UnitOfWork,
        events: Sequence[result_events.ResultInvalidated | result_events.ResultConfirmed],
        cache: StatusCache, *, state: ResultState) -> None:
    """Project QA's invalidations (or confirmations) of results and re-decide their lots.

    The result is inserted when its ResultRecorded has not arrived yet (the event carries
    the full result), else its state is set; a result already out of VALID keeps its state.
    """
    rows = {}
    for event in events:  # one row per result: a batch may hold two events of one result
        row = _result_row(event.result, state)
        rows[row["result_id"]] = row
    await repository.set_result_states(uow.conn, rows=[rows[k] for k in sorted(rows)])
    word = "invalidated" if state is ResultState.INVALIDATED else "confirmed"
    await _redecide(uow, {row["lot_id"] for row in rows.values()}, cache,
                    cause=f"{word} {', '.join(sorted(rows))}")


async def _redecide(uow: UnitOfWork, lot_ids: set[str], cache: StatusCache, *,
                    cause: str) -> None:
    """Decide the received lots among `lot_ids` again: qualification rows locked first,
    then lot rows, then their results read."""
    keys = await _keys_of(uow, lot_ids, cache)
    if not keys:
        return  # results for lots not received yet wait in the projection
    qualifications = await repository.lock_qualifications(uow.conn, keys=keys.values())
    locked = await repository.lots_by_id(uow.conn, lot_ids=keys, for_update=True)
    results = await repository.results_of(uow.conn, lot_ids=[lot.lot_id for lot in locked])
    await _decide_and_record(uow, locked, qualifications, results, cache, cause=cause[:200])


async def _keys_of(uow: UnitOfWork, lot_ids: set[str], cache: StatusCache) -> dict[str, Key]:
    """(supplier, site, material) of each received lot among `lot_ids`; memory first."""
    keys: dict[str, Key] = {}
    for lot_id in lot_ids:
        entry = cache.get(lot_id)
        if entry is not None:
            keys[lot_id] = entry.key
    missing = lot_ids - keys.keys()
    if missing:
        for lot in await repository.lots_by_id(uow.conn, lot_ids=missing):
            keys[lot.lot_id] = key_of(lot)
    return keys


async def apply_qualifications(uow: UnitOfWork,
                               events: Sequence[supplier_events.QualificationChanged],
                               cache: StatusCache) -> None:
    """Project qualification changes (highest version wins) and re-decide open lots.

    Each new version that withdraws the approval (SUSPENDED, DISQUALIFIED, EXPIRED) opens
    a review of every lot of that site and material released before it; released lots
    themselves are not changed. Versions already seen change nothing, so a redelivered
    event opens no second review.
    """
    changes: dict[Key, dict[int, Any]] = defaultdict(dict)
    for event in events:
        q = event.qualification
        changes[(q.supplier_id, q.site_id, q.material_code)][q.version] = q
    held = await repository.lock_qualifications(uow.conn, keys=changes)
    for key in sorted(changes):
        new = [q for version, q in sorted(changes[key].items()) if version > held[key].version]
        if not new:
            continue  # older or repeated announcements
        # Reviews first, for every withdrawing version in order (a batch may hold a
        # suspension and its reinstatement): they concern lots released before it.
        for q in new:
            status = _QUALIFICATION.get(q.status, "")
            if needs_review(status):
                await _open_reviews(uow, key, q, status)
        # Open lots are decided once, from the newest version: what is known now.
        q = new[-1]
        status = _QUALIFICATION.get(q.status, "")
        valid_until = _valid_until(q)
        await repository.set_qualification(uow.conn, key=key, status=status,
                                           valid_until=valid_until, version=q.version)
        held[key] = QualificationFacts(status, valid_until, q.version)
        lots = await repository.open_lots_of(uow.conn, key=key)
        if lots:
            results = await repository.results_of(uow.conn, lot_ids=[lot.lot_id for lot in lots])
            await _decide_and_record(
                uow, lots, held, results, cache,
                cause=f"qualification {key[0]}/{key[1]}/{key[2]} v{q.version}")


def _valid_until(q: suppliers_pb2.Qualification) -> datetime | None:
    return from_timestamp(q.valid_until) if q.HasField("valid_until") else None


async def _open_reviews(uow: UnitOfWork, key: Key, q: suppliers_pb2.Qualification,
                        status: str) -> None:
    """Open a review (and announce it) for each released lot of `key` without one."""
    released = await repository.released_lots_of(uow.conn, key=key)
    if not released:
        return
    ids = {lot.lot_id: review_id_of(lot.lot_id, q.version) for lot in released}
    present = await repository.review_ids_present(uow.conn, review_ids=ids.values())
    now = uow.clock.now()
    reason = q.reason
    if not reason:
        valid_until = _valid_until(q)
        reason = f"valid until {valid_until.isoformat()}" if valid_until else status.lower()
    rows = [{
        "review_id": ids[lot.lot_id], "lot_id": lot.lot_id, "supplier_id": lot.supplier_id,
        "supplier_site_id": lot.supplier_site_id, "material_code": lot.material_code,
        "qualification_status": status, "qualification_version": q.version,
        "reason": reason, "opened_at": now, "state": ReviewState.OPEN.value,
        "conclusion": None, "closed_by": None, "closed_at": None,
    } for lot in released if ids[lot.lot_id] not in present]
    if not rows:
        return
    await repository.add_reviews(uow.conn, rows=rows)
    for row in rows:
        audit_record(uow, "review", row["review_id"], action="open", reason=reason)
        required = events_pb2.LotReviewRequired(
            event_id=new_event_id(), review=review_to_proto(SimpleNamespace(**row)),
            occurred_at=to_timestamp(now))
        uow.emit(messaging.LOT_REVIEW_REQUIRED, row["lot_id"], required)
    log.info("lot_reviews_opened", supplier_id=key[0], site_id=key[1], material_code=key[2],
             qualification_status=status, qualification_version=q.version, lots=len(rows))


@tracing.traced("lots.decide")
async def _decide_and_record(uow: UnitOfWork, lots: Sequence[Any],
                             qualifications: dict[Key, QualificationFacts],
                             results: dict[str, list[ResultFacts]], cache: StatusCache, *,
                             cause: str, first: bool = False,
                             force: bool = False) -> list[StatusEntry]:
    """Decide each lot; record and announce those whose status or reasons changed (every
    lot when `force`: a QA action is recorded even when it changes neither)."""
    now = uow.clock.now()
    decided: list[StatusEntry] = []
    updates: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    policies = await repository.policies_of(uow.conn,
                                            material_codes={lot.material_code for lot in lots})
    for lot in lots:
        qualification = qualifications.get(key_of(lot))
        facts = LotFacts(lot.lot_id, lot.material_code, lot.supplier_id, lot.supplier_site_id,
                         lot.expiry_date, lot.retest_date)
        qa = repository.qa_facts_of(
            lot, policies.get(lot.material_code, ReleasePolicy.AUTOMATIC))
        # Everything the rule is given is stored with the decision (repository.inputs_to_json)
        # so that it can be replayed with the same step: see `explain`.
        inputs = DecisionInputs(facts, qualification, tuple(results.get(lot.lot_id, ())), now,
                                qa)
        current = None if first else LotStatus(lot.status)
        step = decision_step(inputs, current,
                             () if first else repository.unmet_from_json(lot.unmet), force=force)
        if not step.recorded:
            continue
        status, unmet = step.status, step.unmet
        unmet_json = repository.unmet_to_json(unmet)
        version = lot.status_version + 1
        audit_record(uow, "lot", lot.lot_id, action="decide", reason=cause)
        # QA's release stands only while everything keeps holding: once the lot leaves
        # RELEASED and RELEASABLE, QA must release it again (recorded in the next inputs).
        updates.append({"b_lot_id": lot.lot_id, "b_status": status.value, "b_version": version,
                        "b_unmet": unmet_json, "b_decided_at": now,
                        "b_qa_released": step.qa_released})
        records.append({"lot_id": lot.lot_id, "version": version,
                        "previous_status": None if first else lot.status,
                        "status": status.value, "unmet": unmet_json,
                        "inputs": repository.inputs_to_json(inputs, step.rule),
                        "cause": cause[:200], "decided_at": now})
        entry = StatusEntry.make(lot, status, version, unmet, now)
        changed = events_pb2.LotStatusChanged(
            event_id=new_event_id(), previous_status=STATUS_TO_PROTO[current],
            release_status=entry.proto, occurred_at=to_timestamp(now))
        uow.emit(messaging.LOT_STATUS_CHANGED, lot.lot_id, changed)
        uow.after_commit(lambda entry=entry: cache.put(entry))
        count_decision(uow, status, unmet)
        decided.append(entry)
        if status is not (current or LotStatus.QUARANTINE):
            # The cause's event (or request) and trace ids come from the context.
            log.info("lot_status_changed", lot_id=lot.lot_id, status=status.value,
                     previous=current.value if current else None, version=version,
                     cause=cause[:200], status_event_id=changed.event_id)
            tracing.add_event("lot_status_changed", lot_id=lot.lot_id,
                              status=status.value, version=version)
    crash_point("inside_decision")
    await repository.save_decisions(uow.conn, lot_updates=updates, records=records)
    return decided


async def get_status(uow_engine_conn: Any, *, lot_id: str, cache: StatusCache) -> StatusEntry:
    """The latest committed status of a lot, from memory or the database."""
    entry = cache.get(lot_id)
    if entry is not None:
        return entry
    row = await repository.read_status(uow_engine_conn, lot_id=lot_id)
    if row is None:
        raise NotFound(f"no lot {lot_id}", field="lot_id")
    entry = repository.status_entry(row)
    cache.put(entry)
    return entry


def _not_found(lot_id: str) -> lots_pb2.ReleaseStatus:
    """The answer for a lot this service has never received: never pickable."""
    return lots_pb2.ReleaseStatus(
        lot_id=lot_id, status=lots_pb2.LOT_STATUS_UNSPECIFIED, version=0,
        unmet=[lots_pb2.UnmetCondition(code="LOT_NOT_FOUND", message=f"no lot {lot_id}",
                                       rule="")])


async def get_statuses(conn: Any, *, lot_ids: Sequence[str], cache: StatusCache,
                       now: datetime) -> list[lots_pb2.ReleaseStatus]:
    """The status of each lot in `lot_ids` at `now`, in the order given: memory first, one
    database query for all the misses; an unknown lot is LOT_NOT_FOUND."""
    entries: dict[str, StatusEntry] = {}
    for lot_id in lot_ids:
        entry = cache.get(lot_id)
        if entry is not None:
            entries[lot_id] = entry
    missing = [lot_id for lot_id in lot_ids if lot_id not in entries]
    if missing:
        for row in await repository.read_statuses(conn, lot_ids=missing):
            entry = repository.status_entry(row)
            cache.put(entry)
            entries[row.lot_id] = entry
    return [entries[lot_id].as_of(now) if lot_id in entries else _not_found(lot_id)
            for lot_id in lot_ids]


def explain(record: Any, previous: Any | None) -> lots_pb2.ExplainedDecision:
    """A decision record with its replay: the same pure functions as the live path, given
    what the record stored, and the previous decision's status and conditions."""
    stored_unmet = repository.unmet_from_json(record.unmet)
    stored_status = LotStatus(record.status)
    previous_status = LotStatus(record.previous_status) if record.previous_status else None
    problems: list[str] = []
    try:
        stored = repository.inputs_from_json(record.lot_id, record.inputs)
    except ValueError as error:
        stored = None
        problems.append(f"inputs cannot be replayed: {error}")
    previous_unmet: tuple[Unmet, ...] = ()
    if previous is not None:
        previous_unmet = repository.unmet_from_json(previous.unmet)
        if previous.status != record.previous_status:
            problems.append(f"previous_status: stored {record.previous_status}, decision "
                            f"{previous.version} says {previous.status}")
    elif record.version > 1:
        problems.append(f"decision {record.version - 1} is missing")
    decision = decision_to_proto(record, stored_unmet, stored)
    replay_proto = lots_pb2.Replay()
    if stored is not None:
        replayed = replay(stored.inputs, previous_status, previous_unmet)
        difference = replay_difference(
            replayed, status=stored_status, unmet=stored_unmet, rule_status=stored.rule_status,
            required_tests=stored.required_tests, counted=stored.counted)
        if difference:
            problems.insert(0, difference)
        replay_proto = lots_pb2.Replay(
            status=STATUS_TO_PROTO[replayed.status],
            unmet=unmet_to_proto(replayed.unmet))
    replay_proto.agrees = not problems
    replay_proto.difference = "; ".join(problems)
    return lots_pb2.ExplainedDecision(decision=decision, replay=replay_proto)


async def explain_decision(conn: Any, *, lot_id: str, version: int
                           ) -> lots_pb2.ExplainedDecision:
    """Decision `version` of a lot (the latest when 0), with its inputs and replay."""
    rows = await repository.decision_with_previous(conn, lot_id=lot_id, version=version)
    if not rows:
        if not version or await repository.get_lot(conn, lot_id=lot_id) is None:
            raise NotFound(f"no lot {lot_id}", field="lot_id")
    if not rows or (version and rows[-1].version != version):
        raise NotFound(f"lot {lot_id} has no decision {version}", field="version")
    record = rows[-1]
    previous = rows[0] if len(rows) == 2 else None
    explained = explain(record, previous)
    await _with_signatures(conn, [explained])
    return explained


async def list_decisions(conn: Any, *, lot_id: str) -> list[lots_pb2.ExplainedDecision]:
    """Every decision of a lot, oldest first, each with its inputs and replay."""
    rows = await repository.decisions_of(conn, lot_id=lot_id)
    if not rows:
        raise NotFound(f"no lot {lot_id}", field="lot_id")
    by_version = {row.version: row for row in rows}
    explained = [explain(row, by_version.get(row.version - 1)) for row in rows]
    await _with_signatures(conn, explained)
    return explained


# Electronic signatures of QA's actions (shared.esign). A QA action signs the decision it
# makes: the lot, the decision's version and the status it gives the lot. That content is
# known before the decision, so the first of two release signatures can sign it too.
DECISION = "lot_decision"
REVIEW = "lot_review"


def decision_record(lot_id: str, version: int) -> str:
    return f"{lot_id}/{version}"


def decision_content(lot_id: str, version: int, status: str) -> dict[str, Any]:
    return {"lot_id": lot_id, "version": version, "status": status}


def review_content(row: Any) -> dict[str, Any]:
    return {"review_id": row.review_id, "lot_id": row.lot_id, "state": row.state,
            "conclusion": row.conclusion, "closed_by": row.closed_by}


async def _with_signatures(conn: Any, explained: list[lots_pb2.ExplainedDecision]) -> None:
    contents = {}
    for item in explained:
        d = item.decision
        contents[decision_record(d.lot_id, d.version)] = decision_content(
            d.lot_id, d.version, lots_pb2.LotStatus.Name(d.status).removeprefix("LOT_STATUS_"))
    found = await esign.signatures_of(conn, record_type=DECISION, contents=contents)
    for item in explained:
        item.signatures.extend(found[decision_record(item.decision.lot_id,
                                                     item.decision.version)])


async def _reviews_with_signatures(conn: Any, rows: Sequence[Any]) -> list[lots_pb2.LotReview]:
    found = await esign.signatures_of(conn, record_type=REVIEW,
                                      contents={r.review_id: review_content(r) for r in rows})
    reviews = []
    for row in rows:
        review = review_to_proto(row)
        review.signatures.extend(found[row.review_id])
        reviews.append(review)
    return reviews


async def _lot_view(uow: UnitOfWork, row: Any, cache: StatusCache) -> lots_pb2.Lot:
    entry = await get_status(uow.conn, lot_id=row.lot_id, cache=cache)
    return lot_to_proto(row, entry.as_of(uow.clock.now()))


async def get_lot(uow: UnitOfWork, *, lot_id: str, cache: StatusCache) -> lots_pb2.Lot:
    async with uow:
        row = await repository.get_lot(uow.conn, lot_id=lot_id)
        if row is None:
            raise NotFound(f"no lot {lot_id}", field="lot_id")
        return await _lot_view(uow, row, cache)


async def list_lots(uow: UnitOfWork, *, status: LotStatus | None, after: str, limit: int,
                    cache: StatusCache, supplier_id: str = "", supplier_site_id: str = "",
                    material_code: str = "", received_from: datetime | None = None,
                    received_before: datetime | None = None) -> list[lots_pb2.Lot]:
    async with uow:
        rows = await repository.list_lots(uow.conn, status=status.value if status else None,
                                          after=after, limit=limit, supplier_id=supplier_id,
                                          supplier_site_id=supplier_site_id,
                                          material_code=material_code,
                                          received_from=received_from,
                                          received_before=received_before)
        return [await _lot_view(uow, row, cache) for row in rows]


async def list_lot_reviews(uow: UnitOfWork, *, state: ReviewState | None, supplier_id: str,
                           material_code: str, after: int,
                           limit: int) -> tuple[list[lots_pb2.LotReview], int]:
    """A page of reviews, oldest first, and the position of its last one (0 when empty)."""
    async with uow:
        rows = await repository.list_reviews(uow.conn, state=state.value if state else None,
                                             supplier_id=supplier_id,
                                             material_code=material_code, after=after,
                                             limit=limit)
        reviews = await _reviews_with_signatures(uow.conn, rows)
    return reviews, (rows[-1].sequence if rows else 0)


async def close_lot_review(uow: UnitOfWork, *, review_id: str, conclusion: str,
                           requested_by: str) -> lots_pb2.LotReview:
    """Record QA's conclusion: OPEN -> CLOSED, announced by LotReviewClosed.

    The same close again (same conclusion, same person) returns the review unchanged;
    any other close of a closed review is refused.
    """
    async with uow:
        row = await repository.get_review(uow.conn, review_id=review_id, for_update=True)
        if row is None:
            raise NotFound(f"no lot review {review_id}", field="review_id")
        if not must_close(review_id, ReviewState(row.state), row.conclusion, row.closed_by,
                          new_conclusion=conclusion, requested_by=requested_by):
            [review] = await _reviews_with_signatures(uow.conn, [row])
            return review
        now = uow.clock.now()
        await repository.close_review(uow.conn, review_id=review_id, conclusion=conclusion,
                                      closed_by=requested_by, closed_at=now)
        audit_record(uow, "review", review_id, action="close", reason=conclusion)
        row = await repository.get_review(uow.conn, review_id=review_id)
        await esign.sign(uow.conn, now=now, record_type=REVIEW, record_id=review_id,
                         fields=review_content(row))
        [review] = await _reviews_with_signatures(uow.conn, [row])
        closed = events_pb2.LotReviewClosed(event_id=new_event_id(), review=review,
                                            occurred_at=to_timestamp(now))
        uow.emit(messaging.LOT_REVIEW_CLOSED, row.lot_id, closed)
        await uow.commit()
    log.info("lot_review_closed", review_id=review_id, lot_id=review.lot_id, by=requested_by)
    return review


# QA's actions on a lot. Each is one unit of work: the lot's QA facts change and the lot
# is decided again through `_decide_and_record`, whose record names who did what and why.


async def _qa_action(uow: UnitOfWork, cache: StatusCache, *, lot_id: str, cause: str,
                     change: Any, two_signatures: bool = False) -> lots_pb2.ReleaseStatus:
    """Lock the lot (its qualification first), ask `change(row, now)` for the columns to
    set (None: a retry of what was done already; it raises when the action is refused),
    set them and decide the lot again; the call's signature signs that decision. With
    `two_signatures` (a release whose policy asks for two), the first signature is only
    recorded and the lot waits for the second."""
    async with uow:
        row = await repository.get_lot(uow.conn, lot_id=lot_id)
        if row is None:
            raise NotFound(f"no lot {lot_id}", field="lot_id")
        qualifications = await repository.lock_qualifications(uow.conn, keys=[key_of(row)])
        [row] = await repository.lots_by_id(uow.conn, lot_ids=[lot_id], for_update=True)
        now = uow.clock.now()
        values = change(row, now)
        if values is None:
            # From the locked row, not the cache: a copy of this call that overlapped
            # it may have committed without its entry in the cache yet.
            return repository.status_entry(row).as_of(now)
        if two_signatures and await _first_of_two(uow, row, now):
            await uow.commit()
            log.info("lot_release_awaits_second_signature", lot_id=lot_id)
            return repository.status_entry(row).as_of(now)
        await repository.set_qa_facts(uow.conn, lot_id=lot_id, **values)
        audit_record(uow, "lot", lot_id, action=cause.split(" by ", 1)[0], reason=cause)
        [row] = await repository.lots_by_id(uow.conn, lot_ids=[lot_id], for_update=True)
        results = await repository.results_of(uow.conn, lot_ids=[lot_id])
        [entry] = await _decide_and_record(uow, [row], qualifications, results, cache,
                                           cause=cause, force=True)
        await esign.sign(uow.conn, now=entry.decided_at, record_type=DECISION,
                         record_id=decision_record(lot_id, entry.version),
                         fields=decision_content(lot_id, entry.version, entry.status.value))
        await uow.commit()
    log.info("lot_qa_action", lot_id=lot_id, cause=cause[:200], status=entry.status.value)
    return entry.as_of(now)


def _refuse(row: Any, why: str) -> FailedPrecondition:
    return FailedPrecondition(f"lot {row.lot_id} is {row.status}: {why}",
                              subject=f"lots/{row.lot_id}")


async def _first_of_two(uow: UnitOfWork, row: Any, now: datetime) -> bool:
    """Whether this signature is the first of a two-signature release (recorded now, on
    the decision the release will make); False for the second, from another person.

    Both sign the same content: the lot, the next decision's version and RELEASED. A
    change of the lot in between moves the version on, so a first signature never
    counts for a lot that changed after it was given."""
    signing = esign.current_signing()
    if signing is None:
        return False
    version = row.status_version + 1
    record_id = decision_record(row.lot_id, version)
    given = await esign.signature_rows(uow.conn, record_type=DECISION, record_ids=[record_id])
    if any(r.signer == signing.subject for r in given):
        raise FailedPrecondition(
            f"lot {row.lot_id}: {signing.subject} has signed this release already; the "
            "second signature must come from another person (four eyes)",
            type_="FOUR_EYES", subject=f"lots/{row.lot_id}")
    if given:
        return False
    await esign.sign(uow.conn, now=now, record_type=DECISION, record_id=record_id,
                     fields=decision_content(row.lot_id, version, LotStatus.RELEASED.value))
    return True


async def release_lot(uow: UnitOfWork, cache: StatusCache, *, lot_id: str, reason: str,
                      requested_by: str) -> tuple[lots_pb2.ReleaseStatus, int]:
    """QA's release of a RELEASABLE lot, and how many signatures it still awaits (1 after
    the first of two, when the material's policy asks for two)."""
    def change(row: Any, now: datetime) -> dict[str, Any]:
        if row.status != LotStatus.RELEASABLE.value:
            raise _refuse(row, "only a RELEASABLE lot can be released by QA")
        return {"qa_released": True}

    async with uow:
        policy = await repository.get_policy(uow.conn, material_code=await _material_of(
            uow, lot_id))
    two = policy is not None and bool(policy.two_signatures)
    status = await _qa_action(uow, cache, lot_id=lot_id, change=change, two_signatures=two,
                              cause=f"QA release by {requested_by}: {reason}")
    awaited = int(two and status.status == lots_pb2.LOT_STATUS_RELEASABLE)
    return status, awaited


async def _material_of(uow: UnitOfWork, lot_id: str) -> str:
    row = await repository.get_lot(uow.conn, lot_id=lot_id)
    if row is None:
        raise NotFound(f"no lot {lot_id}", field="lot_id")
    return str(row.material_code)


async def hold_lot(uow: UnitOfWork, cache: StatusCache, *, lot_id: str, reason: str,
                   requested_by: str) -> lots_pb2.ReleaseStatus:
    """QA holds a lot (ON_HOLD), whatever its status but REJECTED or EXPIRED."""
    def change(row: Any, now: datetime) -> dict[str, Any] | None:
        if LotStatus(row.status) in FINAL:
            raise _refuse(row, "a rejected or expired lot cannot be held")
        if row.qa_hold_reason:
            if row.qa_hold_reason == reason:
                return None  # a retry of this hold
            raise _refuse(row, f"it is held by QA already ({row.qa_hold_reason}); "
                               "release that hold first")
        return {"qa_hold_reason": reason}

    return await _qa_action(uow, cache, lot_id=lot_id, change=change,
                            cause=f"QA hold by {requested_by}: {reason}")


async def release_hold(uow: UnitOfWork, cache: StatusCache, *, lot_id: str, reason: str,
                       requested_by: str) -> lots_pb2.ReleaseStatus:
    """QA lifts its hold; the lot is decided again."""
    def change(row: Any, now: datetime) -> dict[str, Any]:
        if LotStatus(row.status) in FINAL or not row.qa_hold_reason:
            raise _refuse(row, "it is not held by QA")
        return {"qa_hold_reason": ""}

    return await _qa_action(uow, cache, lot_id=lot_id, change=change,
                            cause=f"QA hold released by {requested_by}: {reason}")


async def reject_lot(uow: UnitOfWork, cache: StatusCache, *, lot_id: str, reason: str,
                     requested_by: str) -> lots_pb2.ReleaseStatus:
    """QA rejects a lot that is not final yet (REJECTED is final)."""
    def change(row: Any, now: datetime) -> dict[str, Any] | None:
        if row.status == LotStatus.REJECTED.value and row.qa_rejection_reason == reason:
            return None  # a retry of this rejection
        if LotStatus(row.status) in FINAL:
            raise _refuse(row, "a rejected or expired lot cannot be rejected")
        return {"qa_rejection_reason": reason}

    return await _qa_action(uow, cache, lot_id=lot_id, change=change,
                            cause=f"QA rejection by {requested_by}: {reason}")


async def set_retest_date(uow: UnitOfWork, cache: StatusCache, *, lot_id: str,
                          retest_date: date, reason: str,
                          requested_by: str) -> lots_pb2.ReleaseStatus:
    """A new retest date (after today, not after the expiry date); the lot is decided
    again, so a lot back in QUARANTINE for its retest date may be released."""
    def change(row: Any, now: datetime) -> dict[str, Any]:
        if LotStatus(row.status) in FINAL:
            raise _refuse(row, "a rejected or expired lot has no retest date")
        problem = retest_date_problem(retest_date, expiry_date=row.expiry_date,
                                      today=now.date())
        if problem:
            raise InvalidArgument([FieldViolation("retest_date", problem)])
        return {"retest_date": retest_date}

    return await _qa_action(
        uow, cache, lot_id=lot_id, change=change,
        cause=f"retest date set to {retest_date.isoformat()} by {requested_by}: {reason}")


async def get_release_policy(conn: Any, *, material_code: str) -> lots_pb2.MaterialReleasePolicy:
    """A material's policy; AUTOMATIC (set by nobody) when never set."""
    row = await repository.get_policy(conn, material_code=material_code)
    if row is None:
        return lots_pb2.MaterialReleasePolicy(material_code=material_code,
                                              policy=lots_pb2.RELEASE_POLICY_AUTOMATIC)
    return policy_to_proto(row)


async def set_release_policy(uow: UnitOfWork, cache: StatusCache, *, material_code: str,
                             policy: ReleasePolicy, reason: str, requested_by: str,
                             two_signatures: bool = False) -> lots_pb2.MaterialReleasePolicy:
    """Set a material's policy (kept in its history) and decide its lots in QUARANTINE
    or RELEASABLE again under it; released lots stay released. The same call again
    (also one that overlaps the first setting) changes nothing and returns the policy."""
    async with uow:
        now = uow.clock.now()
        values = {"material_code": material_code, "policy": policy.value, "reason": reason,
                  "set_by": requested_by, "set_at": now, "two_signatures": two_signatures}
        current = await repository.get_policy(uow.conn, material_code=material_code,
                                              for_update=True)
        if current is None and not await repository.add_policy(uow.conn, values=values):
            # A concurrent first setter (a copy of this very call, perhaps) has committed
            # the material's first policy: this call comes after it.
            current = await repository.get_policy(uow.conn, material_code=material_code,
                                                  for_update=True)
        if current is not None and (current.policy, current.reason, current.set_by,
                                    bool(current.two_signatures)) == (
                policy.value, reason, requested_by, two_signatures):
            return policy_to_proto(current)
        await repository.set_policy(uow.conn, values=values)
        audit_record(uow, "policy", material_code, action=f"set {policy.value}", reason=reason)
        candidates = await repository.undecided_lots_of_material(uow.conn,
                                                                 material_code=material_code)
        if candidates:
            qualifications = await repository.lock_qualifications(
                uow.conn, keys={key_of(lot) for lot in candidates})
            locked = await repository.lock_lots_in(
                uow.conn, lot_ids=[lot.lot_id for lot in candidates],
                statuses=(LotStatus.QUARANTINE, LotStatus.RELEASABLE))
            results = await repository.results_of(uow.conn,
                                                  lot_ids=[lot.lot_id for lot in locked])
            await _decide_and_record(
                uow, locked, qualifications, results, cache,
                cause=f"release policy of {material_code} set to {policy.value} by "
                      f"{requested_by}: {reason}")
        row = await repository.get_policy(uow.conn, material_code=material_code)
        await uow.commit()
    log.info("release_policy_set", material_code=material_code, policy=policy.value,
             by=requested_by)
    return policy_to_proto(row)


async def apply_time(uow: UnitOfWork, cache: StatusCache, *, limit: int = 100) -> tuple[int, int]:
    """Decide again the lots time has moved: past their expiry date (EXPIRED), or released
    with their retest date come (QUARANTINE). (lots found due, lots decided)

    Safe with several replicas: the due lots are found unlocked, their qualifications
    locked (the lock order of every decision), then the lots locked with SKIP LOCKED and
    checked again, so each lot moves once.
    """
    async with uow:
        today = uow.clock.now().date()
        due = await repository.due_lots(uow.conn, today=today, limit=limit)
        if not due:
            return 0, 0
        qualifications = await repository.lock_qualifications(
            uow.conn, keys={key_of(lot) for lot in due})
        locked = await repository.lock_due(uow.conn, lot_ids=[lot.lot_id for lot in due],
                                           today=today)
        if not locked:
            return len(due), 0
        results = await repository.results_of(uow.conn, lot_ids=[lot.lot_id for lot in locked])
        expired = [lot for lot in locked if lot.expiry_date < today]
        retest = [lot for lot in locked if lot.expiry_date >= today]
        decided = []
        if expired:
            decided += await _decide_and_record(uow, expired, qualifications, results, cache,
                                                cause="expiry date passed")
        if retest:
            decided += await _decide_and_record(uow, retest, qualifications, results, cache,
                                                cause="retest date reached")
        await uow.commit()
    if decided:
        log.info("lots_moved_by_time", expired=len(expired), retest=len(retest))
    return len(due), len(decided)
