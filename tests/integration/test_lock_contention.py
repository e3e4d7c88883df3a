"""The migration lock: a held lock makes a pass time out and name its holder."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from schemad.cli import exit_code
from schemad.database import Database
from schemad.engine import instance_name
from schemad.model import Outcome
from support.databases import connection, sibling_database, stamp, version_rows
from support.scripts import tables_project

from .conftest import MakeApp

HolderFactory = Callable[[str], Database]


@pytest.fixture
def holder_factory() -> Iterator[HolderFactory]:
    """Return ``make(url) -> Database``, a second instance that can hold the lock."""
    made: list[Database] = []

    def make(url: str) -> Database:
        database = Database(make_url(url))
        made.append(database)
        return database

    yield make
    for database in made:
        database.dispose()


def test_lock_is_free_when_nobody_holds_it(db_url: str, holder_factory: HolderFactory) -> None:
    """lock_holder() says None while no instance holds the lock."""
    assert holder_factory(db_url).lock_holder() is None


def test_lock_holder_is_reported_while_held(db_url: str, holder_factory: HolderFactory) -> None:
    """lock_holder() names someone while the lock is held, and None once it is released."""
    holder = holder_factory(db_url)
    observer = holder_factory(db_url)

    with holder.lock(1.0):
        during = observer.lock_holder()
    after = observer.lock_holder()

    assert (during is not None, after) == (True, None)


def test_pass_times_out_while_another_instance_holds_the_lock(
    db_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """A pass that cannot get the lock within the bound ends LOCK_TIMEOUT, exit 75, untouched."""
    tables_project(tmp_path / "migrations", 2)
    app = make_app(db_url, tmp_path / "migrations", lock_wait_seconds="0.5")

    with holder_factory(db_url).lock(1.0):
        result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result), result.applied) == (Outcome.LOCK_TIMEOUT, 75, ())
    assert result.error is not None
    assert "SCHEMAD_LOCK_WAIT_SECONDS" in result.error
    assert result.lock_holder is not None
    assert result.lock_holder.description in result.error
    assert version_rows(db_url) == []


def test_waiter_stops_waiting_once_the_holder_reaches_the_target(
    db_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """A pass waiting for the lock looks at the version table now and then: when
    the holder has brought the database to the target, it ends in sync without
    ever taking the lock (the holder still has it when the pass returns)."""
    tables_project(tmp_path / "migrations", 2)
    app = make_app(db_url, tmp_path / "migrations", lock_wait_seconds="30")
    waiting = threading.Event()
    app.reconciler.set_hooks(on_lock_wait=lambda _holder, _waited: waiting.set())
    results = []

    with holder_factory(db_url).lock(1.0):
        waiter = threading.Thread(target=lambda: results.append(app.reconciler.reconcile_once()))
        waiter.start()
        assert waiting.wait(10), "the pass never waited for the lock"
        stamp(db_url, "r0002")  # what the holder's pass would leave behind
        waiter.join(10)
        returned_while_held = not waiter.is_alive()

    assert returned_while_held
    [result] = results
    assert (result.outcome, exit_code(result), result.applied) == (Outcome.IN_SYNC, 0, ())
    assert result.heads_after == ("r0002",)
    assert 0 < result.lock_wait_seconds < 10


@pytest.mark.postgres
def test_postgres_holder_is_named_by_application_name(
    postgres_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """On PostgreSQL the waiter names the holder's application_name, schemad:<host>:<pid>."""
    tables_project(tmp_path / "migrations", 1)
    app = make_app(postgres_url, tmp_path / "migrations", lock_wait_seconds="0.3")

    with holder_factory(postgres_url).lock(1.0):
        result = app.reconciler.reconcile_once()

    assert result.error is not None
    assert result.lock_holder is not None
    assert result.lock_holder.description.startswith(instance_name()[:63] + " (backend pid ")
    assert instance_name()[:63] in result.error


@pytest.mark.mariadb
def test_mariadb_holder_is_named_by_connection_id(
    mariadb_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """On MariaDB the waiter names the connection that holds GET_LOCK."""
    tables_project(tmp_path / "migrations", 1)
    app = make_app(mariadb_url, tmp_path / "migrations", lock_wait_seconds="0.3")
    holder = holder_factory(mariadb_url)

    with holder.lock(1.0):
        with connection(mariadb_url) as conn:
            holder_id = conn.execute(
                sa.text("SELECT IS_USED_LOCK(:name)"), {"name": holder.lock_name()}
            ).scalar()
        result = app.reconciler.reconcile_once()

    assert holder_id is not None
    assert result.error is not None
    assert f"connection {holder_id} from " in result.error


def test_sqlite_holder_is_named_by_the_lock_file_note(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """On SQLite the waiter names the holder from the note in the lock file beside the db."""
    tables_project(tmp_path / "migrations", 1)
    app = make_app(sqlite_url, tmp_path / "migrations", lock_wait_seconds="0.3")
    lock_file = Path(f"{make_url(sqlite_url).database}.schemad-lock")

    with holder_factory(sqlite_url).lock(1.0):
        note = lock_file.read_text()
        result = app.reconciler.reconcile_once()

    assert note.startswith(instance_name() + " ")
    assert result.lock_holder is not None
    assert instance_name() == result.lock_holder.description
    assert result.error is not None
    assert instance_name() in result.error


def test_pass_proceeds_once_the_lock_is_released(
    db_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """After the holder lets go, the next pass takes the lock and applies."""
    tables_project(tmp_path / "migrations", 2)
    app = make_app(db_url, tmp_path / "migrations", lock_wait_seconds="0.3")
    with holder_factory(db_url).lock(1.0):
        assert app.reconciler.reconcile_once().outcome == Outcome.LOCK_TIMEOUT

    result = app.reconciler.reconcile_once()

    assert result.outcome == Outcome.APPLIED
    assert version_rows(db_url) == ["r0002"]


def test_lock_name_includes_the_database_name(db_url: str, holder_factory: HolderFactory) -> None:
    """The lock is named after the database, since lock names are server-wide."""
    database = holder_factory(db_url)

    name = database.lock_name()

    assert str(Path(make_url(db_url).database or "").name) in name


def test_two_databases_on_one_server_do_not_block_each_other(
    db_url: str, tmp_path: Path, make_app: MakeApp, holder_factory: HolderFactory
) -> None:
    """Holding one database's lock does not stop a pass on another database of the same server."""
    tables_project(tmp_path / "migrations", 2)
    with sibling_database(db_url) as other:
        app = make_app(other, tmp_path / "migrations", lock_wait_seconds="0.5")
        with holder_factory(db_url).lock(1.0):
            result = app.reconciler.reconcile_once()
        rows = version_rows(other)

    assert (result.outcome, rows) == (Outcome.APPLIED, ["r0002"])
