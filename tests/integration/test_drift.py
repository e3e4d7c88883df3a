"""Drift detection on real databases: the expected schema is built in a scratch database,
hand-made changes are reported, and the scratch database is always dropped.

Scratch databases are named schemad_scratch_*; other people's tests may create some on
the shared servers at the same time, so each test follows the names its own check
created.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from schemad import cli, drift
from schemad.cli import App
from schemad.drift import SCRATCH_PREFIX, DriftChecker, DriftPermissionError
from schemad.errors import DatabaseUnavailableError, MigrationFailedError
from schemad.metrics import Metrics
from schemad.model import Outcome
from schemad.scheduler import Daemon
from support.databases import connection
from support.scripts import make_project, write_revision

from .conftest import MakeApp

ITEMS = """\
op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("qty", sa.Integer, nullable=True),
)
op.create_index("ix_items_name", "items", ["name"])
"""
ORDERS = """\
op.create_table(
    "orders",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", name="fk_orders_item")),
)
"""
# Only in a scratch database: the live one migrates fine, the drift check fails half-way.
SCRATCH_ONLY_FAILURE = """\
if "schemad_scratch_" in str(op.get_bind().engine.url.database):
    raise RuntimeError("this revision fails in scratch databases")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """r0001 creates items (with an index), r0002 creates orders (with a foreign key)."""
    location = make_project(tmp_path / "migrations")
    write_revision(location, "r0001", None, upgrade=ITEMS, downgrade='op.drop_table("items")')
    write_revision(location, "r0002", "r0001", upgrade=ORDERS, downgrade='op.drop_table("orders")')
    return location


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory, where SQLite scratch databases are made."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the scratch databases the checks of this test created on a server."""
    names: list[str] = []
    original = DriftChecker._create

    def spy(self: DriftChecker, name: str) -> None:
        original(self, name)
        names.append(name)

    monkeypatch.setattr(DriftChecker, "_create", spy)
    return names


