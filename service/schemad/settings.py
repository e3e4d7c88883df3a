"""Settings: the only module that reads the environment.

Every setting is an environment variable with the ``SCHEMAD_`` prefix, read
by pydantic-settings. A bad value raises :class:`~schemad.errors.ConfigError`
with one line naming the variable, the value (never a secret) and what is
expected, before anything touches the database.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from schemad.errors import ConfigError
from schemad.notices import DEFAULT_EVENTS, parse_events

PREFIX = "SCHEMAD_"
SUPPORTED_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")
_SECRET_FIELDS = frozenset({"database_url", "webhook_url"})
_SECRET_VARIABLES = ("DATABASE_URL", "WEBHOOK_URL")
_QUERY_PASSWORD_KEYS = ("passwd", "password")
# Alembic reads any target ending in +N/-N as relative (ids cannot hold + or -).
_RELATIVE_TARGET = re.compile(r"(^|@)\w*[+-]\d+$")
# Kubernetes injects <SERVICE>_PORT, <SERVICE>_SERVICE_HOST, ... for a Service
# named "schemad"; those are not typos of ours.
_SERVICE_LINK = re.compile(r"^SCHEMAD_(PORT|SERVICE_)")

Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
# Between passes or polls: often enough, and never a hot loop.
Interval = Annotated[float, Field(ge=1, le=86_400, allow_inf_nan=False)]
# PostgreSQL's limit on identifiers (MySQL allows 64).
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*$", max_length=63)]
TARGET_MAX_CHARS = 255
URL_FILE_MAX_BYTES = 64 * 1024
# Values echoed in an error message are cut to this many characters.
ECHO_MAX_CHARS = 80


class Settings(BaseSettings):
    """Everything schemad can be told, from ``SCHEMAD_*`` variables.

    The docstring under each field is documentation for readers only; it is
    deliberately not turned into a field description (pydantic's
    ``use_attribute_docstrings`` parses this module's source at import, about
    40 ms of every command's start, and nothing reads the descriptions).
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
        frozen=True,
        validate_default=True,
    )

    database_url: SecretStr | None = None
    """SQLAlchemy URL of the database to keep at the target."""
    database_url_file: Path | None = None
    """File holding the URL (a mounted Kubernetes Secret); excludes DATABASE_URL."""
    alembic_config: Path | None = None
    """An existing project's alembic.ini; its script_location is used."""
    script_location: str | None = None
    """The migrations directory (holds env.py and versions/); default 'migrations'."""
    target_revision: str = "head"
    """head, heads, base, a revision id, or label@head."""
    allow_downgrade: bool = False
    """Revert revisions when the database is past a pinned target."""
    on_unknown_revision: Literal["fail", "ignore"] = "fail"
    """What to do when the database is at a revision the migrations lack."""
    version_table: Identifier = "alembic_version"
    """Name of Alembic's version table."""
    version_table_schema: Identifier | None = None
    """Schema of the version table, when not the default one."""
    history_enabled: bool = True
    """Keep schemad's audit history table (one row per applied revision)."""
    history_table: Identifier = "schemad_history"
    """Name of the history table (in the version table's schema)."""
    on_tamper: Literal["warn", "block"] = "warn"
    """When an applied revision's file changed: warn, or also block upgrades."""
    x_args: str | None = None
    """`-x` arguments for env.py, comma-separated: tenant=acme,dry=1 (as `alembic -x`)."""
    autocommit_revisions: str | None = None
    """Revisions to run outside a transaction (CREATE INDEX CONCURRENTLY ...), comma-separated."""
    retry_interrupted: str | None = None
    """A revision cut off half-way on MySQL/MariaDB, cleaned up by hand: apply it again."""
    drift_interval_seconds: Interval | None = None
    """`schemad run`: compare the live schema with the expected one this often (off)."""
    lock_wait_seconds: Seconds = 300.0
    """How long to wait for another instance's migration lock."""
    connect_timeout_seconds: Seconds = 10.0
    """Bound on opening one database connection."""
    ddl_lock_timeout_seconds: Seconds | None = None
    """Migration session: give up on a table lock after this long (off by default)."""
    statement_timeout_seconds: Seconds | None = None
    """Migration session: cancel one statement after this long (off by default)."""
    async_commit: bool = True
    """PostgreSQL: commit revisions without waiting for the disk; each pass ends durable."""
    bootstrap_in_one_transaction: bool = True
    """An empty database where DDL is transactional: apply all in one transaction."""
    wait_timeout_seconds: Seconds = 300.0
    """How long `schemad wait` waits for the target."""
    wait_interval_seconds: Annotated[float, Field(ge=0.1, le=86_400, allow_inf_nan=False)] = 2.0
    """How often `schemad wait` looks at the version table."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """json in containers, console on a terminal; auto picks by the terminal."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    interval_seconds: Interval = 60.0
    """`schemad run`: seconds between passes (unless SCHEMAD_SCHEDULE is set)."""
    schedule: str | None = None
    """`schemad run`: a five-field cron expression, instead of the interval."""
    jitter_seconds: float = Field(default=0.0, ge=0, le=3600, allow_inf_nan=False)
    """`schemad run`: random delay added to each pass, so replicas spread out."""
    backoff_max_seconds: Seconds = 300.0
    """`schemad run`: longest delay between retries after failed passes."""
    http_host: str = "0.0.0.0"
    """`schemad run`: address the HTTP server listens on."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """`schemad run`: port of /metrics, /healthz, /readyz and /status (0: any free port)."""
    shutdown_grace_seconds: Seconds = 30.0
    """`schemad run`: on SIGTERM, how long a running revision may take to finish."""
    termination_message_path: Path | None = None
    """One-shot commands: where to write their one-line summary for Kubernetes;
    unset: /dev/termination-log when it exists and is writable."""
    webhook_url: SecretStr | None = None
    """POST a JSON event here on the events below (a secret: a Slack URL is a credential)."""
    webhook_url_file: Path | None = None
    """File holding the webhook URL (a mounted Kubernetes Secret); excludes WEBHOOK_URL."""
    webhook_events: str = ",".join(DEFAULT_EVENTS)
    """Comma list of the events to send: applied, failed, refused, drift, unavailable,
    lock_timeout, recovered."""
    webhook_timeout_seconds: Seconds = 5.0
    """Bound on one delivery attempt (three attempts at most)."""
    targets_query: str | None = None
    """Fan-out: SQL run on the database URL at each pass; each row is a target (column
    name; optional url, version_table_schema; any other column is an -x argument)."""
    targets_file: Path | None = None
    """Fan-out: a YAML or JSON list of targets (name, url or url_file, version_table_schema,
    -x arguments); excludes TARGETS_QUERY."""
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    """Fan-out: worker processes (default: the CPU count), bounded by MAX_CONNECTIONS."""
    max_connections: int = Field(default=10, ge=1, le=100_000)
    """Fan-out: connections a run may open at once (3 per target being migrated)."""
    canary: str | None = None
    """Fan-out: targets that go first, alone: a count or comma-separated names (default 1)."""
    max_failures: int = Field(default=1, ge=0, le=1_000_000)
    """Fan-out: after this many failed targets no new one starts (0: unlimited)."""
    shard_index: int | None = Field(default=None, ge=0)
    """Fan-out: this shard's index (default: JOB_COMPLETION_INDEX, else 0)."""
    shard_count: int = Field(default=1, ge=1, le=100_000)
    """Fan-out: how many shards share the targets (an Indexed Job's completions)."""
    target_series_limit: int = Field(default=100, ge=0, le=100_000)
    """Fan-out: at most this many schemad_target_not_at_target series."""

    @field_validator("target_revision")
    @classmethod
    def _target_is_absolute(cls, value: str) -> str:
        value = value.strip()
        if len(value) > TARGET_MAX_CHARS:
            raise ValueError(f"expected at most {TARGET_MAX_CHARS} characters, got {len(value)}")
        if not value or any(ch.isspace() for ch in value) or ":" in value:
            raise ValueError("expected head, heads, base, a revision id or label@head")
        if _RELATIVE_TARGET.search(value):
            raise ValueError(
                "relative targets (+N, -N, head-N, <id>+N) move with the database or the "
                "history; name a revision instead"
            )
        return value

    @field_validator("log_format", "log_level", "on_unknown_revision", "on_tamper", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("x_args", "autocommit_revisions")
    @classmethod
    def _listed(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        entries = [entry.strip() for entry in value.split(",")]
        if info.field_name == "x_args":
            if not all(entries):
                raise ValueError("expected key=value pairs separated by commas, e.g. tenant=acme")
        elif not all(entries) or any(ch.isspace() for entry in entries for ch in entry):
            raise ValueError("expected revision ids separated by commas, e.g. 3f2a9c,9c1e04")
        return ",".join(entries)

    def autocommit_revision_ids(self) -> frozenset[str]:
        """The revisions that run outside a transaction."""
        return (
            frozenset(self.autocommit_revisions.split(","))
            if self.autocommit_revisions
            else frozenset()
        )

    def x_arguments(self) -> list[str]:
        """The `-x` arguments env.py reads with context.get_x_argument()."""
        return self.x_args.split(",") if self.x_args else []

    @field_validator("schedule")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value.strip())
        except ValueError as exc:
            raise ValueError(
                f"expected a five-field cron expression like '*/5 * * * *' ({exc})"
            ) from None
        return value.strip()

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, value: str) -> str:
        return ",".join(parse_events(value))

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_webhook_url(value.get_secret_value())
        return value

    @field_validator("shard_index", mode="before")
    @classmethod
    def _index_of_indexed_job(cls, value: Any) -> Any:
        # An Indexed Job gives each pod its index in JOB_COMPLETION_INDEX.
        if value is None:
            return os.environ.get("JOB_COMPLETION_INDEX", "").strip() or 0
        return value

    @field_validator("canary")
    @classmethod
    def _canary_count_or_names(cls, value: str | None) -> str | None:
        if value is None:
            return None
        entries = [entry.strip() for entry in value.split(",")]
        if not all(entries) or any(ch.isspace() for entry in entries for ch in entry):
            raise ValueError("expected a count (e.g. 2) or target names separated by commas")
        return ",".join(entries)

    @field_validator("targets_query")
    @classmethod
    def _query_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a SELECT returning a 'name' column per target")
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _one_target_source(self) -> Settings:
        if self.targets_query is not None and self.targets_file is not None:
            raise ValueError("set SCHEMAD_TARGETS_QUERY or SCHEMAD_TARGETS_FILE, not both")
        index = self.shard_index or 0
        if index >= self.shard_count:
            raise ValueError(
                f"SCHEMAD_SHARD_INDEX (or JOB_COMPLETION_INDEX) is {index} but "
                f"SCHEMAD_SHARD_COUNT is {self.shard_count}; the index must be from 0 to "
                f"{self.shard_count - 1} (set SHARD_COUNT to the Job's completions)"
            )
        return self

    @property
    def fan_out(self) -> bool:
        """Whether a run covers a set of targets rather than the one database."""
        return self.targets_query is not None or self.targets_file is not None

    def worker_count(self) -> int:
        """SCHEMAD_CONCURRENCY, else the CPU count."""
        return self.concurrency or os.cpu_count() or 1

    @model_validator(mode="after")
    def _one_url_source(self) -> Settings:
        if self.database_url is not None and self.database_url_file is not None:
            raise ValueError("set SCHEMAD_DATABASE_URL or SCHEMAD_DATABASE_URL_FILE, not both")
        if self.webhook_url is not None and self.webhook_url_file is not None:
            raise ValueError("set SCHEMAD_WEBHOOK_URL or SCHEMAD_WEBHOOK_URL_FILE, not both")
        return self

    @property
    def webhook_event_names(self) -> tuple[str, ...]:
        """The events to send, in the canonical order."""
        return parse_events(self.webhook_events)

    def webhook(self) -> str | None:
        """Return the webhook URL, read from the file when one is named; None when unset.

        Raises:
            ConfigError: the file cannot be read, or holds no http(s) URL.
        """
        if self.webhook_url is not None:
            return self.webhook_url.get_secret_value().strip()
        if self.webhook_url_file is None:
            return None
        variable = f"{PREFIX}WEBHOOK_URL_FILE"
        raw = read_url_file(self.webhook_url_file, variable)
        try:
            _check_webhook_url(raw)
        except ValueError as exc:
            message = f"{variable}={self.webhook_url_file}: {exc}"
            raise ConfigError(message, variable=variable) from None
        return raw

    def url(self) -> URL:
        """Return the database URL, read from the file when one is named.

        Raises:
            ConfigError: no URL is set, the file cannot be read, or the URL is
                not one schemad supports.
        """
        if self.database_url_file is not None:
            raw = read_url_file(self.database_url_file)
            variable = f"{PREFIX}DATABASE_URL_FILE"
        elif self.database_url is not None:
            raw = self.database_url.get_secret_value()
            variable = f"{PREFIX}DATABASE_URL"
        else:
            raise ConfigError(
                "SCHEMAD_DATABASE_URL is not set; set it to the database to migrate, "
                "e.g. postgresql+psycopg://user:password@host:5432/app "
                "(or point SCHEMAD_DATABASE_URL_FILE at a file holding it)",
                variable=f"{PREFIX}DATABASE_URL",
            )
        return parse_url(raw, variable)

    def masked_url(self) -> str:
        """Return the URL with its password hidden, safe for logs and output."""
        return self.url().render_as_string(hide_password=True)


