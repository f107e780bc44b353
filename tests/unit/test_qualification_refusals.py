"""What QA is told when a qualification change or an audit record is refused: the exact
message, the precondition type and the resource it names, as the gRPC status carries
them (FAILED_PRECONDITION with a PreconditionFailure; INVALID_ARGUMENT with field
violations). A client shows these to a person, and tools match on the type and subject.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from services.suppliers.domain.audits import AuditOutcome, check_audit_record
from services.suppliers.domain.lifecycle import apply, check_version, expire
from services.suppliers.domain.qualification import Action, Evidence, QualificationStatus
from services.suppliers.domain.sites import Site, Supplier, check_same_site, check_same_supplier
from shared.errors import Aborted, AlreadyExists, FailedPrecondition
from tests.unit.test_qualification_lifecycle import AUDIT, NOW, command, in_state

S = QualificationStatus
WHERE = "suppliers/ACME/sites/MAIN/materials/MAT-A"


def details(e: FailedPrecondition) -> tuple[str, str, str]:
    return e.message, e.type_, e.subject


@pytest.mark.parametrize("current,action,message", [
    (S.DISQUALIFIED, Action.QUALIFY,
     "site MAIN of supplier ACME is DISQUALIFIED for MAT-A; that is final: only a newly "
     "opened qualification can follow"),
    (S.QUALIFIED, Action.OPEN,
     "a qualification of site MAIN of supplier ACME for MAT-A is already open (QUALIFIED); a "
     "new one can be opened only after a disqualification"),
    (None, Action.SUSPEND,
     "no qualification of site MAIN of supplier ACME for MAT-A is open; open one first"),
    (S.PENDING, Action.SUSPEND,
     "cannot suspend site MAIN of supplier ACME for MAT-A: it is PENDING; only a QUALIFIED "
     "qualification can be suspended"),
    (S.SUSPENDED, Action.EXPIRE,
     "cannot expire site MAIN of supplier ACME for MAT-A: it is SUSPENDED; only a QUALIFIED "
     "qualification can be expired"),
    (S.DISQUALIFIED, Action.DISQUALIFY,
     "site MAIN of supplier ACME is DISQUALIFIED for MAT-A; that is final: only a newly "
     "opened qualification can follow"),
])
def test_a_refused_move_names_the_site_the_material_the_state_and_what_is_allowed(
        current: QualificationStatus | None, action: Action, message: str) -> None:
    kw = {"valid_until": NOW + timedelta(days=30)} if action is Action.QUALIFY else {}
    with pytest.raises(FailedPrecondition) as refused:
        apply(in_state(current), command(action, **kw), NOW, audit=AUDIT)

    assert details(refused.value) == (message, "STATE", WHERE)


def test_a_change_before_any_qualification_says_to_open_one() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        apply(None, command(Action.QUALIFY), NOW, audit=AUDIT)

    assert details(refused.value) == (
        "no qualification of site MAIN of supplier ACME for MAT-A is open; open one first",
        "STATE", WHERE)


@pytest.mark.parametrize("change,audit,expected", [
    ({"valid_until": NOW}, AUDIT,
     ("valid_until must lie in the future", "DATE", WHERE)),
    ({"valid_until": None}, AUDIT,
     ("valid_until must lie in the future", "DATE", WHERE)),
    ({"evidence": Evidence(quality_agreement_ref="QAG-7")}, None,
     ("qualifying needs an approving audit as evidence", "EVIDENCE", WHERE)),
    ({}, None, ("audit AUD-1 is not on record", "EVIDENCE", "audits/AUD-1")),
    ({}, replace(AUDIT, site_id="LYON"),
     ("audit AUD-1 is of site LYON of supplier ACME, not of site MAIN of supplier ACME",
      "EVIDENCE", "audits/AUD-1")),
    ({}, replace(AUDIT, outcome=AuditOutcome.NOT_APPROVED),
     ("audit AUD-1 did not approve the site", "EVIDENCE", "audits/AUD-1")),
    ({"valid_until": NOW + timedelta(days=3000)}, AUDIT,
     ("valid_until 2035-02-11 lies after the next audit of the site, due 2028-11-01 "
      "(audit AUD-1)", "DATE", WHERE)),
])
def test_a_qualification_without_its_evidence_or_date_is_refused_precisely(
        change: dict, audit, expected: tuple[str, str, str]) -> None:
    with pytest.raises(FailedPrecondition) as refused:
        apply(in_state(S.PENDING), command(Action.QUALIFY, **change), NOW, audit=audit)

    assert details(refused.value) == expected


def test_a_qualification_keeps_the_sites_and_materials_names() -> None:
    qualified = apply(in_state(S.PENDING), command(Action.QUALIFY), NOW, audit=AUDIT)

    assert (qualified.supplier_id, qualified.site_id, qualified.material_code) == (
        "ACME", "MAIN", "MAT-A")
    assert qualified.evidence.audit_date == AUDIT.audit_date


def test_the_expiry_command_names_the_qualification_and_its_date() -> None:
    lapsed = replace(in_state(S.QUALIFIED), valid_until=NOW - timedelta(hours=1))

    change = expire(lapsed, NOW)

    assert change is not None
    assert (change.supplier_id, change.site_id, change.material_code, change.action) == (
        "ACME", "MAIN", "MAT-A", Action.EXPIRE)
    assert change.reason == (f"valid_until {(NOW - timedelta(hours=1)).isoformat()} passed "
                             "without requalification")
    undated = replace(in_state(S.QUALIFIED), valid_until=None)
    assert expire(undated, NOW).reason == ("valid_until an unknown date passed without "
                                           "requalification")


@pytest.mark.parametrize("change,problems", [
    ({"audit_date": NOW.date()}, []),  # today is not in the future
    ({"audit_date": NOW.date() + timedelta(days=1)},
     [("audit_date", "must not lie in the future")]),
    ({"next_audit_due": AUDIT.audit_date},
     [("next_audit_due", "must lie after audit_date")]),
    ({"next_audit_due": None},
     [("next_audit_due", "is required unless the outcome is NOT_APPROVED")]),
    ({"next_audit_due": None, "outcome": AuditOutcome.NOT_APPROVED}, []),
    ({"critical_findings": 1},
     [("outcome", "an audit with critical findings cannot be APPROVED without conditions")]),
    ({"critical_findings": 1, "outcome": AuditOutcome.APPROVED_WITH_CONDITIONS}, []),
])
def test_an_audit_record_is_refused_with_each_problem_named(change: dict,
                                                            problems: list) -> None:
    assert check_audit_record(replace(AUDIT, **change), NOW.date()) == problems


def test_evidence_counts_when_any_one_reference_is_given() -> None:
    assert not Evidence()
    assert Evidence(audit_id="AUD-1")
    assert Evidence(quality_agreement_ref="QAG-7")
    assert Evidence(questionnaire_ref="Q-3")
    assert Evidence(audit_date=date(2026, 1, 1)) == Evidence(audit_date=date(2026, 1, 1))
    assert not Evidence(audit_date=date(2026, 1, 1))


@pytest.mark.req("SUP-002")
@pytest.mark.parametrize(("current", "expected", "refused"), [
    (None, None, False), (None, 0, False), (None, 1, True),
    (S.QUALIFIED, 4, False), (S.QUALIFIED, 3, True), (S.QUALIFIED, 0, True),
])
def test_a_change_decided_on_another_version_is_aborted(current, expected, refused) -> None:
    if not refused:
        check_version(in_state(current), expected)
        return
    with pytest.raises(Aborted) as raised:
        check_version(in_state(current), expected)
    actual = 4 if current else 0
    assert raised.value.message == (f"qualification is at version {actual}, not {expected}; "
                                    "read it again")


SUPPLIER = Supplier("ACME", "Acme AG", "qa.jane", NOW)
SITE = Site("ACME", "MAIN", "Plant 1", "Werkstrasse 1, 4000 Basel", "CH", "qa.jane", NOW)


@pytest.mark.req("SUP-001")
def test_a_supplier_created_again_must_have_the_same_name() -> None:
    check_same_supplier(SUPPLIER, name="Acme AG")
    with pytest.raises(AlreadyExists) as raised:
        check_same_supplier(SUPPLIER, name="Acme Inc")
    assert raised.value.message == "supplier ACME exists with another name"


@pytest.mark.req("SUP-001")
@pytest.mark.parametrize("change", [{"name": "Plant 2"}, {"address": "Road 2"},
                                    {"country": "DE"}])
def test_a_site_added_again_must_have_the_same_details(change) -> None:
    same = {"name": SITE.name, "address": SITE.address, "country": SITE.country}
    check_same_site(SITE, **same)
    with pytest.raises(AlreadyExists) as raised:
        check_same_site(SITE, **{**same, **change})
    assert raised.value.message == "site MAIN of supplier ACME exists with other details"
