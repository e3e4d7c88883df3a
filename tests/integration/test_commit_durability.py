"""PostgreSQL: revisions commit asynchronously, and every pass ends durable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from schemad.cli import exit_code
from schemad.model import Outcome
from support.databases import connection, version_rows
from support.scripts import make_project, write_revision

from .conftest import MakeApp

pytestmark = pytest.mark.postgres

DURABLE = "SELECT set_config('synchronous_commit', 'on', true), txid_current()"

# Each revision records the session's synchronous_commit as it runs.
RECORD = (
    'op.execute(sa.text("CREATE TABLE IF NOT EXISTS seen (rev text, sync text)"))\n'
    "op.execute(sa.text(\"INSERT INTO seen SELECT '{rev}', "
    "current_setting('synchronous_commit')\"))\n"
)


def _project(path: Path, count: int, *, fail_at: int | None = None) -> Path:
    make_project(path)
    down = None
    for number in range(1, count + 1):
        rev = f"r{number:04d}"
        body = RECORD.format(rev=rev)
        if number == fail_at:
            body += 'raise RuntimeError("boom")\n'
        write_revision(path, rev, down, upgrade=body)
        down = rev
    return path


@pytest.fixture
def statements() -> Iterator[list[tuple[int, str]]]:
    """Every statement and commit, as (connection id, text), in order."""
    seen: list[tuple[int, str]] = []

    def executed(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((id(conn.connection.dbapi_connection), " ".join(statement.split())))

    def committed(conn: Connection) -> None:
        seen.append((id(conn.connection.dbapi_connection), "COMMIT"))

    event.listen(Engine, "before_cursor_execute", executed)
    event.listen(Engine, "commit", committed)
    yield seen
    event.remove(Engine, "before_cursor_execute", executed)
    event.remove(Engine, "commit", committed)


def _seen(url: str) -> dict[str, str]:
    with connection(url) as conn:
        return {rev: sync for rev, sync in conn.exec_driver_sql("SELECT rev, sync FROM seen")}


def _migration_session(statements: list[tuple[int, str]]) -> list[str]:
    """What the connection that ran the revisions sent, in order."""
    owner = next(conn for conn, text in statements if text.startswith("INSERT INTO seen"))
    return [text for conn, text in statements if conn == owner]


def test_revisions_commit_asynchronously_and_the_pass_ends_durable(
    postgres_url: str,
    tmp_path: Path,
    make_app: MakeApp,
    statements: list[tuple[int, str]],
) -> None:
    """By default each revision runs with synchronous_commit off, and after the
    last one the migration session makes one synchronous commit that holds a
    transaction id, which flushes the log up to it (and so every revision)."""
    app = make_app(postgres_url, _project(tmp_path / "migrations", 3))

    result = app.reconciler.reconcile_once()

    assert result.outcome is Outcome.APPLIED
    assert _seen(postgres_url) == {"r0001": "off", "r0002": "off", "r0003": "off"}
    session = _migration_session(statements)
    last_revision = max(i for i, text in enumerate(session) if text.startswith("INSERT INTO seen"))
    assert session[last_revision + 1 :][-3:] == ["COMMIT", DURABLE, "COMMIT"]
    assert session.count(DURABLE) == 1


def test_a_failed_pass_also_ends_durable(
    postgres_url: str,
    tmp_path: Path,
    make_app: MakeApp,
    statements: list[tuple[int, str]],
) -> None:
    """The revisions committed before a failing one are made durable too."""
    # Each revision commits on its own here (no bootstrap of the empty database).
    app = make_app(
        postgres_url,
        _project(tmp_path / "migrations", 3, fail_at=3),
        bootstrap_in_one_transaction="false",
    )

    result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.FAILED, 70)
    assert version_rows(postgres_url) == ["r0002"]
    session = _migration_session(statements)
    assert session[-2:] == [DURABLE, "COMMIT"]


def test_synchronous_commits_when_turned_off(
    postgres_url: str,
    tmp_path: Path,
    make_app: MakeApp,
    statements: list[tuple[int, str]],
) -> None:
    """SCHEMAD_ASYNC_COMMIT=false: every revision waits for the disk, and no
    extra commit is needed at the end."""
    app = make_app(postgres_url, _project(tmp_path / "migrations", 2), async_commit="false")

    result = app.reconciler.reconcile_once()

    assert result.outcome is Outcome.APPLIED
    assert _seen(postgres_url) == {"r0001": "on", "r0002": "on"}
    assert DURABLE not in _migration_session(statements)
