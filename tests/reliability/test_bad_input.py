"""Bad input: wrong settings, broken migration files and odd database states.

Each case names its expected exit code and a fragment of the message the
user must see; for ``schemad run`` cases, the daemon's outcome in /status
(or its exit code, for configuration errors). For every case: no Python
traceback in any output, and the case's password (``Rel-S3cret-77`` in the
URL here; the e2e table's own password for its cases) never appears in any
output, log line, /metrics or /status body.

The e2e bad-input table (tests/e2e/test_bad_input.py) is imported and run
here too, through the fork server; this module adds a wrong value for every
setting, the migration-file and database-state cases it lacks, and daemon
cases.
"""

from __future__ import annotations

import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from e2e.test_bad_input import CASES as E2E_CASES
from e2e.test_bad_input import PASSWORD as E2E_PASSWORD
from e2e.test_bad_input import Case, Context, environment, readable
from schemad.database import Database
from schemad.settings import Settings
from support.daemon import DaemonProcess, daemon_env
from support.databases import mariadb_user, stamp
from support.forkserver import ForkServer, Job
from support.scripts import create_table, linear_project, make_project, write_revision
from support.secrets import secret_forms

from .figures import Figures

pytestmark = pytest.mark.reliability

PASSWORD = "Rel-S3cret!@:/%77"
CLOSED_POSTGRES = f"postgresql+psycopg://app:{quote(PASSWORD, safe='')}@127.0.0.1:1/app"
NOBODY = 65534
TIMEOUT_SECONDS = 60.0
DAEMON_TIMEOUT_SECONDS = 30.0
SettingsFn = Callable[[Context], dict[str, str]]


# -- every setting, wrong --------------------------------------------------------------------

