"""Slow locks: a migration queued behind a long transaction gives up instead of stalling the app.

A test connection reads table ``t`` in an open transaction (PostgreSQL
ACCESS SHARE, MariaDB a shared metadata lock), which conflicts with the
ALTER TABLE of revision r0002. ``schemad upgrade`` runs with
``SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS=1``: the ALTER queues, and every new
query on ``t`` queues behind it (both databases grant locks in order).
With the timeout the migration gives up after a second (exit 70 naming the
revision and the setting), so an application query issued meanwhile waits
at most that long; after the blocker commits, the next run succeeds. A
control run without the timeout shows the stall the setting prevents.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from support.databases import columns, connection, version_rows
from support.forkserver import ForkServer, Job, Started
from support.processes import clean_env
from support.scripts import make_project, write_revision

from .figures import Figures, backend_name

pytestmark = pytest.mark.reliability

DDL_LOCK_TIMEOUT_SECONDS = 1.0
# From the ALTER queueing to the process having exited: the timeout plus the
# failure being recorded and the process ending.
GIVE_UP_LIMIT_SECONDS = DDL_LOCK_TIMEOUT_SECONDS + 2.0
# An application query issued while the migration is queued waits at most
# for the migration to give up.
APP_WAIT_LIMIT_SECONDS = DDL_LOCK_TIMEOUT_SECONDS + 0.5
CONTROL_STALL_SECONDS = 2.0


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    fixture = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}[request.param]
    return str(request.getfixturevalue(fixture))


def altering_project(path: Path) -> Path:
    """r0001 creates t with rows; r0002 and r0003 each add a column to it."""
    make_project(path)
    write_revision(
        path,
        "r0001",
        None,
        upgrade=(
            'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))\n'
            'op.execute("INSERT INTO t (id) VALUES (1), (2), (3)")\n'
        ),
    )
    write_revision(
        path,
        "r0002",
        "r0001",
        message="Add c",
        upgrade='op.add_column("t", sa.Column("c", sa.Integer))',
    )
    write_revision(
        path,
        "r0003",
        "r0002",
        message="Add d",
        upgrade='op.add_column("t", sa.Column("d", sa.Integer))',
    )
    return path


@pytest.fixture
def blocker(url: str) -> Iterator[Callable[[], Connection]]:
    """Open transactions that have read t; committed (released) at the end whatever happened."""
    opened: list[tuple[sa.Engine, Connection]] = []

    def open_one() -> Connection:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        conn = engine.connect()
        conn.execute(sa.text("SELECT * FROM t")).all()  # the transaction stays open
        opened.append((engine, conn))
        return conn

    yield open_one
    for engine, conn in opened:
        conn.close()
        engine.dispose()


def queued_alter(url: str) -> bool:
    """Whether an ALTER TABLE on t is waiting for its lock right now."""
    with connection(url) as conn:
        if make_url(url).get_backend_name() == "postgresql":
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 't' AND NOT l.granted AND l.mode = 'AccessExclusiveLock' "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                )
            ).scalar_one()
        else:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM information_schema.PROCESSLIST "
                    "WHERE DB = DATABASE() AND STATE LIKE 'Waiting for table metadata lock%' "
                    "AND INFO LIKE 'ALTER TABLE t %'"
                )
            ).scalar_one()
    return bool(waiting)


def wait_until_queued(url: str, run: Started) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if queued_alter(url):
            return time.monotonic()
        assert run.running(), f"the migration ended before queueing:\n{run.output()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError("the ALTER never queued for its lock")


class AppQuery:
    """An application's read of t on its own connection, timed, on a thread."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.conn = self.engine.connect()  # connected beforehand: only the query is timed
        self.issued = 0.0
        self.done: float | None = None
        self.thread = threading.Thread(target=self._query, daemon=True)

    def start(self) -> AppQuery:
        self.issued = time.monotonic()
        self.thread.start()
        return self

    def _query(self) -> None:
        self.conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one()
        self.conn.rollback()
        self.done = time.monotonic()

    def waited(self) -> float | None:
        return None if self.done is None else self.done - self.issued

    def finish(self, timeout: float) -> float | None:
        self.thread.join(timeout)
        waited = self.waited()
        if waited is not None:
            self.conn.close()
            self.engine.dispose()
        return waited


