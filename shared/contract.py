"""Value types both the lots and the results service use, taken from the protos' enums.

The contract (`protos/lotgate/results/v1/results.proto`) is the one place where a test kind,
a verdict or a result state is defined. Each type here is a `StrEnum` built from that enum's
descriptor: a member per value, named and valued without the enum's prefix
(`TEST_KIND_IDENTITY` becomes `TestKind.IDENTITY == "IDENTITY"`), leaving out the
`..._UNSPECIFIED` zero. A kind added to the proto is a member here without another edit, and
nothing else keeps a copy that could drift.

This is the one module outside `api.py`/`convert.py` that reads generated code, and it reads
descriptors only: the domain stays free of protobuf messages.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from lotgate.results.v1 import results_pb2


def enum_of(name: str, proto_enum: Any, prefix: str) -> type[StrEnum]:
    """A StrEnum with the proto enum's values, less `prefix` and the zero value."""
    members = [
        (value.name.removeprefix(prefix),) * 2
        for value in proto_enum.DESCRIPTOR.values
        if value.number != 0
    ]
    made = StrEnum(name, members)  # type: ignore[misc]
    made.__module__ = __name__
    return made


TestKind = enum_of("TestKind", results_pb2.TestKind, "TEST_KIND_")
# A domain type, not a pytest test class, whatever its name says.
TestKind.__test__ = False  # type: ignore[attr-defined]

Verdict = enum_of("Verdict", results_pb2.Verdict, "VERDICT_")

# Where a result stands in QA's handling: VALID counts (a VALID failure is under
# investigation), INVALIDATED is a laboratory error kept but no longer counted, CONFIRMED is an
# out-of-specification result QA confirmed.
ResultState = enum_of("ResultState", results_pb2.ResultState, "RESULT_STATE_")
