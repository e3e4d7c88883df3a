"""Fresh, uniquely named databases on the shared servers, and how to reach them.

PostgreSQL and MariaDB databases are created on the servers of DESIGN.md
("Databases in tests") and dropped afterwards; a SQLite database is a file
that does not exist yet. Each :class:`FreshDatabase` also knows the command
lines of the raw-SQL floor: the database's own CLI client in one session
(``psql``, ``mariadb``), or for SQLite Python's ``sqlite3`` module in one
connection.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

BACKENDS = ("postgresql", "mariadb", "sqlite")
POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER = "127.0.0.1", 5432, "postgres"
MARIADB_HOST, MARIADB_PORT, MARIADB_USER = "127.0.0.1", 3306, "root"
POSTGRES_ADMIN_URL = f"postgresql+psycopg://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
MARIADB_ADMIN_URL = f"mysql+pymysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/test"

# Runs a SQL file through the sqlite3 module in one connection, autocommit
# mode: the file's own BEGIN/COMMIT are the transactions.
_SQLITE_SCRIPT = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.executescript(open(sys.argv[2]).read())\n"
    "conn.close()\n"
)
_SQLITE_SELECT_1 = (
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "conn.execute('SELECT 1').fetchall()\n"
    "conn.close()\n"
)


@dataclass(frozen=True)
class FreshDatabase:
    """One empty database: its SQLAlchemy URL and its floor command lines."""

    backend: str
    url: str
    name: str

    def floor_command(self, sql_file: Path) -> tuple[list[str], Path | None]:
        """argv that runs ``sql_file`` in one session, and the file to feed as stdin."""
        if self.backend == "postgresql":
            return [*self._psql(), "-f", str(sql_file)], None
        if self.backend == "mariadb":
            return self._mariadb(), sql_file
        return [sys.executable, "-c", _SQLITE_SCRIPT, self.name, str(sql_file)], None

    def select_1_command(self) -> list[str]:
        """argv of the smallest whole-process round trip: ``SELECT 1``."""
        if self.backend == "postgresql":
            return [*self._psql(), "-c", "SELECT 1"]
        if self.backend == "mariadb":
            return [*self._mariadb(), "-e", "SELECT 1"]
        return [sys.executable, "-c", _SQLITE_SELECT_1, self.name]

    def _psql(self) -> list[str]:
        return [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            POSTGRES_HOST,
            "-p",
            str(POSTGRES_PORT),
            "-U",
            POSTGRES_USER,
            "-d",
            self.name,
        ]

    def _mariadb(self) -> list[str]:
        return [
            "mariadb",
            "--no-defaults",
            "--batch",
            "-h",
            MARIADB_HOST,
            "-P",
            str(MARIADB_PORT),
            "-u",
            MARIADB_USER,
            self.name,
        ]


def unique_name() -> str:
    return f"schemad_bench_{uuid.uuid4().hex[:10]}"


@contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[FreshDatabase]:
    """An empty database on ``backend``, dropped (or deleted) afterwards."""
    name = unique_name()
    if backend == "sqlite":
        path = workdir / f"{name}.db"
        try:
            yield FreshDatabase(backend, f"sqlite:///{path}", str(path))
        finally:
            for leftover in workdir.glob(f"{name}.db*"):
                leftover.unlink(missing_ok=True)
        return
    if backend == "postgresql":
        admin_url, url = POSTGRES_ADMIN_URL, POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    elif backend == "mariadb":
        admin_url, url = MARIADB_ADMIN_URL, MARIADB_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        drop = f"DROP DATABASE IF EXISTS {name}"
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _admin(admin_url, f"CREATE DATABASE {name}")
    try:
        yield FreshDatabase(backend, url, name)
    finally:
        _admin(admin_url, drop)


def _admin(url: str, statement: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def stamp_head(url: str, head: str) -> None:
    """Make a database 'already at head' without applying anything: the version
    table as Alembic creates it, holding ``head`` (a no-op reads nothing else).
    """
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            )
            conn.execute(
                sa.text("INSERT INTO alembic_version (version_num) VALUES (:head)"),
                {"head": head},
            )
    finally:
        engine.dispose()


def contents(url: str) -> tuple[tuple[str, ...], int]:
    """The version table's rows (sorted) and how many ``t_*`` tables exist."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            rows: tuple[str, ...] = ()
            if "alembic_version" in names:
                found = conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                rows = tuple(sorted(str(row) for row in found.scalars()))
    finally:
        engine.dispose()
    return rows, sum(1 for name in names if name.startswith("t_"))


def available(backend: str) -> str | None:
    """None when ``backend`` can be used here, else why not."""
    if backend == "sqlite":
        return None
    try:
        _admin(POSTGRES_ADMIN_URL if backend == "postgresql" else MARIADB_ADMIN_URL, "SELECT 1")
    except sa.exc.SQLAlchemyError as exc:
        return f"{backend} server not reachable: {str(exc).splitlines()[0]}"
    client = "psql" if backend == "postgresql" else "mariadb"
    if shutil.which(client) is None:
        return f"the {client} client is not on PATH (needed for the raw-SQL floor)"
    return None
