"""The results service's translations between its domain and the protobuf contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lotgate.results.v1 import results_pb2 as pb
from services.results.convert import (
    measurement_from_proto,
    result_to_proto,
    specification_to_proto,
)
from services.results.domain import (
    IdentityOutcome,
    Quantity,
    Range,
    Result,
    Specification,
    SterilityOutcome,
    TestKind,
    Verdict,
)

AT = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def result(test: TestKind, measurement) -> Result:
    return Result(
        result_id="r-1", lot_id="LOT-1", material_code="MAT-A", test=test,
        instrument_id="HPLC-01", idempotency_key="K-1", measurement=measurement,
        verdict=Verdict.FAIL, verdict_reason="why", spec_version=4, measured_at=AT,
        recorded_at=AT, sequence=42)


@pytest.mark.parametrize(("test", "measurement", "field"), [
    (TestKind.IDENTITY, IdentityOutcome.NO_MATCH, "identity"),
    (TestKind.PURITY, Quantity(97.125, "% w/w"), "quantity"),
    (TestKind.STERILITY, SterilityOutcome.GROWTH, "sterility"),
])
def test_a_result_keeps_its_measurement_through_the_contract(test, measurement, field) -> None:
    message = result_to_proto(result(test, measurement))

    assert message.WhichOneof("measurement") == field
    assert measurement_from_proto(message) == measurement


def test_a_result_carries_what_the_lots_service_decides_on() -> None:
    message = result_to_proto(result(TestKind.PURITY, Quantity(99.0, "%")))

    assert (message.lot_id, message.material_code, message.test, message.verdict,
            message.spec_version, message.sequence) == (
        "LOT-1", "MAT-A", pb.TEST_KIND_PURITY, pb.VERDICT_FAIL, 4, 42)
    assert message.recorded_at.ToDatetime(tzinfo=UTC) == AT


def test_an_open_limit_stays_absent_in_the_specification() -> None:
    spec = Specification(material_code="MAT-A", version=1, identity_reference="IR",
                         purity=Range(lower=98.0, upper=None, unit="%"), sterility_method="",
                         effective_from=AT, approved_by="qa.jane")

    purity = specification_to_proto(spec).purity

    assert purity.HasField("lower") and purity.lower == 98.0
    assert not purity.HasField("upper")
