"""The installed ``schemad`` command as a process: exit codes, output, logs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from support.databases import stamp, table_names, version_rows
from support.processes import SCHEMAD, LineReader, clean_env, events, json_lines, schemad
from support.scripts import tables_project

pytestmark = pytest.mark.e2e
IDS = ["r0001", "r0002", "r0003"]
PASSWORD = "Sup3rS3cretPw"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Three revisions, each creating table t_<id>."""
    location = tmp_path / "migrations"
    assert tables_project(location, 3) == IDS
    return location


@pytest.fixture
def env(sqlite_url: str, project: Path) -> dict[str, str]:
    """The environment of a schemad process pointed at an empty SQLite database."""
    return clean_env(database_url=sqlite_url, script_location=str(project))


def test_upgrade_applies_and_logs_each_revision(env: dict[str, str], sqlite_url: str) -> None:
    """`upgrade` exits 0 at head and logs migration_applied with id, message and duration."""
    done = schemad("upgrade", env=env)

    assert done.returncode == 0, done.stderr
    applied = events(done.stderr, "migration_applied")
    assert [(e["revision"], e["message"], e["direction"]) for e in applied] == [
        (rev, f"revision {rev}", "upgrade") for rev in IDS
    ]
    assert all(isinstance(e["duration_seconds"], float) for e in applied)
    [finished] = events(done.stderr, "reconcile_finished")
    assert (finished["outcome"], finished["steps_applied"], finished["to_revision"]) == (
        "applied",
        3,
        "r0003",
    )
    assert version_rows(sqlite_url) == ["r0003"]
    assert {"t_r0001", "t_r0002", "t_r0003"} <= table_names(sqlite_url)


def test_logs_are_json_lines_when_not_on_a_terminal(env: dict[str, str]) -> None:
    """Every stderr line, Alembic's own included, is one JSON object with an event."""
    done = schemad("upgrade", env=env)

    lines = json_lines(done.stderr)
    assert all("event" in line and "level" in line for line in lines)
    assert any(line.get("logger", "").startswith("alembic") for line in lines)


def test_second_upgrade_is_a_no_op(env: dict[str, str]) -> None:
    """`upgrade` on a database at head applies nothing and exits 0."""
    schemad("upgrade", env=env)

    done = schemad("upgrade", env=env)

    assert (done.returncode, events(done.stderr, "migration_applied")) == (0, [])
    [finished] = events(done.stderr, "reconcile_finished")
    assert finished["outcome"] == "in_sync"


def test_status_exit_code_when_behind(env: dict[str, str]) -> None:
    """`status` exits 3 and lists the pending revisions when the database is behind."""
    done = schemad("status", env=env)

    assert done.returncode == 3, done.stderr
    assert "pending:" in done.stdout
    assert all(rev in done.stdout for rev in IDS)


def test_status_json_when_behind(env: dict[str, str]) -> None:
    """`status --json` exits 3 with the pending revisions in order."""
    done = schemad("status", "--json", env=env)

    document = json.loads(done.stdout)
    assert (done.returncode, document["state"], document["in_sync"]) == (3, "upgrade", False)
    assert [p["revision"] for p in document["pending"]] == IDS
    assert document["lock"] == {"held": False, "holder": None, "held_seconds": None}


def test_status_exit_code_when_in_sync(env: dict[str, str]) -> None:
    """`status` and `status --json` exit 0 once the database is at the target."""
    schemad("upgrade", env=env)

    human = schemad("status", env=env)
    machine = schemad("status", "--json", env=env)

    document = json.loads(machine.stdout)
    assert (human.returncode, machine.returncode) == (0, 0)
    assert (document["current"], document["in_sync"], document["pending"]) == (
        ["r0003"],
        True,
        [],
    )
    assert "r0003 (revision r0003)" in human.stdout


def test_status_exit_code_when_refused(env: dict[str, str], sqlite_url: str) -> None:
    """`status` exits 65 when the database is at a revision the scripts lack."""
    stamp(sqlite_url, "f00dfeed0001")

    human = schemad("status", env=env)
    machine = schemad("status", "--json", env=env)

    document = json.loads(machine.stdout)
    assert (human.returncode, machine.returncode) == (65, 65)
    assert (document["state"], document["reason"]) == ("refused", "unknown_revision")
    assert "f00dfeed0001" in human.stdout


def test_upgrade_refused_exits_65(env: dict[str, str], sqlite_url: str) -> None:
    """`upgrade` against an unknown revision exits 65 and changes nothing."""
    stamp(sqlite_url, "f00dfeed0001")

    done = schemad("upgrade", env=env)

    assert done.returncode == 65
    [finished] = events(done.stderr, "reconcile_finished")
    assert (finished["outcome"], finished["reason"]) == ("refused", "unknown_revision")
    assert version_rows(sqlite_url) == ["f00dfeed0001"]


def test_plan_lists_the_steps_and_changes_nothing(env: dict[str, str], sqlite_url: str) -> None:
    """`plan` prints the revisions upgrade would apply, exits 0 and leaves the database empty."""
    done = schemad("plan", env=env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "upgrade: 3 revision(s) to apply to reach r0003",
        *(f"  -> {rev}  revision {rev}" for rev in IDS),
    ]
    assert table_names(sqlite_url) == set()


