"""Settings: defaults, validation of every variable, the URL and its file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemad.cli import exit_code
from schemad.errors import ConfigError
from schemad.settings import (
    Settings,
    load_settings,
    load_termination_message_path,
    parse_url,
    secrets_in_environment,
    setting_names,
    unknown_variables,
)

PASSWORD = "S3cr3t-Pa55"
PG_URL = f"postgresql+psycopg://app:{PASSWORD}@db.example:5432/app"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> ConfigError:
    """Set the variables, load settings and return the ConfigError raised."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings().url()
    return caught.value


def loaded(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_defaults() -> None:
    """With no variables set every setting has its documented default."""
    expected = {
        "database_url": None,
        "database_url_file": None,
        "alembic_config": None,
        "script_location": None,
        "target_revision": "head",
        "allow_downgrade": False,
        "on_unknown_revision": "fail",
        "version_table": "alembic_version",
        "version_table_schema": None,
        "lock_wait_seconds": 300.0,
        "connect_timeout_seconds": 10.0,
        "wait_timeout_seconds": 300.0,
        "wait_interval_seconds": 2.0,
        "log_format": "auto",
        "log_level": "info",
        "interval_seconds": 60.0,
        "schedule": None,
        "jitter_seconds": 0.0,
        "backoff_max_seconds": 300.0,
        "http_host": "0.0.0.0",
        "http_port": 8080,
        "shutdown_grace_seconds": 30.0,
    }
    actual = load_settings().model_dump()
    assert expected == {key: actual[key] for key in expected}


def test_every_setting_has_a_default_listed() -> None:
    """setting_names() lists one SCHEMAD_ variable per field, upper case."""
    assert [f"SCHEMAD_{name.upper()}" for name in Settings.model_fields] == setting_names()


def test_settings_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded settings cannot be changed afterwards."""
    settings = loaded(monkeypatch)
    with pytest.raises(ValueError, match="frozen"):
        settings.target_revision = "base"  # type: ignore[misc]


def test_missing_url_is_a_config_error() -> None:
    """Asking for the URL when none is set names SCHEMAD_DATABASE_URL."""
    with pytest.raises(ConfigError, match="SCHEMAD_DATABASE_URL is not set") as caught:
        load_settings().url()
    assert caught.value.variable == "SCHEMAD_DATABASE_URL"


def test_empty_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty SCHEMAD_DATABASE_URL is treated as not set."""
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL="")
    assert "SCHEMAD_DATABASE_URL is not set" in error.message


def test_url_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid URL is returned as a SQLAlchemy URL."""
    url = loaded(monkeypatch, SCHEMAD_DATABASE_URL=PG_URL).url()
    assert (
        url.get_backend_name(),
        url.host,
        url.database,
        url.password,
    ) == ("postgresql", "db.example", "app", PASSWORD)


def test_url_surrounding_whitespace_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whitespace around the URL (a stray newline from a Secret) is stripped."""
    url = loaded(monkeypatch, SCHEMAD_DATABASE_URL=f"  {PG_URL}\n").url()
    assert url.database == "app"


def test_masked_url_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """masked_url() renders the URL with the password replaced."""
    settings = loaded(monkeypatch, SCHEMAD_DATABASE_URL=PG_URL)
    assert settings.masked_url() == "postgresql+psycopg://app:***@db.example:5432/app"


def test_url_is_not_shown_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings' repr never shows the URL (it is a secret)."""
    settings = loaded(monkeypatch, SCHEMAD_DATABASE_URL=PG_URL)
    assert PASSWORD not in repr(settings)


def test_url_file_is_read_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SCHEMAD_DATABASE_URL_FILE is read and its trailing newline stripped."""
    secret = tmp_path / "url"
    secret.write_text(PG_URL + "\n")
    url = loaded(monkeypatch, SCHEMAD_DATABASE_URL_FILE=str(secret)).url()
    assert url.render_as_string(hide_password=False) == PG_URL


def test_missing_url_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A URL file that does not exist names the variable and the problem."""
    missing = tmp_path / "nope"
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL_FILE=str(missing))
    assert (
        "SCHEMAD_DATABASE_URL_FILE",
        f"SCHEMAD_DATABASE_URL_FILE={missing}: cannot read the file (No such file or directory)",
    ) == (error.variable, error.message.split("; ")[0])


