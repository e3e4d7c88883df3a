"""The installed command for the audit features: `schemad history`, tamper refusals,
`schemad drift`, and the daemon's scheduled drift check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.daemon import running_daemon
from support.databases import connection
from support.processes import clean_env, events, schemad
from support.scripts import make_project, tables_project, write_revision

pytestmark = pytest.mark.e2e
IDS = ["r0001", "r0002", "r0003"]
POD = "shop-migrate-5c2e"
IMAGE = "registry.example/shop-migrations:3.1.0"
TIMEOUT_SECONDS = 20.0


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Three revisions, each creating table t_<id> (its downgrade drops it)."""
    location = tmp_path / "migrations"
    assert tables_project(location, 3) == IDS
    return location


def _env(url: str, project: Path, **settings: str) -> dict[str, str]:
    env = clean_env(database_url=url, script_location=str(project), **settings)
    env.update(POD_NAME=POD, CONTAINER_IMAGE=IMAGE)
    return env


def _ok(*args: str, env: dict[str, str]) -> str:
    done = schemad(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _history(*args: str, env: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(_ok("history", "--json", *args, env=env))
    return rows


# -- schemad history ------------------------------------------------------------------


def test_history_lists_upgrades_and_downgrades_newest_first(db_url: str, project: Path) -> None:
    """`history` prints one line per applied or reverted revision, newest first, with who."""
    _ok("upgrade", env=_env(db_url, project))
    _ok("upgrade", env=_env(db_url, project, target_revision="r0002", allow_downgrade="true"))

    lines = _ok("history", env=_env(db_url, project)).splitlines()
    rows = _history(env=_env(db_url, project))

    assert [line.split()[1:4] for line in lines] == [
        ["downgrade", "applied", "r0003"],
        ["upgrade", "applied", "r0003"],
        ["upgrade", "applied", "r0002"],
        ["upgrade", "applied", "r0001"],
    ]
    assert all(line.endswith(f"{POD} {IMAGE}") for line in lines)
    assert [(r["revision"], r["direction"], r["outcome"]) for r in rows] == [
        ("r0003", "downgrade", "applied"),
        ("r0003", "upgrade", "applied"),
        ("r0002", "upgrade", "applied"),
        ("r0001", "upgrade", "applied"),
    ]
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    first = rows[-1]
    assert (first["pod_name"], first["image"], first["parents"]) == (POD, IMAGE, [])
    assert first["duration_seconds"] >= 0
    assert first["started_at"] <= first["finished_at"]
    assert len(first["checksum"]) == 64


def test_history_filters_by_revision_since_and_limit(sqlite_url: str, project: Path) -> None:
    """--revision, --since and --limit narrow the rows, still newest first; none left is said."""
    env = _env(sqlite_url, project)
    _ok("upgrade", env=env)
    middle = _history(env=env)[1]["finished_at"]

    assert [r["revision"] for r in _history("--revision", "r0002", env=env)] == ["r0002"]
    assert [r["revision"] for r in _history("--limit", "2", env=env)] == ["r0003", "r0002"]
    assert [r["revision"] for r in _history("--since", middle, env=env)] == ["r0003", "r0002"]
    assert _ok("history", "--since", "2999-01-01T00:00:00Z", env=env) == (
        "no history in schemad_history\n"
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--since", "yesterday", "expected an ISO 8601 time such as 2026-11-24T09:00:00Z"),
        ("--limit", "0", "expected a whole number of at least 1"),
    ],
)
def test_history_bad_filter_is_a_usage_error(
    sqlite_url: str, project: Path, option: str, value: str, message: str
) -> None:
    """A --since that is not a time, or a --limit below 1, exits 2 with a clear message."""
    done = schemad("history", option, value, env=_env(sqlite_url, project))

    assert done.returncode == 2
    assert f"argument {option}: {message}, got '{value}'" in done.stderr


def test_history_turned_off_is_a_config_error(sqlite_url: str, project: Path) -> None:
    """With the history off, `history` exits 78 and names the setting."""
    done = schemad("history", env=_env(sqlite_url, project, history_enabled="false"))

    assert done.returncode == 78
    assert "SCHEMAD_HISTORY_ENABLED" in done.stderr


# -- tampering through the command ------------------------------------------------------


def _tamper(project: Path) -> None:
    path = project / "versions" / "r0001.py"
    path.write_text(path.read_text().replace('create_table("t_r0001"', 'create_table("t_edited"'))


def test_upgrade_refuses_a_tampered_history_in_block_mode(sqlite_url: str, tmp_path: Path) -> None:
    """`upgrade` with SCHEMAD_ON_TAMPER=block exits 65, reason tampered; status --json shows it."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    _ok("upgrade", env=_env(sqlite_url, project))
    _tamper(project)
    write_revision(project, "r0003", "r0002")
    env = _env(sqlite_url, project, on_tamper="block")

    done = schemad("upgrade", env=env)
    status = schemad("status", "--json", env=env)

    assert done.returncode == 65, done.stderr
    [finished] = events(done.stderr, "reconcile_finished")
    assert (finished["outcome"], finished["reason"]) == ("refused", "tampered")
    warnings = {
        (e["revision"], e["blocks_upgrades"]) for e in events(done.stderr, "revision_tampered")
    }
    assert warnings == {("r0001", True)}
    assert [t["revision"] for t in json.loads(status.stdout)["tampered"]] == ["r0001"]


# -- schemad drift --------------------------------------------------------------------

ITEMS = 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))\n'


@pytest.fixture
def items_project(tmp_path: Path) -> Path:
    """One revision creating table items."""
    location = make_project(tmp_path / "items")
    write_revision(location, "r0001", None, upgrade=ITEMS)
    return location


def _add_column_by_hand(url: str) -> None:
    with connection(url) as conn:
        conn.exec_driver_sql("ALTER TABLE items ADD COLUMN note VARCHAR(20)")
        conn.commit()


def test_drift_command_exit_codes(sqlite_url: str, items_project: Path) -> None:
    """`drift` exits 0 on an untouched database and 4 once a column was added by hand."""
    env = _env(sqlite_url, items_project)
    _ok("upgrade", env=env)

    clean = schemad("drift", env=env)
    _add_column_by_hand(sqlite_url)
    drifted = schemad("drift", "--json", env=env)

    assert (clean.returncode, clean.stdout) == (0, "no drift: the schema matches r0001\n")
    assert drifted.returncode == 4, drifted.stderr
    assert [(d["kind"], d["object"]) for d in json.loads(drifted.stdout)["differences"]] == [
        ("extra_column", "items.note")
    ]


def test_daemon_reports_drift_in_metrics_and_status(sqlite_url: str, items_project: Path) -> None:
    """With SCHEMAD_DRIFT_INTERVAL_SECONDS set, schemad_drift_objects goes 0 -> 1 after a
    hand-made change, and /status carries the drift report."""
    env = _env(
        sqlite_url,
        items_project,
        drift_interval_seconds="1",
        http_host="127.0.0.1",
        http_port="0",
        log_format="json",
        interval_seconds="1",
    )
    with running_daemon(env) as daemon:
        daemon.wait_for_event("drift_checked", timeout=TIMEOUT_SECONDS, drifted_objects=0)
        assert daemon.metric("schemad_drift_objects") == 0.0
        assert (daemon.metric("schemad_drift_last_check_timestamp_seconds") or 0) > 0
        assert daemon.status()["drift"]["drifted"] is False

        _add_column_by_hand(sqlite_url)

        daemon.wait_until(
            lambda: daemon.metric("schemad_drift_objects") == 1.0,
            timeout=TIMEOUT_SECONDS,
            message="schemad_drift_objects == 1",
        )
        drift = daemon.status()["drift"]

    assert (drift["drifted"], drift["revisions"]) == (True, ["r0001"])
    assert [(d["kind"], d["object"]) for d in drift["differences"]] == [
        ("extra_column", "items.note")
    ]
    assert drift["checked_at"]
