"""`lotgate run` and `lotgate demo`: the whole system as local processes, and a scenario
driven through it (the embedded default; see lotgate_tools/stack.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

from lotgate_tools.ports import PortsInUse, StartFailed, wait_until_serving
from lotgate_tools.stack import Stack
from lotgate_tools.tokens import ActingTokens, DevKeys
from shared.config import DEFAULT_GRPC_PORTS

DEFAULT_DATA_DIR = ".lotgate"
# The development keys `lotgate run` creates and its services trust.
DEV_KEYS_DIR = Path(DEFAULT_DATA_DIR) / "keys"

DEFAULT_NATS_PORT = 14222
DEFAULT_MONITOR_PORT = 18222
# The flag of `lotgate run` that chooses each port of Stack.port_uses().
RUN_PORT_FLAGS = {"nats": "--nats-port", "nats-monitor": "--monitor-port",
                  "suppliers": "--suppliers-port", "lots": "--lots-port",
                  "results": "--results-port"}


def flag_for(key: str) -> str:
    """The flag that moves the port `key` names (Stack.port_uses)."""
    if key.endswith("-metrics"):  # open only beside the service's default gRPC port
        service = key.removesuffix("-metrics")
        return f"--{service}-port (off its default port it opens no metrics port)"
    return RUN_PORT_FLAGS.get(key, "its setting")


def _print_addresses(stack: Stack) -> None:
    assert stack.nats is not None and stack.keys is not None
    print("Lotgate is running (Ctrl-C stops it):")
    print(f"  nats-server   {stack.nats.url}  (monitor http://127.0.0.1:{stack.nats.monitor_port})")
    for name, service in stack.services.items():
        print(f"  {name:<12}  {service.address}  log {service.log_path}")
    print(f"  data          {stack.workdir}")
    print(f"  keys          {stack.keys.directory}  (JWKS {stack.keys.jwks_file.name}; never "
          "commit)")
    keys = ""
    if stack.keys.directory.resolve() != DEV_KEYS_DIR.resolve():
        keys = f" --keys {stack.keys.directory}"
    print("Every call needs a bearer token. Get one with the local keys:")
    print(f"  TOKEN=$(lotgate token --role qa --sub qa.jane{keys})")
    print("  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{}' "
          f"{stack.address('lots')} lotgate.lots.v1.LotService/ListLots")
    addresses = "".join(f" --{name} {service.address}" for name, service
                        in stack.services.items()
                        if service.address != f"127.0.0.1:{DEFAULT_GRPC_PORTS[name]}")
    print("Drive the demo scenario through it:")
    print(f"  lotgate demo{addresses}{keys}")
    sys.stdout.flush()  # seen at once through a pipe (| tee), not when it stops


def _run_failed(message: str) -> int:
    print(f"lotgate run: {message}", file=sys.stderr)
    return 1


async def run(args: argparse.Namespace) -> int:
    stack = Stack(args.data_dir, nats_port=args.nats_port, monitor_port=args.monitor_port,
                  ports={"suppliers": args.suppliers_port, "lots": args.lots_port,
                         "results": args.results_port}, log_level=args.log_level)
    try:
        await stack.start()
    except PortsInUse as error:
        for conflict in error.conflicts:
            _run_failed(f"port {conflict.use.port} for {conflict.use.purpose} is "
                        f"{conflict.reason}; choose another with "
                        f"{flag_for(conflict.use.key)}")
        return _run_failed("nothing was started")
    except StartFailed as error:
        return _run_failed(f"{error}\nEverything it had started is stopped.")
    _print_addresses(stack)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    exited = asyncio.ensure_future(stack.first_exit())
    try:
        await asyncio.wait((stopped, exited), return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            # Ctrl-C in a terminal reaches the children too, and one may be seen exiting
            # before this process's own handler runs: that is a stop, not a failure.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopped), timeout=1.0)
    finally:
        stopped.cancel()
        exited.cancel()
        print("stopping ...")
        await stack.stop()
    if not stop.is_set() and exited.done() and not exited.cancelled():
        name, status = exited.result()
        return _run_failed(f"{name} exited with status {status}; the others are stopped "
                           f"(logs in {stack.workdir})")
    return 0


async def demo(args: argparse.Namespace) -> int:
    from lotgate_tools.demo import run_demo

    chosen = {name: getattr(args, name) for name in DEFAULT_GRPC_PORTS}
    addresses = {name: address or f"127.0.0.1:{DEFAULT_GRPC_PORTS[name]}"
                 for name, address in chosen.items()}
    try:
        await asyncio.gather(*(wait_until_serving(a, timeout=0.5) for a in addresses.values()))
    except TimeoutError:
        if any(chosen.values()):
            unserved = [f"{name} at {address}" for name, address in addresses.items()
                        if not await _serving(address)]
            print(f"lotgate demo: no Lotgate service answers as SERVING: "
                  f"{', '.join(unserved)}", file=sys.stderr)
            return 2
    else:
        if not (args.keys / "signing.pem").exists():
            print(f"A Lotgate is running, but there are no development keys in {args.keys} "
                  "to sign the demo's calls: run the demo where `lotgate run` runs, or give "
                  "its keys with --keys.", file=sys.stderr)
            return 1
        print("Using the Lotgate that is already running.")
        return await run_demo(addresses, ActingTokens(DevKeys.ensure(args.keys)))
    with tempfile.TemporaryDirectory(prefix="lotgate-demo-") as tmp:
        from lotgate_tools.stack import free_port

        ports = {name: free_port() for name in DEFAULT_GRPC_PORTS}
        stack = Stack(Path(tmp), ports=ports, log_level="warning")
        print("Starting a private Lotgate for the demo ...")
        try:
            await stack.start()
        except StartFailed as error:
            print(f"lotgate demo: the private Lotgate did not start: {error}", file=sys.stderr)
            return 1
        try:
            return await run_demo({name: stack.address(name) for name in ports},
                                  stack.acting())
        finally:
            await stack.stop()


async def _serving(address: str) -> bool:
    try:
        await wait_until_serving(address, timeout=0.5)
    except TimeoutError:
        return False
    return True


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port
