"""`lotgate`: run the whole system on this machine, or drive a demo through it.

    lotgate run    nats-server from the venv + the three services on SQLite files
                   (--nats-port, --monitor-port, --suppliers-port, --lots-port,
                   --results-port choose the ports; a taken port stops it before it starts)
    lotgate demo   a warehouse, an instrument and QA at work; prints each lot's status
                   (--suppliers, --lots, --results: the addresses of a running Lotgate)
    lotgate dossier SUPPLIER_ID
                   an auditor's qualification dossier of one supplier: HTML, JSON, CSV
    lotgate audit --service lots [--record-type lot --record-id LOT-1] --format csv
                   a service's audit trail (filtered) with its verification: CSV or JSON
    lotgate token --role qa --sub qa.jane
                   a bearer token signed with the local development keys (.lotgate/keys)
    lotgate migrate [--service lots]
                   bring a service's database to the schema this build needs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import grpc

from lotgate_tools import local
from lotgate_tools.local import (
    DEFAULT_DATA_DIR,
    DEFAULT_MONITOR_PORT,
    DEFAULT_NATS_PORT,
    DEV_KEYS_DIR,
)
from lotgate_tools.tokens import DevKeys, TokenSource, static_token
from shared import access
from shared.config import DEFAULT_GRPC_PORTS


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
    from lotgate_tools.dossier import build_dossier, directory_name, sha256_of, write_dossier
    from lotgate_tools.dossier_fetch import EXIT_FAILED, DossierFetchError, fetch_from

    def fail(message: str, code: int = EXIT_FAILED) -> int:
        print(f"lotgate dossier: {message}", file=sys.stderr)
        return code

    try:
        target = Path(args.out) / directory_name(args.supplier_id)
    except ValueError as error:
        return fail(str(error))
    addresses = {"suppliers": args.suppliers, "lots": args.lots}
    try:
        # Without a token the services answer UNAUTHENTICATED, which is reported as such.
        records = await fetch_from(addresses, args.supplier_id, _dossier_tokens(args.token))
    except DossierFetchError as error:
        return fail(str(error), error.exit_code)
    try:
        dossier = build_dossier(
            records.supplier, audits=records.audits, history=records.history,
            lots=records.lots, reviews=records.reviews, audit_trail=records.audit_trail,
            audit_trail_verification=records.audit_trail_verification,
            generated_at=datetime.now(UTC),
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


async def _audit(args: argparse.Namespace) -> int:
    """Export a service's audit trail; exit 1 when the chain does not verify."""
    from lotgate_tools.audit_export import fetch_from, summary, to_csv, to_json
    from shared.audit_anchor import keeper_of

    def instant(name: str, value: str) -> datetime | None:
        if not value:
            return None
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"--{name} needs a time zone (2026-11-30T00:00:00Z)")
        return parsed

    try:
        since, until = instant("since", args.since), instant("until", args.until)
    except ValueError as error:
        print(f"lotgate audit: {error}", file=sys.stderr)
        return 2
    address = args.address or f"127.0.0.1:{DEFAULT_GRPC_PORTS[args.service]}"
    keeper = keeper_of(args.service)
    anchor_address = "" if args.no_anchor else (
        args.anchor_from or f"127.0.0.1:{DEFAULT_GRPC_PORTS[keeper]}")
    try:
        export = await fetch_from(address, args.service, _dossier_tokens(args.token),
                                  anchor_address=anchor_address,
                                  record_type=args.record_type, record_id=args.record_id,
                                  principal=args.principal, since=since, until=until)
    except grpc.aio.AioRpcError as error:
        print(f"lotgate audit: the {args.service} service at {address} or the keeper of its "
              f"anchors at {anchor_address or '-'} answered {error.code().name}: "
              f"{error.details()}", file=sys.stderr)
        return 2 if error.code() == grpc.StatusCode.UNAVAILABLE else 1
    text = to_json(export) if args.format == "json" else to_csv(export)
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(summary(export), file=sys.stderr)
    return 0 if export.verification.ok else 1


def _dossier_tokens(token: str) -> TokenSource | None:
    """The caller's own token; else, locally, an auditor's signed with the dev keys."""
    if token:
        return static_token(token)
    if (DEV_KEYS_DIR / "signing.pem").exists():
        keys = DevKeys.ensure(DEV_KEYS_DIR)
        return static_token(keys.mint(_who(), [access.AUDITOR], ttl_seconds=900))
    return None


def _token(args: argparse.Namespace) -> int:
    """Print a token signed with the development keys (created if missing)."""
    keys = DevKeys.ensure(args.keys)
    if args.role == access.INSTRUMENT and not args.instrument_id:
        print("lotgate token: an instrument token needs --instrument-id", file=sys.stderr)
        return 2
    subject = args.sub or (f"instrument:{args.instrument_id}" if args.instrument_id
                           else f"{args.role}.local")
    print(keys.mint(subject, args.role, name=args.name, instrument_id=args.instrument_id,
                    ttl_seconds=args.ttl_minutes * 60))
    return 0


