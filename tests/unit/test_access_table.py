"""The access table covers every RPC the services have, and only those."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FileDescriptor

from lotgate.audit.v1 import audit_pb2
from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2
from lotgate.signatures.v1 import signatures_pb2
from lotgate.suppliers.v1 import suppliers_pb2
from shared import access

FILES: list[FileDescriptor] = [suppliers_pb2.DESCRIPTOR, lots_pb2.DESCRIPTOR,
                               results_pb2.DESCRIPTOR, audit_pb2.DESCRIPTOR,
                               signatures_pb2.DESCRIPTOR]


def every_rpc() -> list[str]:
    """Every RPC of the services, from their descriptors ("package.Service/Method")."""
    return [f"{service.full_name}/{method.name}" for file in FILES
            for service in file.services_by_name.values() for method in service.methods]


@pytest.mark.req("ACC-002")
def test_every_rpc_of_the_services_is_in_the_access_table() -> None:
    missing = [rpc for rpc in every_rpc() if rpc not in access.ACCESS]

    assert missing == [], "add these RPCs to shared/access.py (nobody may call them now)"


@pytest.mark.req("ACC-002")
def test_the_table_names_no_rpc_that_does_not_exist_and_only_known_roles() -> None:
    assert set(access.ACCESS) == set(every_rpc())
    assert all(roles and roles <= set(access.ROLES) for roles in access.ACCESS.values())


@pytest.mark.req("ACC-002")
def test_an_rpc_missing_from_the_table_is_open_to_nobody() -> None:
    assert access.allowed_roles("/lotgate.lots.v1.LotService/DeleteEverything") == frozenset()


@pytest.mark.req("ACC-002")
def test_the_auditor_reads_everything_and_changes_nothing() -> None:
    reads = [rpc for rpc in every_rpc()
             if rpc.split("/")[1].startswith(("Get", "List", "Explain", "Watch", "Verify"))]

    assert sorted(access.rpcs_of(access.AUDITOR)) == sorted(reads)


@pytest.mark.req("ACC-002")
def test_each_change_belongs_to_its_role() -> None:
    def rpcs(role: str) -> set[str]:
        return {rpc.split("/")[1] for rpc in access.rpcs_of(role)}

    assert {"ReceiveLot", "GetReleaseStatus", "WatchReleaseStatus"} <= rpcs(access.WAREHOUSE)
    assert rpcs(access.INSTRUMENT) == {"RecordResult", "RecordResults"}
    assert {"RegisterInstrument", "RecordCalibration", "CreateSpecificationDraft"} <= rpcs(
        access.QC)
    assert {"QualifySupplier", "ApproveSpecification", "ConfirmResult", "ReleaseLot",
            "SetReleasePolicy", "CloseLotReview"} <= rpcs(access.QA)
    # Nobody but QA releases, and QC does not approve what it drafts.
    assert access.allowed_roles("/lotgate.lots.v1.LotService/ReleaseLot") == {access.QA}
    assert access.QC not in access.allowed_roles(
        "/lotgate.results.v1.ResultService/ApproveSpecification")
