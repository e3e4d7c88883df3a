"""The audit history on real databases: rows for upgrades, downgrades, failures and
adoptions, with timings and deployment identity; a log that survives downgrades; a
history write that fails never breaks a migration."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from schemad import __version__
from schemad.cli import exit_code
from schemad.history import HistoryRow
from schemad.metrics import Metrics
from schemad.model import Outcome
from schemad.revisions import file_checksum
from support.databases import connection, version_rows
from support.scripts import create_table, drop_table, tables_project, write_revision

from .conftest import MakeApp

IDENTITY = {
    "POD_NAME": "api-migrate-7f9c",
    "POD_NAMESPACE": "shop",
    "NODE_NAME": "node-3",
    "CONTAINER_IMAGE": "registry.example/shop-migrations:1.4.2",
    "HELM_CHART": "schemad-0.3.0",
    "APP_VERSION": "1.4.2",
}
IDS = ["r0001", "r0002", "r0003"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Three revisions, each creating table t_<id> (its downgrade drops it)."""
    location = tmp_path / "migrations"
    assert tables_project(location, 3) == IDS
    return location


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The downward-API variables the Helm chart sets, as a pod would see them."""
    for key, value in IDENTITY.items():
        monkeypatch.setenv(key, value)
    return IDENTITY


def _rows(make_app: MakeApp, url: str, project: Path) -> list[HistoryRow]:
    history = make_app(url, project).reconciler.history
    assert history is not None
    return history.rows()


def _oldest_first(rows: list[HistoryRow]) -> list[tuple[str, str, str]]:
    return [(r.revision, r.direction, r.outcome) for r in reversed(rows)]


def _failing_revision(project: Path) -> None:
    write_revision(
        project,
        "r0004",
        "r0003",
        upgrade=create_table("t_r0004") + 'raise RuntimeError("boom in r0004")\n',
        downgrade=drop_table("t_r0004"),
    )


def test_upgrade_writes_one_row_per_revision(
    db_url: str, project: Path, make_app: MakeApp, identity: dict[str, str]
) -> None:
    """Each applied revision gets a row: parents, direction, outcome, timings and checksum."""
    make_app(db_url, project).reconciler.reconcile_once()

    rows = _rows(make_app, db_url, project)

    assert _oldest_first(rows) == [(rev, "upgrade", "applied") for rev in IDS]
    assert [r.parents for r in reversed(rows)] == [(), ("r0001",), ("r0002",)]
    for row in rows:
        assert row.started_at is not None
        assert row.finished_at is not None
        assert row.duration_seconds is not None
        assert row.duration_seconds >= 0
        assert row.started_at <= row.finished_at
        assert row.checksum == file_checksum(project / "versions" / f"{row.revision}.py")
        assert (row.error, row.schemad_version) == (None, __version__)


def test_rows_carry_the_deployment_identity(
    db_url: str, project: Path, make_app: MakeApp, identity: dict[str, str]
) -> None:
    """Pod, namespace, node, image, chart and app version come from the environment."""
    make_app(db_url, project).reconciler.reconcile_once()

    row = _rows(make_app, db_url, project)[0]

    assert (
        row.pod_name,
        row.pod_namespace,
        row.node_name,
        row.image,
        row.chart_version,
        row.app_version,
    ) == tuple(identity.values())
    assert row.hostname
    assert row.run_id


def test_rows_without_identity_leave_it_empty(
    sqlite_url: str, project: Path, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside Kubernetes the identity fields are empty and the host name says who."""
    for key in IDENTITY:
        monkeypatch.delenv(key, raising=False)
    make_app(sqlite_url, project).reconciler.reconcile_once()

    row = _rows(make_app, sqlite_url, project)[0]

    assert (row.pod_name, row.image, row.node_name) == (None, None, None)
    assert row.hostname


