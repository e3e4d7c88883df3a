"""Bad configurations and database states, each run as a real ``schemad`` process.

Every case states its exit code and a fragment of the message the user must
see. For every case the output holds no traceback and never the password
that the database URL carries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from schemad.database import Database
from support.databases import mariadb_user
from support.scripts import linear_project, make_project, write_revision
from support.secrets import secret_forms

pytestmark = pytest.mark.e2e

# Every character that needs quoting in a URL, so each form it takes in text is tried.
PASSWORD = "S3cr3t!@:/%Pa55"
QUOTED = quote(PASSWORD, safe="")
SECRET_FORMS = secret_forms(PASSWORD)
CLOSED_POSTGRES = f"postgresql+psycopg://app:{QUOTED}@127.0.0.1:1/app"
TIMEOUT_SECONDS = 60


class Context:
    """What a case builds its settings from: a scratch directory and a database URL."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.tmp = tmp_path
        self.url = url

    def project(self, name: str = "migrations", count: int = 3) -> Path:
        """A linear history r0001 -> ... -> rNNNN in a new directory."""
        path = self.tmp / name
        linear_project(path, count)
        return path

    def branched(self, *, merged: bool = False) -> Path:
        """a -> b1, a -> b2 (two heads); with ``merged``, m merges b1 and b2."""
        path = make_project(self.tmp / "branched")
        write_revision(path, "a", None)
        write_revision(path, "b1", "a")
        write_revision(path, "b2", "a")
        if merged:
            write_revision(path, "m", ("b1", "b2"))
        return path

    def stamp(self, *revisions: str) -> None:
        """Write a version table holding ``revisions``, as another image would have."""
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"
                )
                for revision in revisions:
                    conn.execute(
                        sa.text("INSERT INTO alembic_version VALUES (:rev)"), {"rev": revision}
                    )
        finally:
            engine.dispose()

    def settings(self, project: Path | None = None, **extra: str) -> dict[str, str]:
        """The case's database URL and migrations, plus ``extra`` settings."""
        base = {"database_url": self.url}
        if project is not None:
            base["script_location"] = str(project)
        return {**base, **extra}


Settings = Callable[[Context], dict[str, str]]


@dataclass(frozen=True)
class Case:
    exit_code: int
    fragment: str
    settings: Settings
    command: tuple[str, ...] = ("upgrade",)
    database: str = "sqlite"
    hold_lock: bool = False
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())
    absent: tuple[str, ...] = ()
    """Fragments that must not be in the output (a wrong explanation)."""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def url_file(text: str) -> Settings:
    def settings(ctx: Context) -> dict[str, str]:
        return {"database_url_file": str(_write(ctx.tmp / "url", text))}

    return settings


def with_setting(**extra: str) -> Settings:
    """A valid URL and project, plus one bad setting."""

    def settings(ctx: Context) -> dict[str, str]:
        return ctx.settings(ctx.project(), database_url=CLOSED_POSTGRES, **extra)

    return settings


def url_only(url: str) -> Settings:
    def settings(ctx: Context) -> dict[str, str]:
        return ctx.settings(ctx.project(), database_url=url)

    return settings


def url_and_file(ctx: Context) -> dict[str, str]:
    return {
        "database_url": CLOSED_POSTGRES,
        "database_url_file": str(_write(ctx.tmp / "url", CLOSED_POSTGRES)),
    }


def alembic_config_missing(ctx: Context) -> dict[str, str]:
    return ctx.settings(alembic_config=str(ctx.tmp / "alembic.ini"))


