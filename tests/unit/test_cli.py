"""The ``schemad`` command's exit codes and documents, in process, on SQLite."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from schemad import cli, logs
from schemad.database import Database
from support.scripts import linear_project, write_revision

PASSWORD = "S3cr3t-Pa55"
REAL_CONFIGURE = logs.configure
EXIT_CODES = ("0", "1", "2", "3", "65", "66", "69", "70", "75", "78")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SCHEMAD_* from outside, and no global logging set-up left behind."""
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)
    # main() configures structlog and the root logger for a process; in a
    # test that would replace capture_logs()' processors and pytest's handlers.
    monkeypatch.setattr(logs, "configure", lambda *_args, **_kwargs: None)
    yield
    structlog.reset_defaults()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A linear history r0001 -> r0002 -> r0003."""
    path = tmp_path / "migrations"
    linear_project(path, 3)
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, project: Path, db_path: Path) -> Callable[..., None]:
    """Point schemad at the project and the SQLite file; extra settings as keywords."""

    def apply(**settings: str) -> None:
        monkeypatch.setenv("SCHEMAD_DATABASE_URL", f"sqlite:///{db_path}")
        monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
        for key, value in settings.items():
            monkeypatch.setenv(f"SCHEMAD_{key.upper()}", value)

    return apply


def run(*argv: str) -> tuple[int, str]:
    """Run ``schemad argv...``; return the exit code and what it printed."""
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


def stamp(db_path: Path, *revisions: str) -> None:
    """Write a version table holding ``revisions``, as another image would have."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.executemany("INSERT INTO alembic_version VALUES (?)", [(r,) for r in revisions])
    conn.close()