def parse_url(raw: str, variable: str = f"{PREFIX}DATABASE_URL") -> URL:
    """Parse and check a database URL without ever echoing its password.

    Raises:
        ConfigError: the URL is malformed, for an unsupported database, or an
            in-memory SQLite database.
    """
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"{variable} is not a valid SQLAlchemy URL; expected "
            "dialect+driver://user:password@host:port/database, e.g. "
            "postgresql+psycopg://app@db:5432/app, mysql+pymysql://app@db/app or "
            "sqlite:////data/app.db",
            variable=variable,
        ) from exc
    url = _password_out_of_query(url)
    backend = url.get_backend_name()
    masked = url.render_as_string(hide_password=True)
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"{variable}={masked}: database '{backend}' is not supported; use "
            "postgresql+psycopg://, mysql+pymysql:// or sqlite:///",
            variable=variable,
        )
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigError(
            f"{variable}={masked}: an in-memory SQLite database vanishes when "
            "schemad exits; use a file, e.g. sqlite:////data/app.db",
            variable=variable,
        )
    if backend != "sqlite" and not url.database:
        raise ConfigError(
            f"{variable}={masked}: the URL names no database; add it after the host, e.g. .../app",
            variable=variable,
        )
    return url


def _password_out_of_query(url: URL) -> URL:
    # render_as_string(hide_password=True) masks only user:password@, so a
    # ?password= would reach logs and output; the driver gives the query value
    # precedence, so moving it keeps the connection the same.
    keys = [key for key in _QUERY_PASSWORD_KEYS if key in url.query]
    if not keys:
        return url
    value = url.query[keys[-1]]
    password = value if isinstance(value, str) else value[-1]
    return url.difference_update_query(keys).set(password=password)


