"""Typed settings, read once from the environment when a process starts."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_URL = "nats://127.0.0.1:14222"

# Defaults stay clear of a standard NATS (4222) or PostgreSQL (5432) on the same machine.
DEFAULT_GRPC_PORTS = {"suppliers": 50061, "lots": 50062, "results": 50063}
# Prometheus metrics (and /livez, /readyz) of a service on its default gRPC port.
DEFAULT_METRICS_PORTS = {"suppliers": 50071, "lots": 50072, "results": 50073}


# The lots status cache's memory budget (LOTGATE_STATUS_CACHE_MB), in MB. Every process
# must stay under 200 MB (the benchmark's promise; the pods' limit in k8s/base is 256Mi).
# The lots process with a small cache peaks at 117-133 MB (the benchmark's row 6; 119 MB
# after its first batch of 1,000 statuses in tests/integration/test_lots_memory.py), so:
# 133 MB + 40 MB = 173 MB, leaving 27 MB for transients (a batch call, allocator
# fragmentation). 40 MB / (2,560 + 256 bytes per entry with its floor, measured in
# services/lots/read_model.py) = 14,894 lots held, at about 1.8 KB each in fact.
DEFAULT_STATUS_CACHE_MB = 40.0


class ServiceSettings(BaseSettings):
    """What every service reads from LOTGATE_* variables."""

    model_config = SettingsConfigDict(env_prefix="LOTGATE_", extra="ignore")

    service_name: str = "lotgate"
    database_url: str = ""
    nats_url: str = DEFAULT_NATS_URL
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    log_level: str = "info"
    # How long in-flight calls may finish after SIGTERM.
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # The relay polls this often even when no local commit woke it.
    outbox_poll_seconds: float = Field(default=0.5, gt=0)
    # NATS de-duplicates re-published events inside this window; it must be longer
    # than the time a relay may take to retry a publish whose ack it lost.
    stream_duplicate_window_seconds: float = Field(default=900.0, ge=60)
    # Inbox rows (the ids of applied events) are deleted this long after they were
    # applied (shared.inbox_retention). Never shorter than the duplicate window; the
    # default week also covers a consumer that dies between applying an event and acking
    # it and comes back days later (the copy redelivered then is still recognised).
    inbox_retention_seconds: float = Field(default=7 * 86400.0, gt=0)
    # How often each replica looks for inbox rows past the retention.
    inbox_prune_seconds: float = Field(default=60.0, gt=0)
    # Copies of each stream in a JetStream cluster: 1 for a single broker, 3 in production.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # A message that fails this many times for a non-transient reason is parked.
    consumer_max_attempts: int = Field(default=5, ge=1)
    # A message fetched by a consumer that then dies is redelivered after this long.
    consumer_ack_wait_seconds: float = Field(default=10.0, ge=1)
    # Suppliers: how often to look for approvals that have lapsed (an EXPIRED event
    # follows within about this long), and how long before a lapse to warn.
    expiry_check_seconds: float = Field(default=1.0, gt=0)
    # How often the audit trail's chain head is published as an anchor (when it moved).
    audit_anchor_seconds: float = Field(default=60.0, gt=0)
    expiry_warning_days: float = Field(default=30.0, ge=0)
    database_pool_size: int = Field(default=20, ge=1)
    # Seconds a database statement may run before the call fails.
    database_timeout_seconds: float = Field(default=10.0, gt=0)
    # This service's NATS user (shared.nats_auth) and its password, given directly or,
    # better, as a file (a mounted secret). Empty user: connect without credentials.
    nats_user: str = ""
    nats_password: str = ""
    nats_password_file: str = ""
    # Event signatures (shared.signing): this service's Ed25519 private key (PEM) and the
    # producers' public keys (JSON; read again whenever it changes, for rotation).
    signing_key_file: str = ""
    event_public_keys_file: str = ""
    # Every call carries a bearer token (shared.auth): the public keys that sign tokens,
    # as a JWKS file (re-read when it changes) or URL, and the issuer and audience the
    # tokens must name. Exactly one of the file and the URL is required.
    auth_jwks_file: str = ""
    auth_jwks_url: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""
    # Clock skew tolerated on exp and nbf.
    auth_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    # TLS on the gRPC port: the server's certificate chain and key (PEM files). With a
    # client CA too, callers must present a certificate it signed (mutual TLS); one whose
    # common name is instrument:<id> may post as that instrument without a token.
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    grpc_tls_client_ca_file: str = ""
    # Server reflection (grpcurl without the protos): on locally, off in production.
    grpc_reflection: bool = True
    # Electronic signatures: this many wrong signing secrets in a row lock the signer
    # until an administrator resets them (shared.esign_signers).
    esign_max_failures: int = Field(default=5, ge=1, le=100)
    # Traces (shared.tracing): the OTLP/gRPC collector spans are exported to, e.g.
    # http://otel-collector:4317. Empty: nothing leaves the process (the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT is honoured too); log lines carry trace ids either way.
    otlp_endpoint: str = ""
    # Prometheus metrics over HTTP (/metrics, also /livez and /readyz): the port, 0 for
    # none. Unset: DEFAULT_METRICS_PORTS for a service on its default gRPC port, else none.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # The metrics port's address; empty: the gRPC host's.
    metrics_host: str = ""
    # How often the outbox, dead letters and consumers' lag are read for the metrics.
    metrics_sample_seconds: float = Field(default=5.0, gt=0)
    # Readiness (shared.health): how often the database and the consumers are checked,
    # and how long the database may take to answer SELECT 1.
    health_check_seconds: float = Field(default=3.0, gt=0)
    health_check_timeout_seconds: float = Field(default=2.0, gt=0)
    # Lots: memory for the status cache (services.lots.read_model.StatusCache), in MB.
    # It bounds the cache whatever the traffic: entries = budget / (ENTRY_BYTES 2,560 +
    # FLOOR_BYTES 256), measured as resident memory; DEFAULT_STATUS_CACHE_MB explains the
    # default. More lots than it holds are read from the database again (a batch of
    # 1,000 misses is one query).
    status_cache_mb: float = Field(default=DEFAULT_STATUS_CACHE_MB, gt=0)
    # Group commit (shared.group_commit): concurrent writes of one kind (results: posts;
    # lots: receipts) share one transaction. Off (LOTGATE_GROUP_COMMIT=off): each alone.
    group_commit: bool = True
    # FOR TESTS ONLY: a file holding a clock offset in seconds (shared.clock.FileClock),
    # so that end-to-end tests can move the services' time. Empty: the system clock.
    clock_file: str = ""

    @model_validator(mode="after")
    def _inbox_outlives_duplicate_window(self) -> ServiceSettings:
        if self.inbox_retention_seconds < self.stream_duplicate_window_seconds:
            raise ValueError(
                f"LOTGATE_INBOX_RETENTION_SECONDS ({self.inbox_retention_seconds:g}) is "
                f"shorter than LOTGATE_STREAM_DUPLICATE_WINDOW_SECONDS "
                f"({self.stream_duplicate_window_seconds:g}): a copy of an event arriving "
                "after its inbox row was pruned would be applied twice; set the retention "
                "to at least the duplicate window")
        return self


def nats_password(settings: ServiceSettings) -> str:
    """The NATS password: the secret file's content when one is given."""
    if settings.nats_password_file:
        with open(settings.nats_password_file, encoding="utf-8") as file:
            return file.read().strip()
    return settings.nats_password


def settings_for(service: str, **overrides: object) -> ServiceSettings:
    """Settings of one service: its defaults, then the environment, then overrides."""
    settings = ServiceSettings(service_name=service)
    values = settings.model_dump()
    if not settings.database_url:
        values["database_url"] = f"sqlite+aiosqlite:///.lotgate/data/{service}.db"
    if settings.grpc_port == 0 and "grpc_port" not in overrides:
        values["grpc_port"] = DEFAULT_GRPC_PORTS.get(service, 0)
    values.update(overrides)
    if values.get("metrics_port") is None:
        on_default_port = values["grpc_port"] == DEFAULT_GRPC_PORTS.get(service)
        values["metrics_port"] = DEFAULT_METRICS_PORTS.get(service, 0) if on_default_port else 0
    return ServiceSettings.model_validate(values)
