"""Only the right producers move a lot: NATS users and permissions, and signed events.

On a real nats-server of this module (with its own users and keys) and the suppliers
and lots services in this process: the broker refuses anonymous clients and a service
user publishing another service's subjects; an event that reaches the lots service with
valid NATS credentials but no, a wrong or another producer's signature is parked in
dead_letters and the lot does not move; a correctly signed one moves it; keys rotate
through the public keys file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from lotgate.lots.v1 import events_pb2 as lot_events
from lotgate.lots.v1 import lots_pb2 as pb
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2 as rpb
from lotgate_tools.dev_secrets import write_public_keys
from lotgate_tools.stack import NatsServer
from services.lots.tables import tables as lot_tables
from shared import messaging
from shared.signing import SIGNATURE_HEADER, EventSigner, public_key_entry
from tests.integration.test_lots import TESTS, System, _count_results, running_system
from tests.support.services import ref
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

RESULT_RECORDED = messaging.RESULT_RECORDED
# A subject of the lots stream that only a forger would publish to.
FORGED_SUBJECT = "lotgate.lots.v1.forged"


@pytest.fixture(scope="module")
async def broker(workdir: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(workdir / f"nats-{ref('secure')}")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def system(databases, broker) -> AsyncIterator[System]:
    async with running_system(databases, broker) as system:
        yield system


class Errors:
    """What the broker told a client (through its error callback)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def saying(self, text: str) -> list[str]:
        return [e for e in self.seen if text.lower() in e.lower()]


async def connect_as(broker: NatsServer, user: str, errors: Errors) -> nats.NATS:
    """A client with `user`'s real NATS credentials (as one who stole its password)."""
    return await broker.connect(user, inbox_prefix=messaging.inbox_prefix(user),
                                error_cb=errors.record)


# The broker