def test_a_queued_migration_gives_up_and_does_not_stall_the_application(
    url: str,
    blocker: Callable[[], Connection],
    forkserver: ForkServer,
    figures: Figures,
    tmp_path: Path,
) -> None:
    """Exit 70 naming r0002 and the timeout, promptly; the app's query is not stalled behind it."""
    project = altering_project(tmp_path / "migrations")
    env = clean_env(database_url=url, script_location=str(project), log_format="json")
    first = forkserver.run(
        Job(["upgrade"], {**env, "SCHEMAD_TARGET_REVISION": "r0001"}, tmp_path / "r1")
    )
    assert first.returncode == 0, first.output()

    held = blocker()
    timed_env = {**env, "SCHEMAD_TARGET_REVISION": "r0002", "SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS": "1"}
    run = forkserver.start([Job(["upgrade"], timed_env, tmp_path / "timed")])[0]
    queued_at = wait_until_queued(url, run)
    app = AppQuery(url).start()
    forkserver.wait([run], 30)
    gave_up = (run.ended_at or time.monotonic()) - queued_at
    app_wait = app.finish(10)
    output = run.output()
    version_after_failure = version_rows(url)
    held.commit()

    retried = forkserver.run(
        Job(["upgrade"], {**env, "SCHEMAD_TARGET_REVISION": "r0002"}, tmp_path / "retry")
    )

    control_wait = control_stall(url, blocker, forkserver, env, tmp_path)
    figures.add(
        "slow_lock",
        backend=backend_name(url),
        timeout=DDL_LOCK_TIMEOUT_SECONDS,
        gave_up=gave_up,
        exit_code=run.returncode,
        app_wait=app_wait if app_wait is not None else float("inf"),
        control_wait=control_wait,
    )
    expected = {
        "exit_code": 70,
        "names_revision": True,
        "names_timeout": True,
        "traceback": False,
        "prompt": True,
        "app_not_stalled": True,
        "still_at": ["r0001"],
        "retried": 0,
        "column_added": True,
    }
    actual = {
        "exit_code": run.returncode,
        "names_revision": "revision r0002" in output,
        "names_timeout": "SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS" in output,
        "traceback": "Traceback" in output,
        "prompt": gave_up < GIVE_UP_LIMIT_SECONDS,
        "app_not_stalled": app_wait is not None and app_wait < APP_WAIT_LIMIT_SECONDS,
        "still_at": version_after_failure,
        "retried": retried.returncode,
        "column_added": "c" in columns(url, "t"),
    }
    assert expected == actual, (
        f"gave up after {gave_up:.2f}s, app waited {app_wait}\n{output[-3000:]}\n"
        f"{retried.output()[-2000:]}"
    )


def control_stall(
    url: str,
    blocker: Callable[[], Connection],
    forkserver: ForkServer,
    env: dict[str, str],
    tmp_path: Path,
) -> float:
    """Without the timeout, the same situation stalls the app's query behind the migration.

    Returns how long the query had been stalled when the blocker was released.
    """
    held = blocker()
    run = forkserver.start([Job(["upgrade"], env, tmp_path / "control")])[0]
    wait_until_queued(url, run)
    app = AppQuery(url).start()
    time.sleep(CONTROL_STALL_SECONDS)
    stalled_for = time.monotonic() - app.issued
    still_stalled = app.waited() is None
    held.commit()
    forkserver.wait([run], 30)
    app.finish(10)
    assert (still_stalled, run.returncode, version_rows(url)) == (True, 0, ["r0003"]), run.output()
    return stalled_for
