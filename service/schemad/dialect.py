"""EDGE: one object per database family, chosen once from the URL.

Everything that differs between PostgreSQL, MySQL/MariaDB and SQLite lives
here: connect arguments and driver tuning, the session statements of a
migration (DDL timeouts, asynchronous and durable commits), whether DDL is
transactional and a history write needs a savepoint, the lock, the SQL of
drift's scratch databases, and the advice an error message gives.
"""

from __future__ import annotations

import enum
import math
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from schemad import engine as tuning
from schemad.locks import FileLock, Lock, MySQLLock, PostgresLock

if TYPE_CHECKING:
    from schemad.database import Database

Statement = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Session:
    """What the migration session is asked to be."""

    mariadb: bool = False
    lock_seconds: float | None = None
    statement_seconds: float | None = None
    async_commit: bool = False


class Dialect:
    """What schemad does differently on one family of databases."""

    name: ClassVar[str]
    transactional_ddl: ClassVar[bool] = True
    """Whether a failed revision's DDL rolls back with its transaction."""
    history_needs_savepoint: ClassVar[bool] = False
    """Whether any failed statement aborts the whole transaction, so a
    history write inside a revision's transaction needs a savepoint."""
    file_based: ClassVar[bool] = False
    durable_commit: ClassVar[str | None] = None
    """A statement whose synchronous commit makes earlier asynchronous ones
    durable; None where commits are always synchronous."""

    def connect_args(self, url: URL, timeout_seconds: float) -> dict[str, Any]:
        """Driver arguments: connect timeout, keepalives, identification."""
        return {}

    def tune(self, engine: Engine) -> None:
        """Driver settings SQLAlchemy has no argument for."""

    def adopt(self, conn: Connection, resources: ExitStack) -> None:
        """What :meth:`tune` does for schemad's engine, on one connection that
        env.py opened itself; undone when ``resources`` closes."""

    def session_statements(self, session: Session) -> tuple[list[Statement], list[str]]:
        """The migration session's settings, and the timeouts it cannot apply."""
        unsupported = [
            name
            for name, seconds in (
                ("SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS", session.lock_seconds),
                ("SCHEMAD_STATEMENT_TIMEOUT_SECONDS", session.statement_seconds),
            )
            if seconds is not None
        ]
        return [], unsupported

    def new_lock(self, database: Database) -> Lock:
        """A lock object for ``database`` (not yet taken)."""
        raise NotImplementedError

    def same_database(self, ours: Connection, theirs: Connection) -> bool:
        """Whether ``theirs`` is a session on the database ``ours`` is on.

        Asked of the database itself, not of the URLs (a service name and an
        IP, or two proxies, name one database differently): ``ours`` takes a
        lock on a random key, and ``theirs`` sees it held only when both are
        in one lock domain. Neither is left in a transaction it was not in.
        """
        raise NotImplementedError

    def connect_advice(self) -> str:
        return "check that the server is up and the host, port, user and password are right"

    def fault(self, exc: BaseException) -> Fault | None:
        """The kind of a driver error, where schemad knows better than the driver."""
        return None

    def explain_error(self, exc: BaseException) -> str | None:
        """What a driver error means here, and what to do about it."""
        fault = self.fault(exc)
        return _ADVICE[fault] if fault is not None else None

    def create_scratch(self, name: str) -> str:
        return f"CREATE DATABASE {name}"

    def drop_scratch(self, name: str) -> str:
        return f"DROP DATABASE IF EXISTS {name}"

    def grant_scratch(self, user: str, prefix: str) -> str:
        """The grant that lets ``user`` create drift's scratch databases."""
        return f"GRANT ALL ON `{prefix}%`.* TO '{user}'"


def _timeout_seconds(connect_timeout_seconds: float) -> int:
    return max(1, math.ceil(connect_timeout_seconds))


def _driver_error(exc: BaseException) -> tuple[str | None, object]:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    errno = orig.args[0] if orig is not None and orig.args else None
    return sqlstate, errno


class Fault(enum.Enum):
    """Driver errors schemad tells apart, whatever the database."""

    LOCK_TIMEOUT = "lock_timeout"
    STATEMENT_TIMEOUT = "statement_timeout"
    READ_ONLY = "read_only"
    MISSING_SCHEMA = "missing_schema"
    NEEDS_AUTOCOMMIT = "needs_autocommit"