@pytest.mark.req("EVT-001")
async def test_an_anonymous_client_is_refused_by_the_broker(broker: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(broker.url, allow_reconnect=False, max_reconnect_attempts=0,
                           error_cb=Errors().record)


@pytest.mark.req("EVT-001")
async def test_a_wrong_password_is_refused_by_the_broker(broker: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(broker.url, user="results", password="guessed",
                           allow_reconnect=False, max_reconnect_attempts=0,
                           error_cb=Errors().record)


@pytest.mark.req("EVT-001")
async def test_a_service_may_not_publish_another_services_subject(
        broker: NatsServer, system: System) -> None:
    errors = Errors()
    nc = await connect_as(broker, "results", errors)
    try:
        # A lots subject, published by the results user: dropped by the broker.
        await nc.publish(FORGED_SUBJECT, b"forged",
                         headers={"Nats-Msg-Id": "forged-" + ref("E")})
        await nc.flush()
        await eventually(lambda: errors.saying("permissions violation for publish"), bool)
        # Its own subject goes through (so the refusal above is the permission, not the
        # connection).
        ack = await nc.jetstream().publish(f"{messaging.RESULT_RECORDED}.probe", b"",
                                           headers={"Nats-Msg-Id": ref("probe")})
        assert ack.stream == messaging.RESULTS_STREAM.name
    finally:
        await nc.close()
    admin = await broker.connect()
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await admin.jetstream().get_last_msg(messaging.LOTS_STREAM.name, FORGED_SUBJECT)
    finally:
        await admin.close()


@pytest.mark.req("EVT-001")
async def test_a_service_may_not_read_another_services_events_directly(
        broker: NatsServer, system: System) -> None:
    errors = Errors()
    nc = await connect_as(broker, "results", errors)
    try:
        await nc.subscribe("lotgate.lots.v1.>")
        await nc.flush()
        await eventually(lambda: errors.saying("permissions violation for subscription"), bool)
    finally:
        await nc.close()


# Signed events


async def _dead_letter(system: System, event_id: str) -> str | None:
    dead = lot_tables.dead_letters
    async with system.lots_service.infra.engine.connect() as conn:
        return (await conn.execute(select(dead.c.error).where(dead.c.event_id == event_id))
                ).scalar_one_or_none()


async def _explained(system: System, lot_id: str) -> pb.ExplainedDecision:
    reply = await system.lots.ExplainDecision(pb.ExplainDecisionRequest(lot_id=lot_id))
    return reply.explained


def _copy(event: result_events.ResultRecorded) -> result_events.ResultRecorded:
    forged = result_events.ResultRecorded()
    forged.CopyFrom(event)
    forged.event_id = str(uuid.uuid4())
    return forged


def _unsigned(secrets: Any, subject: str, event_id: str, data: bytes) -> dict[str, str]:
    return {"Nats-Msg-Id": event_id}


def _unknown_key(secrets: Any, subject: str, event_id: str, data: bytes) -> dict[str, str]:
    return EventSigner("results", Ed25519PrivateKey.generate()).headers(subject, event_id, data)


def _copied_signature(secrets: Any, subject: str, event_id: str, data: bytes
                      ) -> dict[str, str]:
    """The real results key id, with a signature the real key gave another event."""
    headers = secrets.signer("results").headers(subject, event_id, data)
    other = secrets.signer("results").headers(subject, event_id, data + b"\x00")
    headers[SIGNATURE_HEADER] = other[SIGNATURE_HEADER]
    return headers


def _lots_key(secrets: Any, subject: str, event_id: str, data: bytes) -> dict[str, str]:
    """Correctly signed, by the lots service's real key: not the owner of the subject."""
    return secrets.signer("lots").headers(subject, event_id, data)


def _lots_key_as_results(secrets: Any, subject: str, event_id: str, data: bytes
                         ) -> dict[str, str]:
    """The lots service's real key, claiming to be the results service."""
    lots = secrets.signer("lots")
    return EventSigner("results", lots.private_key).headers(subject, event_id, data)


FORGERIES: dict[str, tuple[Callable[..., dict[str, str]], str]] = {
    "unsigned": (_unsigned, "unverified: unsigned: missing Lotgate-Producer"),
    "unknown-key": (_unknown_key, "unverified: unknown key id"),
    "wrong-signature": (_copied_signature, "unverified: bad signature"),
    "other-producer": (_lots_key, "unverified: producer 'lots' may not publish"),
    "other-producers-key": (_lots_key_as_results, "unverified: key "),
}


@pytest.mark.req("EVT-002")
@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_forged_result_is_parked_and_the_lot_does_not_move(
        broker: NatsServer, system: System, forgery: str) -> None:
    make_headers, reason = FORGERIES[forgery]
    material = f"MAT-{forgery.upper()}"
    supplier_id = await system.qualified_supplier(material)
    lot = await system.receive(supplier_id, material)
    before = await system.wait_unmet(lot.lot_id, ["IDENTITY_MISSING", "PURITY_MISSING",
                                                  "STERILITY_MISSING"])
    explained = await _explained(system, lot.lot_id)
    genuine = [system.result_event(lot.lot_id, material, test) for test in TESTS]
    forged = [_copy(event) for event in genuine]

    errors = Errors()
    nc = await connect_as(broker, "results", errors)  # a stolen results password
    try:
        for event in forged:
            data = event.SerializeToString()
            await nc.jetstream().publish(RESULT_RECORDED, data, headers=make_headers(
                broker.secrets, RESULT_RECORDED, event.event_id, data))
    finally:
        await nc.close()

    for event in forged:
        error = await eventually(lambda e=event: _dead_letter(system, e.event_id),
                                 lambda found: found is not None)
        assert error.startswith(reason), error
    assert await _count_results(system.lots_service, lot.lot_id) == 0
    assert await system.status(lot.lot_id) == before
    assert await _explained(system, lot.lot_id) == explained
    assert not errors.seen  # the broker let it through: only the signature stopped it

    # The same results, signed by the results service's key, release the lot.
    for event in genuine:
        await system.js.publish(RESULT_RECORDED, event.SerializeToString(),
                                headers={"Nats-Msg-Id": event.event_id})
    await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)


@pytest.mark.req("EVT-002")
async def test_a_parked_forgery_is_acked_and_not_redelivered(broker: NatsServer,
                                                             system: System) -> None:
    event = system.result_event(ref("LOT"), "MAT-ACK", rpb.TEST_KIND_IDENTITY)
    nc = await connect_as(broker, "results", Errors())
    try:
        await nc.jetstream().publish(RESULT_RECORDED, event.SerializeToString(),
                                     headers={"Nats-Msg-Id": event.event_id})
    finally:
        await nc.close()
    await eventually(lambda: _dead_letter(system, event.event_id),
                     lambda found: found is not None)

    admin = await broker.connect()
    try:
        info = await eventually(
            lambda: admin.jetstream().consumer_info(messaging.RESULTS_STREAM.name,
                                                    "lots-result-recorded"),
            lambda i: i.num_ack_pending == 0 and i.num_pending == 0)
    finally:
        await admin.close()
    assert info.num_redelivered == 0
    assert await _dead_letter(system, event.event_id) is not None


@pytest.mark.req("EVT-002")
async def test_a_forged_status_announcement_does_not_reach_status_reads(
        broker: NatsServer, system: System) -> None:
    """The change feed applies status announcements to the cache that reads answer from:
    an unsigned one with the lots password must not make a lot look released."""
    material = "MAT-FEED"
    lot = await system.receive(await system.qualified_supplier(material), material)
    before = await system.wait_unmet(lot.lot_id, ["IDENTITY_MISSING", "PURITY_MISSING",
                                                  "STERILITY_MISSING"])
    forged = lot_events.LotStatusChanged(event_id=str(uuid.uuid4()),
                                         previous_status=before.status)
    forged.release_status.CopyFrom(before)
    forged.release_status.status = pb.LOT_STATUS_RELEASED
    forged.release_status.version = before.version + 10
    del forged.release_status.unmet[:]

    nc = await connect_as(broker, "lots", Errors())  # a stolen lots password
    try:
        await nc.jetstream().publish(messaging.LOT_STATUS_CHANGED, forged.SerializeToString(),
                                     headers={"Nats-Msg-Id": forged.event_id})
    finally:
        await nc.close()

    error = await eventually(lambda: _dead_letter(system, forged.event_id),
                             lambda found: found is not None)
    assert error.startswith("unverified: unsigned"), error
    assert await system.status(lot.lot_id) == before
    statuses = await system.lots.GetReleaseStatuses(
        pb.GetReleaseStatusesRequest(lot_ids=[lot.lot_id]))
    assert [s.status for s in statuses.statuses] == [pb.LOT_STATUS_QUARANTINE]


# Rotation


@pytest.mark.req("EVT-003")
async def test_a_signing_key_is_rotated_through_the_public_keys_file(
        broker: NatsServer, system: System) -> None:
    keys_file = broker.secrets.public_keys_file
    original = json.loads(keys_file.read_text())["keys"]
    old = broker.secrets.signer("results")
    new = EventSigner("results", Ed25519PrivateKey.generate())
    material = "MAT-ROTATE"
    lot = await system.receive(await system.qualified_supplier(material), material)
    identity, purity, sterility = (system.result_event(lot.lot_id, material, test)
                                   for test in TESTS)

    async def publish(event: Any, signer: EventSigner) -> None:
        data = event.SerializeToString()
        nc = await connect_as(broker, "results", Errors())
        try:
            await nc.jetstream().publish(RESULT_RECORDED, data, headers=signer.headers(
                RESULT_RECORDED, event.event_id, data))
        finally:
            await nc.close()

    def with_keys(*signers: EventSigner) -> None:
        write_public_keys(keys_file, [
            public_key_entry(s.producer, s.private_key.public_key()) for s in signers]
            + [k for k in original if k["producer"] != "results"])

    try:
        await publish(identity, old)
        await eventually(lambda: _count_results(system.lots_service, lot.lot_id),
                         lambda n: n == 1)

        # Signed with the new key before its public key is published: not trusted yet.
        early = _copy(purity)
        await publish(early, new)
        error = await eventually(lambda: _dead_letter(system, early.event_id),
                                 lambda found: found is not None)
        assert error.startswith(f"unverified: unknown key id '{new.key_id}'"), error

        with_keys(old, new)  # both keys while the producer switches over
        await publish(purity, new)
        await eventually(lambda: _count_results(system.lots_service, lot.lot_id),
                         lambda n: n == 2)

        with_keys(new)  # the old key withdrawn: what it signs is no longer trusted
        late = _copy(sterility)
        await publish(late, old)
        error = await eventually(lambda: _dead_letter(system, late.event_id),
                                 lambda found: found is not None)
        assert error.startswith(f"unverified: unknown key id '{old.key_id}'"), error
        assert (await system.status(lot.lot_id)).status == pb.LOT_STATUS_QUARANTINE

        await publish(sterility, new)
        await system.wait_status(lot.lot_id, pb.LOT_STATUS_RELEASED)
    finally:
        write_public_keys(keys_file, original)