def test_plan_sql_prints_offline_sql(env: dict[str, str], sqlite_url: str) -> None:
    """`plan --sql` prints the DDL and version-table updates, touching nothing."""
    done = schemad("plan", "--sql", env=env)

    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE alembic_version" in done.stdout
    assert all(f"CREATE TABLE t_{rev}" in done.stdout for rev in IDS)
    assert "UPDATE alembic_version SET version_num='r0003'" in done.stdout
    assert version_rows(sqlite_url) == []


def test_plan_refused_exits_65(env: dict[str, str], sqlite_url: str) -> None:
    """`plan` and `plan --sql` exit 65 when the plan is refused."""
    stamp(sqlite_url, "f00dfeed0001")

    assert [schemad("plan", env=env).returncode, schemad("plan", "--sql", env=env).returncode] == [
        65,
        65,
    ]


def test_wait_returns_once_another_process_has_migrated(env: dict[str, str]) -> None:
    """`wait` keeps polling while the database is behind, and exits 0 once it is at head."""
    waiting = {**env, "SCHEMAD_WAIT_INTERVAL_SECONDS": "0.2", "SCHEMAD_WAIT_TIMEOUT_SECONDS": "60"}
    with subprocess.Popen(
        [str(SCHEMAD), "wait"],
        env=waiting,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiter:
        try:
            reader = LineReader(waiter.stderr)  # type: ignore[arg-type]
            reader.wait_for('"schema_pending"', timeout=30)
            assert waiter.poll() is None

            upgraded = schemad("upgrade", env=env)
            code = waiter.wait(timeout=30)
        finally:
            if waiter.poll() is None:
                waiter.kill()
        log = reader.rest()

    assert (upgraded.returncode, code) == (0, 0)
    [ready] = events(log, "schema_ready")
    assert ready["current"] == ["r0003"]


def test_wait_times_out_with_the_last_state(env: dict[str, str]) -> None:
    """`wait` exits 75 when the target is not reached in time, saying what it last saw."""
    waiting = {**env, "SCHEMAD_WAIT_INTERVAL_SECONDS": "0.2", "SCHEMAD_WAIT_TIMEOUT_SECONDS": "1"}

    done = schemad("wait", env=waiting)

    assert done.returncode == 75
    [failed] = events(done.stderr, "command_failed")
    assert "SCHEMAD_WAIT_TIMEOUT_SECONDS" in failed["error"]
    assert "last seen: 3 revision(s) to apply to reach r0003" in failed["error"]


def test_wait_on_database_at_head_returns_at_once(env: dict[str, str]) -> None:
    """`wait` exits 0 straight away when the schema is already at the target."""
    schemad("upgrade", env=env)

    done = schemad("wait", env={**env, "SCHEMAD_WAIT_TIMEOUT_SECONDS": "1"})

    assert done.returncode == 0
    assert events(done.stderr, "schema_pending") == []


def test_help_documents_every_exit_code() -> None:
    """`schemad --help` lists every exit code the command can return."""
    done = schemad("--help", env=clean_env())

    assert done.returncode == 0
    documented = {
        line.split()[0] for line in done.stdout.splitlines() if line[:4].strip().isdigit()
    }
    assert {"0", "1", "2", "3", "65", "66", "69", "70", "75", "78"} <= documented


@pytest.mark.postgres
def test_password_never_printed(postgres_url: str, project: Path) -> None:
    """No subcommand prints the URL's password, on stdout or in its logs."""
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    env = clean_env(database_url=url, script_location=str(project), wait_timeout_seconds="1")

    runs = [
        schemad("plan", env=env),
        schemad("plan", "--sql", env=env),
        schemad("status", env=env),
        schemad("status", "--json", env=env),
        schemad("wait", env={**env, "SCHEMAD_WAIT_INTERVAL_SECONDS": "0.3"}),
        schemad("upgrade", env=env),
        schemad("status", env=env),
        schemad("status", "--json", env=env),
        schemad("wait", env=env),
        schemad("upgrade", env={**env, "SCHEMAD_LOG_LEVEL": "debug"}),
    ]

    assert [done.returncode for done in runs] == [0, 0, 3, 3, 75, 0, 0, 0, 0, 0]
    assert [PASSWORD in done.stdout + done.stderr for done in runs] == [False] * len(runs)
    assert "postgres:***@" in runs[2].stdout


@pytest.mark.postgres
def test_password_never_printed_when_unreachable(postgres_url: str, project: Path) -> None:
    """A connection failure exits 69 and masks the password in its message."""
    url = (
        make_url(postgres_url).set(password=PASSWORD, port=1).render_as_string(hide_password=False)
    )
    env = clean_env(database_url=url, script_location=str(project))

    runs = [schemad(command, env=env) for command in ("upgrade", "status", "plan")]

    assert [done.returncode for done in runs] == [69, 69, 69]
    assert [PASSWORD in done.stdout + done.stderr for done in runs] == [False] * 3
    assert all(":***@" in done.stderr for done in runs)
