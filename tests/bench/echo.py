"""A bare grpc.aio server that answers GetReleaseStatus with a constant response.

    python -m tests.bench.echo PORT

The benchmark's yardstick: the same method path and message types as the lots service,
and the answer a freshly received lot gets (QUARANTINE, three results missing), but no
interceptor, no health or reflection service, no cache and no background work. It runs
on uvloop like the services (see shared.runtime.run_until_signal) and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime, timedelta

import grpc

from lotgate.lots.v1 import lots_pb2 as pb
from lotgate_tools.client import DEFAULT_SITE
from services.lots.convert import release_status
from services.lots.domain import LotFacts, QualificationFacts, decide

# Same shape and length as the lot ids the benchmark reads from the lots service.
SAMPLE_LOT_ID = "LOT-000000-00000"


def realistic_response() -> pb.GetReleaseStatusResponse:
    """What the lots service answers for a lot just received from a qualified supplier."""
    now = datetime.now(UTC)
    lot = LotFacts(SAMPLE_LOT_ID, "BENCH-MAT-000000-0", "BENCH-SUP-000000-0", DEFAULT_SITE,
                   (now + timedelta(days=2000)).date())
    decision = decide(lot, QualificationFacts("QUALIFIED", now + timedelta(days=365), 1), (),
                      now)
    return pb.GetReleaseStatusResponse(release_status=release_status(
        SAMPLE_LOT_ID, decision.status, 1, decision.unmet, now))


async def serve(port: int) -> None:
    response = realistic_response()

    async def get_release_status(request: pb.GetReleaseStatusRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.GetReleaseStatusResponse:
        return response

    handler = grpc.method_handlers_generic_handler("lotgate.lots.v1.LotService", {
        "GetReleaseStatus": grpc.unary_unary_rpc_method_handler(
            get_release_status,
            request_deserializer=pb.GetReleaseStatusRequest.FromString,
            response_serializer=pb.GetReleaseStatusResponse.SerializeToString),
    })
    # The same server options as shared.grpc_server.build_server, minus the interceptor.
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo server on 127.0.0.1:{bound} ({type(loop).__module__})", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m tests.bench.echo PORT", file=sys.stderr)
        return 2
    port = int(argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
