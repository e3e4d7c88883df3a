"""One reconcile pass against real databases: apply, stay, downgrade, refuse, fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from schemad.cli import exit_code
from schemad.model import Outcome, RefusalReason
from support.databases import stamp, table_names, version_rows
from support.scripts import create_table, tables_project, write_revision

from .conftest import MakeApp

# These tests are about each revision committing on its own; an empty database
# is otherwise created in one transaction (tests/integration/test_bootstrap.py).
PER_REVISION = {"bootstrap_in_one_transaction": "false"}


def test_empty_database_is_migrated_to_head(db_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """A pass on an empty database applies every revision in order and ends at head."""
    ids = tables_project(tmp_path / "migrations", 3)
    app = make_app(db_url, tmp_path / "migrations")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.APPLIED, 0)
    assert ids == [step.revision for step in result.applied]
    assert {"upgrade"} == {step.direction for step in result.applied}
    assert (result.heads_before, result.heads_after) == ((), ("r0003",))
    assert version_rows(db_url) == ["r0003"]
    assert {f"t_{rev}" for rev in ids} <= table_names(db_url)


def test_second_pass_is_in_sync(db_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """A pass on a database already at head changes nothing and reports in sync."""
    tables_project(tmp_path / "migrations", 3)
    app = make_app(db_url, tmp_path / "migrations")
    app.reconciler.reconcile_once()

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result), result.applied) == (Outcome.IN_SYNC, 0, ())
    assert result.at_target
    assert version_rows(db_url) == ["r0003"]


def test_downgrade_to_pinned_target_when_allowed(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """With downgrades allowed, a pinned older target reverts the newer revisions, newest first."""
    tables_project(tmp_path / "migrations", 3)
    make_app(db_url, tmp_path / "migrations").reconciler.reconcile_once()
    app = make_app(db_url, tmp_path / "migrations", target_revision="r0001", allow_downgrade="true")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.APPLIED, 0)
    assert [(step.revision, step.direction) for step in result.applied] == [
        ("r0003", "downgrade"),
        ("r0002", "downgrade"),
    ]
    assert version_rows(db_url) == ["r0001"]
    tables = table_names(db_url)
    assert ("t_r0001" in tables, "t_r0002" in tables, "t_r0003" in tables) == (True, False, False)


def test_downgrade_refused_when_not_allowed(db_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """Without SCHEMAD_ALLOW_DOWNGRADE a pinned older target is refused and nothing changes."""
    tables_project(tmp_path / "migrations", 3)
    make_app(db_url, tmp_path / "migrations").reconciler.reconcile_once()
    app = make_app(db_url, tmp_path / "migrations", target_revision="r0001")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.REFUSED, 65)
    assert result.plan is not None
    assert result.plan.reason == RefusalReason.DOWNGRADE_NOT_ALLOWED
    assert result.error is not None
    assert "SCHEMAD_ALLOW_DOWNGRADE" in result.error
    assert version_rows(db_url) == ["r0003"]
    assert {"t_r0001", "t_r0002", "t_r0003"} <= table_names(db_url)


def test_unknown_revision_in_database_is_refused(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """A database at a revision the scripts lack is refused by default, naming the revision."""
    tables_project(tmp_path / "migrations", 2)
    stamp(db_url, "f00dfeed0001")
    app = make_app(db_url, tmp_path / "migrations")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.REFUSED, 65)
    assert result.plan is not None
    assert result.plan.reason == RefusalReason.UNKNOWN_REVISION
    assert result.error is not None
    assert "f00dfeed0001" in result.error
    assert "SCHEMAD_ON_UNKNOWN_REVISION=ignore" in result.error
    assert version_rows(db_url) == ["f00dfeed0001"]


def test_unknown_revision_ignored_when_asked(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """With SCHEMAD_ON_UNKNOWN_REVISION=ignore the database is left alone as 'ahead', exit 0."""
    tables_project(tmp_path / "migrations", 2)
    stamp(db_url, "f00dfeed0001")
    app = make_app(db_url, tmp_path / "migrations", on_unknown_revision="ignore")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result), result.applied) == (Outcome.AHEAD, 0, ())
    assert version_rows(db_url) == ["f00dfeed0001"]
    assert not {"t_r0001", "t_r0002"} & table_names(db_url)


def _failing_project(project: Path) -> None:
    """r1, r2 create tables; r3 creates a table and then raises; r4 would follow."""
    tables_project(project, 2)
    write_revision(
        project,
        "r0003",
        "r0002",
        message="Add the broken table",
        upgrade=create_table("t_r0003")
        + 'op.execute(sa.text("INSERT INTO t_r0003 (id) VALUES (1)"))\n'
        + 'raise RuntimeError("boom in r0003")\n',
    )
    write_revision(project, "r0004", "r0003", upgrade=create_table("t_r0004"))


def test_failing_revision_is_named(db_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """A revision that raises ends the pass FAILED, exit 70, naming the revision and its error."""
    _failing_project(tmp_path / "migrations")
    app = make_app(db_url, tmp_path / "migrations", **PER_REVISION)

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.FAILED, 70)
    assert result.error is not None
    assert "r0003" in result.error
    assert "Add the broken table" in result.error
    assert "boom in r0003" in result.error
    assert [step.revision for step in result.applied] == ["r0001", "r0002"]
    assert result.heads_after == ("r0002",)


@pytest.mark.parametrize(
    "backend",
    [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def test_failing_revision_leaves_nothing_behind_with_transactional_ddl(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, make_app: MakeApp
) -> None:
    """With transactional DDL the earlier revisions stay committed and the failed one is undone."""
    url = str(request.getfixturevalue(f"{'sqlite' if backend == 'sqlite' else 'postgres'}_url"))
    _failing_project(tmp_path / "migrations")
    app = make_app(url, tmp_path / "migrations", **PER_REVISION)

    app.reconciler.reconcile_once()

    tables = table_names(url)
    assert version_rows(url) == ["r0002"]
    assert {name: name in tables for name in ("t_r0001", "t_r0002", "t_r0003", "t_r0004")} == {
        "t_r0001": True,
        "t_r0002": True,
        "t_r0003": False,
        "t_r0004": False,
    }


@pytest.mark.mariadb
def test_failing_revision_on_mariadb_keeps_last_good_revision(
    mariadb_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """On MariaDB (DDL auto-commits) the version table stays at the last good revision."""
    _failing_project(tmp_path / "migrations")
    app = make_app(mariadb_url, tmp_path / "migrations")

    result = app.reconciler.reconcile_once()

    assert (result.outcome, result.heads_after[0]) == (Outcome.FAILED, "r0002")
    assert version_rows(mariadb_url) == ["r0002"]
    tables = table_names(mariadb_url)
    assert ("t_r0002" in tables, "t_r0004" in tables) == (True, False)


def test_rerun_after_fix_resumes_from_last_good_revision(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Once the failing revision is fixed, the next pass applies only what is left."""
    project = tmp_path / "migrations"
    _failing_project(project)
    make_app(db_url, project, **PER_REVISION).reconciler.reconcile_once()
    if make_url(db_url).get_backend_name() == "mysql":
        # DDL auto-commits on MariaDB: the fixed revision must cope with its own leftovers.
        fixed = (
            'if not sa.inspect(op.get_bind()).has_table("t_r0003"):\n'
            + "    "
            + create_table("t_r0003")
        )
    else:
        fixed = create_table("t_r0003")
    write_revision(project, "r0003", "r0002", message="Add the fixed table", upgrade=fixed)
    app = make_app(db_url, project)

    result = app.reconciler.reconcile_once()

    assert result.outcome == Outcome.APPLIED
    assert [step.revision for step in result.applied] == ["r0003", "r0004"]
    assert version_rows(db_url) == ["r0004"]