def test_downgrade_writes_rows(db_url: str, project: Path, make_app: MakeApp) -> None:
    """Reverted revisions get downgrade rows, newest revision first."""
    make_app(db_url, project).reconciler.reconcile_once()
    app = make_app(db_url, project, target_revision="r0001", allow_downgrade="true")
    app.reconciler.reconcile_once()

    rows = _rows(make_app, db_url, project)

    assert _oldest_first(rows)[3:] == [
        ("r0003", "downgrade", "applied"),
        ("r0002", "downgrade", "applied"),
    ]
    assert all(r.duration_seconds is not None and r.duration_seconds >= 0 for r in rows[:2])


def test_failure_writes_a_failed_row(
    db_url: str, project: Path, make_app: MakeApp, identity: dict[str, str]
) -> None:
    """A revision that raises gets a failed row with the error, a duration and the identity."""
    _failing_revision(project)

    result = make_app(db_url, project).reconciler.reconcile_once()

    assert result.outcome == Outcome.FAILED
    failed = _rows(make_app, db_url, project)[0]
    assert (failed.revision, failed.direction, failed.outcome) == ("r0004", "upgrade", "failed")
    assert failed.error is not None
    assert "boom in r0004" in failed.error
    assert failed.duration_seconds is not None
    assert failed.duration_seconds >= 0
    assert (failed.pod_name, failed.image) == (IDENTITY["POD_NAME"], IDENTITY["CONTAINER_IMAGE"])


def test_history_survives_downgrade_and_reupgrade(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """The history is a log: a downgrade and a re-upgrade add rows and remove none."""
    make_app(db_url, project).reconciler.reconcile_once()
    make_app(
        db_url, project, target_revision="r0001", allow_downgrade="true"
    ).reconciler.reconcile_once()
    result = make_app(db_url, project).reconciler.reconcile_once()

    rows = _rows(make_app, db_url, project)

    assert result.outcome == Outcome.APPLIED
    assert _oldest_first(rows) == [
        ("r0001", "upgrade", "applied"),
        ("r0002", "upgrade", "applied"),
        ("r0003", "upgrade", "applied"),
        ("r0003", "downgrade", "applied"),
        ("r0002", "downgrade", "applied"),
        ("r0002", "upgrade", "applied"),
        ("r0003", "upgrade", "applied"),
    ]
    assert len({r.id for r in rows}) == 7


def test_rows_filter_by_revision_since_and_limit(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """rows() filters by revision and time, and limits, newest first."""
    make_app(db_url, project).reconciler.reconcile_once()
    history = make_app(db_url, project).reconciler.history
    assert history is not None
    everything = history.rows()
    middle = everything[1].finished_at
    assert middle is not None

    assert [r.revision for r in history.rows(revision="r0002")] == ["r0002"]
    assert [r.revision for r in history.rows(limit=2)] == ["r0003", "r0002"]
    assert [r.revision for r in history.rows(since=middle)] == ["r0003", "r0002"]
    assert history.rows(since=datetime.fromisoformat("2999-01-01T00:00:00+00:00")) == []


def test_since_with_another_utc_offset_means_the_same_instant(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """A --since given in another time zone filters by the same instant as in UTC."""
    make_app(db_url, project).reconciler.reconcile_once()
    history = make_app(db_url, project).reconciler.history
    assert history is not None
    middle = history.rows()[1].finished_at
    assert middle is not None

    elsewhere = middle.astimezone(timezone(timedelta(hours=5, minutes=30)))

    assert [r.revision for r in history.rows(since=elsewhere)] == ["r0003", "r0002"]


# -- a failing history write ---------------------------------------------------------


def _refuse_history_inserts(url: str, table: str = "schemad_history") -> None:
    """Make every INSERT into the history table fail, with a trigger."""
    backend = make_url(url).get_backend_name()
    with connection(url) as conn:
        if backend == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_history BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'history is read-only'); END"
            )
        elif backend == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_history() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'history is read-only'; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_history BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_history()"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_history BEFORE INSERT ON {table} FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'history is read-only'"
            )
        conn.commit()


def _allow_history_inserts(url: str) -> None:
    with connection(url) as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER refuse_history"
            + (" ON schemad_history" if make_url(url).get_backend_name() == "postgresql" else "")
        )
        conn.commit()