def test_empty_url_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A URL file holding only whitespace is refused as empty."""
    secret = tmp_path / "url"
    secret.write_text("\n")
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL_FILE=str(secret))
    assert error.message == f"SCHEMAD_DATABASE_URL_FILE={secret}: the file is empty"


def test_url_file_with_a_bad_url_names_the_file_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A malformed URL in the file is reported against SCHEMAD_DATABASE_URL_FILE."""
    secret = tmp_path / "url"
    secret.write_text(f"not a url {PASSWORD}\n")
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL_FILE=str(secret))
    assert error.variable == "SCHEMAD_DATABASE_URL_FILE"
    assert PASSWORD not in error.message


def test_url_and_url_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Setting both the URL and the URL file is a configuration error."""
    secret = tmp_path / "url"
    secret.write_text(PG_URL)
    error = config_error(
        monkeypatch, SCHEMAD_DATABASE_URL=PG_URL, SCHEMAD_DATABASE_URL_FILE=str(secret)
    )
    assert "set SCHEMAD_DATABASE_URL or SCHEMAD_DATABASE_URL_FILE, not both" in error.message
    assert PASSWORD not in error.message


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("not a url", id="words"),
        pytest.param(f"postgresql://app:{PASSWORD}@db:port/app", id="bad-port"),
        pytest.param("://nothing", id="no-scheme"),
    ],
)
def test_malformed_url_is_a_config_error(raw: str) -> None:
    """A malformed URL is refused with an example of a good one, and no password."""
    with pytest.raises(ConfigError) as caught:
        parse_url(raw)
    assert "SCHEMAD_DATABASE_URL is not a valid SQLAlchemy URL" in caught.value.message
    assert PASSWORD not in caught.value.message


def test_unsupported_dialect_is_a_config_error() -> None:
    """A URL for a database schemad does not support is refused, password masked."""
    with pytest.raises(ConfigError) as caught:
        parse_url(f"oracle://app:{PASSWORD}@db/app")
    assert caught.value.message == (
        "SCHEMAD_DATABASE_URL=oracle://app:***@db/app: database 'oracle' is not supported; "
        "use postgresql+psycopg://, mysql+pymysql:// or sqlite:///"
    )


@pytest.mark.parametrize("raw", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///:memory:"])
def test_in_memory_sqlite_is_a_config_error(raw: str) -> None:
    """An in-memory SQLite database is refused: it vanishes when schemad exits."""
    with pytest.raises(ConfigError, match="in-memory SQLite database vanishes"):
        parse_url(raw)


@pytest.mark.parametrize(
    "raw",
    [f"postgresql+psycopg://app:{PASSWORD}@db:5432", f"mysql+pymysql://app:{PASSWORD}@db/"],
)
def test_url_without_a_database_name_is_a_config_error(raw: str) -> None:
    """A server URL that names no database is refused, password masked."""
    with pytest.raises(ConfigError, match="the URL names no database") as caught:
        parse_url(raw)
    assert PASSWORD not in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        "sqlite:////data/app.db",
        "sqlite:///relative.db",
        "postgresql+psycopg://app@db/app",
        "postgresql://app@db/app",
        "mysql+pymysql://app@db/app",
        "mariadb+pymysql://app@db/app",
    ],
)
def test_supported_urls_parse(raw: str) -> None:
    """Every supported dialect's URL parses."""
    assert raw == parse_url(raw).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql+psycopg://app@db/app?password={PASSWORD}&sslmode=require",
        f"mysql+pymysql://app@db/app?passwd={PASSWORD}",
    ],
)
def test_password_in_the_query_is_masked_like_any_password(raw: str) -> None:
    """A ?password= in the URL becomes the URL's password, so masking hides it."""
    url = parse_url(raw)
    assert (url.password, PASSWORD in url.render_as_string(hide_password=True)) == (
        PASSWORD,
        False,
    )


def test_password_in_the_query_is_masked_in_errors() -> None:
    """A config error about a URL with ?password= does not echo the password."""
    with pytest.raises(ConfigError) as caught:
        parse_url(f"oracle://app@db/app?password={PASSWORD}")
    assert PASSWORD not in caught.value.message


def test_parse_url_names_the_variable_it_is_given() -> None:
    """parse_url reports against the variable it is told the URL came from."""
    with pytest.raises(ConfigError) as caught:
        parse_url("oracle://db/app", "SCHEMAD_DATABASE_URL_FILE")
    assert caught.value.variable == "SCHEMAD_DATABASE_URL_FILE"


