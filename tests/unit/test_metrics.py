"""The metrics hooks count into the running service's own registry, and the documented
alerts name only series the services serve."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from shared import metrics
from shared.metrics import ServiceMetrics

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
            "info": ("_info",)}


def served_names(service: ServiceMetrics) -> set[str]:
    return {family.name + suffix for family in service.registry.collect()
            for suffix in SUFFIXES[family.type]}


def value(service: ServiceMetrics, name: str, **labels: str) -> float | None:
    return service.registry.get_sample_value(name, labels)


class Uow:
    """What count_decision needs of a unit of work: callbacks run after the commit."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def after_commit(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def commit(self) -> None:
        for callback in self.callbacks:
            callback()


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_every_alert_names_series_a_service_serves_and_says_how_bad_it_is() -> None:
    service = ServiceMetrics("lots")
    metrics.observe(service, SimpleNamespace(relay=None, consumers=[]))
    served = served_names(service)
    assert rules()
    for rule in rules():
        named = set(re.findall(r"\blotgate_[a-z_]+", rule["expr"]))
        assert named or rule["expr"].startswith("up{"), rule["alert"]
        assert named <= served, (rule["alert"], named - served)
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_a_decision_counts_once_committed_in_its_own_service_only() -> None:
    lots, other = ServiceMetrics("lots"), ServiceMetrics("lots")
    uow = Uow()
    metrics.count_decision(uow, "QUARANTINE", [SimpleNamespace(code="PURITY_MISSING")])
    assert uow.callbacks == []  # no service bound: nothing is counted anywhere
    token = lots.bind()
    try:
        metrics.count_decision(uow, SimpleNamespace(value="QUARANTINE"),
                               [SimpleNamespace(code="PURITY_MISSING"),
                                SimpleNamespace(code="STERILITY_MISSING")])
        metrics.count_decision(uow, "RELEASED", [])
    finally:
        metrics.current.reset(token)
    assert value(lots, "lotgate_lot_decisions_total", status="QUARANTINE") is None
    uow.commit()
    assert value(lots, "lotgate_lot_decisions_total", status="QUARANTINE") == 1
    assert value(lots, "lotgate_lot_decisions_total", status="RELEASED") == 1
    assert value(lots, "lotgate_lot_decision_reasons_total", status="QUARANTINE",
                 reason="STERILITY_MISSING") == 1
    assert value(other, "lotgate_lot_decisions_total", status="QUARANTINE") is None


def test_redeliveries_are_the_messages_delivered_more_than_once() -> None:
    service = ServiceMetrics("lots")

    def msg(num_delivered: int) -> Any:
        return SimpleNamespace(metadata=SimpleNamespace(num_delivered=num_delivered))

    assert value(service, "lotgate_audit_chain_intact") is None  # no verification yet
    token = service.bind()
    try:
        metrics.delivered("lots-result-recorded", [msg(1), msg(2), msg(5), msg(1)])
        metrics.parked("lotgate.results.v1.result_recorded")
        metrics.audit_verified(False)
    finally:
        metrics.current.reset(token)
    assert value(service, "lotgate_consumer_deliveries_total",
                 consumer="lots-result-recorded") == 4
    assert value(service, "lotgate_consumer_redeliveries_total",
                 consumer="lots-result-recorded") == 2
    assert value(service, "lotgate_dead_letters_parked_total",
                 subject="lotgate.results.v1.result_recorded") == 1
    assert value(service, "lotgate_audit_chain_intact") == 0
    assert value(service, "lotgate_audit_verifications_total", result="broken") == 1


def test_metrics_ports_sit_next_to_the_default_grpc_ports_and_are_off_elsewhere(
        monkeypatch) -> None:
    from shared.config import settings_for

    monkeypatch.delenv("LOTGATE_METRICS_PORT", raising=False)
    monkeypatch.delenv("LOTGATE_GRPC_PORT", raising=False)
    assert [settings_for(name).metrics_port for name in ("suppliers", "lots", "results")] == [
        50071, 50072, 50073]
    assert settings_for("lots", grpc_port=0).metrics_port == 0  # tests: no fixed port
    assert settings_for("lots", grpc_port=0, metrics_port=9464).metrics_port == 9464
    monkeypatch.setenv("LOTGATE_GRPC_PORT", "50062")
    assert settings_for("lots").metrics_port == 50072  # what `lotgate run` starts
    monkeypatch.setenv("LOTGATE_METRICS_PORT", "0")
    assert settings_for("lots").metrics_port == 0
