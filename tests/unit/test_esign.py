"""The signature table, the signed content and the log redaction (shared.esign_policy,
shared.esign)."""

from __future__ import annotations

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2
from lotgate.signatures.v1 import signatures_pb2
from lotgate.suppliers.v1 import suppliers_pb2
from shared import access, esign, esign_policy
from shared.logs import _truncate_values

FILES = [suppliers_pb2.DESCRIPTOR, lots_pb2.DESCRIPTOR, results_pb2.DESCRIPTOR]


def _method(rpc: str):
    service, method = rpc.split("/")
    for file in FILES:
        for s in file.services_by_name.values():
            if s.full_name == service:
                return s.methods_by_name[method]
    raise AssertionError(f"{rpc} is no RPC of the services")


def test_every_signed_action_is_a_qa_decision_whose_request_carries_a_signature() -> None:
    for rpc, meaning in esign_policy.SIGNED_ACTIONS.items():
        field = _method(rpc).input_type.fields_by_name.get("signature")
        assert field is not None, f"{rpc} has no signature field"
        assert field.message_type is signatures_pb2.SignatureInput.DESCRIPTOR
        assert access.ACCESS[rpc] == {access.QA}
        assert meaning != signatures_pb2.MEANING_UNSPECIFIED


def test_no_request_outside_the_table_asks_for_a_signature() -> None:
    asking = {f"{s.full_name}/{m.name}" for file in FILES for s in file.services_by_name.values()
              for m in s.methods if "signature" in m.input_type.fields_by_name}
    assert asking == set(esign_policy.SIGNED_ACTIONS)


def test_the_signed_content_names_its_record_so_the_hash_fits_no_other() -> None:
    fields = {"lot_id": "LOT-1", "version": 4, "status": "RELEASED"}

    one = esign.content_hash("lot_decision", "LOT-1/4", fields)

    assert one == esign.content_hash("lot_decision", "LOT-1/4", dict(reversed(fields.items())))
    assert one != esign.content_hash("lot_decision", "LOT-2/4", fields)
    assert one != esign.content_hash("lot_review", "LOT-1/4", fields)
    assert one != esign.content_hash("lot_decision", "LOT-1/4", {**fields, "status": "ON_HOLD"})


def test_a_secret_given_to_a_log_line_is_redacted() -> None:
    line = _truncate_values(None, "info", {"event": "x", "secret": "hunter22",
                                           "new_secret": "hunter23", "signer": "qa.jane"})

    assert "hunter2" not in repr(line)
    assert line["signer"] == "qa.jane"