def _add_migrate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from shared.migrations import SERVICES

    migrate = sub.add_parser(
        "migrate", help="bring a service's database to the schema this build needs",
        description="Upgrade a service's database to the head revision of its migrations "
        "(services/<service>/migrations), with the service's own settings "
        "(LOTGATE_DATABASE_URL; by default the SQLite files of `lotgate run`), and print "
        "from which revision to which. A database made before migrations is adopted. Exit 1 "
        "when a database is refused (left unchanged).")
    migrate.add_argument("--service", choices=[*SERVICES, "all"], default="all",
                         help="default: all (only without LOTGATE_DATABASE_URL)")
    migrate.add_argument("--new-revision", default="", metavar="MESSAGE",
                         help="instead: write the next dated revision from what the models "
                         "changed (autogenerate); read it before committing it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lotgate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run nats-server and the three services locally",
        description="Run nats-server (JetStream) and the three services on 127.0.0.1, with "
        "SQLite files, NATS store, secrets and development keys under --data-dir. Every "
        "port is checked before anything starts: a taken one stops it (exit 1) naming the "
        "port and its flag; so does a process that exits or does not come up.")
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                     help="data, secrets and keys (default: %(default)s)")
    run.add_argument("--nats-port", type=local.port_number, default=DEFAULT_NATS_PORT,
                     help="nats-server's client port (default: %(default)s)")
    run.add_argument("--monitor-port", type=local.port_number, default=DEFAULT_MONITOR_PORT,
                     help="nats-server's monitoring port (default: %(default)s)")
    for name in DEFAULT_GRPC_PORTS:
        run.add_argument(f"--{name}-port", type=local.port_number, default=DEFAULT_GRPC_PORTS[name],
                         help=f"the {name} service's gRPC port (default: %(default)s)")
    run.add_argument("--log-level", default="info")
    demo = sub.add_parser(
        "demo", help="drive a realistic scenario and print each lot's status",
        description="Drive the demo scenario through the Lotgate at the given addresses "
        "(signing its calls with the development keys of --keys). Without any address, "
        "through one running on the default ports, else through a private one it starts "
        "and stops. Exit 0 when every lot ends as expected, 2 when a given service does "
        "not answer.")
    for name in DEFAULT_GRPC_PORTS:
        demo.add_argument(f"--{name}", metavar="HOST:PORT", default=None,
                          help=f"the {name} service (default: "
                          f"127.0.0.1:{DEFAULT_GRPC_PORTS[name]})")
    demo.add_argument("--keys", type=Path, default=DEV_KEYS_DIR,
                      help="the development keys of that Lotgate, `lotgate run`'s "
                      "DATA_DIR/keys (default: %(default)s)")
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
    dossier.add_argument("--token", default=os.environ.get("LOTGATE_TOKEN", ""),
                         help="bearer token (default: $LOTGATE_TOKEN; locally, one signed "
                         f"with the development keys in {DEV_KEYS_DIR})")
    trail = sub.add_parser(
        "audit", help="export a service's audit trail with its verification",
        description="Page through one service's audit trail (every create and change of its "
        "GMP records: who, when, why, old and new values) and verify its hash chain. "
        "JSON holds the entries and the verification; CSV holds the entries, and the "
        "verification is printed to stderr. Exit 1 when the chain does not verify or the "
        "service refuses, 2 when it cannot be reached.")
    trail.add_argument("--service", required=True, choices=sorted(DEFAULT_GRPC_PORTS))
    trail.add_argument("--address", default="", metavar="HOST:PORT",
                       help="the service (default: its local port)")
    trail.add_argument("--record-type", default="", help="lot, qualification, result ...")
    trail.add_argument("--record-id", default="", help="needs --record-type")
    trail.add_argument("--principal", default="", help="only this subject's changes")
    trail.add_argument("--since", default="", help="ISO 8601 time with zone, inclusive")
    trail.add_argument("--until", default="", help="ISO 8601 time with zone, exclusive")
    trail.add_argument("--anchor-from", default="", metavar="HOST:PORT",
                       help="the service that keeps this service's anchors (suppliers "
                       "keeps those of lots and results, lots those of suppliers; default: "
                       "its local port)")
    trail.add_argument("--no-anchor", action="store_true",
                       help="verify the chain without comparing it with an anchor")
    trail.add_argument("--format", choices=("csv", "json"), default="json")
    trail.add_argument("--out", default="", metavar="FILE", help="default: stdout")
    trail.add_argument("--token", default=os.environ.get("LOTGATE_TOKEN", ""),
                       help="bearer token (default: $LOTGATE_TOKEN; locally, an auditor's "
                       f"signed with the development keys in {DEV_KEYS_DIR})")
    token = sub.add_parser(
        "token", help="print a bearer token signed with the local development keys",
        description="Print a bearer token for local use, signed with the development keys "
        f"that `lotgate run` creates in {DEV_KEYS_DIR} (created here if missing). Roles: "
        + "; ".join(f"{role}: {len(access.rpcs_of(role))} RPCs" for role in access.ROLES)
        + ". The README's access table lists them.")
    token.add_argument("--role", action="append", required=True, choices=access.ROLES,
                       help="a role; repeat for several")
    token.add_argument("--sub", default="", help="the subject recorded as the actor "
                       "(default: <role>.local, or instrument:<id>)")
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--instrument-id", default="",
                       help="the instrument an instrument token posts as")
    token.add_argument("--ttl-minutes", type=float, default=60.0)
    token.add_argument("--keys", type=Path, default=DEV_KEYS_DIR,
                       help="directory of the development keys (default: %(default)s)")
    _add_migrate(sub)
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command == "migrate":
        from shared.migrations import main as migrate

        return migrate(args.service, new_revision_message=args.new_revision)
    if args.command == "run":
        args.data_dir = Path(args.data_dir).resolve()
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "run":
            return asyncio.run(local.run(args))
        if args.command == "dossier":
            return asyncio.run(_dossier(args))
        if args.command == "audit":
            return asyncio.run(_audit(args))
        return asyncio.run(local.demo(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
