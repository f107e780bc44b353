"""Translations between the lots service's values and its protobuf contract: answers,
the events it publishes, and the status announcements the change feed reads back.
With `api.py` the only module that builds or reads the service's own messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf.message import DecodeError

from lotgate.lots.v1 import events_pb2
from lotgate.lots.v1 import lots_pb2 as pb
from services.lots.decision_record import StoredInputs
from services.lots.domain.lifecycle import USABLE, moved_by_time
from services.lots.domain.lot import Lot
from services.lots.domain.replay import Replayed
from services.lots.domain.reviews import ReviewState
from services.lots.domain.rule import LotStatus, ReleasePolicy, Unmet
from services.lots.read_model import StatusEntry, StoredStatus
from services.lots.records import DecisionRecord, Policy, Review
from shared.protoconv import from_timestamp, to_timestamp
from shared.uow import new_event_id

STATUS_TO_PROTO = {
    None: pb.LOT_STATUS_UNSPECIFIED,
    LotStatus.QUARANTINE: pb.LOT_STATUS_QUARANTINE,
    LotStatus.RELEASED: pb.LOT_STATUS_RELEASED,
    LotStatus.REJECTED: pb.LOT_STATUS_REJECTED,
    LotStatus.ON_HOLD: pb.LOT_STATUS_ON_HOLD,
    LotStatus.RELEASABLE: pb.LOT_STATUS_RELEASABLE,
    LotStatus.EXPIRED: pb.LOT_STATUS_EXPIRED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items() if k is not None}
POLICY_TO_PROTO = {
    ReleasePolicy.AUTOMATIC: pb.RELEASE_POLICY_AUTOMATIC,
    ReleasePolicy.QA_RELEASE: pb.RELEASE_POLICY_QA_RELEASE,
}
POLICY_FROM_PROTO = {v: k for k, v in POLICY_TO_PROTO.items()}
REVIEW_STATE_TO_PROTO = {
    ReviewState.OPEN: pb.REVIEW_STATE_OPEN,
    ReviewState.CLOSED: pb.REVIEW_STATE_CLOSED,
}
REVIEW_STATE_FROM_PROTO = {v: k for k, v in REVIEW_STATE_TO_PROTO.items()}


def release_status(lot_id: str, status: LotStatus, version: int, unmet: tuple[Unmet, ...],
                   decided_at: datetime) -> pb.ReleaseStatus:
    return pb.ReleaseStatus(
        lot_id=lot_id, status=STATUS_TO_PROTO[status], version=version,
        unmet=unmet_to_proto(unmet), decided_at=to_timestamp(decided_at))


def release_status_of(entry: StatusEntry) -> pb.ReleaseStatus:
    """An entry's status as answered, made once per entry (the warehouse's hot path)."""
    made = entry.memo.get("proto")
    if made is None:
        made = entry.memo["proto"] = release_status(
            entry.lot_id, entry.status, entry.version, entry.unmet, entry.decided_at)
    return made  # type: ignore[no-any-return]


def status_reply(entry: StatusEntry) -> bytes:
    """An entry's status as answered, serialized: what tables.lots.status_reply keeps."""
    return release_status_of(entry).SerializeToString()  # type: ignore[no-any-return]


def stored_reply(stored: StoredStatus, now: datetime) -> bytes:
    """A stored status as answered at `now` (as StatusEntry.as_of moves an entry)."""
    if stored.status in _USABLE:  # only a usable lot is moved by time
        moved = moved_by_time(LotStatus(stored.status), stored.expiry_date,
                              stored.retest_date, now)
        if moved is not None:
            status, why = moved
            answer = pb.ReleaseStatus.FromString(stored.reply)
            answer.status = STATUS_TO_PROTO[status]
            answer.unmet.extend(unmet_to_proto([why]))
            return answer.SerializeToString()  # type: ignore[no-any-return]
    return stored.reply


_USABLE = frozenset(status.value for status in USABLE)
# Each element of GetReleaseStatusesResponse.statuses on the wire: its tag, then its
# length as a varint (a ReleaseStatus is far shorter than 16 KB: one or two bytes).
_STATUSES_TAG = pb.GetReleaseStatusesResponse.DESCRIPTOR.fields_by_name["statuses"].number
_PREFIXES = [bytes([_STATUSES_TAG << 3 | 2, *([n] if n < 128 else [n & 127 | 128, n >> 7])])
             for n in range(1 << 14)]


