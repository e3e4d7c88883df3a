"""Lifecycle signals from real ``schemad`` processes: the termination message
each one-shot command leaves for Kubernetes.

The database URL carries a password with ``!@:/%`` (URL-quoted); neither
its raw nor any quoted form may reach the termination message or the logs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import make_url

from schemad.database import Database
from support.databases import stamp
from support.processes import clean_env, events
from support.scripts import linear_project, write_revision

pytestmark = pytest.mark.e2e

PASSWORD = "p!@:/%w0rd"
SECRET_FORMS = {
    PASSWORD,
    quote(PASSWORD, safe=""),
    quote(PASSWORD, safe=" +"),
    quote_plus(PASSWORD),
    quote(PASSWORD, safe="").replace("%", "%%"),
}
CLOSED = f"postgresql+psycopg://app:{quote(PASSWORD, safe='')}@127.0.0.1:1/app"
TIMEOUT_SECONDS = 60


@dataclass
class Context:
    """A scratch directory, and the case's database URL (with the password)."""

    tmp: Path
    url: str

    def project(self, count: int = 3) -> Path:
        path = self.tmp / "migrations"
        if not path.exists():
            linear_project(path, count)
        return path

    def settings(self, **extra: str) -> dict[str, str]:
        return {"database_url": self.url, "script_location": str(self.project()), **extra}


Setup = Callable[[Context], dict[str, str]]


@dataclass(frozen=True)
class Case:
    command: str
    exit_code: int
    prefix: str
    suffix: str
    setup: Setup
    database: bool = True
    """Needs a PostgreSQL database (else the URL points at a closed port)."""
    hold_lock: bool = False

    @property
    def marks(self) -> tuple[pytest.MarkDecorator, ...]:
        return (pytest.mark.postgres,) if self.database else ()


def at(*revisions: str, **extra: str) -> Setup:
    def setup(ctx: Context) -> dict[str, str]:
        settings = ctx.settings(**extra)
        stamp(ctx.url, *revisions)
        return settings

    return setup


def plain(**extra: str) -> Setup:
    return lambda ctx: ctx.settings(**extra)


def failing(ctx: Context) -> dict[str, str]:
    settings = ctx.settings()
    write_revision(
        ctx.project(),
        "r0004",
        "r0003",
        message="Add audit table",
        upgrade="raise RuntimeError('boom')",
    )
    return settings


def no_scripts(ctx: Context) -> dict[str, str]:
    return {"database_url": ctx.url, "script_location": str(ctx.tmp / "nowhere")}


def closed(**extra: str) -> Setup:
    return lambda ctx: {**ctx.settings(**extra), "database_url": CLOSED}


CASES: dict[str, Case] = {
    "upgrade-in_sync": Case(
        "upgrade", 0, "in_sync: database at r0003 (target head)", "", at("r0003")
    ),
    "upgrade-applied": Case(
        "upgrade", 0, "applied: 3 revision(s), database at r0003 (target head)", "", plain()
    ),
    "upgrade-refused": Case(
        "upgrade",
        65,
        "refused (unknown_revision): database is at revision feedface, which these "
        "migrations do not contain",
        "; database at feedface (target head: r0003)",
        at("feedface"),
    ),
    "upgrade-failed": Case(
        "upgrade",
        70,
        "failed: revision r0004 (Add audit table) failed: RuntimeError: boom",
        "; database left at r0003 (target head: r0004)",
        failing,
    ),
    "upgrade-unavailable": Case(
        "upgrade",
        69,
        "unavailable: cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/app",
        "; target head",
        closed(),
        database=False,
    ),
    "upgrade-lock_timeout": Case(
        "upgrade",
        75,
        "lock_timeout: the migration lock is still held by",
        "; database at base (target head: r0003)",
        plain(lock_wait_seconds="0.5"),
        hold_lock=True,
    ),
    "upgrade-script_error": Case(
        "upgrade",
        66,
        "script_error: migrations directory ",
        "(or SCHEMAD_ALEMBIC_CONFIG to the project's alembic.ini); target head",
        no_scripts,
    ),
    "upgrade-config_error": Case(
        "upgrade",
        78,
        "config_error: invalid settings: SCHEMAD_LOCK_WAIT_SECONDS='soon': Input should be a "
        "valid number, unable to parse string as a number",
        "",
        closed(lock_wait_seconds="soon"),
        database=False,
    ),
    "upgrade-config_error-url": Case(
        "upgrade",
        78,
        "config_error: SCHEMAD_DATABASE_URL=oracle://app:***@db/app: database 'oracle' is not "
        "supported",
        "",
        lambda ctx: {"database_url": f"oracle://app:{quote(PASSWORD, safe='')}@db/app"},
        database=False,
    ),
    "wait-ready": Case("wait", 0, "ready: database at r0003 (target head)", "", at("r0003")),
    "wait-wait_timeout": Case(
        "wait",
        75,
        "wait_timeout: the database did not reach the target 'head' within 0.5s "
        "(SCHEMAD_WAIT_TIMEOUT_SECONDS); last seen: 3 revision(s) to apply to reach r0003",
        "; database at base (target head: r0003)",
        plain(wait_timeout_seconds="0.5", wait_interval_seconds="0.1"),
    ),
}


