"""Electronic signatures of QA's decisions in the results service (shared.esign): the
approval of a specification version and the invalidation or confirmation of a result.

Each signs the fields of its record that the decision fixes, as the record's message
shows them; a read verifies every signature against the record as it is then.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from lotgate.results.v1 import results_pb2 as pb
from shared import esign
from shared.uow import UnitOfWork

SPECIFICATION = "specification"
RESULT = "result"


def _instant(message: Any, field: str) -> str:
    return getattr(message, field).ToJsonString() if message.HasField(field) else ""


def specification_record(spec: pb.Specification) -> str:
    return f"{spec.material_code}/{spec.version}"


def specification_content(spec: pb.Specification) -> dict[str, Any]:
    """What an approval signs: the version's criteria, who wrote and who approved it, and
    from when it applies (not its status, which a later version supersedes)."""
    return {"material_code": spec.material_code, "version": spec.version,
            "tests": [json_format.MessageToDict(t, preserving_proto_field_name=True)
                      for t in spec.tests],
            "created_by": spec.created_by, "approved_by": spec.approved_by,
            "effective_from": _instant(spec, "effective_from"),
            "approved_at": _instant(spec, "approved_at")}


def result_content(result: pb.Result) -> dict[str, Any]:
    """What QA's handling of a result signs: the result and QA's decision on it."""
    kind = result.WhichOneof("measurement") or ""
    measurement = getattr(result, kind) if kind else ""
    if hasattr(measurement, "DESCRIPTOR"):
        measurement = json_format.MessageToDict(measurement, preserving_proto_field_name=True)
    return {"result_id": result.result_id, "lot_id": result.lot_id,
            "test": pb.TestKind.Name(result.test), "instrument_id": result.instrument_id,
            "measurement": {kind: measurement} if kind else {},
            "verdict": pb.Verdict.Name(result.verdict),
            "measured_at": _instant(result, "measured_at"),
            "state": pb.ResultState.Name(result.state), "state_reason": result.state_reason,
            "state_changed_by": result.state_changed_by,
            "state_changed_at": _instant(result, "state_changed_at")}


async def sign_specification(uow: UnitOfWork, spec: pb.Specification) -> None:
    """Sign an approval; the signature is added to `spec` (the event shows it)."""
    signature = await esign.sign(uow.conn, now=uow.clock.now(), record_type=SPECIFICATION,
                     record_id=specification_record(spec), fields=specification_content(spec))
    if signature is not None:
        spec.signatures.append(signature)


async def sign_result(uow: UnitOfWork, result: pb.Result) -> None:
    """Sign QA's handling of a result; the signature is added to `result`."""
    signature = await esign.sign(uow.conn, now=uow.clock.now(), record_type=RESULT,
                                 record_id=result.result_id, fields=result_content(result))
    if signature is not None:
        result.signatures.append(signature)


async def show_specifications(uow: UnitOfWork, specs: list[pb.Specification]) -> None:
    """Add to each specification version its signatures."""
    if specs:
        async with uow:
            found = await esign.signatures_of(
                uow.conn, record_type=SPECIFICATION,
                contents={specification_record(s): specification_content(s) for s in specs})
        for spec in specs:
            spec.signatures.extend(found[specification_record(spec)])


async def show_results(uow: UnitOfWork, results: list[pb.Result]) -> None:
    """Add to each result its signatures."""
    if results:
        async with uow:
            found = await esign.signatures_of(
                uow.conn, record_type=RESULT,
                contents={r.result_id: result_content(r) for r in results})
        for result in results:
            result.signatures.extend(found[result.result_id])