def scratch_databases(url: str, scratch_tmp: Path) -> set[str]:
    """The scratch databases on the server (or in the temporary directory) right now."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {p.name for p in scratch_tmp.iterdir() if p.name.startswith(SCRATCH_PREFIX)}
    query = {
        "postgresql": "SELECT datname FROM pg_database WHERE datname LIKE :pattern",
        "mysql": "SELECT schema_name FROM information_schema.schemata "
        "WHERE schema_name LIKE :pattern",
    }[backend]
    with connection(url) as conn:
        rows = conn.execute(sa.text(query), {"pattern": "schemad\\_scratch\\_%"}).scalars()
        return {str(name) for name in rows}


def _migrated(make_app: MakeApp, url: str, project: Path, **settings: str) -> App:
    app = make_app(url, project, **settings)
    assert app.reconciler.reconcile_once().outcome == Outcome.APPLIED
    return app


def _execute(url: str, *statements: str) -> None:
    with connection(url) as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
        conn.commit()


def _change_qty_to_bigint(url: str) -> None:
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        _execute(url, "ALTER TABLE items ALTER COLUMN qty TYPE BIGINT")
    elif backend == "mysql":
        _execute(url, "ALTER TABLE items MODIFY qty BIGINT NULL")
    else:  # SQLite cannot alter a column's type: rebuild the table, as Alembic's batch mode does
        _execute(
            url,
            "CREATE TABLE items_new (id INTEGER NOT NULL, name VARCHAR(50) NOT NULL, "
            "qty BIGINT, PRIMARY KEY (id))",
            "INSERT INTO items_new SELECT id, name, qty FROM items",
            "DROP TABLE items",
            "ALTER TABLE items_new RENAME TO items",
            "CREATE INDEX ix_items_name ON items (name)",
        )


def _drift(app: App, *, as_json: bool) -> tuple[int, str]:
    app.out = io.StringIO()
    code = cli.cmd_drift(app, argparse.Namespace(json=as_json))
    assert isinstance(app.out, io.StringIO)
    return code, app.out.getvalue()


# -- what is reported -----------------------------------------------------------------


def test_untouched_database_has_no_drift(
    db_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path
) -> None:
    """A database migrated by schemad matches what its revision produces: exit 0, logged."""
    app = _migrated(make_app, db_url, project)

    with capture_logs() as logs:
        code, text = _drift(app, as_json=False)

    assert (code, text) == (0, "no drift: the schema matches r0002\n")
    [checked] = [e for e in logs if e["event"] == "drift_checked"]
    assert (checked["log_level"], checked["drifted_objects"], checked["differences"]) == (
        "info",
        0,
        [],
    )


def test_column_added_by_hand_is_drift(
    db_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path
) -> None:
    """A column added by hand: `schemad drift --json` exits 4 and lists it; the log says so."""
    app = _migrated(make_app, db_url, project)
    _execute(db_url, "ALTER TABLE items ADD COLUMN note VARCHAR(20)")

    with capture_logs() as logs:
        code, text = _drift(app, as_json=True)

    assert (code, json.loads(text)) == (
        4,
        {
            "revisions": ["r0002"],
            "drifted": True,
            "differences": [
                {
                    "kind": "extra_column",
                    "object": "items.note",
                    "expected": "absent",
                    "found": "present",
                }
            ],
        },
    )
    [checked] = [e for e in logs if e["event"] == "drift_checked"]
    assert (checked["log_level"], checked["drifted_objects"], checked["differences"]) == (
        "warning",
        1,
        ["extra_column items.note: expected absent, found present"],
    )


def test_index_dropped_by_hand_is_drift(
    db_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path
) -> None:
    """An index dropped by hand is reported as a missing index."""
    app = _migrated(make_app, db_url, project)
    on_table = " ON items" if make_url(db_url).get_backend_name() == "mysql" else ""
    _execute(db_url, f"DROP INDEX ix_items_name{on_table}")

    report = app.reconciler.check_drift()

    assert [(d.kind, d.object, d.found) for d in report.differences] == [
        ("index", "items.ix_items_name", "absent")
    ]


def test_changed_column_type_is_drift(
    db_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path
) -> None:
    """A column whose type was changed by hand is reported with both types."""
    app = _migrated(make_app, db_url, project)
    _change_qty_to_bigint(db_url)

    report = app.reconciler.check_drift()

    assert [(d.kind, d.object) for d in report.differences] == [("column_type", "items.qty")]
    assert report.differences[0].expected.startswith("INT")
    assert report.differences[0].found.startswith("BIGINT")


def test_drift_command_lists_every_difference(
    sqlite_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path
) -> None:
    """`schemad drift` exits 4 and prints one line per difference."""
    app = _migrated(make_app, sqlite_url, project)
    _change_qty_to_bigint(sqlite_url)
    _execute(sqlite_url, "ALTER TABLE items ADD COLUMN note VARCHAR(20)")

    code, text = _drift(app, as_json=False)

    assert (code, text) == (
        4,
        "drift: 2 object(s) differ from what r0002 should produce\n"
        "  extra_column items.note: expected absent, found present\n"
        "  column_type items.qty: expected INTEGER, found BIGINT\n",
    )


def test_own_tables_are_not_drift(
    sqlite_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path
) -> None:
    """A custom-named history table and version table are left out of the comparison."""
    app = _migrated(
        make_app, sqlite_url, project, history_table="audit_log", version_table="schema_version"
    )

    assert app.reconciler.check_drift().differences == ()


# -- the scratch database is always dropped -------------------------------------------


def _gone(db_url: str, scratch_tmp: Path, created: list[str], before: set[str]) -> None:
    after = scratch_databases(db_url, scratch_tmp)
    if make_url(db_url).get_backend_name() == "sqlite":
        assert (before, after) == (set(), set())
    else:
        assert len(created) == 1
        assert created[0] not in before | after


def test_scratch_database_is_dropped_after_a_check(
    db_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path, created: list[str]
) -> None:
    """After a successful check no scratch database is left on the server."""
    app = _migrated(make_app, db_url, project)
    before = scratch_databases(db_url, scratch_tmp)

    app.reconciler.check_drift()

    _gone(db_url, scratch_tmp, created, before)


def test_scratch_database_is_dropped_when_a_migration_fails_in_it(
    db_url: str, project: Path, make_app: MakeApp, scratch_tmp: Path, created: list[str]
) -> None:
    """A revision failing in the scratch database fails the check and leaves nothing behind."""
    write_revision(project, "r0003", "r0002", upgrade=SCRATCH_ONLY_FAILURE)
    app = _migrated(make_app, db_url, project)
    before = scratch_databases(db_url, scratch_tmp)

    with pytest.raises(MigrationFailedError, match="fails in scratch databases"):
        app.reconciler.check_drift()

    _gone(db_url, scratch_tmp, created, before)


def _break_reflection(
    monkeypatch: pytest.MonkeyPatch, error: Exception, looking: Any
) -> list[set[str]]:
    """Make reflection raise ``error``; return what ``looking()`` saw while the check ran."""
    during: list[set[str]] = []

    def broken(conn: sa.Connection, *, exclude: set[str]) -> Any:
        during.append(looking())
        raise error

    monkeypatch.setattr(drift, "snapshot", broken)
    return during


def test_scratch_database_is_dropped_when_reflection_fails(
    db_url: str,
    project: Path,
    make_app: MakeApp,
    scratch_tmp: Path,
    created: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unexpected error after the scratch database was migrated still drops it."""
    app = _migrated(make_app, db_url, project)
    before = scratch_databases(db_url, scratch_tmp)
    during = _break_reflection(
        monkeypatch,
        RuntimeError("reflection broke"),
        lambda: scratch_databases(db_url, scratch_tmp),
    )

    with pytest.raises(RuntimeError, match="reflection broke"):
        app.reconciler.check_drift()

    # It existed while the check ran (on a server, others' checks may add their own).
    ours = created if created else sorted(during[0])
    assert len(ours) == 1
    assert ours[0] in during[0] - before
    _gone(db_url, scratch_tmp, created, before)