def version_rows(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as conn:
        rows = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    conn.close()
    return rows


def finished(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The one reconcile_finished event of a pass."""
    (event,) = [entry for entry in entries if entry["event"] == "reconcile_finished"]
    return event


def test_upgrade_applies_everything_and_exits_0(
    configure: Callable[..., None], db_path: Path
) -> None:
    """`upgrade` on an empty database applies every revision and exits 0."""
    configure()
    assert (run("upgrade")[0], version_rows(db_path)) == (0, ["r0003"])


def test_upgrade_logs_each_applied_revision(configure: Callable[..., None]) -> None:
    """`upgrade` logs migration_applied once per revision, oldest first."""
    configure()
    with capture_logs() as entries:
        run("upgrade")
    applied = [e["revision"] for e in entries if e["event"] == "migration_applied"]
    assert applied == ["r0001", "r0002", "r0003"]


def test_upgrade_logs_lock_acquired(configure: Callable[..., None]) -> None:
    """`upgrade` with work to do logs lock_acquired before applying."""
    configure()
    with capture_logs() as entries:
        run("upgrade")
    events = [e["event"] for e in entries]
    assert events.index("lock_acquired") < events.index("migration_applied")


def test_upgrade_logs_reconcile_finished_applied(configure: Callable[..., None]) -> None:
    """`upgrade` ends with one reconcile_finished event, outcome applied."""
    configure()
    with capture_logs() as entries:
        run("upgrade")
    event = finished(entries)
    assert (
        event["outcome"],
        event["steps_applied"],
        event["from_revision"],
        event["to_revision"],
    ) == ("applied", 3, None, "r0003")


def test_upgrade_in_sync_exits_0_without_the_lock(configure: Callable[..., None]) -> None:
    """A second `upgrade` finds nothing to do, exits 0 and does not take the lock."""
    configure()
    run("upgrade")
    with capture_logs() as entries:
        code, _ = run("upgrade")
    events = [e["event"] for e in entries]
    assert (
        code,
        finished(entries)["outcome"],
        "lock_acquired" in events,
    ) == (0, "in_sync", False)


def test_status_in_sync_exits_0(configure: Callable[..., None]) -> None:
    """`status` at the target exits 0 and says in_sync."""
    configure()
    run("upgrade")
    code, output = run("status")
    assert (code, "state:    in_sync" in output) == (0, True)


def test_status_behind_exits_3(configure: Callable[..., None]) -> None:
    """`status` behind the target exits 3 and lists the pending revisions."""
    configure()
    code, output = run("status")
    assert (code, "pending:\n  r0001  revision r0001\n" in output) == (3, True)


def test_status_changes_nothing(configure: Callable[..., None], db_path: Path) -> None:
    """`status` on a database behind the target applies nothing."""
    configure(target_revision="r0001")
    run("upgrade")
    configure()
    run("status")
    assert version_rows(db_path) == ["r0001"]


def test_status_json_document(configure: Callable[..., None]) -> None:
    """`status --json` prints the documented fields of the JSON object."""
    configure(target_revision="r0001")
    run("upgrade")
    configure(target_revision="head")
    code, output = run("status", "--json")
    document = json.loads(output)
    expected = {
        "current": ["r0001"],
        "target": {"spec": "head", "revisions": ["r0003"]},
        "state": "upgrade",
        "in_sync": False,
        "pending": [
            {"revision": "r0002", "message": "revision r0002"},
            {"revision": "r0003", "message": "revision r0003"},
        ],
        "reason": None,
        "message": "2 revision(s) to apply to reach r0003",
        "lock": {"held": False, "holder": None, "held_seconds": None},
    }
    assert (code, {key: document.get(key) for key in expected}) == (3, expected)


def test_status_json_names_the_database_without_password(
    monkeypatch: pytest.MonkeyPatch, project: Path
) -> None:
    """`status --json` shows the database URL with its password masked."""
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/x")
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    monkeypatch.setenv("SCHEMAD_CONNECT_TIMEOUT_SECONDS", "1")
    with capture_logs() as entries:
        code, output = run("status", "--json")
    assert (code, output, PASSWORD in repr(entries)) == (69, "", False)


def test_status_json_refused_exits_65(configure: Callable[..., None], db_path: Path) -> None:
    """`status --json` for a database at an unknown revision says why and exits 65."""
    configure()
    stamp(db_path, "feedface")
    code, output = run("status", "--json")
    document = json.loads(output)
    assert (code, document["state"], document["reason"]) == (65, "refused", "unknown_revision")


def test_plan_json_document(configure: Callable[..., None]) -> None:
    """`plan --json` prints the documented plan object and changes nothing."""
    configure()
    code, output = run("plan", "--json")
    expected = {
        "kind": "upgrade",
        "current": [],
        "target": ["r0003"],
        "steps": [
            {"revision": "r0001", "message": "revision r0001"},
            {"revision": "r0002", "message": "revision r0002"},
            {"revision": "r0003", "message": "revision r0003"},
        ],
        "reason": None,
        "message": "3 revision(s) to apply to reach r0003",
        "schema_ready": False,
    }
    assert (code, json.loads(output)) == (0, expected)


def test_plan_human_lists_the_steps(configure: Callable[..., None]) -> None:
    """`plan` prints the kind, the message and one line per step."""
    configure()
    code, output = run("plan")
    assert (code, output.startswith("upgrade: 3 revision(s) to apply")) == (0, True)


def test_plan_changes_nothing(configure: Callable[..., None], db_path: Path) -> None:
    """`plan` does not create the version table or apply anything."""
    configure()
    run("plan")
    with sqlite3.connect(db_path) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    assert tables == []


def test_plan_refused_exits_65(configure: Callable[..., None], db_path: Path) -> None:
    """`plan` for a database at an unknown revision exits 65."""
    configure()
    stamp(db_path, "feedface")
    code, output = run("plan")
    assert (code, output.startswith("refused: database is at revision feedface")) == (65, True)


def test_plan_sql_prints_the_ddl(
    configure: Callable[..., None], project: Path, tmp_path: Path
) -> None:
    """`plan --sql` prints the offline SQL, with the revisions' CREATE TABLE."""
    write_revision(
        project,
        "r0004",
        "r0003",
        upgrade='op.create_table("users", sa.Column("id", sa.Integer, primary_key=True))',
    )
    configure()
    code, output = run("plan", "--sql")
    assert (
        code,
        "CREATE TABLE users" in output,
        "UPDATE alembic_version SET version_num='r0004'" in output,
    ) == (0, True, True)


def test_plan_sql_refused_exits_65(configure: Callable[..., None], db_path: Path) -> None:
    """`plan --sql` refuses a database at an unknown revision with exit 65."""
    configure()
    stamp(db_path, "feedface")
    assert run("plan", "--sql")[0] == 65


def test_unknown_revision_in_database_exits_65(
    configure: Callable[..., None], db_path: Path
) -> None:
    """`upgrade` on a database stamped with an unknown revision is refused with 65."""
    configure()
    stamp(db_path, "feedface")
    with capture_logs() as entries:
        code, _ = run("upgrade")
    event = finished(entries)
    assert (code, event["outcome"], event["reason"]) == (65, "refused", "unknown_revision")


def test_unknown_revision_ignored_exits_0(configure: Callable[..., None], db_path: Path) -> None:
    """With SCHEMAD_ON_UNKNOWN_REVISION=ignore the unknown revision is left alone: exit 0."""
    configure(on_unknown_revision="ignore")
    stamp(db_path, "feedface")
    with capture_logs() as entries:
        code, _ = run("upgrade")
    assert (code, finished(entries)["outcome"], version_rows(db_path)) == (0, "ahead", ["feedface"])


def test_unknown_target_exits_65(configure: Callable[..., None]) -> None:
    """A target the scripts lack is refused with 65."""
    configure(target_revision="nosuchrev")
    with capture_logs() as entries:
        code, _ = run("upgrade")
    assert (code, finished(entries)["reason"]) == (65, "unknown_target")


def test_downgrade_not_allowed_exits_65(configure: Callable[..., None], db_path: Path) -> None:
    """A database past a pinned target is refused with 65 and left as it is."""
    configure()
    run("upgrade")
    configure(target_revision="r0001")
    assert (run("upgrade")[0], version_rows(db_path)) == (65, ["r0003"])


def test_downgrade_allowed_exits_0(configure: Callable[..., None], db_path: Path) -> None:
    """With downgrades allowed, `upgrade` reverts to a pinned target and exits 0."""
    configure()
    run("upgrade")
    configure(target_revision="r0001", allow_downgrade="true")
    assert (run("upgrade")[0], version_rows(db_path)) == (0, ["r0001"])


def test_missing_migrations_directory_exits_66(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    """A migrations directory that does not exist exits 66, naming it."""
    configure(script_location=str(tmp_path / "nowhere"))
    with capture_logs() as entries:
        code, _ = run("upgrade")
    event = finished(entries)
    assert (
        code,
        event["outcome"],
        f"migrations directory {tmp_path / 'nowhere'} does not exist" in event["error"],
    ) == (66, "script_error", True)


def test_missing_migrations_directory_for_status_exits_66(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    """`status` with a missing migrations directory exits 66 through command_failed."""
    configure(script_location=str(tmp_path / "nowhere"))
    with capture_logs() as entries:
        code, _ = run("status")
    failed = [e for e in entries if e["event"] == "command_failed"]
    assert (code, len(failed), failed[0]["exit_code"]) == (66, 1, 66)


def test_unreachable_sqlite_path_exits_69(
    monkeypatch: pytest.MonkeyPatch, project: Path, tmp_path: Path
) -> None:
    """A SQLite file in a directory that does not exist exits 69."""
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", f"sqlite:///{tmp_path / 'missing' / 'app.db'}")
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    with capture_logs() as entries:
        code, _ = run("upgrade")
    assert (code, finished(entries)["outcome"]) == (69, "unavailable")


def test_unreachable_server_exits_69(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    """A PostgreSQL server on a closed port exits 69, password masked in the error."""
    monkeypatch.setenv(
        "SCHEMAD_DATABASE_URL", f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app"
    )
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    monkeypatch.setenv("SCHEMAD_CONNECT_TIMEOUT_SECONDS", "1")
    with capture_logs() as entries:
        code, _ = run("upgrade")
    error = finished(entries)["error"]
    assert (
        code,
        "cannot connect to postgresql+psycopg://app:***@127.0.0.1:1/app" in error,
        PASSWORD in error,
    ) == (69, True, False)


def test_failing_revision_exits_70(
    configure: Callable[..., None], project: Path, db_path: Path
) -> None:
    """A revision whose upgrade raises exits 70; earlier revisions stay applied (each
    commits on its own when the empty database is not created in one transaction)."""
    write_revision(project, "r0004", "r0003", upgrade='raise RuntimeError("boom")')
    configure(bootstrap_in_one_transaction="false")
    with capture_logs() as entries:
        code, _ = run("upgrade")
    event = finished(entries)
    assert (code, event["outcome"], version_rows(db_path)) == (70, "failed", ["r0003"])


def test_failing_revision_is_named(configure: Callable[..., None], project: Path) -> None:
    """The failure names the revision, its message and the exception."""
    write_revision(
        project, "r0004", "r0003", message="Add index", upgrade='raise RuntimeError("boom")'
    )
    configure()
    with capture_logs() as entries:
        run("upgrade")
    assert finished(entries)["error"].startswith(
        "revision r0004 (Add index) failed: RuntimeError: boom;"
    )


def test_lock_timeout_exits_75(configure: Callable[..., None], db_path: Path) -> None:
    """`upgrade` exits 75 when another holder keeps the lock past the bound."""
    configure(lock_wait_seconds="0.05")
    holder = Database(make_url(f"sqlite:///{db_path}"))
    try:
        with holder.lock(1.0), capture_logs() as entries:
            code, _ = run("upgrade")
    finally:
        holder.dispose()
    event = finished(entries)
    assert (
        code,
        event["outcome"],
        "the migration lock is still held by schemad:" in event["error"],
    ) == (75, "lock_timeout", True)


def test_lock_timeout_applies_nothing(configure: Callable[..., None], db_path: Path) -> None:
    """A pass that times out on the lock leaves the database untouched."""
    configure(lock_wait_seconds="0.05")
    holder = Database(make_url(f"sqlite:///{db_path}"))
    try:
        with holder.lock(1.0):
            run("upgrade")
    finally:
        holder.dispose()
    with sqlite3.connect(db_path) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    assert tables == []


def test_status_reports_the_lock_holder(configure: Callable[..., None], db_path: Path) -> None:
    """`status --json` says the lock is held, and by whom."""
    configure()
    holder = Database(make_url(f"sqlite:///{db_path}"))
    try:
        with holder.lock(1.0):
            _, output = run("status", "--json")
    finally:
        holder.dispose()
    lock = json.loads(output)["lock"]
    assert (lock["held"], lock["holder"].startswith("schemad:")) == (True, True)


def test_wait_at_target_exits_0(configure: Callable[..., None]) -> None:
    """`wait` on a database at the target returns 0 at once."""
    configure()
    run("upgrade")
    with capture_logs() as entries:
        code, _ = run("wait")
    assert (
        code,
        [e["event"] for e in entries if e["event"].startswith("schema_")],
    ) == (0, ["schema_ready"])


def test_wait_past_target_exits_0(configure: Callable[..., None]) -> None:
    """`wait` on a database past a pinned target is satisfied (the app can run)."""
    configure()
    run("upgrade")
    configure(target_revision="r0001")
    assert run("wait")[0] == 0


def test_wait_timeout_exits_75(configure: Callable[..., None]) -> None:
    """`wait` on a database that stays behind exits 75 with the last state seen."""
    configure(wait_timeout_seconds="0.2", wait_interval_seconds="0.1")
    with capture_logs() as entries:
        code, _ = run("wait")
    (failed,) = [e for e in entries if e["event"] == "command_failed"]
    assert (
        code,
        "last seen: 3 revision(s) to apply to reach r0003" in failed["error"],
    ) == (75, True)


def test_wait_with_unknown_target_exits_65(configure: Callable[..., None]) -> None:
    """`wait` for a target that cannot be resolved fails at once with 65."""
    configure(target_revision="nosuchrev")
    assert run("wait")[0] == 65


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SCHEMAD_LOCK_WAIT_SECONDS", "soon"),
        ("SCHEMAD_LOG_LEVEL", "loud"),
        ("SCHEMAD_TARGET_REVISION", "-1"),
        ("SCHEMAD_ALLOW_DOWNGRADE", "maybe"),
    ],
)
def test_bad_setting_exits_78(
    configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad setting exits 78 with one config_invalid event naming the variable."""
    configure()
    monkeypatch.setenv(variable, value)
    with capture_logs() as entries:
        code, _ = run("upgrade")
    (event,) = [e for e in entries if e["event"] == "config_invalid"]
    assert (code, variable in event["error"]) == (78, True)


def test_missing_url_exits_78(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    """No SCHEMAD_DATABASE_URL at all exits 78."""
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    with capture_logs() as entries:
        code, _ = run("status")
    assert (code, "SCHEMAD_DATABASE_URL is not set" in repr(entries)) == (78, True)


def test_bad_config_touches_nothing(configure: Callable[..., None], db_path: Path) -> None:
    """A bad setting stops the command before the database file is created."""
    configure(lock_wait_seconds="-1")
    run("upgrade")
    assert False is db_path.exists()


def test_unsupported_driver_exits_78(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    """A URL naming a driver that is not installed exits 78."""
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", f"postgresql+nosuchdriver://a:{PASSWORD}@h/db")
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    with capture_logs() as entries:
        code, _ = run("upgrade")
    assert (code, PASSWORD in repr(entries)) == (78, False)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["upgrade", "--force"], id="unknown-option"),
        pytest.param(["plan", "--json", "--sql"], id="exclusive-options"),
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad usage exits 2 with argparse's usage line on stderr."""
    code, _ = run(*argv)
    assert (code, "usage: schemad" in capsys.readouterr().err) == (2, True)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` exits 0."""
    assert run("--help")[0] == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv", [["--help"], ["upgrade", "--help"], ["status", "--help"]])
def test_help_lists_every_exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` documents every exit code schemad uses."""
    run(*argv)
    text = capsys.readouterr().out
    listed = [code for code in EXIT_CODES if f"\n  {code} " in text]
    assert list(EXIT_CODES) == listed


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` lists every subcommand."""
    run("--help")
    text = capsys.readouterr().out
    assert [c for c in ("upgrade", "status", "plan", "wait", "run") if c not in text] == []


def test_unknown_variable_is_warned_about(
    configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt SCHEMAD_ variable is logged as setting_unknown with a suggestion."""
    configure()
    monkeypatch.setenv("SCHEMAD_TARGET_REVISON", "r0001")
    with capture_logs() as entries:
        run("upgrade")
    (warning,) = [e for e in entries if e["event"] == "setting_unknown"]
    assert "did you mean SCHEMAD_TARGET_REVISION?" in warning["detail"]


def test_rendered_logs_never_contain_the_password(
    monkeypatch: pytest.MonkeyPatch, project: Path, real_logging: io.StringIO
) -> None:
    """Rendered JSON log lines of a failed connection mask the password."""
    monkeypatch.setenv(
        "SCHEMAD_DATABASE_URL", f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app"
    )
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    monkeypatch.setenv("SCHEMAD_LOG_FORMAT", "json")
    code, output = run("upgrade")
    lines = [json.loads(line) for line in real_logging.getvalue().splitlines()]
    assert (
        code,
        lines[-1]["event"],
        PASSWORD in real_logging.getvalue() + output,
    ) == (69, "reconcile_finished", False)


@pytest.fixture
def real_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """schemad's own log set-up, rendering into a buffer; undone afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("sqlalchemy.engine").level)

    def configure(*args: Any, **kwargs: Any) -> None:
        REAL_CONFIGURE(*args, **{**kwargs, "stream": stream})

    monkeypatch.setattr(logs, "configure", configure)
    yield stream
    root.handlers = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("sqlalchemy.engine").setLevel(saved[2])


def test_health_leaves_no_termination_message(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    """`health` is a probe, not a command with an outcome: it writes no termination line."""
    message = tmp_path / "termination-log"
    configure(termination_message_path=str(message), http_port="1")
    assert (run("health")[0], message.exists()) == (1, False)


def test_a_crash_is_exit_1_with_its_cause_in_the_termination_message(
    configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bug ends the command with exit 1, an internal_error log line and a termination line."""
    message = tmp_path / "termination-log"
    configure(termination_message_path=str(message))

    def broken(_app: cli.App, _args: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "upgrade", broken)
    with capture_logs() as entries:
        code, _ = run("upgrade")
    events = [e["event"] for e in entries]
    assert (code, "internal_error" in events) == (1, True)
    assert message.read_text().startswith("internal_error: RuntimeError: a bug")


def test_upgrade_leaves_its_outcome_in_the_termination_message(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    """In process too, `upgrade` writes its one line where the setting says."""
    message = tmp_path / "termination-log"
    configure(termination_message_path=str(message))
    run("upgrade")
    assert message.read_text() == "applied: 3 revision(s), database at r0003 (target head)"