def _check_webhook_url(raw: str) -> None:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an http:// or https:// URL, e.g. "
            "https://hooks.slack.com/services/T000/B000/XXXX (the value is not shown: "
            "webhook URLs are secrets)"
        )
    try:
        parts.port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None


def read_url_file(path: Path, variable: str = f"{PREFIX}DATABASE_URL_FILE") -> str:
    """A URL kept in a file (a mounted Secret), as text.

    Raises:
        ConfigError: the file cannot be read, is too large, not UTF-8, or empty.
    """
    text = read_text_file(
        path,
        variable,
        max_bytes=URL_FILE_MAX_BYTES,
        unreadable="mount the Secret there or fix the path",
        too_large=(
            f"the file is over {URL_FILE_MAX_BYTES // 1024} KiB; a database URL is one "
            "line: point the variable at the Secret's key holding it"
        ),
        not_text="it must hold the URL as text",
    ).strip()
    if not text:
        raise ConfigError(f"{variable}={path}: the file is empty", variable=variable)
    return text


def read_text_file(
    path: Path, variable: str, *, max_bytes: int, unreadable: str, too_large: str, not_text: str
) -> str:
    """A mounted file a setting names, as UTF-8 text of at most ``max_bytes``; the
    other arguments say what to do when it is unreadable, too large or not text.

    Raises:
        ConfigError: the file cannot be read, is too large or is not UTF-8.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(
            f"{variable}={path}: cannot read the file ({exc.strerror or exc}); {unreadable}",
            variable=variable,
        ) from exc
    if len(raw) > max_bytes:
        raise ConfigError(f"{variable}={path}: {too_large}", variable=variable)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{variable}={path}: the file is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); {not_text}",
            variable=variable,
        ) from None


class IdentitySettings(BaseSettings):
    """Who runs schemad, from the Kubernetes downward API (set by the chart)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    pod_name: str | None = None
    pod_namespace: str | None = None
    node_name: str | None = None
    container_image: str | None = None
    helm_chart: str | None = None
    app_version: str | None = None