@pytest.fixture
def context(request: pytest.FixtureRequest, tmp_path: Path) -> Context:
    case: Case = request.param
    url = CLOSED
    if case.database:
        server = make_url(str(request.getfixturevalue("postgres_url")))
        url = server.set(password=PASSWORD).render_as_string(hide_password=False)
    return Context(tmp_path, url)


def python_m_schemad(
    command: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "schemad", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def leaked(*texts: str) -> list[str]:
    """The forms of the password found in ``texts``."""
    return sorted(form for form in SECRET_FORMS for text in texts if form in text)


@pytest.mark.parametrize(
    "context",
    [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()],
    indirect=True,
)
def test_termination_message(context: Context, request: pytest.FixtureRequest) -> None:
    """Each outcome leaves one line naming it, the states and the reason; no password."""
    case: Case = request.node.callspec.params["context"]
    message = context.tmp / "termination-log"
    env = clean_env(**case.setup(context), termination_message_path=str(message))
    workdir = context.tmp / "workdir"
    workdir.mkdir()
    with ExitStack() as stack:
        if case.hold_lock:
            holder = Database(make_url(context.url))
            stack.callback(holder.dispose)
            stack.enter_context(holder.lock(5.0))
        done = python_m_schemad(case.command, env, workdir)
    line = message.read_text(encoding="utf-8")
    expected = (case.exit_code, True, True, False, True, [])
    actual = (
        done.returncode,
        line.startswith(case.prefix),
        line.endswith(case.suffix),
        "\n" in line,
        len(line.encode("utf-8")) <= 4096,
        leaked(line, done.stdout, done.stderr),
    )
    assert expected == actual, f"{line!r}\n{done.stderr}"


@pytest.mark.parametrize(
    ("command", "exit_code", "line"),
    [
        ("status", 3, "upgrade: 3 revision(s) to apply to reach r0003; database at base "),
        ("plan", 0, "upgrade: 3 revision(s) to apply to reach r0003; database at base "),
        ("history", 0, "ok: 0 history row(s) in schemad_history"),
        ("drift", 0, "no_drift: the schema matches base"),
    ],
)
def test_every_one_shot_command_leaves_a_line(
    command: str, exit_code: int, line: str, sqlite_url: str, tmp_path: Path
) -> None:
    """status, plan, history and drift write their termination line too."""
    linear_project(tmp_path / "migrations", 3)
    message = tmp_path / "termination-log"
    env = clean_env(
        database_url=sqlite_url,
        script_location=str(tmp_path / "migrations"),
        termination_message_path=str(message),
    )
    done = python_m_schemad(command, env, tmp_path)
    assert (done.returncode, message.read_text()[: len(line)]) == (exit_code, line), done.stderr


def test_an_unwritable_path_is_a_warning_not_a_failure(sqlite_url: str, tmp_path: Path) -> None:
    """A termination path in a missing directory: exit 0 all the same, one warning."""
    linear_project(tmp_path / "migrations", 1)
    env = clean_env(
        database_url=sqlite_url,
        script_location=str(tmp_path / "migrations"),
        termination_message_path=str(tmp_path / "missing" / "termination-log"),
    )
    done = python_m_schemad("upgrade", env, tmp_path)
    [warning] = events(done.stderr, "termination_message_failed")
    assert (done.returncode, warning["level"], warning["error"]) == (
        0,
        "warning",
        "No such file or directory",
    )