NUMBER_SETTINGS = [
    "SCHEMAD_LOCK_WAIT_SECONDS",
    "SCHEMAD_CONNECT_TIMEOUT_SECONDS",
    "SCHEMAD_WAIT_TIMEOUT_SECONDS",
    "SCHEMAD_WAIT_INTERVAL_SECONDS",
    "SCHEMAD_INTERVAL_SECONDS",
    "SCHEMAD_BACKOFF_MAX_SECONDS",
    "SCHEMAD_SHUTDOWN_GRACE_SECONDS",
]


@pytest.mark.parametrize("variable", NUMBER_SETTINGS)
def test_seconds_settings_accept_a_positive_number(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """Every seconds setting accepts a positive decimal number."""
    settings = loaded(monkeypatch, **{variable: "1.5"})
    assert getattr(settings, variable.removeprefix("SCHEMAD_").lower()) == 1.5


@pytest.mark.parametrize("variable", NUMBER_SETTINGS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("abc", "valid number", id="text"),
        pytest.param("0", "should be greater than", id="zero"),
        pytest.param("-5", "should be greater than", id="negative"),
        pytest.param("86401", "less than or equal to 86400", id="over-a-day"),
        pytest.param("nan", "finite number", id="nan"),
        pytest.param("inf", "finite number", id="inf"),
    ],
)
def test_seconds_settings_refuse_bad_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    """Every seconds setting refuses text, zero, negatives, huge values and nan/inf."""
    error = config_error(monkeypatch, **{variable: value})
    assert error.variable == variable
    assert f"{variable}={value!r}" in error.message
    assert problem in error.message


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("3600", 3600.0), ("2.5", 2.5)])
def test_jitter_accepts_zero_to_an_hour(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float
) -> None:
    """SCHEMAD_JITTER_SECONDS accepts 0 up to 3600."""
    assert loaded(monkeypatch, SCHEMAD_JITTER_SECONDS=value).jitter_seconds == expected