def load_identity() -> IdentitySettings:
    """Read POD_NAME, POD_NAMESPACE, NODE_NAME, CONTAINER_IMAGE, HELM_CHART, APP_VERSION."""
    try:
        return IdentitySettings()
    except ValidationError:  # only optional strings: cannot really fail
        return IdentitySettings.model_construct()


class _TerminationSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    termination_message_path: Path | None = None


def load_termination_message_path() -> Path | None:
    """SCHEMAD_TERMINATION_MESSAGE_PATH alone, for a command whose other settings are invalid."""
    try:
        return _TerminationSettings().termination_message_path
    except ValidationError:
        return None


def secrets_in_environment() -> list[str]:
    """The secret values the environment holds (the database and webhook URLs, the
    password in a URL), for masking when the settings themselves are invalid."""
    values: list[str] = []
    for key, value in os.environ.items():
        name = key.upper().removeprefix(PREFIX)
        if not key.upper().startswith(PREFIX) or name not in _SECRET_VARIABLES or not value:
            continue
        values.append(value)
        password = _password_of(value)
        if password:
            values.extend([password, unquote(password)])
    return values


def _password_of(raw: str) -> str | None:
    try:
        password = make_url(raw.strip()).password
    except (ArgumentError, ValueError):
        match = re.search(r"://[^/@:]*:(.*)@", raw)
        return match.group(1) if match else None
    return str(password) if password else None