def _age(project: Path) -> None:
    """Date the migrations directories back, so the scripts are loaded once and kept."""
    past = time.time() - 60
    for directory in (project, project / "versions"):
        os.utime(directory, (past, past))


def _history_count(url: str) -> int:
    with connection(url) as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM schemad_history")).scalar_one())


def test_failing_history_write_never_breaks_the_migration(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """With inserts refused, the revisions still apply; each failed write is logged, each
    lost row counted."""
    app = make_app(db_url, project)
    assert app.reconciler.history is not None
    app.reconciler.history.ensure_table()
    _refuse_history_inserts(db_url)

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.APPLIED, 0)
    assert [s.revision for s in result.applied] == IDS
    assert version_rows(db_url) == ["r0003"]
    # Where DDL is not transactional each revision also writes a "started" row first.
    writes_per_revision = 1 if app.database.transactional_ddl else 2
    # An empty database with transactional DDL is created in one transaction, whose rows
    # are written together just before it commits: one write for all three.
    writes = 1 if app.database.transactional_ddl else 3 * writes_per_revision
    failures = [e for e in logs if e["event"] == "history_write_failed"]
    assert len(failures) == writes
    assert all("history is read-only" in e["error"] for e in failures)
    assert result.history_write_failures == 3 * writes_per_revision
    assert _history_count(db_url) == 0


