"""The fuzzer's request strategies (tests/support/fuzzing.py) build every request type."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2
from lotgate.suppliers.v1 import suppliers_pb2
from tests.support.fuzzing import Known, requests

KNOWN = Known(ids={"lot_id": ["LOT-1", "LOT-2"], "material_code": ["MAT-1"]})
METHODS = [method for module in (lots_pb2, results_pb2, suppliers_pb2)
           for service in module.DESCRIPTOR.services_by_name.values()
           for method in service.methods]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_request_type_gives_messages_that_serialize(method) -> None:
    @settings(max_examples=5, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(requests(method.input_type, KNOWN))
    def check(request) -> None:
        assert isinstance(request.payload, bytes)
        if request.message is not None:
            assert request.message.DESCRIPTOR is method.input_type
            assert len(repr(request)) < 2_000

    check()
