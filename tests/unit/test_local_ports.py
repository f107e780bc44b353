"""The ports `lotgate run` checks before it starts anything include the metrics ports its
services will open, and a taken one names the flag that moves it."""

from pathlib import Path

from lotgate_tools.local import flag_for
from lotgate_tools.stack import Stack
from shared.config import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS


def _metrics_uses(stack: Stack) -> dict[str, int]:
    return {use.key: use.port for use in stack.port_uses() if use.key.endswith("-metrics")}


def test_on_the_default_ports_each_service_metrics_port_is_checked_too(tmp_path: Path) -> None:
    stack = Stack(tmp_path, nats_port=1, monitor_port=2)

    assert _metrics_uses(stack) == {f"{name}-metrics": port
                                    for name, port in DEFAULT_METRICS_PORTS.items()}


def test_off_its_default_grpc_port_a_service_opens_no_metrics_port(tmp_path: Path) -> None:
    moved = {name: port + 1000 for name, port in DEFAULT_GRPC_PORTS.items()}
    stack = Stack(tmp_path, ports=moved, nats_port=1, monitor_port=2,
                  metrics_ports={"lots": 40123})

    assert _metrics_uses(stack) == {"lots-metrics": 40123}


def test_a_taken_metrics_port_names_the_flag_that_moves_it() -> None:
    assert flag_for("lots-metrics").startswith("--lots-port")
    assert flag_for("nats") == "--nats-port"
