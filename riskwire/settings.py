"""Settings, read once at the entry point from ``RISKWIRE_*`` variables (or a ``.env`` file).

The defaults are the embedded setup: a broker that riskwire starts itself, SQLite under the data
directory, CPU models. Setting ``RISKWIRE_KAFKA_BOOTSTRAP`` and ``RISKWIRE_DATABASE_URL`` switches to a
real Kafka cluster and PostgreSQL with no code change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from riskwire.exceptions import SettingsError

ENV_PREFIX = "RISKWIRE_"
_BOOTSTRAP = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")
_SUPPORTED_DIALECTS = {"sqlite", "postgresql"}


class Topics:
    """Topic names derived from one prefix, so one cluster can host several deployments."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.raw_news = f"{prefix}.raw.news"
        self.raw_social = f"{prefix}.raw.social"
        self.docs = f"{prefix}.docs"
        self.scored = f"{prefix}.scored"
        self.groups = f"{prefix}.groups"  # scores re-keyed by sector and market
        self.alerts = f"{prefix}.alerts"
        self.deadletter = f"{prefix}.deadletter"

    def raw(self, kind: str) -> str:
        return self.raw_social if kind == "social" else self.raw_news

    def all(self) -> list[str]:
        return [
            self.raw_news,
            self.raw_social,
            self.docs,
            self.scored,
            self.groups,
            self.alerts,
            self.deadletter,
        ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Field(
        Path("riskwire-data"), description="Where the embedded setup keeps files"
    )
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port]; unset = start the embedded Tansu broker"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite in data_dir")
    database_idle_transaction_s: float = Field(
        10.0, ge=0, le=3600,
        description="PostgreSQL ends a worker's connection left this long in the middle of a "
        "transaction (a worker paused or its host gone holds its partitions' fence rows, and its "
        "successor waits on them); the worker, if it wakes, starts the transaction again and is "
        "refused. 0 = no limit",
    )  # fmt: skip
    topic_prefix: str = Field("riskwire", pattern=r"^[A-Za-z0-9._\-]+$")
    topic_partitions: int = Field(4, ge=1, le=1024)
    kafka_fetch_wait_ms: int = Field(
        100,
        ge=1,
        le=60_000,
        description="longest a worker's fetch waits at the broker for new records. Faust fixes "
        "1500 ms; Kafka answers as soon as records arrive, but the embedded broker (Tansu) holds "
        "a fetch to its end, so every hop between stages waited about half of it",
    )
    # how every Kafka client riskwire runs (worker, producers, admin) reaches the cluster
    # (riskwire/kafka_security.py)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="as Kafka's security.protocol; not PLAINTEXT needs a bootstrap"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM of the CAs the brokers' certificates are checked against; unset = "
        "the system's"
    )  # fmt: skip
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (mutual TLS); may hold its key too"
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM key of the client certificate")
    kafka_ssl_check_hostname: bool = Field(
        True, description="the broker's certificate must name the host connected to"
    )
    consumer_group: str = Field("riskwire", pattern=r"^[A-Za-z0-9._\-]+$")
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="serve Prometheus metrics at /metrics on this port (a worker, `riskwire "
        "deliver`); unset = not served",
    )  # fmt: skip
    metrics_address: str = Field(
        "127.0.0.1", description="the address the metrics are served on (0.0.0.0: every interface)"
    )

    dedupe_cache_size: int = Field(
        100_000,
        ge=0,
        description="recent document ids a worker remembers; 0 = rely on the database",
    )

    story_index: Literal["auto", "database", "memory"] = Field(
        "auto",
        description="where near-duplicate stories are kept: the database (shared by every worker, "
        "kept across restarts) or worker memory; auto = the database on PostgreSQL, memory on "
        "SQLite (one worker, and one writer, which the story index would take from the others)",
    )

    device: str = Field(
        "auto",
        description="where transformer members run: auto (the first CUDA GPU when torch sees one, "
        "else the CPU), cpu, cuda or cuda:N",
    )
    precision: str = Field(
        "auto",
        pattern=r"^(auto|fp32|bf16|int8|fp16)$",
        description="transformer members' arithmetic: auto (fp16 on a GPU, bf16 on a CPU that "
        "has it, else fp32), fp32, bf16, int8 (CPU dynamic quantisation) or fp16 (GPU)",
    )
    trace_models: bool = Field(
        True,
        description="run transformers on the CPU (fp32, bf16: sentence encoders and classifier "
        "members) as TorchScript traces: the same answers (checked at load; else untraced), and a "
        "scoring thread no longer queues for the interpreter lock at every torch call",
    )
    scoring_process: bool = Field(
        True,
        description="a worker's models score in a child process of their own, beside the stream "
        "stages instead of taking turns with them at the interpreter lock; a child that dies is "
        "started again (false: in a thread of the worker)",
    )
    scoring_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="batches the scoring process scores at once; 0 = one per core the worker "
        "may use, at most 8 (each batch gets its share of the cores as torch threads, or "
        "model_threads when that is set)",
    )
    model_reload_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="how often a worker looks for a changed ensemble or routing file (a refit "
        "promoted by `riskwire labels refit --promote`, a new file) and, when the models' "
        "version changed, loads them beside the ones scoring and switches between two batches; "
        "0 = never (restart the worker)",
    )
    score_batch_size: int = Field(64, ge=1, le=4096)
    score_batch_wait_s: float = Field(0.5, gt=0, le=60)
    model_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="torch threads of a worker's models (in a scoring process: of each batch it "
        "scores at once); 0 = one fewer than the cores the worker may use (the stream stages need "
        "one), at least 1 (in a scoring process: the cores shared out among its batches)",
    )
    ensemble: str = Field(
        "default",
        description="what scores documents: an ensemble file (.json), a routing file (.yaml), or "
        "the name of one (trained here first, then shipped)",
    )
    ensemble_members: str = Field(
        "",
        description="instead of an ensemble file, members by name and weight, soft vote "
        "(e.g. 'finlex:1,minilm-head:1.5'; names: finlex, lm, finvader, minilm-head, null)",
    )
    encoder_path: str | None = Field(
        None, description="local path or hub id of the sentence encoder; unset = packaged MiniLM"
    )

    rolling_window_minutes: int = Field(120, ge=1, le=60 * 24 * 30)
    rule_hop_minutes: int = Field(30, ge=1, le=60 * 24)
    allowed_lateness_minutes: int = Field(4 * 24 * 60, ge=0)
    surge_min_documents: int = Field(4, ge=1)
    surge_negative_share: float = Field(0.6, gt=0, le=1)
    surge_mean_score: float = Field(-0.25, ge=-1, le=1)
    aggregate_windows_minutes: str = Field(
        "15,60,1440",
        pattern=r"^\s*\d+(\s*,\s*\d+)*\s*$",
        description="tumbling aggregate window lengths, in minutes, comma-separated",
    )
    baseline_days: float = Field(20, gt=0, le=365, description="z-score baseline per group")
    reorder_grace_s: float = Field(
        0, ge=0, description="event-time slack the risk stage allows for disorder in a partition"
    )
    reorder_idle_s: float = Field(
        2.0,
        gt=0,
        description="seconds of quiet after which a raw partition read to its end is "
        "marked idle: the risk stage does not wait for its watermark",
    )
    sector_groups: bool = Field(True, description="keep aggregates and rules per sector too")
    market_group: bool = Field(True, description="keep aggregates and rules for the whole market")
    rules_file: Path | None = Field(
        None,
        description="YAML warning rules; unset = one negative-surge rule from the surge_* settings",
    )
    api_token: str | None = Field(
        None, description="bearer token the API requires; unset = no authentication (local use)"
    )

    public_url: str = Field(
        "http://127.0.0.1:8000", description="where the API is reached; links in alerts point here"
    )
    grafana_url: str | None = Field(
        None, description="Grafana base URL; set = every live alert becomes an annotation"
    )
    grafana_token: str | None = Field(None, description="Grafana service-account token")
    alertmanager_url: str | None = Field(
        None, description="Alertmanager base URL; set = live alerts are posted to /api/v2/alerts"
    )
    alertmanager_resend_s: float = Field(
        60.0, gt=0, description="how often firing alerts are re-asserted to Alertmanager"
    )
    webhook_allow_private: bool = Field(
        False, description="allow webhooks to private, loopback and link-local addresses"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    delivery_max_attempts: int = Field(12, ge=1, le=100)
    delivery_backoff_s: float = Field(2.0, gt=0)
    delivery_backoff_cap_s: float = Field(600.0, gt=0)
    delivery_poll_s: float = Field(0.5, gt=0, le=60)
    delivery_concurrency: int = Field(
        32, ge=1, le=512, description="deliveries in flight at once (receivers answer slowly)"
    )
    deliver_in_api: bool = Field(
        True, description="the API process also runs the delivery dispatcher"
    )
    sectors_file: Path | None = Field(
        None, description="CSV of ticker,sector for sector filters; unset = the companies table's"
    )
    companies_file: Path | None = Field(
        None, description="reference table for entity linking; unset = the packaged starter table"
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for server in value.split(","):
            if not _BOOTSTRAP.match(server.strip()):
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        from riskwire.kafka_security import check

        check(self)  # raises SettingsError naming the variables
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        if url.get_backend_name() not in _SUPPORTED_DIALECTS:
            raise ValueError(f"dialect {url.get_backend_name()!r} is not one of sqlite, postgresql")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @property
    def model_device(self) -> str:
        """``device``, with ``auto`` made ``cuda`` when torch sees a GPU and ``cpu`` otherwise.
        (A property, not a validator: it imports torch, which commands without models never
        need.)"""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'riskwire.db').resolve()}"

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def with_bootstrap(self, bootstrap: str) -> Settings:
        return self.model_copy(update={"kafka_bootstrap": bootstrap})

    @property
    def aggregate_windows(self) -> tuple[int, ...]:
        return tuple(sorted({int(m) for m in self.aggregate_windows_minutes.split(",")}))

    def as_env(self) -> dict[str, str]:
        """The ``RISKWIRE_*`` variables that recreate these settings in a child process."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        env[f"{ENV_PREFIX}DATABASE_URL"] = self.resolved_database_url
        return env


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning validation errors into one message that names each setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across settings: its message names them
                problems.append(str(err["ctx"]["error"]) if "ctx" in err else err["msg"])
                continue
            field = str(err["loc"][0])
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
