"""Lifecycle signals from real ``schemad`` processes: the termination message
each one-shot command leaves for Kubernetes, and the webhook events posted to
a receiver on loopback.

The database URL carries a password with ``!@:/%`` (URL-quoted); neither
its raw nor any quoted form may reach the termination message, the logs or
an event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator
from sqlalchemy.engine import make_url

from schemad.database import Database
from support.daemon import DaemonProcess, daemon_env
from support.databases import stamp
from support.processes import clean_env, events
from support.receiver import TOKEN, closed_port, event_schema, receiving
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
# Generous for a loaded 2-core machine; every wait returns as soon as it is met.
WAIT_SECONDS = 30.0


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
    # Each revision commits on its own (no bootstrap), so the database is left at r0003.
    settings = {**ctx.settings(), "bootstrap_in_one_transaction": "false"}
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


# -- webhooks from one-shot commands ------------------------------------------------------------


def validate(document: dict[str, object]) -> list[str]:
    validator = Draft202012Validator(
        event_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return [error.message for error in validator.iter_errors(document)]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    linear_project(path, 3)
    return path


@pytest.mark.postgres
def test_upgrade_posts_applied(postgres_url: str, project: Path, tmp_path: Path) -> None:
    """`upgrade` posts one applied event that fits the schema; the URL is never logged."""
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    with receiving() as receiver:
        env = clean_env(
            database_url=url,
            script_location=str(project),
            webhook_url=receiver.url,
            log_level="debug",
        )
        env.update(POD_NAME="app-schema-upgrade-x7k2p", POD_NAMESPACE="apps")
        done = python_m_schemad("upgrade", env, tmp_path)
        [request] = receiver.wait_for(1, WAIT_SECONDS)
    document = request.document
    expected = {
        "exit_code": 0,
        "event": "applied",
        "applied": ["r0001", "r0002", "r0003"],
        "identity_pod": "app-schema-upgrade-x7k2p",
        "schema_errors": [],
        "delivered_logged": 1,
        "url_in_logs": False,
        "password": [],
    }
    actual = {
        "exit_code": done.returncode,
        "event": document["event"],
        "applied": [step["revision"] for step in document["applied"]],
        "identity_pod": document["identity"]["pod"],
        "schema_errors": validate(document),
        "delivered_logged": len(events(done.stderr, "webhook_delivered")),
        "url_in_logs": TOKEN in done.stderr or receiver.url in done.stderr,
        "password": leaked(json.dumps(document), done.stderr),
    }
    assert expected == actual


def test_a_refusing_receiver_leaves_the_exit_code_alone(project: Path, tmp_path: Path) -> None:
    """A failing upgrade with a receiver that refuses: exit 70, webhook_failed, no URL."""
    write_revision(project, "r0004", "r0003", upgrade="raise RuntimeError('boom')")
    refused = f"http://127.0.0.1:{closed_port()}/services/T000/B000/{TOKEN}"
    env = clean_env(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        script_location=str(project),
        webhook_url=refused,
        webhook_timeout_seconds="1",
    )
    done = python_m_schemad("upgrade", env, tmp_path)
    failed = events(done.stderr, "webhook_failed")
    expected = (70, [("failed", 3)], False)
    actual = (
        done.returncode,
        [(e["webhook_event"], e["attempts"]) for e in failed],
        TOKEN in done.stderr,
    )
    assert expected == actual


def test_a_slow_receiver_holds_the_command_no_longer_than_the_bound(
    project: Path, tmp_path: Path
) -> None:
    """A receiver that would answer after 60 s: `upgrade` exits 0 within 1 s x 3 + 1.5 s."""
    message = tmp_path / "termination-log"
    with receiving(delay_seconds=60) as receiver:
        env = clean_env(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            script_location=str(project),
            webhook_url=receiver.url,
            webhook_timeout_seconds="1",
            termination_message_path=str(message),
        )
        started = time.monotonic()
        done = python_m_schemad("upgrade", env, tmp_path)
        took = time.monotonic() - started
    # 4.5 s of delivery bound plus a start-up that takes a few seconds on a busy machine.
    expected = (0, True, "applied: 3 revision(s), database at r0003 (target head)", 3)
    actual = (done.returncode, took < 30, message.read_text(), len(receiver.requests))
    assert expected == actual


def test_drift_command_posts_drift(project: Path, tmp_path: Path) -> None:
    """`schemad drift` on a database with an extra table posts drift with the difference."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    base = clean_env(database_url=url, script_location=str(project))
    assert python_m_schemad("upgrade", base, tmp_path).returncode == 0
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE extra (id INTEGER PRIMARY KEY)")
    engine.dispose()
    with receiving() as receiver:
        done = python_m_schemad("drift", {**base, "SCHEMAD_WEBHOOK_URL": receiver.url}, tmp_path)
        [request] = receiver.wait_for(1, WAIT_SECONDS)
    document = request.document
    expected = (4, "drift", "warning", ["extra_table extra: expected absent, found present"], [])
    actual = (
        done.returncode,
        document["event"],
        document["severity"],
        document["differences"],
        validate(document),
    )
    assert expected == actual


# -- the daemon ------------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def test_the_daemon_sends_a_failure_once_and_the_recovery_once(
    daemons: list[DaemonProcess], project: Path, tmp_path: Path
) -> None:
    """Passes failing on r0004 send failed once; the fixed file sends applied and recovered."""
    broken = write_revision(project, "r0004", "r0003", upgrade="raise RuntimeError('boom')")
    with receiving() as receiver:
        env = daemon_env(
            f"sqlite:///{tmp_path / 'app.db'}",
            project,
            webhook_url=receiver.url,
            webhook_events="applied,failed,recovered",
        )
        daemon = DaemonProcess(env).start()
        daemons.append(daemon)
        for _ in range(3):
            mark = daemon.mark()
            daemon.wait_for_event(
                "reconcile_finished", timeout=WAIT_SECONDS, after=mark, outcome="failed"
            )
        # Replaced in one rename: the daemon notices a changed directory, and
        # never sees it without r0004 (which would be a recovery of its own).
        fixed = tmp_path / "r0004.py"
        fixed.write_text(broken.read_text().replace("raise RuntimeError('boom')", "pass"))
        os.replace(fixed, broken)
        daemon.wait_for_event("reconcile_finished", timeout=WAIT_SECONDS, outcome="applied")
        mark = daemon.mark()
        daemon.wait_for_event(
            "reconcile_finished", timeout=WAIT_SECONDS, after=mark, outcome="in_sync"
        )
        receiver.wait_for(3, WAIT_SECONDS)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait_exit(timeout=WAIT_SECONDS)
        received = receiver.events()
        documents = [r.document for r in receiver.requests]
    expected = (0, ["failed", "applied", "recovered"], [[], [], []], False)
    actual = (
        code,
        received,
        [validate(document) for document in documents],
        TOKEN in daemon.output(),
    )
    assert expected == actual
