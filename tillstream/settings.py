"""Settings: one frozen tree, from defaults, an optional YAML file and the environment.

Every default runs the embedded product (local broker, chDB under the data
directory). Environment variables use the prefix ``TILLSTREAM_`` and ``__``
between levels: ``TILLSTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = [
    "ConfigError",
    "CleaningRules",
    "KafkaConfig",
    "ClickHouseConfig",
    "WatchConfig",
    "SinkConfig",
    "WorkerConfig",
    "MetricsConfig",
    "NotifyConfig",
    "Settings",
    "load_settings",
    "default_rules",
]

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")


class ConfigError(Exception):
    """Bad configuration: the message is one line naming the setting."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CleaningRules(_Frozen):
    """The rule tables of design section 5; data, not code."""

    column_aliases: dict[str, list[str]]
    product_aliases: dict[str, str]
    region_aliases: dict[str, str]
    category_aliases: dict[str, str]
    date_formats: list[str]
    day_first: bool = False
    currency_symbols: dict[str, str]
    default_currency: str = "USD"
    anonymous_email: str = "anonymous"
    unknown_label: str = "Unknown"

    @field_validator("date_formats")
    @classmethod
    def _valid_formats(cls, formats: list[str]) -> list[str]:
        probe = datetime(2024, 12, 31, 23, 59, 58)
        for pattern in formats:
            try:
                parsed = datetime.strptime(probe.strftime(pattern), pattern)  # noqa: DTZ007
            except ValueError:
                raise ValueError(f"{pattern!r} is not a usable date format") from None
            if parsed.date() != probe.date():
                raise ValueError(f"{pattern!r} does not carry a whole date")
        return formats


@functools.cache
def _default_rules_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))


def default_rules() -> CleaningRules:
    return CleaningRules.model_validate(_default_rules_data())


class KafkaConfig(_Frozen):
    bootstrap_servers: str = ""
    """Empty means: start the embedded broker on a free loopback port."""
    partitions: int = Field(4, ge=1, le=1024)
    """Partitions of every topic tillstream creates: the ceiling on worker replicas."""
    replication_factor: int = Field(1, ge=1)
    retention_hours: int = Field(168, ge=1)
    topic_prefix: str = ""
    """Prepended to every topic name, so several deployments can share a cluster."""
    client_id: str = "tillstream"
    exactly_once: Literal["auto", "on", "off"] = "auto"
    """Idempotent producers (no duplicates from producer retries). `auto` turns them on
    when the broker grants a producer id: Apache Kafka does, the embedded broker does not."""
    session_timeout_seconds: float = Field(6.0, ge=1, le=300)
    """How soon a silent consumer is dropped from its group. The embedded broker
    also waits half of it whenever a group forms, so start-up takes that long."""
    rebalance_timeout_seconds: float = Field(60.0, ge=1, le=3600)
    """How long a rebalance waits for members to rejoin; a worker first finishes the
    chunks it holds, so this is generous."""
    group_prefix: str = "tillstream"
    """Consumer groups and the Faust app id are derived from it."""


class ClickHouseConfig(_Frozen):
    url: str = ""
    """`http(s)://host:port` for a server, `chdb:///path` for embedded; empty means
    `chdb:///<data_dir>/clickhouse`."""
    database: str = "tillstream"
    username: str = "default"
    password: SecretStr = SecretStr("")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url and not url.startswith(("http://", "https://", "chdb://")):
            raise ValueError("must start with http://, https:// or chdb://")
        return url

    @field_validator("database")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not name.replace("_", "").isalnum():
            raise ValueError("must be letters, digits and underscores")
        return name


class WatchConfig(_Frozen):
    inbox: Path = Path("inbox")
    archive: Path = Path("archive")
    failed: Path = Path("failed")
    stable_seconds: float = Field(0.5, gt=0, le=60)
    """A file is read once its size and mtime have not changed for this long."""
    chunk_rows: int = Field(4000, ge=1, le=1_000_000)
    """Rows per message on `sales.raw`."""
    max_in_flight_files: int = Field(4, ge=1, le=64)


class WorkerConfig(_Frozen):
    dedupe_retention_days: int = Field(30, ge=1)


class SinkConfig(_Frozen):
    batch_rows: int = Field(100_000, ge=1)
    batch_seconds: float = Field(0.5, gt=0, le=60)
    """A batch is written when it holds batch_rows or is this old."""
    retry_max_seconds: float = Field(30.0, gt=0)


class NotifyConfig(_Frozen):
    """Where notices of finished and failed files go; nothing is sent when both are empty."""

    webhook_url: SecretStr = SecretStr("")
    """A Slack-compatible incoming webhook (its URL is a secret)."""
    email_to: list[str] = []
    email_from: str = "tillstream@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    quarantine_rate_threshold: float = Field(0.25, ge=0, le=1)
    """A file whose rejected share is above this gets a `quarantine_rate` notice."""
    attempts: int = Field(5, ge=1, le=100)
    timeout_seconds: float = Field(10.0, gt=0, le=300)


class MetricsConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    """0 picks a free port; the chosen one is printed at start-up."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TILLSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    data_dir: Path = Path("data")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    kafka: KafkaConfig = KafkaConfig()
    clickhouse: ClickHouseConfig = ClickHouseConfig()
    watch: WatchConfig = WatchConfig()
    worker: WorkerConfig = WorkerConfig()
    sink: SinkConfig = SinkConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()
    cleaning: CleaningRules = Field(default_factory=default_rules)

    @field_validator("cleaning", mode="before")
    @classmethod
    def _extend_default_rules(cls, value: Any) -> Any:
        """A settings file names only the rules it adds or changes."""
        if not isinstance(value, dict):
            return value
        merged = dict(_default_rules_data())
        for key, override in value.items():
            base = merged.get(key)
            if isinstance(base, dict) and isinstance(override, dict):
                merged[key] = {**base, **override}
            else:
                merged[key] = override
        return merged

    @property
    def clickhouse_url(self) -> str:
        return self.clickhouse.url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka.bootstrap_servers

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _yaml_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return (*sources, file_secret_settings)


class _YamlFile:
    """The file `load_settings` is reading; pydantic-settings asks for sources by class."""

    path: Path | None = None

    def get(self) -> Path | None:
        return self.path


_yaml_file = _YamlFile()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings or raise ConfigError with one line naming the bad setting."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        try:
            document = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            first_line = str(exc).splitlines()[0]
            raise ConfigError(
                f"config file {config_file} is not valid YAML: {first_line}"
            ) from None
        if document is not None and not isinstance(document, dict):
            raise ConfigError(f"config file {config_file} must be a mapping of settings")
    _yaml_file.path = config_file
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {error['msg']}") from None
    finally:
        _yaml_file.path = None