# (setting, bad value, what the user must read). Every setting in Settings has
# at least one row here or in the e2e table (test_every_setting_has_a_case).
BAD_SETTINGS: list[tuple[str, str, str]] = [
    ("target_revision", "has space", "expected head, heads, base, a revision id or label@head"),
    ("allow_downgrade", "2", "Input should be a valid boolean"),
    ("on_unknown_revision", "sometimes", "Input should be 'fail' or 'ignore'"),
    ("version_table", "1abc", "String should match pattern"),
    ("version_table_schema", "a b", "String should match pattern"),
    ("history_enabled", "perhaps", "Input should be a valid boolean"),
    ("history_table", "x-y", "String should match pattern"),
    ("on_tamper", "panic", "Input should be 'warn' or 'block'"),
    ("drift_interval_seconds", "0", "Input should be greater than or equal to 1"),
    ("lock_wait_seconds", "-1", "Input should be greater than 0"),
    ("connect_timeout_seconds", "100000", "Input should be less than or equal to 86400"),
    ("connect_timeout_seconds", "ten", "Input should be a valid number"),
    ("ddl_lock_timeout_seconds", "1s", "Input should be a valid number"),
    ("ddl_lock_timeout_seconds", "0", "Input should be greater than 0"),
    ("statement_timeout_seconds", "inf", "Input should be a finite number"),
    ("async_commit", "sometimes", "Input should be a valid boolean"),
    ("wait_timeout_seconds", "-0.5", "Input should be greater than 0"),
    ("wait_interval_seconds", "0", "Input should be greater than or equal to 0.1"),
    ("log_format", "xml", "Input should be 'auto', 'json' or 'console'"),
    ("log_level", "trace", "Input should be 'debug', 'info', 'warning' or 'error'"),
    ("interval_seconds", "-3", "Input should be greater than or equal to 1"),
    ("interval_seconds", "0.001", "Input should be greater than or equal to 1"),
    ("version_table", "v" * 64, "String should have at most 63 characters"),
    ("version_table_schema", "s" * 64, "String should have at most 63 characters"),
    ("history_table", "h" * 64, "String should have at most 63 characters"),
    ("interval_seconds", "1m", "Input should be a valid number"),
    ("schedule", "* * *", "expected a five-field cron expression"),
    ("schedule", "*/5 * * * mon-xyz", "expected a five-field cron expression"),
    ("jitter_seconds", "-1", "Input should be greater than or equal to 0"),
    ("jitter_seconds", "7200", "Input should be less than or equal to 3600"),
    ("backoff_max_seconds", "abc", "Input should be a valid number"),
    ("http_port", "70000", "Input should be less than or equal to 65535"),
    ("http_port", "http", "Input should be a valid integer"),
    ("shutdown_grace_seconds", "0", "Input should be greater than 0"),
    ("x_args", "tenant=a,,b=2", "expected key=value pairs separated by commas"),
    ("autocommit_revisions", "r1, r 2", "expected revision ids separated by commas"),
    ("bootstrap_in_one_transaction", "sometimes", "Input should be a valid boolean"),
    ("webhook_timeout_seconds", "0", "Input should be greater than 0"),
    ("targets_query", "   ", "expected a SELECT returning a 'name' column per target"),
    ("concurrency", "0", "Input should be greater than or equal to 1"),
    ("max_connections", "many", "Input should be a valid integer"),
    ("canary", "a,,b", "expected a count (e.g. 2) or target names separated by commas"),
    ("max_failures", "-1", "Input should be greater than or equal to 0"),
    ("shard_index", "-1", "Input should be greater than or equal to 0"),
    ("shard_count", "0", "Input should be greater than or equal to 1"),
    ("target_series_limit", "-1", "Input should be greater than or equal to 0"),
]
# Settings whose wrong values are cases elsewhere: the URL and its file, the
# ini, the migrations directory (e2e table), the HTTP host (a daemon case) and
# the retry of an interrupted revision (tests/reliability/test_crashes.py).
COVERED_ELSEWHERE = {
    "database_url",
    "database_url_file",
    "alembic_config",
    "script_location",
    "http_host",
    "retry_interrupted",
    # The webhook's URL, its file and its events: cases in the e2e table.
    "webhook_url",
    "webhook_url_file",
    "webhook_events",
    # An unwritable path is a warning, never a failure (tests/e2e/test_notifications.py).
    "termination_message_path",
    # A missing, unreadable or malformed targets file: tests/e2e/test_fleet.py.
    "targets_file",
}


def with_setting(name: str, value: str) -> SettingsFn:
    def settings(ctx: Context) -> dict[str, str]:
        return ctx.settings(ctx.project(), database_url=CLOSED_POSTGRES, **{name: value})

    return settings


# -- migration files ---------------------------------------------------------------------------


def empty_versions(ctx: Context) -> dict[str, str]:
    return ctx.settings(make_project(ctx.tmp / "migrations"))


def location_is_a_file(ctx: Context) -> dict[str, str]:
    path = ctx.tmp / "migrations.py"
    path.write_text("# not a directory\n")
    return ctx.settings(path)


def unreadable_migrations(ctx: Context) -> dict[str, str]:
    """A migrations directory the (unprivileged) process may not read."""
    project = ctx.project()
    project.chmod(0)
    return ctx.settings(project)


def unreadable_versions(ctx: Context) -> dict[str, str]:
    """env.py readable, versions/ not: the problem is named, not "no revision files"."""
    project = ctx.project()
    (project / "versions").chmod(0)
    return ctx.settings(project)


def read_only_sqlite(ctx: Context) -> dict[str, str]:
    """A database file the (unprivileged) process may read but not write."""
    database = Path(make_url(ctx.url).database or "")
    stamp(ctx.url)  # creates the file, owned by root
    database.chmod(0o444)
    return ctx.settings(ctx.project())


def read_only_directory(ctx: Context) -> dict[str, str]:
    """`status` needs no write access: the database's directory is read-only."""
    directory = ctx.tmp / "readonly"
    directory.mkdir()
    url = f"sqlite:///{directory / 'app.db'}"
    stamp(url, "r0001")
    directory.chmod(0o555)
    return ctx.settings(ctx.project(), database_url=url)


