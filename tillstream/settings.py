"""Settings: one frozen tree, from defaults, an optional YAML file and the environment.

Every default runs the embedded product (local broker, chDB under the data
directory). Environment variables use the prefix ``TILLSTREAM_`` and ``__``
between levels: ``TILLSTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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
    "Compression",
    "WatchConfig",
    "SinkConfig",
    "WorkerConfig",
    "AnomaliesConfig",
    "MetricsConfig",
    "NotifyConfig",
    "PollerAuthConfig",
    "PaginationConfig",
    "CursorConfig",
    "PollerConfig",
    "Settings",
    "load_settings",
    "default_rules",
]

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")

Compression = Literal["zstd", "none"]


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


def _secret_from_file(values: Any, name: str) -> Any:
    """`<name>_file`, when given, is read into `<name>`: its first line, as a secret."""
    if not isinstance(values, dict) or not values.get(f"{name}_file"):
        return values
    path = Path(values[f"{name}_file"])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return {**values, name: lines[0] if lines else ""}


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
    compression: Compression = "zstd"
    """The codec of every batch tillstream writes. zstd takes the bytes through the broker
    (and the embedded broker's memory) down to about a third; `none` is for consumers
    whose client has no zstd codec."""
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
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    sasl_password_file: Path | None = None
    """Read the password from this file (a Docker or Kubernetes secret) instead."""
    ssl_cafile: Path | None = None
    """CA bundle to verify the brokers with; empty means the system's."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM), for brokers that authenticate clients by TLS."""
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="before")
    @classmethod
    def _sasl_password_from_file(cls, values: Any) -> Any:
        return _secret_from_file(values, "sasl_password")

    @model_validator(mode="after")
    def _credentials_for_sasl(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ValueError(f"sasl_username is required with {self.security_protocol}")
        return self


class ClickHouseConfig(_Frozen):
    url: str = ""
    """`http(s)://host:port` for a server, `chdb:///path` for embedded; empty means
    `chdb:///<data_dir>/clickhouse`."""
    database: str = "tillstream"
    username: str = "default"
    password: SecretStr = SecretStr("")
    password_file: Path | None = None
    """Read the password from this file (a Docker or Kubernetes secret) instead."""

    @model_validator(mode="before")
    @classmethod
    def _password_from_file(cls, values: Any) -> Any:
        return _secret_from_file(values, "password")

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
    max_decompressed_bytes: int = Field(10 * 2**30, ge=2**20)
    """gzip content larger than this, decompressed, fails its file (a gzip bomb)."""
    max_inflation: int = Field(100, ge=2, le=100_000)
    """gzip content that grows more than this many times its compressed size fails its
    file; judged past the first 16 MiB."""


class WorkerConfig(_Frozen):
    dedupe_retention_days: int = Field(30, ge=1)
    """How long an accepted order is remembered for dedupe, from when it was first seen."""
    allowed_lateness_seconds: int = Field(3600, ge=0)
    """How long after a window's end (by the latest sale time seen) a sale still
    updates it; later sales are late for that window (docs/architecture.md)."""


class AnomaliesConfig(_Frozen):
    threshold: float = Field(3.5, gt=0)
    """A sale whose robust z-score of revenue is above this (in absolute value) is an
    anomaly for its product."""
    baseline_size: int = Field(500, ge=2)
    """How many of a product's most recent sales form its baseline."""
    min_baseline: int = Field(30, ge=2)
    """Sales of a product are scored only once its baseline holds this many."""


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


class PollerAuthConfig(_Frozen):
    """How a poller proves who it is. The secret is named here, never written here:
    it is read from an environment variable or a file when the poller starts."""

    kind: Literal["none", "bearer", "basic", "api_key"] = "none"
    username: str = ""
    """For `basic`."""
    header: str = "X-API-Key"
    """For `api_key`: the request header that carries the key."""
    secret_env: str = ""
    """Environment variable holding the token (`bearer`), password (`basic`) or key."""
    secret_file: Path | None = None
    """...or a file holding it (surrounding whitespace is dropped)."""

    @model_validator(mode="after")
    def _secret_named(self) -> PollerAuthConfig:
        if self.kind != "none" and bool(self.secret_env) == (self.secret_file is not None):
            raise ValueError(f"{self.kind} needs exactly one of secret_env and secret_file")
        if self.kind == "basic" and not self.username:
            raise ValueError("basic needs a username")
        return self

    def secret(self, where: str) -> SecretStr:
        """Read the secret now; a ConfigError naming `where` if it is not there."""
        if self.kind == "none":
            return SecretStr("")
        if self.secret_env:
            value = os.environ.get(self.secret_env, "")
            if not value:
                raise ConfigError(
                    f"invalid setting {where}.auth.secret_env: "
                    f"environment variable {self.secret_env} is not set"
                )
            return SecretStr(value)
        assert self.secret_file is not None  # noqa: S101 - checked by _secret_named
        try:
            value = self.secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"invalid setting {where}.auth.secret_file: cannot read {self.secret_file}: "
                f"{reason}"
            ) from None
        if not value:
            raise ConfigError(
                f"invalid setting {where}.auth.secret_file: {self.secret_file} is empty"
            )
        return SecretStr(value)


