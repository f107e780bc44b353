"""The test kinds, verdicts and result states come from the contract, once."""

from lotgate.results.v1 import results_pb2
from services.lots import domain as lots_domain
from services.results import domain as results_domain
from shared.contract import ResultState, TestKind, Verdict


def test_both_services_use_the_same_types() -> None:
    for name in ("TestKind", "Verdict", "ResultState"):
        assert getattr(lots_domain, name) is getattr(results_domain, name)


def test_every_named_proto_value_is_a_member_and_nothing_else() -> None:
    assert [k.value for k in TestKind] == [
        "IDENTITY", "PURITY", "STERILITY", "ASSAY", "BIOBURDEN"]
    assert [v.value for v in Verdict] == ["PASS", "FAIL"]
    assert [s.value for s in ResultState] == ["VALID", "INVALIDATED", "CONFIRMED"]
    for kind in TestKind:
        assert results_pb2.TestKind.Value(f"TEST_KIND_{kind}") > 0


def test_members_are_strings_of_their_names() -> None:
    assert TestKind.STERILITY == "STERILITY"
    assert TestKind("PURITY") is TestKind.PURITY
    assert f"{ResultState.CONFIRMED}" == "CONFIRMED"
