"""`lotgate`: run the whole system on this machine, or drive a demo through it.

    lotgate run    nats-server from the venv + the three services on SQLite files
    lotgate demo   a warehouse, an instrument and QA at work; prints each lot's status
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path

from shared.config import DEFAULT_GRPC_PORTS
from shared.stack import Stack, wait_until_serving

DEFAULT_NATS_PORT = 14222
DEFAULT_MONITOR_PORT = 18222


def _print_addresses(stack: Stack) -> None:
    assert stack.nats is not None
    print("Lotgate is running (Ctrl-C stops it):")
    print(f"  nats-server   {stack.nats.url}  (monitor http://127.0.0.1:{stack.nats.monitor_port})")
    for name, service in stack.services.items():
        print(f"  {name:<12}  {service.address}  log {service.log_path}")
    print(f"  data          {stack.workdir}")
    print("Try: grpcurl -plaintext 127.0.0.1:50062 list")


async def _run(args: argparse.Namespace) -> None:
    stack = Stack(args.data_dir, nats_port=args.nats_port, monitor_port=args.monitor_port,
                  ports={"suppliers": args.suppliers_port, "lots": args.lots_port,
                         "results": args.results_port}, log_level=args.log_level)
    await stack.start()
    _print_addresses(stack)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("stopping ...")
        await stack.stop()


async def _demo(args: argparse.Namespace) -> int:
    from shared.demo import run_demo

    addresses = {name: f"127.0.0.1:{port}" for name, port in DEFAULT_GRPC_PORTS.items()}
    try:
        await asyncio.gather(*(wait_until_serving(a, timeout=0.5) for a in addresses.values()))
        print("Using the Lotgate that is already running.")
        return await run_demo(addresses)
    except TimeoutError:
        pass
    with tempfile.TemporaryDirectory(prefix="lotgate-demo-") as tmp:
        from shared.stack import free_port

        ports = {name: free_port() for name in DEFAULT_GRPC_PORTS}
        stack = Stack(Path(tmp), ports=ports, log_level="warning")
        print("Starting a private Lotgate for the demo ...")
        await stack.start()
        try:
            return await run_demo({name: stack.address(name) for name in ports})
        finally:
            await stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lotgate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run nats-server and the three services locally")
    run.add_argument("--data-dir", default=".lotgate")
    run.add_argument("--nats-port", type=int, default=DEFAULT_NATS_PORT)
    run.add_argument("--monitor-port", type=int, default=DEFAULT_MONITOR_PORT)
    run.add_argument("--suppliers-port", type=int, default=DEFAULT_GRPC_PORTS["suppliers"])
    run.add_argument("--lots-port", type=int, default=DEFAULT_GRPC_PORTS["lots"])
    run.add_argument("--results-port", type=int, default=DEFAULT_GRPC_PORTS["results"])
    run.add_argument("--log-level", default="info")
    sub.add_parser("demo", help="drive a realistic scenario and print each lot's status")
    args = parser.parse_args(argv)
    if args.command == "run":
        args.data_dir = Path(args.data_dir).resolve()
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "run":
            asyncio.run(_run(args))
            return 0
        return asyncio.run(_demo(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