_ADVICE = {
    Fault.LOCK_TIMEOUT: (
        "the table lock was not granted within SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS "
        "(another transaction holds it); the next pass retries"
    ),
    Fault.STATEMENT_TIMEOUT: "a statement ran past SCHEMAD_STATEMENT_TIMEOUT_SECONDS",
    Fault.READ_ONLY: (
        "the database is read-only for schemad (a replica, a read-only user, or a "
        "file it may not write); point SCHEMAD_DATABASE_URL at the primary or grant "
        "write access (SQLite: to the file and its directory)"
    ),
    Fault.MISSING_SCHEMA: (
        "the schema it names does not exist; create it, or fix "
        "SCHEMAD_VERSION_TABLE_SCHEMA (or the schema env.py configures)"
    ),
    Fault.NEEDS_AUTOCOMMIT: (
        "the statement cannot run inside a transaction; list the revision in "
        "SCHEMAD_AUTOCOMMIT_REVISIONS to run it outside one (see the README)"
    ),
}


class PostgresDialect(Dialect):
    name = "postgresql"
    history_needs_savepoint = True
    # A transaction that holds a transaction id, committed synchronously,
    # flushes the write-ahead log up to it, and so every earlier commit.
    durable_commit = "SELECT set_config('synchronous_commit', 'on', true), txid_current()"

    def connect_args(self, url: URL, timeout_seconds: float) -> dict[str, Any]:
        return {
            "connect_timeout": _timeout_seconds(timeout_seconds),
            "application_name": tuning.instance_name()[:63],
            "keepalives": 1,
            "keepalives_idle": tuning.KEEPALIVE_IDLE_SECONDS,
            "keepalives_interval": tuning.KEEPALIVE_INTERVAL_SECONDS,
            "keepalives_count": tuning.KEEPALIVE_COUNT,
            "tcp_user_timeout": tuning.TCP_USER_TIMEOUT_SECONDS * 1000,
        }

    def session_statements(self, session: Session) -> tuple[list[Statement], list[str]]:
        statements: list[Statement] = [
            (
                "SELECT set_config(:name, :value, false)",
                {"name": name, "value": f"{max(1, round(seconds * 1000))}ms"},
            )
            for name, seconds in (
                ("lock_timeout", session.lock_seconds),
                ("statement_timeout", session.statement_seconds),
            )
            if seconds is not None
        ]
        if session.async_commit:
            # The session's commits skip the wait for the disk; the pass's last
            # commit waits (durable_commit). Settable by any role; crash-safe:
            # a server crash loses only the newest commits, whole.
            statements.append(("SELECT set_config('synchronous_commit', 'off', false)", {}))
        return statements, []

    def new_lock(self, database: Database) -> Lock:
        return PostgresLock(database)

    def same_database(self, ours: Connection, theirs: Connection) -> bool:
        key = {"key": secrets.randbits(62)}
        with _statements(ours), _statements(theirs):
            ours.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                # Advisory locks belong to one database of one server.
                free = theirs.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar()
                if free:
                    theirs.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
            finally:
                ours.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
        return not free

    def fault(self, exc: BaseException) -> Fault | None:
        sqlstate, _errno = _driver_error(exc)
        return _POSTGRES_FAULTS.get(sqlstate or "")

    def drop_scratch(self, name: str) -> str:
        return f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"

    def grant_scratch(self, user: str, prefix: str) -> str:
        return f"ALTER ROLE {user} CREATEDB"


class MySQLDialect(Dialect):
    name = "mysql"
    transactional_ddl = False

    def connect_args(self, url: URL, timeout_seconds: float) -> dict[str, Any]:
        timeout = _timeout_seconds(timeout_seconds)
        args: dict[str, Any] = {"connect_timeout": timeout}
        if url.get_driver_name() == "pymysql":
            # PyMySQL's connect_timeout covers the TCP connect only: a peer
            # that accepts and never greets would hold the handshake forever.
            # These bound it; tune() lifts them once connected, so a long
            # revision is never cut off by them.
            args.update(read_timeout=timeout, write_timeout=timeout)
        if tuning.local_pymysql_without_tls_options(url):
            args["ssl_disabled"] = True
        return args

    def tune(self, engine: Engine) -> None:
        tuning.keep_mysql_sockets_alive(engine)
        if engine.url.get_driver_name() == "pymysql":
            tuning.unbound_pymysql_reads_once_connected(engine)

    def session_statements(self, session: Session) -> tuple[list[Statement], list[str]]:
        statements: list[Statement] = []
        unsupported: list[str] = []
        lock_seconds, statement_seconds = session.lock_seconds, session.statement_seconds
        if lock_seconds is not None:
            statements.append(
                ("SET SESSION lock_wait_timeout = :value", {"value": math.ceil(lock_seconds)})
            )
        if statement_seconds is not None and session.mariadb:
            statements.append(
                ("SET SESSION max_statement_time = :value", {"value": statement_seconds})
            )
        elif statement_seconds is not None:
            unsupported.append("SCHEMAD_STATEMENT_TIMEOUT_SECONDS (MySQL limits only SELECTs)")
        return statements, unsupported

    def new_lock(self, database: Database) -> Lock:
        return MySQLLock(database)

    def same_database(self, ours: Connection, theirs: Connection) -> bool:
        name = {"name": f"schemad:probe:{secrets.token_hex(8)}"}
        with _statements(ours), _statements(theirs):
            got, our_id, our_database = ours.execute(
                sa.text("SELECT GET_LOCK(:name, 0), CONNECTION_ID(), DATABASE()"), name
            ).one()
            try:
                # Lock names are server-wide: the holder's id says "same server".
                holder, their_database = theirs.execute(
                    sa.text("SELECT IS_USED_LOCK(:name), DATABASE()"), name
                ).one()
            finally:
                ours.execute(sa.text("SELECT RELEASE_LOCK(:name)"), name)
        return bool(got) and holder == our_id and their_database == our_database

    def fault(self, exc: BaseException) -> Fault | None:
        _sqlstate, errno = _driver_error(exc)
        return _MYSQL_FAULTS.get(errno) if isinstance(errno, int) else None