class PaginationConfig(_Frozen):
    """How the pages of one poll run follow each other."""

    style: Literal["none", "page", "offset", "cursor", "link"] = "none"
    page_size: int = Field(100, ge=1, le=100_000)
    """Records per page, sent for `page` and `offset`; a shorter page is the last."""
    page_param: str = "page"
    first_page: int = 1
    size_param: str = "per_page"
    offset_param: str = "offset"
    limit_param: str = "limit"
    next_path: str = "next_cursor"
    """`cursor`: where the next page's token is in the body; absent, null or "" ends."""
    cursor_param: str = "cursor"
    """`cursor`: the query parameter that sends the token back."""


class CursorConfig(_Frozen):
    """Incremental pulls: where the next run starts, from the records of the last one."""

    field: str
    """Record field (dotted for nested objects) whose greatest value is the next cursor."""
    param: str
    """Query parameter that sends the cursor (`updated_since`, `since_id`)."""
    initial: str = ""
    """Cursor of the very first run; empty sends no parameter."""


_POLLER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PollerConfig(_Frozen):
    """One HTTP API whose sales are pulled on a schedule."""

    name: str
    url: str
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    interval_seconds: float = Field(60.0, gt=0, le=86_400)
    active_from: time | None = None
    active_until: time | None = None
    """Runs start only between these times of day (may wrap midnight), in `timezone`."""
    timezone: str = "UTC"
    records_path: str = ""
    """Dotted path to the records array in a page's JSON body; empty: the body itself."""
    column_aliases: dict[str, list[str]] = {}
    """This API's field names (dotted for nested ones), merged into
    `cleaning.column_aliases` as a settings file's are: a column named here has these
    spellings (and its own name) only."""
    auth: PollerAuthConfig = PollerAuthConfig()
    pagination: PaginationConfig = PaginationConfig()
    cursor: CursorConfig | None = None
    max_pages: int = Field(100, ge=1, le=100_000)
    """Pages per run at most; the next run goes on from the cursor."""
    chunk_rows: int = Field(2000, ge=1, le=1_000_000)
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_seconds: float = Field(0.5, gt=0, le=60)
    backoff_max_seconds: float = Field(30.0, gt=0, le=3600)

    @field_validator("name")
    @classmethod
    def _file_safe(cls, name: str) -> str:
        if not _POLLER_NAME.match(name):
            raise ValueError("must be 1-64 letters, digits, '_', '.', '-', not starting with one")
        return name

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}") from None
        return zone

    @model_validator(mode="after")
    def _window(self) -> PollerConfig:
        if (self.active_from is None) != (self.active_until is None):
            raise ValueError("active_from and active_until go together")
        if self.active_from is not None and self.active_from == self.active_until:
            raise ValueError("active_from and active_until must differ")
        return self


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
    anomalies: AnomaliesConfig = AnomaliesConfig()
    sink: SinkConfig = SinkConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()
    pollers: list[PollerConfig] = []
    cleaning: CleaningRules = Field(default_factory=default_rules)

    @field_validator("pollers")
    @classmethod
    def _unique_names(cls, pollers: list[PollerConfig]) -> list[PollerConfig]:
        names = [poller.name for poller in pollers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two pollers are named {name!r}")
        return pollers

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
