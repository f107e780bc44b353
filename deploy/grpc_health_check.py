"""Exit 0 when the local gRPC server reports SERVING on grpc.health.v1, else 1.

Used as the container health check in deploy/compose.yaml; Kubernetes uses its
native `grpc:` probes instead. The port comes from LOTGATE_GRPC_PORT. It asks for the
`readiness` name (database reachable, consumers running, shared.health): a container is
healthy when it can do its work, not merely when its process is alive.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = os.environ.get("LOTGATE_GRPC_PORT", "")
    if not port.isdigit():
        print("LOTGATE_GRPC_PORT is not set", file=sys.stderr)
        return 1
    # Never route a loopback health check through an HTTP proxy from the environment.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=3
            )
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code().name}", file=sys.stderr)
            return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(
            f"not serving: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