def schema_made_by_env_py(ctx: Context) -> dict[str, str]:
    """env.py creates the tenant schema that holds the version and history tables."""
    project = ctx.project()
    env_py = project / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "    context.configure(connection=connection, target_metadata=target_metadata)",
            "    connection.exec_driver_sql('CREATE SCHEMA IF NOT EXISTS tenant_a')\n"
            "    connection.commit()\n"
            "    context.configure(\n"
            "        connection=connection,\n"
            "        target_metadata=target_metadata,\n"
            "        version_table_schema='tenant_a',\n"
            "    )",
        )
    )
    return ctx.settings(project, version_table_schema="tenant_a")


def revision_without_id(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    path = project / "versions" / "r0002.py"
    path.write_text(path.read_text().replace("revision = 'r0002'\n", ""))
    return ctx.settings(project)


def exception_in_upgrade(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    write_revision(
        project, "r0004", "r0003", message="Backfill", upgrade="raise ValueError('bad row 17')"
    )
    return ctx.settings(project)


# -- database states -------------------------------------------------------------------------


def empty_version_table(ctx: Context) -> dict[str, str]:
    stamp(ctx.url)  # the table exists, with no row
    return ctx.settings(ctx.project())


def stamped(*revisions: str) -> SettingsFn:
    def settings(ctx: Context) -> dict[str, str]:
        stamp(ctx.url, *revisions)
        return ctx.settings(ctx.project())

    return settings


def dropped_table(ctx: Context) -> dict[str, str]:
    """r0001 creates t, r0002 adds a column to it; t was dropped by hand at r0001."""
    project = make_project(ctx.tmp / "migrations")
    write_revision(project, "r0001", None, upgrade=create_table("t"))
    write_revision(
        project,
        "r0002",
        "r0001",
        message="Add t.c",
        upgrade='op.add_column("t", sa.Column("c", sa.Integer))',
    )
    engine = sa.create_engine(ctx.url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE other (id INTEGER)"))  # t itself is gone
    finally:
        engine.dispose()
    stamp(ctx.url, "r0001")
    return ctx.settings(project)


@dataclass(frozen=True)
class Entry:
    """A case, where it comes from, and the password its URLs carry."""

    case: Case
    group: str
    password: str = PASSWORD
    run_as: int | None = None
    fragments: tuple[str, ...] = field(default=())
    absent: tuple[str, ...] = field(default=())
    """Fragments that must not be in the output (a wrong explanation)."""


POSTGRES = (pytest.mark.postgres,)
MARIADB = (pytest.mark.mariadb,)
# The table missing-table message differs by database.
NO_TABLE = {
    "sqlite": "no such table: t",
    "postgres": 'relation "t" does not exist',
    "mariadb": "doesn't exist",
}


def _entries() -> dict[str, Entry]:
    entries = {
        f"e2e-{name}": Entry(case, "e2e table", E2E_PASSWORD) for name, case in E2E_CASES.items()
    }
    for name, value, fragment in BAD_SETTINGS:
        slug = "".join(ch if ch.isalnum() else "_" for ch in value)
        message = f"SCHEMAD_{name.upper()}={value!r}: {fragment}"
        entries[f"setting-{name}-{slug}"] = Entry(
            Case(78, message, with_setting(name, value)), "settings"
        )
    files = {
        "empty-versions": Case(66, "has no revision files", empty_versions),
        "location-is-a-file": Case(66, "has no env.py", location_is_a_file),
        "revision-without-id": Case(
            66, "Could not determine revision id from filename r0002.py", revision_without_id
        ),
        "exception-in-upgrade": Case(
            70, "revision r0004 (Backfill) failed: ValueError: bad row 17", exception_in_upgrade
        ),
    }
    entries.update({f"files-{n}": Entry(c, "migration files") for n, c in files.items()})
    entries["files-unreadable-migrations"] = Entry(
        Case(66, "Permission denied", unreadable_migrations), "migration files", run_as=NOBODY
    )
    entries["files-unreadable-versions"] = Entry(
        Case(66, "cannot read the revision directory", unreadable_versions),
        "migration files",
        run_as=NOBODY,
    )
    entries["state-sqlite-read-only-file"] = Entry(
        Case(69, "the database is read-only for schemad", read_only_sqlite),
        "database states",
        run_as=NOBODY,
        absent=("fix the revision", "fix env.py", "grant schemad CREATE"),
    )
    entries["state-sqlite-status-read-only-directory"] = Entry(
        Case(3, "r0001", read_only_directory, command=("status",)),
        "database states",
        run_as=NOBODY,
    )
    entries["state-postgres-schema-made-by-env-py"] = Entry(
        Case(0, '"outcome": "applied"', schema_made_by_env_py, database="postgres", marks=POSTGRES),
        "database states",
        absent=("grant schemad CREATE", "history_write_failed"),
    )
    for database, marks in (("sqlite", ()), ("postgres", POSTGRES), ("mariadb", MARIADB)):
        states = {
            "empty-version-table": Case(
                0, '"outcome": "applied"', empty_version_table, database=database, marks=marks
            ),
            "unknown-revision": Case(
                65,
                "database is at revision feedface, which these migrations do not contain",
                stamped("feedface"),
                database=database,
                marks=marks,
            ),
            "two-rows-known-and-unknown": Case(
                65, "feedface", stamped("r0002", "feedface"), database=database, marks=marks
            ),
            "two-rows-same-branch": Case(
                65,
                "but r0001 is also an ancestor of",
                stamped("r0001", "r0003"),
                database=database,
                marks=marks,
            ),
            "dropped-table": Case(
                70,
                "revision r0002 (Add t.c) failed",
                dropped_table,
                database=database,
                marks=marks,
            ),
        }
        for name, case in states.items():
            extra = (NO_TABLE[database],) if name == "dropped-table" else ()
            entries[f"state-{database}-{name}"] = Entry(case, "database states", fragments=extra)
    return entries


ENTRIES = _entries()


# -- running a case --------------------------------------------------------------------------


def database_url(
    entry: Entry, request: pytest.FixtureRequest, tmp: Path, resources: ExitStack
) -> str:
    database = entry.case.database
    if database == "postgres":
        url = make_url(str(request.getfixturevalue("postgres_url")))
        return url.set(password=entry.password).render_as_string(hide_password=False)
    if database == "mariadb_user" or (database == "mariadb" and entry.password == PASSWORD):
        server = str(request.getfixturevalue("mariadb_url"))
        return resources.enter_context(mariadb_user(server, entry.password))
    if database == "mariadb":  # the e2e table's wrong-password case
        url = make_url(str(request.getfixturevalue("mariadb_url")))
        return url.set(password=entry.password).render_as_string(hide_password=False)
    return f"sqlite:///{tmp / 'app.db'}"


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A scratch directory an unprivileged user can reach (pytest's is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="schemad-rel-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for child in path.rglob("*"):
            if child.is_dir():
                child.chmod(stat.S_IRWXU)
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=entry.case.marks) for name, entry in ENTRIES.items()],
)
def test_bad_input(
    name: str,
    request: pytest.FixtureRequest,
    forkserver: ForkServer,
    figures: Figures,
    tmp_path: Path,
) -> None:
    """The case exits with its code and message; no traceback, no password anywhere."""
    entry = ENTRIES[name]
    case = entry.case
    tmp = tmp_path
    if entry.run_as is not None:
        tmp = request.getfixturevalue("world_tmp")
    resources = ExitStack()
    request.addfinalizer(resources.close)
    ctx = Context(tmp, database_url(entry, request, tmp, resources))
    env = environment(case.settings(ctx))
    workdir = tmp / "workdir"
    workdir.mkdir()
    workdir.chmod(0o777)
    with ExitStack() as stack:
        if case.hold_lock:
            holder = Database(make_url(ctx.url))
            stack.callback(holder.dispose)
            stack.enter_context(holder.lock(5.0))
        run = forkserver.run(
            Job(list(case.command), env, workdir / "output", cwd=workdir, uid=entry.run_as),
            TIMEOUT_SECONDS,
        )
    output = run.output()
    figures.add("bad_input", group=entry.group, name=name)
    text = readable(output)
    expected = {
        "exit_code": case.exit_code,
        "fragments": True,
        "traceback": False,
        "password": [],
        "wrong explanation": [],
    }
    actual = {
        "exit_code": run.returncode,
        "fragments": all(f in text for f in (case.fragment, *entry.fragments)),
        "traceback": "Traceback" in output,
        "password": [s for s in secret_forms(entry.password) if s in output],
        "wrong explanation": [f for f in (*case.absent, *entry.absent) if f in text],
    }
    assert expected == actual, output[-4000:]


def test_every_setting_has_a_case() -> None:
    """A new setting without a bad-value case fails here."""
    covered = {name for name, _value, _fragment in BAD_SETTINGS} | COVERED_ELSEWHERE
    assert sorted(set(Settings.model_fields) - covered) == []


def test_there_are_at_least_40_cases() -> None:
    """The issue asks for at least 40 bad-input cases; the e2e table's are counted too."""
    assert len(ENTRIES) + len(DAEMON_CASES) >= 40


# -- the daemon --------------------------------------------------------------------------------


class DaemonContext(Context):
    """A case's context, plus what must stay open while the daemon runs."""

    def __init__(self, tmp_path: Path, url: str, resources: ExitStack) -> None:
        super().__init__(tmp_path, url)
        self.resources = resources


@dataclass(frozen=True)
class DaemonCase:
    """A bad input for ``schemad run``: it exits (``exit_code``) or keeps running and
    reports ``outcome`` in /status; either way the message holds ``fragment``."""

    fragment: str
    settings: Callable[[DaemonContext, Path], dict[str, str]]
    exit_code: int | None = None
    outcome: str | None = None
    database: str = "sqlite"
    marks: tuple[pytest.MarkDecorator, ...] = ()


def busy_port(ctx: DaemonContext, _project: Path) -> dict[str, str]:
    taken = ctx.resources.enter_context(socket.socket())
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return {"http_port": str(taken.getsockname()[1])}


def two_heads(ctx: DaemonContext, _project: Path) -> dict[str, str]:
    return {"script_location": str(ctx.branched())}


def failing(ctx: DaemonContext, project: Path) -> dict[str, str]:
    write_revision(
        project, "r0004", "r0003", message="Add audit", upgrade="raise RuntimeError('boom')"
    )
    return {}


def syntax_error(_ctx: DaemonContext, project: Path) -> dict[str, str]:
    with (project / "versions" / "r0003.py").open("a") as revision:
        revision.write("\ndef broken(:\n")
    return {}


def exits_zero(_ctx: DaemonContext, project: Path) -> dict[str, str]:
    write_revision(
        project, "r0004", "r0003", message="Add audit", upgrade="import sys\nsys.exit(0)"
    )
    return {}


def unknown_in_db(ctx: DaemonContext, _project: Path) -> dict[str, str]:
    stamp(ctx.url, "feedface")
    return {}


def dropped_table_daemon(ctx: DaemonContext, _project: Path) -> dict[str, str]:
    return {"script_location": dropped_table(ctx)["script_location"]}


DAEMON_CASES: dict[str, DaemonCase] = {
    "run-port-in-use": DaemonCase("in use", busy_port, exit_code=78),
    "run-bad-host": DaemonCase(
        "cannot listen", lambda c, p: {"http_host": "256.1.1.1"}, exit_code=78
    ),
    "run-bad-cron": DaemonCase(
        "five-field cron", lambda c, p: {"schedule": "0 0 31 2 * *"}, exit_code=78
    ),
    "run-unreachable-host": DaemonCase(
        "Connection refused",
        lambda c, p: {"database_url": CLOSED_POSTGRES},
        outcome="unavailable",
    ),
    "run-wrong-password": DaemonCase(
        "Access denied",
        lambda c, p: {
            "database_url": make_url(c.url)
            .set(password="Wrong-" + PASSWORD)
            .render_as_string(hide_password=False)
        },
        outcome="unavailable",
        database="mariadb",
        marks=MARIADB,
    ),
    "run-two-heads": DaemonCase("several heads", two_heads, outcome="refused"),
    "run-failing-revision": DaemonCase(
        "revision r0004 (Add audit) failed: RuntimeError: boom", failing, outcome="failed"
    ),
    "run-syntax-error": DaemonCase("SyntaxError", syntax_error, outcome="script_error"),
    "run-revision-exits-0": DaemonCase(
        "revision r0004 (Add audit) failed: SystemExit: 0", exits_zero, outcome="failed"
    ),
    "run-unknown-revision": DaemonCase(
        "which these migrations do not contain",
        unknown_in_db,
        outcome="refused",
        database="postgres",
        marks=POSTGRES,
    ),
    "run-dropped-table": DaemonCase(
        "revision r0002 (Add t.c) failed",
        dropped_table_daemon,
        outcome="failed",
        database="postgres",
        marks=POSTGRES,
    ),
}


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=case.marks) for name, case in DAEMON_CASES.items()]
)
def test_bad_input_to_the_daemon(
    name: str, request: pytest.FixtureRequest, figures: Figures, tmp_path: Path
) -> None:
    """It exits with its code, or stays up reporting the outcome; no traceback, no password."""
    case = DAEMON_CASES[name]
    entry = Entry(Case(0, "", lambda ctx: {}, database=case.database), "daemon")
    project = tmp_path / "project"
    linear_project(project, 3)
    bodies: list[str] = []
    code: int | None = None
    with ExitStack() as resources:
        url = database_url(entry, request, tmp_path, resources)
        settings = case.settings(DaemonContext(tmp_path, url, resources), project)
        env = daemon_env(settings.pop("database_url", url), project, **settings)
        daemon = resources.enter_context(running(env, wait_for_http=case.exit_code is None))
        if case.exit_code is not None:
            code = daemon.wait_exit(DAEMON_TIMEOUT_SECONDS)
            outcome, message = None, " ".join(str(e.get("error")) for e in daemon.events)
        else:
            finished = daemon.wait_for_event("reconcile_finished", timeout=DAEMON_TIMEOUT_SECONDS)
            status = daemon.wait_until(
                lambda: daemon.status()["last_pass"], timeout=10, message="a pass in /status"
            )
            bodies = [daemon.get(path).text for path in ("/status", "/metrics", "/readyz")]
            outcome, message = status["outcome"], f"{status['error']} {finished.get('error')}"
            alive = daemon.alive()
            assert (alive, daemon.get("/healthz").status_code) == (True, 200)
    output = daemon.output()
    figures.add("bad_input", group="daemon", name=name)
    expected: dict[str, Any] = {
        "exit_code": case.exit_code,
        "outcome": case.outcome,
        "fragment": True,
        "traceback": False,
        "password": [],
    }
    actual = {
        "exit_code": code,
        "outcome": outcome,
        "fragment": case.fragment in message,
        "traceback": "Traceback" in output,
        "password": [s for s in secret_forms(PASSWORD) for t in (output, *bodies) if s in t],
    }
    assert expected == actual, output[-4000:]


@contextmanager
def running(env: dict[str, str], *, wait_for_http: bool) -> Iterator[DaemonProcess]:
    """``schemad run``, killed on the way out whatever happened."""
    daemon = DaemonProcess(env)
    try:
        daemon.start(wait_for_http=wait_for_http)
        yield daemon
    finally:
        daemon.kill()
