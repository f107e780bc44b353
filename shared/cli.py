"""`lotgate`: run the whole system on this machine, or drive a demo through it.

    lotgate run    nats-server from the venv + the three services on SQLite files
    lotgate demo   a warehouse, an instrument and QA at work; prints each lot's status
    lotgate dossier SUPPLIER_ID
                   an auditor's qualification dossier of one supplier: HTML, JSON, CSV
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import signal
import socket
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
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


def _who() -> str:
    """The operating-system account and host that ran the export."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no USER variable
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _version() -> str:
    try:
        return metadata.version("lotgate")
    except metadata.PackageNotFoundError:
        return "unknown"


async def _dossier(args: argparse.Namespace) -> int:
    from shared.dossier import build_dossier, directory_name, sha256_of, write_dossier
    from shared.dossier_fetch import EXIT_FAILED, DossierFetchError, fetch_from

    def fail(message: str, code: int = EXIT_FAILED) -> int:
        print(f"lotgate dossier: {message}", file=sys.stderr)
        return code

    try:
        target = Path(args.out) / directory_name(args.supplier_id)
    except ValueError as error:
        return fail(str(error))
    addresses = {"suppliers": args.suppliers, "lots": args.lots}
    try:
        records = await fetch_from(addresses, args.supplier_id)
    except DossierFetchError as error:
        return fail(str(error), error.exit_code)
    try:
        dossier = build_dossier(
            records.supplier, audits=records.audits, history=records.history,
            lots=records.lots, reviews=records.reviews, generated_at=datetime.now(UTC),
            generated_by=_who(), generator=f"lotgate {_version()} (lotgate dossier)",
            sources=addresses)
    except ValueError as error:
        return fail(f"inconsistent answer from the services: {error}")
    try:
        paths = write_dossier(dossier, target)
    except OSError as error:
        return fail(f"cannot write the dossier into {target}: {error}")
    for path in paths:
        print(path)
    print(f"SHA-256 of {paths[-1].name}: {sha256_of(paths[-1])} (record it to detect "
          "later edits of this export)", file=sys.stderr)
    return 0


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
    dossier = sub.add_parser(
        "dossier", help="write a supplier's qualification dossier for an auditor",
        description="Write the qualification dossier of one supplier into OUT/SUPPLIER_ID/: "
        "dossier.html (one self-contained page), dossier.json, one CSV per table and "
        "SHA256SUMS; print the paths written. Exit 1 when the supplier is unknown or a "
        "service refuses, 2 when a service cannot be reached.")
    dossier.add_argument("supplier_id", metavar="SUPPLIER_ID")
    dossier.add_argument("--out", default="dossiers", metavar="DIR",
                         help="directory of the dossiers (default: ./dossiers)")
    dossier.add_argument("--suppliers", metavar="HOST:PORT",
                         default=f"127.0.0.1:{DEFAULT_GRPC_PORTS['suppliers']}",
                         help="the suppliers service (default: %(default)s)")
    dossier.add_argument("--lots", metavar="HOST:PORT",
                         default=f"127.0.0.1:{DEFAULT_GRPC_PORTS['lots']}",
                         help="the lots service (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "run":
        args.data_dir = Path(args.data_dir).resolve()
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "run":
            asyncio.run(_run(args))
            return 0
        if args.command == "dossier":
            return asyncio.run(_dossier(args))
        return asyncio.run(_demo(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
