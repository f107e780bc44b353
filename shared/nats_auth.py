"""Who may do what on the NATS broker: one table, from which the broker's users are written.

Each service connects as its own user and may publish only its own event subjects and
the JetStream API calls it needs (its streams, its consumers, their acks); it may read
only its own inbox (`_INBOX_<user>.>`), where JetStream delivers what its consumers
fetch. Anything else is refused by the broker with a permissions violation, and a
client without credentials cannot connect at all. The `admin` user (operators, tests)
may do anything.

`python -m shared.nats_auth authorization` prints the `authorization { users = [...] }`
block with the passwords as environment variables (`$LOTGATE_NATS_PASSWORD_<USER>`), as
deploy/ and k8s/ use it; `lotgate run` and the tests write it with generated passwords.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared import messaging
from shared.messaging import LOTS_STREAM, RESULTS_STREAM, SUPPLIERS_STREAM, StreamSpec

ADMIN_USER = "admin"


@dataclass(frozen=True)
class Consumes:
    """One consumer of a service: a durable pull consumer, or (durable None) an ordered
    push consumer that the client creates and replaces itself."""

    stream: str
    subject: str
    durable: str | None = None


@dataclass(frozen=True)
class ServiceAccess:
    user: str
    # The stream of the events it produces: it alone publishes these subjects.
    owns: StreamSpec
    # The streams it makes sure exist at start-up (its own and the ones it reads).
    streams: tuple[StreamSpec, ...]
    consumes: tuple[Consumes, ...] = ()


# The table. A new consumer or stream of a service must be added here, or the broker
# refuses it (tests/unit/test_nats_auth.py compares this with the services' wiring).
SERVICES: Mapping[str, ServiceAccess] = {
    # Suppliers keeps the audit trail anchors of lots and results (shared/audit_anchor.py).
    "suppliers": ServiceAccess(
        "suppliers", SUPPLIERS_STREAM, (SUPPLIERS_STREAM, LOTS_STREAM, RESULTS_STREAM),
        (Consumes(LOTS_STREAM.name, "lotgate.lots.v1.audit_anchor",
                  "suppliers-lots-audit-anchor"),
         Consumes(RESULTS_STREAM.name, "lotgate.results.v1.audit_anchor",
                  "suppliers-results-audit-anchor"))),
    "results": ServiceAccess(
        "results", RESULTS_STREAM, (RESULTS_STREAM, LOTS_STREAM),
        (Consumes(LOTS_STREAM.name, messaging.LOT_RECEIVED, "results-lot-received"),)),
    "lots": ServiceAccess(
        "lots", LOTS_STREAM, (LOTS_STREAM, RESULTS_STREAM, SUPPLIERS_STREAM),
        (Consumes(RESULTS_STREAM.name, messaging.RESULT_RECORDED, "lots-result-recorded"),
         Consumes(RESULTS_STREAM.name, messaging.RESULT_INVALIDATED, "lots-result-invalidated"),
         Consumes(RESULTS_STREAM.name, messaging.RESULT_CONFIRMED, "lots-result-confirmed"),
         Consumes(SUPPLIERS_STREAM.name, messaging.QUALIFICATION_CHANGED,
                  "lots-qualification-changed"),
         # Lots keeps the audit trail anchors of suppliers.
         Consumes(SUPPLIERS_STREAM.name, "lotgate.suppliers.v1.audit_anchor",
                  "lots-suppliers-audit-anchor"),
         # The change feed (services/lots/feed.py): every replica's status changes.
         Consumes(LOTS_STREAM.name, messaging.LOT_STATUS_CHANGED))),
}

USERS: tuple[str, ...] = (*SERVICES, ADMIN_USER)

_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions(access: ServiceAccess) -> Permissions:
    """The subjects a service's user may publish to and subscribe to."""
    publish: list[str] = [*access.owns.subjects, f"{_API}.INFO"]
    for stream in access.streams:
        publish += [f"{_API}.STREAM.INFO.{stream.name}", f"{_API}.STREAM.CREATE.{stream.name}"]
    # Only a stream's owner may change its settings (ensure_stream fixes unsafe ones).
    publish.append(f"{_API}.STREAM.UPDATE.{access.owns.name}")
    for consumer in access.consumes:
        publish += _consumer_subjects(consumer)
    return Permissions(tuple(dict.fromkeys(publish)),
                       (f"{messaging.inbox_prefix(access.user)}.>",))


def _consumer_subjects(consumer: Consumes) -> list[str]:
    stream, subject = consumer.stream, consumer.subject
    if consumer.durable is None:
        # An ordered consumer: an ephemeral consumer with a generated name, recreated
        # (and the old one deleted) after a gap, with flow control answered by the client.
        return [f"{_API}.CONSUMER.CREATE.{stream}", f"{_API}.CONSUMER.CREATE.{stream}.*.{subject}",
                f"{_API}.CONSUMER.DELETE.{stream}.*", f"{_API}.CONSUMER.INFO.{stream}.*",
                f"$JS.FC.{stream}.>"]
    durable = consumer.durable
    return [f"{_API}.CONSUMER.INFO.{stream}.{durable}",
            f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"{_API}.CONSUMER.CREATE.{stream}.{durable}.{subject}",
            f"{_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>"]


def password_variable(user: str) -> str:
    return f"LOTGATE_NATS_PASSWORD_{user.upper()}"


def authorization_block(passwords: Mapping[str, str] | None = None, *,
                        users: Sequence[str] = USERS) -> str:
    """The broker's `authorization` block. With `passwords`, they are written in; without,
    each is the environment variable `$LOTGATE_NATS_PASSWORD_<USER>` of the broker."""
    lines = ["authorization {", "  users = ["]
    for user in users:
        if passwords is None:
            password = f"${password_variable(user)}"
        else:
            password = json.dumps(passwords[user])
        if user == ADMIN_USER:
            perms = Permissions((">",), (">",))
        else:
            perms = permissions(SERVICES[user])
        lines += [
            f"    {{user: {json.dumps(user)}, password: {password}, permissions: {{",
            f"      publish: {{allow: {_list(perms.publish)}}}",
            f"      subscribe: {{allow: {_list(perms.subscribe)}}}",
            "    }}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _list(subjects: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in subjects) + "]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["authorization"]:
        print("usage: python -m shared.nats_auth authorization", file=sys.stderr)
        return 2
    sys.stdout.write(authorization_block())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
