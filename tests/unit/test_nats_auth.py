"""The broker's users and permissions, as written from shared.nats_auth's table."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shared import audit_anchor, messaging, nats_auth
from shared.config import settings_for
from shared.nats_auth import SERVICES, Consumes, authorization_block, permissions


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def may_publish(user: str, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions(SERVICES[user]).publish)


def may_subscribe(user: str, subject: str) -> bool:
    return any(matches(p, subject) for p in permissions(SERVICES[user]).subscribe)


EVENT_SUBJECTS = {
    "suppliers": [messaging.QUALIFICATION_CHANGED, messaging.QUALIFICATION_EXPIRING],
    "results": [messaging.RESULT_RECORDED, messaging.RESULT_INVALIDATED,
                messaging.RESULT_CONFIRMED, messaging.SPECIFICATION_APPROVED],
    "lots": [messaging.LOT_RECEIVED, messaging.LOT_STATUS_CHANGED,
             messaging.LOT_REVIEW_REQUIRED, messaging.LOT_REVIEW_CLOSED],
}


@pytest.mark.req("EVT-001")
@pytest.mark.parametrize("user", list(SERVICES))
def test_a_service_publishes_its_own_events_and_no_one_elses(user: str) -> None:
    for owner, subjects in EVENT_SUBJECTS.items():
        for subject in subjects:
            assert may_publish(user, subject) == (owner == user), (user, subject)


@pytest.mark.req("EVT-001")
@pytest.mark.parametrize("user", list(SERVICES))
def test_a_service_reads_only_its_own_inbox(user: str) -> None:
    assert may_subscribe(user, f"_INBOX_{user}.abc.1")
    for other in (*SERVICES, "admin"):
        if other != user:
            assert not may_subscribe(user, f"_INBOX_{other}.abc.1")
    assert not may_subscribe(user, "_INBOX.abc")
    for subjects in EVENT_SUBJECTS.values():
        for subject in subjects:
            assert not may_subscribe(user, subject)


@pytest.mark.req("EVT-001")
def test_only_a_streams_owner_may_change_or_delete_it() -> None:
    for user, access in SERVICES.items():
        for stream in (messaging.SUPPLIERS_STREAM, messaging.LOTS_STREAM,
                       messaging.RESULTS_STREAM):
            update = f"$JS.API.STREAM.UPDATE.{stream.name}"
            assert may_publish(user, update) == (stream == access.owns), (user, update)
            assert not may_publish(user, f"$JS.API.STREAM.DELETE.{stream.name}")
            assert not may_publish(user, f"$JS.API.STREAM.PURGE.{stream.name}")
            assert not may_publish(user, f"$JS.API.STREAM.MSG.DELETE.{stream.name}")


@pytest.mark.req("EVT-001")
def test_a_service_may_not_read_a_stream_through_a_consumer_it_does_not_have() -> None:
    # The suppliers service consumes nothing; results only lot_received.
    assert not may_publish("suppliers", "$JS.API.CONSUMER.CREATE.LOTGATE_RESULTS.x")
    assert not may_publish("suppliers", "$JS.API.CONSUMER.MSG.NEXT.LOTGATE_LOTS.x")
    assert not may_publish("results", "$JS.API.CONSUMER.CREATE.LOTGATE_SUPPLIERS.spy")
    assert not may_publish(
        "results", "$JS.API.CONSUMER.CREATE.LOTGATE_LOTS.results-lot-received."
                   "lotgate.lots.v1.status_changed")
    assert may_publish(
        "results", "$JS.API.CONSUMER.CREATE.LOTGATE_LOTS.results-lot-received."
                   "lotgate.lots.v1.lot_received")
    assert may_publish("results", "$JS.ACK.LOTGATE_LOTS.results-lot-received.1.2.3.4.5.6")
    assert not may_publish("results", "$JS.ACK.LOTGATE_RESULTS.lots-result-recorded.1.2.3")


def tables_of(service: str) -> Any:
    return importlib.import_module(f"services.{service}.tables").tables


def _wiring(service: str) -> SimpleNamespace:
    bootstrap = importlib.import_module(f"services.{service}.bootstrap")
    infra = SimpleNamespace(settings=settings_for(service), engine=None, uow=None,
                            clock=None, gate=None)
    return bootstrap.build(infra)


@pytest.mark.req("EVT-001")
@pytest.mark.parametrize("service", list(SERVICES))
def test_the_table_allows_exactly_the_consumers_and_streams_each_service_has(
        service: str) -> None:
    parts = _wiring(service)
    access = SERVICES[service]
    # Every service's runtime adds the consumers that keep other services' anchors.
    anchors = audit_anchor.subscriptions(service, tables_of(service).metadata)

    durables = {Consumes(s.stream, s.subject, s.durable)
                for s in [*parts.subscriptions, *anchors]}
    assert durables == {c for c in access.consumes if c.durable is not None}
    assert set(parts.streams) | set(audit_anchor.streams(service)) == set(access.streams)
    assert access.owns in access.streams


@pytest.mark.req("EVT-001")
def test_the_lots_change_feed_is_an_ordered_consumer_of_status_changes() -> None:
    ordered = [c for c in SERVICES["lots"].consumes if c.durable is None]
    assert ordered == [Consumes(messaging.LOTS_STREAM.name, messaging.LOT_STATUS_CHANGED)]


@pytest.mark.req("EVT-001")
def test_the_block_takes_passwords_from_the_environment_unless_given() -> None:
    block = authorization_block()
    for user in nats_auth.USERS:
        assert f"password: ${nats_auth.password_variable(user)}," in block
    given = authorization_block({user: f'pw "{user}"' for user in nats_auth.USERS})
    assert "$LOTGATE_NATS_PASSWORD" not in given
    assert 'password: "pw \\"lots\\""' in given


@pytest.mark.req("EVT-001")
def test_the_command_prints_the_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert nats_auth.main(["authorization"]) == 0
    assert capsys.readouterr().out == authorization_block()
    assert nats_auth.main([]) == 2


@pytest.mark.req("EVT-001")
@pytest.mark.parametrize(
    "config", ["deploy/nats/nats-server.conf", "k8s/base/nats/nats-server.conf"]
)
def test_the_deployed_broker_configs_carry_the_table(config: str) -> None:
    text = (Path(__file__).parents[2] / config).read_text()
    start = text.index("authorization {")
    end = text.index("# END users")
    assert text[start:end] == authorization_block(), (
        f"{config}: regenerate its users block with `python -m shared.nats_auth authorization`")