def test_reflection_database_error_is_unavailable(
    sqlite_url: str,
    project: Path,
    make_app: MakeApp,
    scratch_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database error while reflecting is DatabaseUnavailableError; the scratch file is gone."""
    app = _migrated(make_app, sqlite_url, project)
    error = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    _break_reflection(monkeypatch, error, lambda: set())

    with pytest.raises(DatabaseUnavailableError, match="cannot reflect the schema"):
        app.reconciler.check_drift()

    assert scratch_databases(sqlite_url, scratch_tmp) == set()


# -- no privilege to create a scratch database ----------------------------------------


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def limited_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL for a throwaway user who may use a fresh database but not create databases."""
    admin_url = str(request.getfixturevalue(f"{request.param.replace('ql', '')}_url"))
    admin = make_url(admin_url)
    user = f"schemad_t_{uuid.uuid4().hex[:12]}"
    if admin.get_backend_name() == "postgresql":
        _execute(
            admin_url,
            f"CREATE ROLE {user} LOGIN",
            f"GRANT CREATE, USAGE ON SCHEMA public TO {user}",
        )
        cleanup = (f"DROP OWNED BY {user}", f"DROP ROLE {user}")
    else:
        _execute(
            admin_url,
            f"CREATE USER '{user}'@'%%'",
            f"GRANT ALL ON {admin.database}.* TO '{user}'@'%%'",
        )
        cleanup = (f"DROP USER '{user}'@'%%'",)
    try:
        yield admin.set(username=user, password=None).render_as_string(hide_password=False)
    finally:
        _execute(admin_url, *cleanup)


def test_no_privilege_names_the_privilege(
    limited_url: str, project: Path, make_app: MakeApp, created: list[str]
) -> None:
    """A user who may not create databases gets DriftPermissionError naming the grant needed."""
    app = _migrated(make_app, limited_url, project)

    with pytest.raises(DriftPermissionError) as caught:
        app.reconciler.check_drift()

    user = make_url(limited_url).username
    grant = (
        f"ALTER ROLE {user} CREATEDB"
        if make_url(limited_url).get_backend_name() == "postgresql"
        else f"GRANT ALL ON `{SCRATCH_PREFIX}%`.* TO '{user}'"
    )
    assert grant in caught.value.message
    assert "Reconciliation is not affected" in caught.value.message
    assert created == []


def test_no_privilege_disables_drift_but_not_reconciliation(
    limited_url: str, tmp_path: Path, project: Path, make_app: MakeApp
) -> None:
    """In the daemon, a drift check without privilege turns drift off; passes go on."""
    app = make_app(limited_url, project, drift_interval_seconds="60")
    registry = CollectorRegistry()
    daemon = Daemon(app.settings, app.reconciler, Metrics(registry), database_url="masked")

    with capture_logs() as logs:
        daemon.run_drift_check()
        write_revision(
            project, "r0003", "r0002", upgrade="op.add_column('items', sa.Column('note', sa.Text))"
        )
        result = daemon.run_pass()

    assert result is not None
    assert (result.outcome, [s.revision for s in result.applied]) == (
        Outcome.APPLIED,
        ["r0001", "r0002", "r0003"],
    )
    status = daemon.status()
    assert (status["drift"]["disabled"], status["last_pass"]["ready"]) == (True, True)
    assert "CREATEDB" in status["drift"]["error"] or "GRANT" in status["drift"]["error"]
    assert [e["event"] for e in logs if e["event"] == "drift_disabled"] == ["drift_disabled"]
    assert registry.get_sample_value("schemad_drift_check_failures_total") == 1.0