def load_settings() -> Settings:
    """Read settings from the process environment.

    Raises:
        ConfigError: a value is invalid; the message names every bad variable.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise _config_error(exc) from None


def unknown_variables() -> list[str]:
    """Return a warning for each ``SCHEMAD_*`` variable that is not a setting."""
    env = os.environ
    known = [f"{PREFIX}{name.upper()}" for name in Settings.model_fields]
    warnings = []
    for key in sorted(env):
        upper = key.upper()
        if not upper.startswith(PREFIX) or upper in known or _SERVICE_LINK.match(upper):
            continue
        close = difflib.get_close_matches(upper, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{key} is not a schemad setting and is ignored{hint}")
    return warnings


def setting_names() -> list[str]:
    """Every environment variable schemad reads, for docs and the Helm chart."""
    return [f"{PREFIX}{name.upper()}" for name in Settings.model_fields]


def _echo(value: object) -> str:
    """A bad value as the message shows it: quoted, and cut when long."""
    text = repr(value)
    if len(text) <= ECHO_MAX_CHARS:
        return text
    return f"{text[:ECHO_MAX_CHARS]}... ({len(str(value))} characters)"


def _config_error(exc: ValidationError) -> ConfigError:
    problems = []
    first_variable = None
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = f"{PREFIX}{field.upper()}" if field else "settings"
        first_variable = first_variable or variable
        message = str(error["msg"]).removeprefix("Value error, ")
        if field in _SECRET_FIELDS or not field:
            problems.append(f"{variable}: {message}" if field else message)
        else:
            problems.append(f"{variable}={_echo(error['input'])}: {message}")
    return ConfigError("invalid settings: " + "; ".join(problems), variable=first_variable)