def release_statuses_response(found: Mapping[str, StatusEntry | StoredStatus],
                              lot_ids: Iterable[str],
                              now: datetime) -> pb.GetReleaseStatusesResponse:
    """The status of each lot of `lot_ids` at `now`, in that order; a lot not `found` is
    LOT_NOT_FOUND. Put together from serialized statuses and read once: a stored status
    is used as stored unless time moved it, a held entry's answer is serialized; no
    message is built per lot."""
    today = now.date()
    parts: list[bytes] = []
    add = parts.extend
    prefixes = _PREFIXES
    for lot_id in lot_ids:
        got = found.get(lot_id)
        if got is None:
            reply = not_found(lot_id).SerializeToString()
        elif type(got) is StatusEntry:
            reply = release_status_of(got.as_of(now)).SerializeToString()
        else:  # a StoredStatus (or a row of its columns), unpacked: no lookup by name
            _, reply, _, expiry_date, retest_date = got
            # The dates first: they rule out moved_by_time for all but the lots whose
            # expiry or retest date has come (stored_reply decides those).
            if expiry_date < today or (retest_date is not None and retest_date <= today):
                reply = stored_reply(got, now)
        size = len(reply)
        add((prefixes[size] if size < 16384 else _prefix(size), reply))
    return pb.GetReleaseStatusesResponse.FromString(b"".join(parts))


def _prefix(size: int) -> bytes:
    out = [_STATUSES_TAG << 3 | 2]
    while size >= 128:
        out.append(size & 127 | 128)
        size >>= 7
    return bytes([*out, size])


def release_statuses(found: Mapping[str, StatusEntry | StoredStatus], lot_ids: Iterable[str],
                     now: datetime) -> list[pb.ReleaseStatus]:
    """The status of each lot of `lot_ids` at `now`, in that order (see
    release_statuses_response)."""
    return list(release_statuses_response(found, lot_ids, now).statuses)


def not_found(lot_id: str) -> pb.ReleaseStatus:
    """The answer for a lot this service has never received: never pickable."""
    return pb.ReleaseStatus(
        lot_id=lot_id, status=pb.LOT_STATUS_UNSPECIFIED, version=0,
        unmet=[pb.UnmetCondition(code="LOT_NOT_FOUND", message=f"no lot {lot_id}", rule="")])


def unmet_to_proto(unmet: Iterable[Unmet]) -> list[pb.UnmetCondition]:
    return [pb.UnmetCondition(code=u.code, message=u.message, rule=u.rule) for u in unmet]


def inputs_to_proto(stored: StoredInputs) -> pb.DecisionInputs:
    """What a decision record says the rule was given (and what the rule made of it)."""
    inputs = stored.inputs
    lot, q, qa = inputs.lot, inputs.qualification, inputs.qa
    return pb.DecisionInputs(
        retest_date=lot.retest_date.isoformat() if lot.retest_date else "",
        release_policy=POLICY_TO_PROTO[qa.policy], qa_released=qa.released,
        qa_hold_reason=qa.hold_reason, qa_rejection_reason=qa.rejection_reason,
        now=to_timestamp(inputs.now), expiry_date=lot.expiry_date.isoformat(),
        qualification=None if q is None else pb.QualificationInput(
            status=q.status, version=q.version, valid_until=to_timestamp(q.valid_until)),
        results=[pb.ResultInput(
            result_id=r.result_id, test=r.test.value, verdict=r.verdict.value,
            state=r.state.value, state_reason=r.state_reason, sequence=r.sequence,
            number=r.number, spec_version=r.spec_version,
            required_tests=[t.value for t in r.required_tests], retest_of=r.retest_of)
            for r in inputs.results],
        rule_status=STATUS_TO_PROTO[stored.rule_status],
        required_tests=[t.value for t in stored.required_tests or ()],
        counted_result_ids=list(stored.counted or ()), supplier_id=lot.supplier_id,
        supplier_site_id=lot.supplier_site_id, material_code=lot.material_code)


def decision_to_proto(record: DecisionRecord, stored: StoredInputs | None) -> pb.Decision:
    """A decision record with its parsed inputs (None when they cannot be read)."""
    return pb.Decision(
        lot_id=record.lot_id, version=record.version,
        previous_status=STATUS_TO_PROTO[record.previous_status],
        status=STATUS_TO_PROTO[record.status], unmet=unmet_to_proto(record.unmet),
        cause=record.cause, decided_at=to_timestamp(record.decided_at),
        inputs=None if stored is None else inputs_to_proto(stored))