def test_failing_history_write_is_a_metric(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """schemad_history_write_failures_total counts the rows that could not be written."""
    app = make_app(sqlite_url, project)
    assert app.reconciler.history is not None
    app.reconciler.history.ensure_table()
    _refuse_history_inserts(sqlite_url)
    metrics = Metrics(CollectorRegistry())

    metrics.observe(app.reconciler.reconcile_once(), finished_at=1.0)

    assert metrics.registry.get_sample_value("schemad_history_write_failures_total") == 3.0


def test_failing_history_write_keeps_a_failed_revision_failed(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """A revision that raises is reported as failed even when its history row cannot be written."""
    _failing_revision(project)
    # Each revision commits on its own here (no bootstrap of the empty database).
    app = make_app(db_url, project, bootstrap_in_one_transaction="false")
    assert app.reconciler.history is not None
    app.reconciler.history.ensure_table()
    _refuse_history_inserts(db_url)

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.FAILED, 70)
    assert result.error is not None
    assert "boom in r0004" in result.error
    # Where DDL is not transactional each revision also writes a "started" row first.
    writes_per_revision = 1 if app.database.transactional_ddl else 2
    assert result.history_write_failures == 4 * writes_per_revision
    assert version_rows(db_url) == ["r0003"]


def test_failing_adoption_write_is_logged_and_counted(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """Adoption rows that cannot be written are logged and counted; the pass is still in sync."""
    make_app(sqlite_url, project, history_enabled="false").reconciler.reconcile_once()
    app = make_app(sqlite_url, project)
    assert app.reconciler.history is not None
    app.reconciler.history.ensure_table()
    _refuse_history_inserts(sqlite_url)

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.IN_SYNC, 0)
    assert len([e for e in logs if e["event"] == "history_write_failed"]) == 1
    assert [e for e in logs if e["event"] == "revisions_adopted"] == []
    assert result.history_write_failures == 3


def test_failed_adoption_is_retried_by_the_next_pass(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """Once the history can be written again, the same reconciler adopts what it could not."""
    make_app(sqlite_url, project, history_enabled="false").reconciler.reconcile_once()
    app = make_app(sqlite_url, project)
    assert app.reconciler.history is not None
    app.reconciler.history.ensure_table()
    _refuse_history_inserts(sqlite_url)
    _age(project)
    app.reconciler.reconcile_once()
    _allow_history_inserts(sqlite_url)

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert (result.outcome, result.history_write_failures) == (Outcome.IN_SYNC, 0)
    [adopted] = [e for e in logs if e["event"] == "revisions_adopted"]
    assert adopted["revisions"] == IDS
    assert _history_count(sqlite_url) == 3


# -- adoption of revisions applied without schemad's history --------------------------


def test_revisions_applied_without_history_are_adopted(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """Revisions applied with the history off are adopted on first sight, without alarm."""
    make_app(db_url, project, history_enabled="false").reconciler.reconcile_once()

    with capture_logs() as logs:
        result = make_app(db_url, project).reconciler.reconcile_once()

    assert (result.outcome, result.tampered) == (Outcome.IN_SYNC, ())
    [adopted] = [e for e in logs if e["event"] == "revisions_adopted"]
    assert adopted["revisions"] == IDS
    assert [e for e in logs if e["event"] == "revision_tampered"] == []
    rows = _rows(make_app, db_url, project)
    assert sorted((r.revision, r.direction, r.outcome) for r in rows) == [
        (rev, "upgrade", "adopted") for rev in IDS
    ]
    assert all(r.checksum == file_checksum(project / "versions" / f"{r.revision}.py") for r in rows)


def test_adoption_happens_once(sqlite_url: str, project: Path, make_app: MakeApp) -> None:
    """A second pass after adoption adopts nothing more."""
    make_app(sqlite_url, project, history_enabled="false").reconciler.reconcile_once()
    make_app(sqlite_url, project).reconciler.reconcile_once()

    with capture_logs() as logs:
        make_app(sqlite_url, project).reconciler.reconcile_once()

    assert [e for e in logs if e["event"] in ("revisions_adopted", "revision_tampered")] == []
    assert len(_rows(make_app, sqlite_url, project)) == 3


def test_a_pass_reads_the_history_once(db_url: str, project: Path, make_app: MakeApp) -> None:
    """A fresh process's no-op pass reads the history table once: its look and
    its adoption share the read (each read is the whole table)."""
    # Files older than the reload settle window, as in an image.
    past = time.time() - 60
    for path in (project, project / "versions", *project.rglob("*")):
        os.utime(path, (past, past))
    make_app(db_url, project).reconciler.reconcile_once()
    reads: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "schemad_history" in statement:
            reads.append(statement)

    # Listening on the class reaches engines created afterwards.
    sa.event.listen(sa.Engine, "before_cursor_execute", count)
    try:
        app = make_app(db_url, project)
        with capture_logs() as logs:
            result = app.reconciler.reconcile_once()
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", count)

    assert (result.outcome, result.tampered) == (Outcome.IN_SYNC, ())
    assert [e for e in logs if e["event"] in ("revisions_adopted", "scripts_reloaded")] == []
    assert len(reads) == 1, reads


def test_revisions_applied_by_plain_alembic_are_adopted(
    db_url: str, project: Path, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revisions applied by `alembic upgrade` (no schemad) are adopted, then new ones applied."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(project))
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", db_url)
    command.upgrade(config, "r0002")
    assert version_rows(db_url) == ["r0002"]

    with capture_logs() as logs:
        result = make_app(db_url, project).reconciler.reconcile_once()

    assert [s.revision for s in result.applied] == ["r0003"]
    [adopted] = [e for e in logs if e["event"] == "revisions_adopted"]
    assert adopted["revisions"] == ["r0001", "r0002"]
    assert [e for e in logs if e["event"] == "revision_tampered"] == []
    assert _oldest_first(_rows(make_app, db_url, project)) == [
        ("r0001", "upgrade", "adopted"),
        ("r0002", "upgrade", "adopted"),
        ("r0003", "upgrade", "applied"),
    ]


def test_history_can_be_turned_off(sqlite_url: str, project: Path, make_app: MakeApp) -> None:
    """With SCHEMAD_HISTORY_ENABLED=false no history table is created."""
    make_app(sqlite_url, project, history_enabled="false").reconciler.reconcile_once()

    with connection(sqlite_url) as conn:
        assert not sa.inspect(conn).has_table("schemad_history")


def test_history_table_name_is_configurable(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """SCHEMAD_HISTORY_TABLE names the table the rows go to."""
    make_app(sqlite_url, project, history_table="audit_log").reconciler.reconcile_once()

    with connection(sqlite_url) as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM audit_log")).scalar_one()
        has_default = sa.inspect(conn).has_table("schemad_history")
    assert (count, has_default) == (3, False)
