"""A revision cut off half-way on MariaDB (no transactional DDL) is never
silently re-run: the next pass refuses until a human says how to recover."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import pytest

from schemad.cli import App, cmd_plan, cmd_status, exit_code
from schemad.history import Entry
from schemad.model import Direction, HistoryOutcome, Outcome, RefusalReason
from schemad.settings import load_settings
from support.scripts import linear_project

pytestmark = pytest.mark.mariadb


def _app(monkeypatch: pytest.MonkeyPatch, url: str, project: Path, **env: str) -> App:
    for key in [k for k in os.environ if k.startswith("SCHEMAD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", url)
    monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
    for key, value in env.items():
        monkeypatch.setenv(f"SCHEMAD_{key.upper()}", value)
    return App.build(load_settings(), io.StringIO())


def _interrupt(app: App, revision: str) -> None:
    """Leave a "started" history row, as a SIGKILL mid-revision does."""
    assert app.reconciler.history is not None
    app.reconciler.history.start(
        Entry(revision, Direction.UPGRADE, HistoryOutcome.STARTED, parents=("r0001",))
    )


def test_interrupted_revision_is_refused(
    monkeypatch: pytest.MonkeyPatch, mariadb_url: str, tmp_path: Path
) -> None:
    """The next pass refuses with reason interrupted_revision and exit 65."""
    project = tmp_path / "migrations"
    linear_project(project, 3)
    app = _app(monkeypatch, mariadb_url, project, target_revision="r0001")
    assert app.reconciler.reconcile_once().outcome is Outcome.APPLIED
    _interrupt(app, "r0002")

    result = _app(monkeypatch, mariadb_url, project).reconciler.reconcile_once()

    assert result.plan is not None
    expected = (Outcome.REFUSED, 65, RefusalReason.INTERRUPTED_REVISION, ("r0001",))
    assert (result.outcome, exit_code(result), result.plan.reason, result.heads_after) == expected
    assert result.error is not None
    assert "revision r0002 was interrupted" in result.error


def test_retry_interrupted_applies_it_again(
    monkeypatch: pytest.MonkeyPatch, mariadb_url: str, tmp_path: Path
) -> None:
    """SCHEMAD_RETRY_INTERRUPTED names the revision a human cleaned up: it runs again."""
    project = tmp_path / "migrations"
    linear_project(project, 3)
    app = _app(monkeypatch, mariadb_url, project, target_revision="r0001")
    app.reconciler.reconcile_once()
    _interrupt(app, "r0002")

    retry = _app(monkeypatch, mariadb_url, project, retry_interrupted="r0002")
    result = retry.reconciler.reconcile_once()
    again = _app(monkeypatch, mariadb_url, project).reconciler.reconcile_once()

    assert (result.outcome, result.heads_after, again.outcome) == (
        Outcome.APPLIED,
        ("r0003",),
        Outcome.IN_SYNC,
    )


def test_graceful_stop_leaves_no_false_interruption(
    monkeypatch: pytest.MonkeyPatch, mariadb_url: str, tmp_path: Path
) -> None:
    """A pass stopped between revisions marks the next one not_started, never interrupted."""
    project = tmp_path / "migrations"
    linear_project(project, 3)
    app = _app(monkeypatch, mariadb_url, project)
    asked: list[bool] = []

    def stop_after_the_first_revision() -> bool:
        """Asked before each revision: go on once, then stop."""
        asked.append(True)
        return len(asked) > 1

    app.reconciler.set_hooks(should_stop=stop_after_the_first_revision)
    stopped = app.reconciler.reconcile_once()
    assert app.reconciler.history is not None
    outcomes = {row.revision: row.outcome for row in app.reconciler.history.rows()}

    again = _app(monkeypatch, mariadb_url, project).reconciler.reconcile_once()

    assert (stopped.outcome, stopped.heads_after, outcomes.get("r0002")) == (
        Outcome.INTERRUPTED,
        ("r0001",),
        "not_started",
    )
    assert (again.outcome, again.heads_after) == (Outcome.APPLIED, ("r0003",))


def _report(command: str, app: App) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    app.out = out
    run = cmd_status if command == "status" else cmd_plan
    code = run(app, argparse.Namespace(json=True, sql=False))
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize("command", ["status", "plan"])
def test_status_and_plan_report_an_interrupted_revision(
    monkeypatch: pytest.MonkeyPatch, mariadb_url: str, tmp_path: Path, command: str
) -> None:
    """With nobody holding the lock, `status` and `plan` say what `upgrade`
    would: refused, interrupted_revision, exit 65."""
    project = tmp_path / "migrations"
    linear_project(project, 3)
    app = _app(monkeypatch, mariadb_url, project, target_revision="r0001")
    app.reconciler.reconcile_once()
    _interrupt(app, "r0002")

    code, document = _report(command, _app(monkeypatch, mariadb_url, project))

    assert (code, document["reason"]) == (65, "interrupted_revision")
    assert "revision r0002 was interrupted" in str(document["message"])


def test_status_while_another_instance_holds_the_lock_says_behind(
    monkeypatch: pytest.MonkeyPatch, mariadb_url: str, tmp_path: Path
) -> None:
    """A started revision while the lock is held may be running right now:
    `status` reports the database behind and names the holder."""
    project = tmp_path / "migrations"
    linear_project(project, 3)
    app = _app(monkeypatch, mariadb_url, project, target_revision="r0001")
    app.reconciler.reconcile_once()
    _interrupt(app, "r0002")
    observer = _app(monkeypatch, mariadb_url, project)

    with app.database.lock(1.0):
        code, document = _report("status", observer)

    assert (code, document["state"], document["reason"]) == (3, "upgrade", None)
    lock = document["lock"]
    assert isinstance(lock, dict)
    assert lock["held"] is True