def env_py_other_version_table(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(
        project / "env.py",
        "context.configure(connection=connection, target_metadata=target_metadata)",
        "context.configure(connection=connection, target_metadata=target_metadata, "
        'version_table="other_version")',
    )
    return ctx.settings(project, version_table="alembic_version")


def missing_migrations_dir(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.tmp / "nowhere")


def default_migrations_dir_absent(ctx: Context) -> dict[str, str]:
    return ctx.settings()  # the working directory has no migrations/


def ini_without_script_location(ctx: Context) -> dict[str, str]:
    ini = _write(ctx.tmp / "alembic.ini", "[alembic]\nprepend_sys_path = .\n")
    return ctx.settings(alembic_config=str(ini))


def env_py_missing(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    (project / "env.py").unlink()
    return ctx.settings(project)


def syntax_error(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    with (project / "versions" / "r0003.py").open("a") as revision:
        revision.write("\ndef broken(:\n")
    return ctx.settings(project)


def import_error(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(project / "versions" / "r0002.py", "import sqlalchemy as sa", "import nosuchmodule_xyz")
    return ctx.settings(project)


def cycle(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(project / "versions" / "r0001.py", "down_revision = None", "down_revision = 'r0003'")
    return ctx.settings(project)


def missing_down_revision(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(project / "versions" / "r0002.py", "down_revision = 'r0001'", "down_revision = 'r9999'")
    return ctx.settings(project)


def duplicate_revision(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    versions = project / "versions"
    _write(versions / "r0003_copy.py", (versions / "r0003.py").read_text())
    return ctx.settings(project)


def two_heads(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.branched())


def unknown_target(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.project(), target_revision="nosuchrev")


def stamped(*revisions: str, **extra: str) -> Settings:
    """A linear project and a database whose version table holds ``revisions``."""

    def settings(ctx: Context) -> dict[str, str]:
        ctx.stamp(*revisions)
        return ctx.settings(ctx.project(), **extra)

    return settings


def diverged(ctx: Context) -> dict[str, str]:
    ctx.stamp("b1")
    return ctx.settings(ctx.branched(), target_revision="b2")


def sql_from_two_heads(ctx: Context) -> dict[str, str]:
    ctx.stamp("b1", "b2")
    return ctx.settings(ctx.branched(merged=True))


def failing_revision(upgrade: str) -> Settings:
    def settings(ctx: Context) -> dict[str, str]:
        project = ctx.project()
        write_revision(project, "r0004", "r0003", message="Add audit table", upgrade=upgrade)
        return ctx.settings(project)

    return settings


def env_py_raises(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(
        project / "env.py",
        "config = context.config\n",
        'config = context.config\nraise RuntimeError("env.py is broken")\n',
    )
    return ctx.settings(project)


def no_such_database(ctx: Context) -> dict[str, str]:
    url = make_url(ctx.url).set(database="schemad_no_such_db")
    return ctx.settings(ctx.project(), database_url=url.render_as_string(hide_password=False))


def sqlite_at(path: str) -> Settings:
    def settings(ctx: Context) -> dict[str, str]:
        target = path.format(tmp=ctx.tmp)
        return ctx.settings(ctx.project(), database_url=f"sqlite:///{target}")

    return settings


def sqlite_under_a_file(ctx: Context) -> dict[str, str]:
    _write(ctx.tmp / "plain-file", "")
    return ctx.settings(ctx.project(), database_url=f"sqlite:///{ctx.tmp / 'plain-file' / 'a.db'}")


def not_a_database(ctx: Context) -> dict[str, str]:
    _write(Path(make_url(ctx.url).database or ""), "this is not a SQLite file\n" * 50)
    return ctx.settings(ctx.project())


def version_table_wrong_columns(ctx: Context) -> dict[str, str]:
    engine = sa.create_engine(ctx.url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version VARCHAR(32))")
    engine.dispose()
    return ctx.settings(ctx.project())


def lock_held(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.project(), lock_wait_seconds="0.5")


def wait_behind(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.project(), wait_timeout_seconds="0.5", wait_interval_seconds="0.1")


def wait_behind_slow_scripts(ctx: Context) -> dict[str, str]:
    """The deadline fires while the revision files are still being read."""
    project = ctx.project()
    _edit(
        next((project / "versions").glob("r0001*.py")),
        "from alembic import op",
        "from alembic import op\nimport time\ntime.sleep(3)",
    )
    return ctx.settings(project, wait_timeout_seconds="0.5", wait_interval_seconds="0.1")


def env_py_exits(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(
        project / "env.py",
        "config = context.config\n",
        'config = context.config\nraise SystemExit("needs -x tenant=NAME")\n',
    )
    return ctx.settings(project)


def env_py_syntax_error(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    with (project / "env.py").open("a") as env_py:
        env_py.write("\ndef broken(:\n")
    return ctx.settings(project)


def revision_exits_at_import(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    _edit(
        project / "versions" / "r0002.py",
        "import sqlalchemy as sa",
        "import sys\nsys.exit(0)\nimport sqlalchemy as sa",
    )
    return ctx.settings(project)


def base_exception_revision(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    write_revision(
        project,
        "r0004",
        "r0003",
        message="Add audit table",
        upgrade="class Halt(BaseException):\n    pass\nraise Halt('stopped here')",
    )
    return ctx.settings(project)


def url_file_not_utf8(ctx: Context) -> dict[str, str]:
    path = ctx.tmp / "url"
    path.write_bytes(b"postgresql+psycopg://app:\xff\xfe@127.0.0.1:1/app")
    return {"database_url_file": str(path)}


def alembic_config_not_utf8(ctx: Context) -> dict[str, str]:
    path = ctx.tmp / "alembic.ini"
    path.write_bytes(b"[alembic]\nscript_location = \xff\xfe\n")
    return ctx.settings(alembic_config=str(path))


def ini_missing_interpolation(ctx: Context) -> dict[str, str]:
    project = ctx.project()
    ini = _write(ctx.tmp / "alembic.ini", f"[alembic]\nscript_location = %(nosuch)s/{project}\n")
    return ctx.settings(alembic_config=str(ini))


def mysql_ssl_ca_missing(ctx: Context) -> dict[str, str]:
    url = make_url(ctx.url).update_query_dict({"ssl_ca": "/nonexistent/ca.pem"})
    return ctx.settings(ctx.project(), database_url=url.render_as_string(hide_password=False))


def version_table_schema_missing(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.project(), version_table_schema="no_such_schema")


def retry_unknown_revision(ctx: Context) -> dict[str, str]:
    return ctx.settings(ctx.project(), retry_interrupted="nosuchrev")


POSTGRES = (pytest.mark.postgres,)
MARIADB = (pytest.mark.mariadb,)

CASES: dict[str, Case] = {
    # 78: configuration, refused before anything is touched
    "missing-url": Case(78, "SCHEMAD_DATABASE_URL is not set", lambda ctx: {}),
    "bad-url": Case(
        78,
        "SCHEMAD_DATABASE_URL is not a valid SQLAlchemy URL",
        url_only(f"postgresql://app:{QUOTED}@db:port/app"),
    ),
    "unsupported-dialect": Case(
        78, "database 'oracle' is not supported", url_only(f"oracle://app:{QUOTED}@db/app")
    ),
    "unknown-driver": Case(
        78,
        "the driver 'postgresql+nosuchdriver' is not available",
        url_only(f"postgresql+nosuchdriver://app:{QUOTED}@127.0.0.1/app"),
    ),
    "in-memory-sqlite": Case(78, "in-memory SQLite database vanishes", url_only("sqlite://")),
    "in-memory-sqlite-explicit": Case(
        78, "in-memory SQLite database vanishes", url_only("sqlite:///:memory:")
    ),
    "url-file-missing": Case(
        78,
        "cannot read the file (No such file or directory)",
        lambda ctx: {"database_url_file": str(ctx.tmp / "nope")},
    ),
    "url-file-empty": Case(78, "the file is empty", url_file("\n")),
    "url-and-url-file": Case(
        78, "set SCHEMAD_DATABASE_URL or SCHEMAD_DATABASE_URL_FILE, not both", url_and_file
    ),
    "url-file-without-database": Case(
        78, "the URL names no database", url_file(f"mysql+pymysql://root:{QUOTED}@db:3306\n")
    ),
    "bad-number": Case(
        78, "SCHEMAD_LOCK_WAIT_SECONDS='soon'", with_setting(lock_wait_seconds="soon")
    ),
    "negative-number": Case(
        78,
        "SCHEMAD_CONNECT_TIMEOUT_SECONDS='-5': Input should be greater than 0",
        with_setting(connect_timeout_seconds="-5"),
    ),
    "nan-number": Case(
        78, "Input should be a finite number", with_setting(wait_timeout_seconds="nan")
    ),
    "bad-bool": Case(
        78,
        "SCHEMAD_ALLOW_DOWNGRADE='maybe': Input should be a valid boolean",
        with_setting(allow_downgrade="maybe"),
    ),
    "bad-log-level": Case(78, "SCHEMAD_LOG_LEVEL='loud'", with_setting(log_level="loud")),
    "relative-target": Case(78, "relative targets", with_setting(target_revision="-1")),
    "relative-to-head-target": Case(78, "relative targets", with_setting(target_revision="head-1")),
    "bad-cron": Case(
        78, "expected a five-field cron expression", with_setting(schedule="61 * * * *")
    ),
    "bad-version-table-name": Case(
        78, "SCHEMAD_VERSION_TABLE='a;drop'", with_setting(version_table="a;drop")
    ),
    "alembic-config-missing": Case(78, "SCHEMAD_ALEMBIC_CONFIG=", alembic_config_missing),
    "url-file-not-utf8": Case(78, "the file is not UTF-8 text", url_file_not_utf8),
    "alembic-config-not-utf8": Case(78, "the file is not UTF-8 text", alembic_config_not_utf8),
    "ini-missing-interpolation": Case(78, "interpolation key 'nosuch'", ini_missing_interpolation),
    "mysql-ssl-ca-missing": Case(
        78,
        "the driver refused the connection options: FileNotFoundError",
        mysql_ssl_ca_missing,
        database="mariadb",
        marks=MARIADB,
    ),
    "version-table-schema-missing": Case(
        78,
        "SCHEMAD_VERSION_TABLE_SCHEMA=no_such_schema: the schema does not exist",
        version_table_schema_missing,
        database="postgres",
        marks=POSTGRES,
    ),
    "retry-unknown-revision": Case(
        78, "SCHEMAD_RETRY_INTERRUPTED=nosuchrev: no such revision", retry_unknown_revision
    ),
    "bad-webhook-events": Case(
        78,
        "SCHEMAD_WEBHOOK_EVENTS='failed,exploded': unknown event(s) exploded",
        with_setting(webhook_events="failed,exploded"),
    ),
    "webhook-url-not-http": Case(
        78,
        "SCHEMAD_WEBHOOK_URL: expected an http:// or https:// URL",
        with_setting(webhook_url=f"ftp://hooks.example/{PASSWORD}"),
    ),
    "webhook-url-file-missing": Case(
        78,
        "SCHEMAD_WEBHOOK_URL_FILE=",
        lambda ctx: with_setting(webhook_url_file=str(ctx.tmp / "nope"))(ctx),
    ),
    "env-py-other-version-table": Case(
        78, "env.py uses the version table other_version", env_py_other_version_table
    ),
    # 66: the migration scripts are missing or broken
    "missing-migrations-dir": Case(66, "does not exist", missing_migrations_dir),
    "default-migrations-dir-absent": Case(
        66, "migrations directory migrations does not exist", default_migrations_dir_absent
    ),
    "ini-without-script-location": Case(66, "has no script_location", ini_without_script_location),
    "env-py-missing": Case(66, "has no env.py", env_py_missing),
    "env-py-missing-status": Case(66, "has no env.py", env_py_missing, command=("status",)),
    "syntax-error": Case(66, "SyntaxError", syntax_error),
    "import-error": Case(66, "No module named 'nosuchmodule_xyz'", import_error),
    "revision-exits-at-import": Case(66, "SystemExit: 0", revision_exits_at_import),
    "env-py-syntax-error": Case(66, "env.py does not compile: SyntaxError", env_py_syntax_error),
    "env-py-syntax-error-status": Case(
        66, "env.py does not compile: SyntaxError", env_py_syntax_error, command=("status",)
    ),
    "env-py-exits": Case(
        66,
        "env.py failed before any revision ran: SystemExit: needs -x tenant=NAME",
        env_py_exits,
    ),
    "cycle": Case(66, "Cycle is detected in revisions", cycle),
    "missing-down-revision": Case(66, "Revision r9999 referenced from", missing_down_revision),
    "duplicate-revision": Case(66, "Revision r0003 is present more than once", duplicate_revision),
    # 65: the plan breaks a policy
    "two-heads-target-head": Case(65, "several heads (b1, b2)", two_heads),
    "two-heads-plan": Case(65, "several heads (b1, b2)", two_heads, command=("plan",)),
    "unknown-target": Case(
        65, "target revision 'nosuchrev' is not in the migrations", unknown_target
    ),
    "unknown-target-wait": Case(65, "'nosuchrev'", unknown_target, command=("wait",)),
    "unknown-revision-in-db": Case(
        65,
        "database is at revision feedface, which these migrations do not contain",
        stamped("feedface"),
        database="postgres",
        marks=POSTGRES,
    ),
    "unknown-revision-status": Case(
        65, "not in these migrations", stamped("feedface"), command=("status",)
    ),
    "downgrade-not-allowed": Case(
        65, "SCHEMAD_ALLOW_DOWNGRADE=true", stamped("r0003", target_revision="r0001")
    ),
    "version-table-ancestor-rows": Case(
        65,
        "but r0001 is also an ancestor of",
        stamped("r0001", "r0002"),
        database="postgres",
        marks=POSTGRES,
    ),
    "version-table-duplicate-rows": Case(65, "alembic stamp", stamped("r0002", "r0002")),
    "diverged-branch": Case(65, "which is on another branch", diverged),
    "plan-sql-from-two-heads": Case(
        65, "offline SQL needs one starting revision", sql_from_two_heads, command=("plan", "--sql")
    ),
    # 70: a revision (or env.py) failed while applying
    "failing-revision": Case(
        70,
        "revision r0004 (Add audit table) failed: RuntimeError: boom",
        failing_revision('raise RuntimeError("boom")'),
    ),
    "failing-sql-postgres": Case(
        70,
        'revision r0004 (Add audit table) failed: UndefinedTable: relation "no_such_table"',
        failing_revision('op.execute("DELETE FROM no_such_table")'),
        database="postgres",
        marks=POSTGRES,
    ),
    "env-py-raises": Case(
        66, "env.py failed before any revision ran: RuntimeError: env.py is broken", env_py_raises
    ),
    "env-py-raises-mariadb": Case(
        66,
        "env.py failed before any revision ran",
        env_py_raises,
        database="mariadb_user",
        marks=MARIADB,
        absent=("stay applied",),
    ),
    "revision-sys-exit-0": Case(
        70,
        "revision r0004 (Add audit table) failed: SystemExit: 0",
        failing_revision("import sys\nsys.exit(0)"),
    ),
    "revision-sys-exit-3": Case(
        70,
        "revision r0004 (Add audit table) failed: SystemExit: 3",
        failing_revision("import sys\nsys.exit(3)"),
    ),
    "revision-sys-exit-message": Case(
        70,
        "revision r0004 (Add audit table) failed: SystemExit: no tenant given",
        failing_revision('import sys\nsys.exit("no tenant given")'),
    ),
    "revision-base-exception": Case(
        70, "revision r0004 (Add audit table) failed: Halt: stopped here", base_exception_revision
    ),
    # 69: the database cannot be reached or read
    "postgres-closed-port": Case(69, "Connection refused", url_only(CLOSED_POSTGRES)),
    **{
        f"async-url-closed-port-{driver.split('+')[1]}": Case(
            69,
            f"cannot connect to {driver}://app:***@127.0.0.1:1/app",
            url_only(f"{driver}://app:{QUOTED}@127.0.0.1:1/app"),
        )
        for driver in (
            "postgresql+asyncpg",
            "postgresql+psycopg_async",
            "mysql+aiomysql",
            "mysql+asyncmy",
        )
    },
    "async-url-sqlite-dir-missing": Case(
        69,
        "unable to open database file",
        lambda ctx: ctx.settings(
            ctx.project(), database_url=f"sqlite+aiosqlite:///{ctx.tmp}/missing/app.db"
        ),
    ),
    "unsupported-dialect-mssql": Case(
        78,
        "database 'mssql' is not supported",
        url_only(f"mssql+pyodbc://app:{QUOTED}@db/app"),
    ),
    "password-in-query": Case(
        69,
        "cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/app",
        url_only(f"postgresql+psycopg://app@127.0.0.1:1/app?password={quote_plus(PASSWORD)}"),
    ),
    "postgres-no-such-database": Case(
        69,
        'database "schemad_no_such_db" does not exist',
        no_such_database,
        database="postgres",
        marks=POSTGRES,
    ),
    "mariadb-wrong-password": Case(
        69,
        "Access denied for user 'root'",
        lambda ctx: ctx.settings(ctx.project()),
        database="mariadb",
        marks=MARIADB,
    ),
    "sqlite-dir-missing": Case(
        69, "unable to open database file", sqlite_at("{tmp}/missing/app.db")
    ),
    "sqlite-unwritable-dir": Case(69, "unable to open database file", sqlite_at("/proc/app.db")),
    "sqlite-under-a-file": Case(69, "unable to open database file", sqlite_under_a_file),
    "sqlite-not-a-database": Case(69, "file is not a database", not_a_database),
    "version-table-wrong-columns": Case(
        69, "cannot read the version table alembic_version", version_table_wrong_columns
    ),
    # 75: try again later
    "lock-held": Case(75, "the migration lock is still held by", lock_held, hold_lock=True),
    "wait-timeout": Case(
        75, "did not reach the target 'head' within 0.5s", wait_behind, command=("wait",)
    ),
    "wait-timeout-while-loading": Case(
        75,
        "did not reach the target 'head' within 0.5s",
        wait_behind_slow_scripts,
        command=("wait",),
    ),
}


def _server_url(request: pytest.FixtureRequest, fixture: str) -> str:
    """A throwaway database on the server, its URL carrying the test password."""
    url = make_url(str(request.getfixturevalue(fixture)))
    return url.set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
def context(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    case: Case = request.param
    if case.database == "postgres":
        url = _server_url(request, "postgres_url")
    elif case.database == "mariadb":
        url = _server_url(request, "mariadb_url")
    elif case.database == "mariadb_user":
        with mariadb_user(str(request.getfixturevalue("mariadb_url")), PASSWORD) as user_url:
            yield Context(tmp_path, user_url)
        return
    else:
        url = f"sqlite:///{tmp_path / 'app.db'}"
    yield Context(tmp_path, url)


def readable(output: str) -> str:
    """The output plus the decoded text of its JSON log lines (quotes unescaped)."""
    decoded = []
    for line in output.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            decoded.extend(str(value) for value in event.values())
    return "\n".join([output, *decoded])


def environment(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCHEMAD_")}
    env.update({f"SCHEMAD_{key.upper()}": value for key, value in settings.items()})
    return env


@pytest.mark.parametrize(
    "context",
    [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()],
    indirect=True,
)
def test_bad_input(context: Context, request: pytest.FixtureRequest) -> None:
    """Each bad input exits with its code and message; no traceback, no password."""
    case: Case = request.node.callspec.params["context"]
    env = environment(case.settings(context))
    workdir = context.tmp / "workdir"
    workdir.mkdir()
    with ExitStack() as stack:
        if case.hold_lock:
            holder = Database(make_url(context.url))
            stack.callback(holder.dispose)
            stack.enter_context(holder.lock(5.0))
        done = subprocess.run(
            [sys.executable, "-m", "schemad", *case.command],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    output = done.stdout + done.stderr
    assert done.returncode == case.exit_code, output
    assert case.fragment in readable(output), output
    assert "Traceback" not in output, output
    assert [form for form in SECRET_FORMS if form in output] == [], output
    assert [text for text in case.absent if text in output] == [], output


def test_there_are_enough_cases() -> None:
    """The table covers at least 24 bad configurations and database states."""
    assert len(CASES) >= 24