@pytest.mark.parametrize("value", ["-1", "3601", "soon", "nan"])
def test_jitter_refuses_values_out_of_range(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """SCHEMAD_JITTER_SECONDS refuses negatives, more than an hour and text."""
    error = config_error(monkeypatch, SCHEMAD_JITTER_SECONDS=value)
    assert error.variable == "SCHEMAD_JITTER_SECONDS"


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("9090", 9090), ("65535", 65535)])
def test_http_port_accepts_valid_ports(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    """SCHEMAD_HTTP_PORT accepts 0 (any free port) to 65535."""
    assert loaded(monkeypatch, SCHEMAD_HTTP_PORT=value).http_port == expected


@pytest.mark.parametrize("value", ["-1", "65536", "http", "80.5"])
def test_http_port_refuses_invalid_ports(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """SCHEMAD_HTTP_PORT refuses negatives, values above 65535 and non-integers."""
    error = config_error(monkeypatch, SCHEMAD_HTTP_PORT=value)
    assert error.variable == "SCHEMAD_HTTP_PORT"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("off", False)],
)
def test_allow_downgrade_accepts_booleans(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    """SCHEMAD_ALLOW_DOWNGRADE accepts the usual spellings of true and false."""
    assert expected is loaded(monkeypatch, SCHEMAD_ALLOW_DOWNGRADE=value).allow_downgrade


def test_allow_downgrade_refuses_other_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCHEMAD_ALLOW_DOWNGRADE refuses a word that is not a boolean."""
    error = config_error(monkeypatch, SCHEMAD_ALLOW_DOWNGRADE="maybe")
    assert error.message == (
        "invalid settings: SCHEMAD_ALLOW_DOWNGRADE='maybe': "
        "Input should be a valid boolean, unable to interpret input"
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SCHEMAD_LOG_LEVEL", " DEBUG ", "debug"),
        ("SCHEMAD_LOG_LEVEL", "Warning", "warning"),
        ("SCHEMAD_LOG_FORMAT", "JSON", "json"),
        ("SCHEMAD_LOG_FORMAT", "console", "console"),
        ("SCHEMAD_ON_UNKNOWN_REVISION", "IGNORE", "ignore"),
    ],
)
def test_choices_are_case_insensitive(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    """Choice settings accept any case and surrounding spaces."""
    settings = loaded(monkeypatch, **{variable: value})
    assert getattr(settings, variable.removeprefix("SCHEMAD_").lower()) == expected


@pytest.mark.parametrize(
    ("variable", "value", "choices"),
    [
        ("SCHEMAD_LOG_LEVEL", "verbose", "'debug', 'info', 'warning' or 'error'"),
        ("SCHEMAD_LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("SCHEMAD_ON_UNKNOWN_REVISION", "skip", "'fail' or 'ignore'"),
    ],
)
def test_choices_refuse_other_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, choices: str
) -> None:
    """A choice setting with another value lists the accepted ones."""
    error = config_error(monkeypatch, **{variable: value})
    assert error.message == f"invalid settings: {variable}={value!r}: Input should be {choices}"


@pytest.mark.parametrize("variable", ["SCHEMAD_VERSION_TABLE", "SCHEMAD_VERSION_TABLE_SCHEMA"])
@pytest.mark.parametrize("value", ["bad-name", "a;drop table x", "1abc"])
def test_version_table_names_must_be_identifiers(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Version table and schema names must be plain SQL identifiers."""
    error = config_error(monkeypatch, **{variable: value})
    assert error.variable == variable


def test_version_table_accepts_an_identifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain identifier is accepted as the version table's name."""
    settings = loaded(monkeypatch, SCHEMAD_VERSION_TABLE="app_versions")
    assert settings.version_table == "app_versions"


@pytest.mark.parametrize(
    "value", ["head", "heads", "base", "1a2b3c4d5e6f", "1a2b", "core@head", "ae10@base"]
)
def test_absolute_targets_are_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Absolute targets (head, heads, base, ids, label@head) are accepted as given."""
    assert loaded(monkeypatch, SCHEMAD_TARGET_REVISION=value).target_revision == value


def test_target_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spaces around the target are removed."""
    assert loaded(monkeypatch, SCHEMAD_TARGET_REVISION=" head ").target_revision == "head"


@pytest.mark.parametrize(
    "value", ["+1", "-1", "+12", "core@+2", "core@-1", "head-1", "ae10+2", "core@head-1"]
)
def test_relative_targets_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Relative targets (Alembic's +N/-N forms) move with the database, so they are refused."""
    error = config_error(monkeypatch, SCHEMAD_TARGET_REVISION=value)
    assert error.message == (
        f"invalid settings: SCHEMAD_TARGET_REVISION={value!r}: relative targets "
        "(+N, -N, head-N, <id>+N) move with the database or the history; "
        "name a revision instead"
    )


@pytest.mark.parametrize("value", ["a b", "base:head", "   "])
def test_malformed_targets_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Targets with spaces or ranges (':') are refused with what is expected."""
    error = config_error(monkeypatch, SCHEMAD_TARGET_REVISION=value)
    assert "expected head, heads, base, a revision id or label@head" in error.message


@pytest.mark.parametrize("value", ["*/5 * * * *", "0 3 * * mon-fri", " 15 * * * * "])
def test_schedule_accepts_five_field_cron(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """SCHEMAD_SCHEDULE accepts a five-field cron expression, stripped."""
    assert loaded(monkeypatch, SCHEMAD_SCHEDULE=value).schedule == value.strip()


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        pytest.param("* * *", "Wrong number of fields; got 3, expected 5", id="three-fields"),
        pytest.param("61 * * * *", "higher than the maximum value (59)", id="minute-61"),
        pytest.param("@hourly", "Wrong number of fields; got 1, expected 5", id="nickname"),
        pytest.param("every minute", "Wrong number of fields", id="words"),
    ],
)
def test_schedule_refuses_bad_cron(
    monkeypatch: pytest.MonkeyPatch, value: str, detail: str
) -> None:
    """A bad cron expression names the variable, gives an example and the parser's reason."""
    error = config_error(monkeypatch, SCHEMAD_SCHEDULE=value)
    assert error.variable == "SCHEMAD_SCHEDULE"
    assert "expected a five-field cron expression like '*/5 * * * *'" in error.message
    assert detail in error.message


def test_config_error_lists_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several bad variables are all named in one message; the first is the variable."""
    error = config_error(monkeypatch, SCHEMAD_LOCK_WAIT_SECONDS="x", SCHEMAD_LOG_LEVEL="loud")
    assert (
        error.variable,
        "SCHEMAD_LOG_LEVEL='loud'" in error.message,
    ) == ("SCHEMAD_LOCK_WAIT_SECONDS", True)


def test_config_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration error message is a single line."""
    error = config_error(monkeypatch, SCHEMAD_LOCK_WAIT_SECONDS="x", SCHEMAD_SCHEDULE="x")
    assert len(error.message.splitlines()) == 1


def test_config_error_never_shows_the_password_beside_other_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A validation error elsewhere does not echo the URL or its password."""
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL=PG_URL, SCHEMAD_LOCK_WAIT_SECONDS="-1")
    assert PASSWORD not in error.message


def test_a_huge_value_is_echoed_once_and_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100 KB target is refused in one short line, its value cut, not echoed whole."""
    error = config_error(monkeypatch, SCHEMAD_TARGET_REVISION="a" * 100_000)
    expected = (True, True, True)
    assert expected == (
        "expected at most 255 characters, got 100000" in error.message,
        "(100000 characters)" in error.message,
        len(error.message) < 400,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SCHEMAD_INTERVAL_SECONDS", "0.001"),
        ("SCHEMAD_DRIFT_INTERVAL_SECONDS", "0.5"),
        ("SCHEMAD_WAIT_INTERVAL_SECONDS", "0.001"),
    ],
)
def test_intervals_are_never_a_hot_loop(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Intervals between passes (1 s) and polls (0.1 s) have a floor."""
    error = config_error(monkeypatch, **{variable: value})
    assert (error.variable, "greater than or equal to" in error.message) == (variable, True)


def test_identifiers_over_63_characters_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version table name PostgreSQL would truncate is refused before anything runs."""
    error = config_error(monkeypatch, SCHEMAD_VERSION_TABLE="v" * 64)
    assert "at most 63 characters" in error.message


def test_a_huge_url_file_is_refused_unread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A URL file over 64 KiB is a configuration error, not read into memory."""
    path = tmp_path / "url"
    path.write_bytes(b"x" * (20 * 1024 * 1024))
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL_FILE=str(path))
    assert "the file is over 64 KiB" in error.message


def test_a_url_file_that_is_not_text_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A URL file that is not UTF-8 is a configuration error naming the variable."""
    path = tmp_path / "url"
    path.write_bytes(b"postgresql://u:\xff\xfe@h/d")
    error = config_error(monkeypatch, SCHEMAD_DATABASE_URL_FILE=str(path))
    assert (error.variable, "is not UTF-8 text" in error.message) == (
        "SCHEMAD_DATABASE_URL_FILE",
        True,
    )


def test_config_error_exit_code_is_78(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration errors map to exit code 78 (EX_CONFIG)."""
    assert exit_code(config_error(monkeypatch, SCHEMAD_LOG_LEVEL="loud")) == 78


def test_unknown_variables_suggests_the_closest_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt SCHEMAD_ variable is reported with the setting it most resembles."""
    monkeypatch.setenv("SCHEMAD_DATABSE_URL", "x")
    assert unknown_variables() == [
        "SCHEMAD_DATABSE_URL is not a schemad setting and is ignored; "
        "did you mean SCHEMAD_DATABASE_URL?"
    ]


def test_unknown_variables_without_a_close_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SCHEMAD_ variable like no setting is reported without a suggestion."""
    monkeypatch.setenv("SCHEMAD_ZZZZZZZZZZZZ", "x")
    assert (unknown_variables()) == ["SCHEMAD_ZZZZZZZZZZZZ is not a schemad setting and is ignored"]


def test_known_variables_are_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real settings, in any case, are not reported as unknown."""
    monkeypatch.setenv("SCHEMAD_LOG_LEVEL", "info")
    monkeypatch.setenv("schemad_target_revision", "head")
    assert unknown_variables() == []


def test_other_prefixes_are_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables without the SCHEMAD_ prefix are none of our business."""
    monkeypatch.setenv("DATABASE_URL", "x")
    monkeypatch.setenv("SCHEMADX", "x")
    assert unknown_variables() == []


@pytest.mark.parametrize(
    "variable",
    [
        "SCHEMAD_PORT",
        "SCHEMAD_PORT_8080_TCP",
        "SCHEMAD_PORT_8080_TCP_ADDR",
        "SCHEMAD_SERVICE_HOST",
        "SCHEMAD_SERVICE_PORT",
        "SCHEMAD_SERVICE_PORT_HTTP",
    ],
)
def test_kubernetes_service_links_are_not_reported(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """Variables Kubernetes injects for a Service named schemad are not typos."""
    monkeypatch.setenv(variable, "tcp://10.0.0.1:8080")
    assert unknown_variables() == []


# -- notifications ---------------------------------------------------------------------------

HOOK = "https://hooks.slack.com/services/T000/B000/XXXXs3cret"


def test_webhook_defaults() -> None:
    """No webhook by default; the default events are failed, refused, drift and applied."""
    settings = load_settings()
    expected = (None, ("applied", "failed", "refused", "drift"), 5.0, None)
    actual = (
        settings.webhook(),
        settings.webhook_event_names,
        settings.webhook_timeout_seconds,
        settings.termination_message_path,
    )
    assert expected == actual


def test_webhook_events_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCHEMAD_WEBHOOK_EVENTS takes any of the seven events, in any case and order."""
    settings = loaded(monkeypatch, SCHEMAD_WEBHOOK_EVENTS="Recovered, unavailable,lock_timeout")
    assert settings.webhook_event_names == ("unavailable", "lock_timeout", "recovered")


def test_unknown_webhook_event_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt event stops the process (78) naming the variable and the choices."""
    error = config_error(monkeypatch, SCHEMAD_WEBHOOK_EVENTS="failed,drifted")
    expected = (78, "SCHEMAD_WEBHOOK_EVENTS", True)
    actual = (exit_code(error), error.variable, "unknown event(s) drifted" in error.message)
    assert expected == actual


def test_webhook_url_and_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SCHEMAD_WEBHOOK_URL and SCHEMAD_WEBHOOK_URL_FILE are exclusive."""
    (tmp_path / "hook").write_text(HOOK)
    error = config_error(
        monkeypatch, SCHEMAD_WEBHOOK_URL=HOOK, SCHEMAD_WEBHOOK_URL_FILE=str(tmp_path / "hook")
    )
    assert "set SCHEMAD_WEBHOOK_URL or SCHEMAD_WEBHOOK_URL_FILE, not both" in error.message


def test_a_webhook_url_that_is_not_http_is_refused_unseen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad webhook URL is a config error whose message never repeats the URL."""
    error = config_error(monkeypatch, SCHEMAD_WEBHOOK_URL="ftp://hooks.example/T000/s3cretT0ken")
    expected = (True, False)
    actual = (
        "expected an http:// or https:// URL" in error.message,
        "s3cretT0ken" in error.message,
    )
    assert expected == actual


def test_webhook_url_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SCHEMAD_WEBHOOK_URL_FILE names a file (a mounted Secret) holding the URL."""
    (tmp_path / "hook").write_text(f"{HOOK}\n")
    settings = loaded(monkeypatch, SCHEMAD_WEBHOOK_URL_FILE=str(tmp_path / "hook"))
    assert settings.webhook() == HOOK


def test_webhook_url_file_without_a_url_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A file that holds no http(s) URL names the file variable, not the contents."""
    (tmp_path / "hook").write_text("not a url s3cret")
    settings = loaded(monkeypatch, SCHEMAD_WEBHOOK_URL_FILE=str(tmp_path / "hook"))
    with pytest.raises(ConfigError) as caught:
        settings.webhook()
    assert (caught.value.variable, "s3cret" in caught.value.message) == (
        "SCHEMAD_WEBHOOK_URL_FILE",
        False,
    )


def test_termination_path_survives_other_bad_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The termination path is still known when another setting is invalid."""
    monkeypatch.setenv("SCHEMAD_LOCK_WAIT_SECONDS", "soon")
    monkeypatch.setenv("SCHEMAD_TERMINATION_MESSAGE_PATH", str(tmp_path / "log"))
    assert load_termination_message_path() == tmp_path / "log"


def test_secrets_in_environment_hold_the_url_and_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For masking without valid settings: each secret variable and the URL's password."""
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", "postgresql+psycopg://app:p%21w@db/app")
    monkeypatch.setenv("SCHEMAD_WEBHOOK_URL", HOOK)
    found = set(secrets_in_environment())
    assert {"postgresql+psycopg://app:p%21w@db/app", "p!w", HOOK} <= found