def explained_to_proto(record: DecisionRecord, stored: StoredInputs | None,
                       replayed: Replayed | None, problems: Sequence[str],
                       signatures: Sequence[Any] = ()) -> pb.ExplainedDecision:
    """A decision with its replay (None: its inputs could not be read) and what differs."""
    replay = pb.Replay()
    if replayed is not None:
        replay = pb.Replay(status=STATUS_TO_PROTO[replayed.status],
                           unmet=unmet_to_proto(replayed.unmet))
    replay.agrees = not problems
    replay.difference = "; ".join(problems)
    return pb.ExplainedDecision(decision=decision_to_proto(record, stored), replay=replay,
                                signatures=list(signatures))


def lot_to_proto(lot: Lot, status: StatusEntry | None) -> pb.Lot:
    """A lot with its status (None: not decided yet, as LotReceived announces it)."""
    return pb.Lot(
        lot_id=lot.lot_id, material_code=lot.material_code, supplier_id=lot.supplier_id,
        supplier_site_id=lot.supplier_site_id, supplier_lot_number=lot.supplier_lot_number,
        quantity=pb.Quantity(value=lot.quantity_value, unit=lot.quantity_unit),
        container_count=lot.container_count, expiry_date=lot.expiry_date.isoformat(),
        received_at=to_timestamp(lot.received_at),
        release_status=release_status_of(status) if status else pb.ReleaseStatus(),
        retest_date=lot.retest_date.isoformat() if lot.retest_date else "")


def listed_lot(lot: Lot, status: StatusEntry | StoredStatus, now: datetime) -> pb.Lot:
    """A lot of a page with its status at `now`, held (an entry) or as stored."""
    if isinstance(status, StatusEntry):
        return lot_to_proto(lot, status.as_of(now))
    listed = lot_to_proto(lot, None)
    listed.release_status.MergeFromString(stored_reply(status, now))
    return listed


def policy_to_proto(policy: Policy) -> pb.MaterialReleasePolicy:
    return pb.MaterialReleasePolicy(
        material_code=policy.material_code, policy=POLICY_TO_PROTO[policy.policy],
        reason=policy.reason, set_by=policy.set_by, set_at=to_timestamp(policy.set_at),
        two_signatures=policy.two_signatures)


def review_to_proto(review: Review, signatures: Sequence[Any] = ()) -> pb.LotReview:
    return pb.LotReview(
        review_id=review.review_id, lot_id=review.lot_id, supplier_id=review.supplier_id,
        supplier_site_id=review.supplier_site_id, material_code=review.material_code,
        qualification_status=review.qualification_status,
        qualification_version=review.qualification_version, reason=review.reason,
        opened_at=to_timestamp(review.opened_at),
        state=REVIEW_STATE_TO_PROTO[ReviewState(review.state)],
        conclusion=review.conclusion or "", closed_by=review.closed_by or "",
        closed_at=to_timestamp(review.closed_at), signatures=list(signatures))


# -- events this service publishes -----------------------------------------------------

def lot_received(lot: Lot, now: datetime) -> events_pb2.LotReceived:
    return events_pb2.LotReceived(event_id=new_event_id(), occurred_at=to_timestamp(now),
                                  lot=lot_to_proto(lot, None))


def status_changed(entry: StatusEntry, previous: LotStatus | None,
                   now: datetime) -> events_pb2.LotStatusChanged:
    return events_pb2.LotStatusChanged(
        event_id=new_event_id(), previous_status=STATUS_TO_PROTO[previous],
        release_status=release_status_of(entry), occurred_at=to_timestamp(now))


def review_required(review: Review, now: datetime) -> events_pb2.LotReviewRequired:
    return events_pb2.LotReviewRequired(event_id=new_event_id(), review=review_to_proto(review),
                                        occurred_at=to_timestamp(now))


def review_closed(review: Review, signatures: Sequence[Any],
                  now: datetime) -> events_pb2.LotReviewClosed:
    return events_pb2.LotReviewClosed(event_id=new_event_id(),
                                      review=review_to_proto(review, signatures),
                                      occurred_at=to_timestamp(now))


@dataclass(frozen=True)
class Announced:
    """A status another replica (or this one) announced with LotStatusChanged."""

    lot_id: str
    status: LotStatus
    version: int
    unmet: tuple[Unmet, ...]
    decided_at: datetime


def announced(data: bytes) -> Announced | None:
    """A LotStatusChanged payload read back; None when it cannot be decoded."""
    try:
        rs = events_pb2.LotStatusChanged.FromString(data).release_status
    except DecodeError:
        return None
    return Announced(rs.lot_id, STATUS_FROM_PROTO[rs.status], rs.version,
                     tuple(Unmet(u.code, u.message, u.rule) for u in rs.unmet),
                     from_timestamp(rs.decided_at))
