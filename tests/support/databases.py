"""Look at a test database from the outside: tables, columns, version rows, ledger.

Every helper opens its own short-lived engine (no pool), so it never shares a
connection or a transaction with the code under test.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url


@contextmanager
def connection(url: str) -> Iterator[Connection]:
    """A connection on a throwaway engine, disposed afterwards."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    """The tables in the database (default schema)."""
    with connection(url) as conn:
        return set(sa.inspect(conn).get_table_names())


def columns(url: str, table: str) -> dict[str, dict[str, Any]]:
    """Reflected columns of ``table`` by name."""
    with connection(url) as conn:
        return {column["name"]: dict(column) for column in sa.inspect(conn).get_columns(table)}


def version_rows(url: str, table: str = "alembic_version") -> list[str]:
    """The version table's rows, sorted; [] when the table does not exist."""
    with connection(url) as conn:
        if not sa.inspect(conn).has_table(table):
            return []
        rows = conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars().all()
    return sorted(str(row) for row in rows)


def stamp(url: str, *revisions: str, table: str = "alembic_version") -> None:
    """Overwrite the version table's rows (creating it if needed)."""
    with connection(url) as conn:
        if not sa.inspect(conn).has_table(table):
            conn.execute(sa.text(f"CREATE TABLE {table} (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text(f"DELETE FROM {table}"))
        for revision in revisions:
            conn.execute(
                sa.text(f"INSERT INTO {table} (version_num) VALUES (:rev)"), {"rev": revision}
            )
        conn.commit()


def ledger_counts(url: str) -> Counter[str]:
    """How many times each revision wrote its ledger row."""
    with connection(url) as conn:
        if not sa.inspect(conn).has_table("ledger"):
            return Counter()
        rows = conn.execute(sa.text("SELECT revision FROM ledger")).scalars().all()
    return Counter(str(row) for row in rows)


@contextmanager
def sibling_database(url: str) -> Iterator[str]:
    """Another empty database next to ``url`` (same server or directory), dropped after."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        yield parsed.set(database=str(path.with_name(f"sibling_{path.name}"))).render_as_string(
            hide_password=False
        )
        return
    name = f"{parsed.database}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(parsed, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if parsed.get_backend_name() == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@contextmanager
def mariadb_user(url: str, password: str) -> Iterator[str]:
    """``url`` with a new MariaDB user who has ``password`` and every right on its
    database (root has no password here, so a password needs a user of its own)."""
    parsed = make_url(url)
    user = f"schemad_u_{uuid.uuid4().hex[:8]}"
    # Not connected to the database itself: it may be dropped before the user is.
    admin = sa.create_engine(
        parsed._replace(database=None), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    try:
        with admin.connect() as conn:
            # text() escapes '%' for PyMySQL's format parameters; exec_driver_sql would not.
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :pw"), {"pw": password})
            conn.execute(sa.text(f"GRANT ALL ON `{parsed.database}`.* TO '{user}'@'%'"))
        yield parsed.set(username=user, password=password).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()
