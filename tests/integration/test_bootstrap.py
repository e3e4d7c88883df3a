"""Bootstrapping an empty database in one transaction (PostgreSQL, SQLite).

Nothing waits on a database that is being created, so its whole history
can go in one transaction: a failure (or a crash, see
tests/reliability/test_crashes.py) leaves it empty instead of half-made.
Logs, metrics and the history still show each revision.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from schemad.model import Outcome
from support.databases import table_names, version_rows
from support.scripts import tables_project, write_revision

from .conftest import MakeApp

TRANSACTIONAL = [
    pytest.param("sqlite_url", id="sqlite"),
    pytest.param("postgres_url", marks=pytest.mark.postgres, id="postgresql"),
]


def failing_third(project: Path) -> None:
    tables_project(project, 2)
    write_revision(
        project,
        "r0003",
        "r0002",
        message="Breaks",
        upgrade='op.create_table("t_r0003", sa.Column("id", sa.Integer))\nraise RuntimeError("no")',
    )


@pytest.mark.parametrize("fixture", TRANSACTIONAL)
def test_a_failing_bootstrap_leaves_the_database_empty(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, make_app: MakeApp
) -> None:
    """A revision failing while an empty database is created takes every revision of the
    pass with it; the message says so, and the history records the failure."""
    url = str(request.getfixturevalue(fixture))
    failing_third(tmp_path / "migrations")
    app = make_app(url, tmp_path / "migrations")

    result = app.reconciler.reconcile_once()

    assert app.reconciler.history is not None
    rows = [(r.revision, r.outcome) for r in app.reconciler.history.rows()]
    assert (result.outcome, result.applied, version_rows(url)) == (Outcome.FAILED, (), [])
    assert table_names(url) - {"schemad_history", "alembic_version"} == set()
    assert "ran in one transaction, so none stays applied" in (result.error or "")
    assert rows == [("r0003", "failed")]


@pytest.mark.parametrize("fixture", TRANSACTIONAL)
def test_a_successful_bootstrap_still_reports_each_revision(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, make_app: MakeApp
) -> None:
    """Each revision of a bootstrap gets its migration_applied line and history row."""
    url = str(request.getfixturevalue(fixture))
    tables_project(tmp_path / "migrations", 3)
    app = make_app(url, tmp_path / "migrations")

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert app.reconciler.history is not None
    events = [e["event"] for e in logs]
    applied = [e["revision"] for e in logs if e["event"] == "migration_applied"]
    rows = sorted(r.revision for r in app.reconciler.history.rows() if r.outcome == "applied")
    expected = (Outcome.APPLIED, ["r0001", "r0002", "r0003"], ["r0001", "r0002", "r0003"], True)
    assert expected == (result.outcome, applied, rows, "bootstrap_in_one_transaction" in events)


@pytest.mark.parametrize("fixture", TRANSACTIONAL)
def test_a_bootstrap_stopped_gracefully_keeps_what_ran_with_its_rows(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, make_app: MakeApp
) -> None:
    """A shutdown between two revisions of a bootstrap commits the ones that ran, and
    their history rows (written together, just before the one commit), and no others."""
    url = str(request.getfixturevalue(fixture))
    tables_project(tmp_path / "migrations", 3)
    app = make_app(url, tmp_path / "migrations")
    asked: list[bool] = []

    def stop_before_the_third() -> bool:
        """Asked before each revision: go on twice, then stop."""
        asked.append(True)
        return len(asked) > 2

    app.reconciler.set_hooks(should_stop=stop_before_the_third)
    result = app.reconciler.reconcile_once()

    assert app.reconciler.history is not None
    rows = sorted((r.revision, r.outcome) for r in app.reconciler.history.rows())
    assert (result.outcome, [s.revision for s in result.applied], version_rows(url), rows) == (
        Outcome.INTERRUPTED,
        ["r0001", "r0002"],
        ["r0002"],
        [("r0001", "applied"), ("r0002", "applied")],
    )


@pytest.mark.parametrize("fixture", TRANSACTIONAL)
def test_bootstrap_can_be_turned_off(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, make_app: MakeApp
) -> None:
    """With SCHEMAD_BOOTSTRAP_IN_ONE_TRANSACTION=false each revision commits on its own,
    so the revisions before the failing one stay."""
    url = str(request.getfixturevalue(fixture))
    failing_third(tmp_path / "migrations")
    app = make_app(url, tmp_path / "migrations", bootstrap_in_one_transaction="false")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, version_rows(url)) == (Outcome.FAILED, ["r0002"])


@pytest.mark.parametrize("fixture", TRANSACTIONAL)
def test_a_database_with_revisions_is_not_bootstrapped(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path, make_app: MakeApp
) -> None:
    """Only an empty database is created in one transaction: later passes commit each
    revision as it completes."""
    url = str(request.getfixturevalue(fixture))
    failing_third(tmp_path / "migrations")
    make_app(url, tmp_path / "migrations", target_revision="r0001").reconciler.reconcile_once()

    with capture_logs() as logs:
        result = make_app(url, tmp_path / "migrations").reconciler.reconcile_once()

    events = [e["event"] for e in logs]
    assert (result.outcome, version_rows(url), "bootstrap_in_one_transaction" in events) == (
        Outcome.FAILED,
        ["r0002"],
        False,
    )


@pytest.mark.mariadb
def test_mariadb_is_never_bootstrapped(mariadb_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """Where DDL commits implicitly one transaction would be a fiction: revisions go one by one."""
    failing_third(tmp_path / "migrations")
    result = make_app(mariadb_url, tmp_path / "migrations").reconciler.reconcile_once()
    assert (result.outcome, version_rows(mariadb_url)) == (Outcome.FAILED, ["r0002"])