class SQLiteDialect(Dialect):
    name = "sqlite"
    file_based = True

    def connect_args(self, url: URL, timeout_seconds: float) -> dict[str, Any]:
        return {"timeout": timeout_seconds}

    def tune(self, engine: Engine) -> None:
        tuning.make_sqlite_ddl_transactional(engine)

    def adopt(self, conn: Connection, resources: ExitStack) -> None:
        tuning.make_sqlite_connection_ddl_transactional(conn, resources)

    def new_lock(self, database: Database) -> Lock:
        return FileLock(database)

    def same_database(self, ours: Connection, theirs: Connection) -> bool:
        with _statements(ours), _statements(theirs):
            mine, their_file = _sqlite_file(ours), _sqlite_file(theirs)
        return bool(mine) and os.path.realpath(mine) == os.path.realpath(their_file)

    def connect_advice(self) -> str:
        return (
            "check that the file's directory exists and that schemad may write "
            "there (SQLite creates the file and a lock file beside it)"
        )

    def fault(self, exc: BaseException) -> Fault | None:
        orig = getattr(exc, "orig", None)
        if getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY:
            return Fault.READ_ONLY
        if "readonly database" in str(orig):  # Pythons whose sqlite3 has no error codes
            return Fault.READ_ONLY
        return None


@contextmanager
def _statements(conn: Connection) -> Iterator[None]:
    """Run a few statements on ``conn`` and leave it as it was: a transaction
    it was not in is rolled back (Alembic must find the connection clean)."""
    was_in_transaction = conn.in_transaction()
    try:
        yield
    finally:
        if not was_in_transaction and conn.in_transaction():
            conn.rollback()


def _sqlite_file(conn: Connection) -> str:
    for _seq, name, path in conn.exec_driver_sql("PRAGMA database_list").all():
        if name == "main":
            return str(path or "")
    return ""


_POSTGRES_FAULTS = {
    "55P03": Fault.LOCK_TIMEOUT,  # lock_not_available
    "57014": Fault.STATEMENT_TIMEOUT,  # query_canceled
    "25006": Fault.READ_ONLY,  # read_only_sql_transaction (a hot standby)
    "3F000": Fault.MISSING_SCHEMA,  # invalid_schema_name
    "25001": Fault.NEEDS_AUTOCOMMIT,  # active_sql_transaction (CREATE INDEX CONCURRENTLY)
}
_MYSQL_FAULTS = {
    1205: Fault.LOCK_TIMEOUT,  # lock wait timeout (lock_wait_timeout)
    1969: Fault.STATEMENT_TIMEOUT,  # MariaDB max_statement_time
    3024: Fault.STATEMENT_TIMEOUT,  # MySQL max_execution_time
    1290: Fault.READ_ONLY,  # --read-only
    1836: Fault.READ_ONLY,  # read-only mode
    1049: Fault.MISSING_SCHEMA,  # unknown database (a schema, on MySQL)
}

_DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgresDialect,
    "mysql": MySQLDialect,
    "mariadb": MySQLDialect,
    "sqlite": SQLiteDialect,
}


def dialect_for(url: URL) -> Dialect:
    """The dialect of ``url``'s database (settings allow no other backends)."""
    return _DIALECTS[url.get_backend_name()]()
