"""EDGE: the database: engine, version table reads and the migration lock.

The lock lives on its own connection and is released by the database (or
the kernel, for SQLite) when the holder dies; there is never a lock row.

- PostgreSQL: a session advisory lock, polled with ``pg_try_advisory_lock``
  in autocommit so no transaction is open while waiting (a waiting
  transaction deadlocks ``CREATE INDEX CONCURRENTLY`` in the holder).
- MySQL/MariaDB: ``GET_LOCK`` named after the database, since lock names are
  server-wide.
- SQLite: ``flock`` on a file beside the database file.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError

from schemad.errors import ConfigError, DatabaseUnavailableError, LockTimeoutError
from schemad.model import DbState, LockHolder

LOCK_POLL_SECONDS = 0.1
HOLDER_LOOKUP_SECONDS = 1.0
NEEDED_CHECK_SECONDS = 0.5
# A peer that stops answering (blackholed network) is given up on after about
# idle + interval * count seconds when idle, TCP_USER_TIMEOUT when sending.
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_SECONDS = 30
# Query keys through which a URL asks PyMySQL for TLS: ssl_* directly, and
# read_default_file/read_default_group, whose option file may hold ssl-ca etc.
_MYSQL_TLS_QUERY_PREFIXES = ("ssl", "read_default")
WaitCallback = Callable[[LockHolder | None, float], None]


class LockNotNeeded(Exception):
    """While we waited, the lock holder did the work we wanted the lock for."""

    def __init__(self, waited_seconds: float) -> None:
        super().__init__(f"not needed after {waited_seconds:.3f}s")
        self.waited_seconds = waited_seconds


def instance_name() -> str:
    """Who we are, as other instances will see it: host (pod) and pid."""
    return f"schemad:{socket.gethostname()}:{os.getpid()}"


class Database:
    """One database: its engine, its version table and its migration lock."""

    def __init__(
        self,
        url: URL,
        *,
        version_table: str = "alembic_version",
        version_table_schema: str | None = None,
        connect_timeout_seconds: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.backend = url.get_backend_name()
        self.version_table = version_table
        self.version_table_schema = version_table_schema
        self._sleep = sleep
        self._clock = clock
        self._secrets = tuple(s for s in {url.password} if s and len(str(s)) >= 3)
        self.connect_timeout_seconds = connect_timeout_seconds
        self.engine = _create_engine(url, connect_timeout_seconds)
        self._version = sa.table(
            version_table, sa.column("version_num"), schema=version_table_schema
        )

    @property
    def masked_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def redact(self, text: str) -> str:
        """Replace the password wherever it appears in ``text``."""
        for secret in self._secrets:
            text = text.replace(str(secret), "***")
        return text

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """Open a connection, translating connect failures.

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
        """
        try:
            conn = self.engine.connect()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to {self.masked_url}: {self._describe(exc)}; "
                f"{self._connect_advice()}"
            ) from exc
        try:
            yield conn
        finally:
            conn.close()

    def read_state(self) -> DbState:
        """Read the head revision(s) from the version table: one query.

        A missing version table is an empty database (no revision). A pooled
        connection the server has dropped (a restart) is retried once on a
        fresh one, which is cheaper than pinging before every use.

        Raises:
            DatabaseUnavailableError: the database cannot be reached, does not
                answer within the connect timeout, or the table cannot be read.
        """
        for attempt in (1, 2):
            with self.connect() as conn, self.deadline(conn) as watchdog:
                try:
                    return self._select_heads(conn)
                except DBAPIError as exc:
                    if watchdog.fired:
                        raise self._no_answer(exc) from exc
                    if exc.connection_invalidated:
                        if attempt == 1:
                            continue
                        raise self._unavailable(exc) from exc
                    conn.rollback()
                    return self._empty_or_unreadable(conn, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _empty_or_unreadable(self, conn: Connection, exc: DBAPIError) -> DbState:
        exists = self._has_version_table(conn)
        if exists is False:
            return DbState(())
        if exists:
            # Another instance may have created the table since our SELECT.
            with suppress(DBAPIError):
                return self._select_heads(conn)
            conn.rollback()
        raise DatabaseUnavailableError(
            f"cannot read the version table {self._table_name()} on "
            f"{self.masked_url}: {self._describe(exc)}; check that the URL names "
            "the right database and that the user may read the table"
        ) from exc

    @contextmanager
    def deadline(self, conn: Connection) -> Iterator[_Watchdog]:
        """Bound a short exchange on ``conn`` by the connect timeout.

        A peer that accepts connections but never answers (a blackholed
        network behind a proxy that still acknowledges TCP) would block a
        read forever: keepalives are answered and no client-side read timeout
        exists in the drivers. The watchdog shuts the socket down instead,
        which makes the blocked read fail at once.
        """
        watchdog = _Watchdog(conn, self.connect_timeout_seconds)
        with watchdog:
            yield watchdog

    def _no_answer(self, exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"database {self.masked_url} did not answer within "
            f"{self.connect_timeout_seconds:g}s (SCHEMAD_CONNECT_TIMEOUT_SECONDS); is the "
            "network, or a proxy in front of the database, silently dropping traffic?"
        )

    def _select_heads(self, conn: Connection) -> DbState:
        rows = conn.execute(sa.select(self._version.c.version_num)).scalars().all()
        conn.rollback()
        return DbState(tuple(sorted(str(row) for row in rows)))

    def migration_connection(self) -> Connection:
        """A fresh connection for Alembic, with no transaction begun on it.

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
        """
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from exc

    def apply_session_timeouts(
        self,
        conn: Connection,
        *,
        lock_timeout_seconds: float | None,
        statement_timeout_seconds: float | None,
        async_commit: bool = False,
    ) -> list[str]:
        """Set DDL safety timeouts (and, on PostgreSQL, asynchronous commits)
        on the migration session, then end the transaction that setting them
        began (Alembic must start clean).

        Returns:
            Timeouts this database cannot apply, for a warning.

        Raises:
            DatabaseUnavailableError: the settings could not be sent.
        """
        statements, unsupported = _timeout_statements(
            self.backend,
            bool(getattr(conn.dialect, "is_mariadb", False)),
            lock_timeout_seconds,
            statement_timeout_seconds,
        )
        if async_commit and self.backend == "postgresql":
            statements.append(_SET_ASYNC_COMMIT)
        with self.deadline(conn) as watchdog:
            try:
                for sql, params in statements:
                    conn.execute(sa.text(sql), params)
                conn.commit()
            except SQLAlchemyError as exc:
                if watchdog.fired:
                    raise self._no_answer(exc) from exc
                raise self._unavailable(exc) from exc
        return unsupported

    def make_durable(self, conn: Connection) -> None:
        """Wait until every commit made on ``conn`` is on disk (PostgreSQL
        with asynchronous commits; elsewhere there is nothing to wait for).

        One synchronous commit of a transaction that holds a transaction id
        flushes the write-ahead log up to it, and so every earlier commit.

        Raises:
            DatabaseUnavailableError: the database did not confirm the flush.
        """
        if self.backend != "postgresql":
            return
        with self.deadline(conn) as watchdog:
            try:
                conn.execute(sa.text(_DURABLE_COMMIT))
                conn.commit()
            except SQLAlchemyError as exc:
                if conn.in_transaction():
                    conn.rollback()
                if watchdog.fired:
                    raise self._no_answer(exc) from exc
                raise self._unavailable(exc) from exc

    @contextmanager
    def statement_guard(
        self, conn: Connection, statement_timeout_seconds: float | None
    ) -> Iterator[StatementGuard]:
        """Bound every statement on the migration connection, client-side.

        The server's statement timeout cannot fire for a statement that never
        reached it (a blackholed network behind a proxy that still acknowledges
        TCP). With a statement timeout set, each statement gets a watchdog of
        that timeout plus the connect timeout; without one, a revision may take
        as long as it takes and nothing is bounded.
        """
        guard = StatementGuard(conn, statement_timeout_seconds, self.connect_timeout_seconds)
        if statement_timeout_seconds is None:
            yield guard
            return
        event.listen(conn, "before_cursor_execute", guard.before)
        event.listen(conn, "after_cursor_execute", guard.after)
        try:
            yield guard
        finally:
            guard.disarm()
            event.remove(conn, "before_cursor_execute", guard.before)
            event.remove(conn, "after_cursor_execute", guard.after)

    @property
    def transactional_ddl(self) -> bool:
        """Whether a failed revision's DDL rolls back (not on MySQL/MariaDB)."""
        return self.backend not in ("mysql", "mariadb")

    def explain_failure(self, exc: BaseException) -> str | None:
        """What a revision's failure means here, beyond the driver's message."""
        timeout = self.explain_timeout(exc)
        if self.transactional_ddl:
            return timeout
        partial = (
            "this database cannot roll DDL back, so statements of the revision that "
            "ran before the failure stay applied: check the schema before running again"
        )
        return f"{timeout}; {partial}" if timeout else partial

    @staticmethod
    def explain_timeout(exc: BaseException) -> str | None:
        """Name the DDL safety timeout behind a failure, if one caused it."""
        orig = getattr(exc, "orig", None)
        sqlstate = getattr(orig, "sqlstate", None)
        errno = orig.args[0] if orig is not None and orig.args else None
        if sqlstate == "55P03" or errno == 1205:
            return (
                "the table lock was not granted within SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS "
                "(another transaction holds it); the next pass retries"
            )
        if sqlstate == "57014" or errno in (1969, 3024):
            return "a statement ran past SCHEMAD_STATEMENT_TIMEOUT_SECONDS"
        return None

    @contextmanager
    def lock(
        self,
        wait_seconds: float,
        on_wait: WaitCallback | None = None,
        needed: Callable[[], bool] | None = None,
    ) -> Iterator[float]:
        """Hold the migration lock; yields the seconds spent waiting for it.

        Args:
            wait_seconds: how long another instance may keep it from us.
            on_wait: told who holds it, and for how long we waited, while waiting.
            needed: asked every ``NEEDED_CHECK_SECONDS`` while waiting; False
                (the holder did the work) ends the wait with LockNotNeeded.

        Raises:
            LockNotNeeded: ``needed`` said the lock is no longer needed.
            LockTimeoutError: another instance held it for ``wait_seconds``.
            DatabaseUnavailableError: the database cannot be reached.
        """
        backend = self._backend()
        with backend.session():
            try:
                waited = self._acquire(backend, wait_seconds, on_wait, needed)
            except SQLAlchemyError as exc:
                raise self._unavailable(exc) from exc
            try:
                yield waited
            finally:
                # If the session died, the server already dropped the lock.
                with suppress(SQLAlchemyError):
                    backend.release()

    def _acquire(
        self,
        backend: _Lock,
        wait_seconds: float,
        on_wait: WaitCallback | None,
        needed: Callable[[], bool] | None,
    ) -> float:
        started = checked = self._clock()
        deadline = started + wait_seconds
        holder: LockHolder | None = None
        looked = float("-inf")
        while not backend.try_acquire():
            now = self._clock()
            if needed is not None and now - checked >= NEEDED_CHECK_SECONDS:
                checked = now
                if not needed():
                    raise LockNotNeeded(now - started)
            # Asking who holds the lock reads the server's lock table (on
            # PostgreSQL, pg_locks takes every lock partition): not on every
            # poll, or a crowd of waiters slows down the migration they wait for.
            if now - looked >= HOLDER_LOOKUP_SECONDS or now >= deadline:
                holder, looked = backend.holder(), now
            if now >= deadline:
                raise LockTimeoutError(
                    f"the migration lock is still held by {_who(holder)} after "
                    f"{wait_seconds:g}s (SCHEMAD_LOCK_WAIT_SECONDS); another "
                    "instance is migrating. Retry later, or if the holder is "
                    "gone for good see 'Breaking a stuck lock' in the README",
                    holder=holder.description if holder else None,
                )
            if on_wait is not None:
                on_wait(holder, now - started)
            self._sleep(min(LOCK_POLL_SECONDS, max(deadline - now, 0.0)))
        return self._clock() - started

    def lock_holder(self) -> LockHolder | None:
        """Who holds the migration lock now, if anyone (for `status`).

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
        """
        backend = self._backend()
        with backend.session():
            try:
                return backend.current_holder()
            except SQLAlchemyError as exc:
                raise self._unavailable(exc) from exc

    def _backend(self) -> _Lock:
        if self.backend == "sqlite":
            return _FileLock(self)
        if self.backend == "postgresql":
            return _PostgresLock(self)
        return _MySQLLock(self)

    def lock_name(self) -> str:
        """A name for this database's lock, unique across a server."""
        database = self.url.database or ""
        if self.backend == "sqlite":
            database = str(Path(database).resolve())
        return f"schemad:{database}:{self._table_name()}"

    def _connect_advice(self) -> str:
        if self.backend == "sqlite":
            return (
                "check that the file's directory exists and that schemad may write "
                "there (SQLite creates the file and a lock file beside it)"
            )
        return "check that the server is up and the host, port, user and password are right"

    def _table_name(self) -> str:
        if self.version_table_schema:
            return f"{self.version_table_schema}.{self.version_table}"
        return self.version_table

    def _has_version_table(self, conn: Connection) -> bool | None:
        """Whether the version table exists; None when even that cannot be read
        (e.g. a file that is not a SQLite database)."""
        try:
            found = sa.inspect(conn).has_table(self.version_table, schema=self.version_table_schema)
        except DBAPIError:
            return None
        finally:
            conn.rollback()
        return bool(found)

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"database {self.masked_url} is unavailable: {self._describe(exc)}"
        )

    def _describe(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip().splitlines()
        first = text[0] if text else type(orig).__name__
        return self.redact(f"{type(orig).__name__}: {first}")


class StatementGuard:
    """One watchdog per statement on the migration connection."""

    def __init__(
        self, conn: Connection, statement_seconds: float | None, connect_seconds: float
    ) -> None:
        self.conn = conn
        self.bound_seconds = (statement_seconds or 0.0) + connect_seconds
        self.fired = False
        self._current: _Watchdog | None = None

    def before(self, *_args: Any) -> None:
        # A statement that raised never reached after(): disarm its watchdog here.
        self.disarm()
        self._current = _Watchdog(self.conn, self.bound_seconds).__enter__()

    def after(self, *_args: Any) -> None:
        self.disarm()

    def disarm(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.__exit__()
            self.fired = self.fired or current.fired

    def explain(self) -> str | None:
        if not self.fired:
            return None
        return (
            f"the database did not answer a statement within {self.bound_seconds:g}s "
            "(SCHEMAD_STATEMENT_TIMEOUT_SECONDS + SCHEMAD_CONNECT_TIMEOUT_SECONDS); is "
            "the network, or a proxy in front of the database, dropping traffic?"
        )


class _Watchdog:
    """Shuts a connection's socket down if an exchange outlives its deadline."""

    def __init__(self, conn: Connection, seconds: float) -> None:
        self.shutdown = _socket_shutdown(conn)
        self.seconds = seconds
        self.fired = False
        self._done = False
        self._guard = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Watchdog:
        if self.shutdown is not None:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._guard:  # after this the timer can no longer touch the socket
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        with self._guard:
            if self._done or self.shutdown is None:
                return
            self.fired = True
            with suppress(OSError):
                self.shutdown()


def _socket_shutdown(conn: Connection) -> Callable[[], None] | None:
    """How to cut the driver's socket: PyMySQL's object, psycopg's descriptor."""
    try:
        raw = conn.connection.dbapi_connection
    except SQLAlchemyError:
        return None
    sock = getattr(raw, "_sock", None)
    if isinstance(sock, socket.socket):
        return lambda: sock.shutdown(socket.SHUT_RDWR)
    pgconn = getattr(raw, "pgconn", None)
    fd = getattr(pgconn, "socket", None) if pgconn is not None else None
    if isinstance(fd, int) and fd >= 0:
        return lambda: _shutdown_fd(fd)
    return None


def _shutdown_fd(fd: int) -> None:
    # shutdown() acts on the socket, not on the descriptor: a duplicate
    # descriptor reaches it without closing the driver's own.
    with socket.socket(fileno=os.dup(fd)) as view:
        view.shutdown(socket.SHUT_RDWR)


def _create_engine(url: URL, connect_timeout_seconds: float) -> Engine:
    backend = url.get_backend_name()
    timeout = max(1, math.ceil(connect_timeout_seconds))
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {
            "connect_timeout": timeout,
            "application_name": instance_name()[:63],
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE_SECONDS,
            "keepalives_interval": KEEPALIVE_INTERVAL_SECONDS,
            "keepalives_count": KEEPALIVE_COUNT,
            "tcp_user_timeout": TCP_USER_TIMEOUT_SECONDS * 1000,
        }
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": timeout}
        if _local_pymysql_without_tls_options(url):
            connect_args["ssl_disabled"] = True
    elif backend == "sqlite":
        connect_args = {"timeout": connect_timeout_seconds}
    try:
        engine = sa.create_engine(url, connect_args=connect_args)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"SCHEMAD_DATABASE_URL={url.render_as_string(hide_password=True)}: the "
            f"driver '{url.drivername}' is not available ({exc}); use "
            "postgresql+psycopg://, mysql+pymysql:// or sqlite:///",
            variable="SCHEMAD_DATABASE_URL",
        ) from exc
    if backend == "sqlite":
        _make_sqlite_ddl_transactional(engine)
    elif backend in ("mysql", "mariadb"):
        _keep_mysql_sockets_alive(engine)
    return engine


def _local_pymysql_without_tls_options(url: URL) -> bool:
    """Whether PyMySQL may skip TLS: a loopback or socket server, no TLS asked for.

    Since PyMySQL 1.2.0 (checked up to 1.2.4), a connect given no ssl option
    runs in "preferred" mode: it builds a fresh ``ssl.create_default_context()``
    (loading the system CA store, about 16 ms here) and, when the server
    advertises TLS, encrypts without checking the certificate or the host
    name. PyMySQL 1.1.x used no TLS at all without an ssl option, so there
    ``ssl_disabled=True`` changes nothing. On loopback or a unix socket that
    encryption protects nothing, so schemad passes ``ssl_disabled=True`` there
    unless the URL asks for TLS; any other host keeps PyMySQL's default.
    ``ssl_disabled`` overrides every other ssl option in PyMySQL, hence the
    refusal whenever the URL carries one.
    """
    if url.get_driver_name() != "pymysql":
        return False
    if any(key.lower().startswith(_MYSQL_TLS_QUERY_PREFIXES) for key in url.query):
        return False
    return "unix_socket" in url.query or _is_loopback(url.host)


def _is_loopback(host: str | None) -> bool:
    if not host:  # PyMySQL connects to localhost when the URL names no host
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may be anywhere
        return False


def _keep_mysql_sockets_alive(engine: Engine) -> None:
    # PyMySQL has no keepalive options; without them a blackholed network
    # leaves a read blocked for the kernel's ~15 minute retransmission limit.
    @event.listens_for(engine, "connect")
    def _keepalive(dbapi_connection: Any, _record: Any) -> None:
        sock = getattr(dbapi_connection, "_sock", None)
        if sock is not None:
            configure_keepalive(sock)


def configure_keepalive(sock: socket.socket) -> None:
    """TCP keepalives and a user timeout: a silent peer is dropped in ~30 s.

    A unix socket (``?unix_socket=``) has no TCP options and is left alone.
    """
    if sock.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_SECONDS * 1000),
    ):
        if hasattr(socket, option):  # Linux names; other systems keep defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


# A migration session's commits skip the wait for the disk; the pass's last
# commit waits (make_durable). Settable by any role; crash-safe: a server
# crash loses only the newest commits, whole, never a half-applied one.
_SET_ASYNC_COMMIT: tuple[str, dict[str, Any]] = (
    "SELECT set_config('synchronous_commit', 'off', false)",
    {},
)
_DURABLE_COMMIT = "SELECT set_config('synchronous_commit', 'on', true), txid_current()"


def _timeout_statements(
    backend: str, mariadb: bool, lock_seconds: float | None, statement_seconds: float | None
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    statements: list[tuple[str, dict[str, Any]]] = []
    unsupported: list[str] = []
    if backend == "postgresql":
        for name, seconds in (
            ("lock_timeout", lock_seconds),
            ("statement_timeout", statement_seconds),
        ):
            if seconds is not None:
                statements.append(
                    (
                        "SELECT set_config(:name, :value, false)",
                        {"name": name, "value": f"{max(1, round(seconds * 1000))}ms"},
                    )
                )
    elif backend in ("mysql", "mariadb"):
        if lock_seconds is not None:
            statements.append(
                (
                    "SET SESSION lock_wait_timeout = :value",
                    {"value": max(1, math.ceil(lock_seconds))},
                )
            )
        if statement_seconds is not None and mariadb:
            statements.append(
                ("SET SESSION max_statement_time = :value", {"value": statement_seconds})
            )
        elif statement_seconds is not None:
            unsupported.append("SCHEMAD_STATEMENT_TIMEOUT_SECONDS (MySQL limits only SELECTs)")
    else:
        unsupported.extend(
            name
            for name, seconds in (
                ("SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS", lock_seconds),
                ("SCHEMAD_STATEMENT_TIMEOUT_SECONDS", statement_seconds),
            )
            if seconds is not None
        )
    return statements, unsupported


def _make_sqlite_ddl_transactional(engine: Engine) -> None:
    # pysqlite commits before DDL by default; take over BEGIN so that a
    # revision's DDL and its version-table update commit together.
    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _who(holder: LockHolder | None) -> str:
    if holder is None:
        return "another instance"
    if holder.held_seconds is None:
        return holder.description
    return f"{holder.description} (for {holder.held_seconds:.0f}s)"


class _Lock:
    """One dialect's way of taking the migration lock."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self.conn: Connection | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        with self.db.connect() as conn:
            self.conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def holder(self) -> LockHolder | None:
        raise NotImplementedError

    def current_holder(self) -> LockHolder | None:
        return self.holder()

    def _scalar(self, sql: str, **params: Any) -> Any:
        return self._first(sql, **params)[0]

    def _first(self, sql: str, **params: Any) -> Any:
        assert self.conn is not None
        with self.db.deadline(self.conn) as watchdog:
            try:
                row = self.conn.execute(sa.text(sql), params).first()
            except DBAPIError as exc:
                if watchdog.fired:
                    raise self.db._no_answer(exc) from exc
                raise
        return row if row is not None else (None,)


class _PostgresLock(_Lock):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        digest = hashlib.blake2b(database.lock_name().encode(), digest_size=8).digest()
        self.key = int.from_bytes(digest, "big", signed=True)

    def try_acquire(self) -> bool:
        return bool(self._scalar("SELECT pg_try_advisory_lock(:key)", key=self.key))

    def release(self) -> None:
        self._scalar("SELECT pg_advisory_unlock(:key)", key=self.key)

    def holder(self) -> LockHolder | None:
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        row = self._first(
            "SELECT a.pid, a.application_name, host(a.client_addr), "
            "EXTRACT(EPOCH FROM now() - a.state_change) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = CAST(CAST(:hi AS bigint) AS oid) "
            "AND l.objid = CAST(CAST(:lo AS bigint) AS oid) "
            "AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            hi=unsigned >> 32,
            lo=unsigned & 0xFFFFFFFF,
        )
        if row[0] is None:
            return None
        pid, app, addr, idle = row
        name = app or "a client"
        return LockHolder(
            f"{name} (backend pid {pid}{', from ' + addr if addr else ''})",
            float(idle) if idle is not None else None,
        )


class _MySQLLock(_Lock):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        name = database.lock_name()
        if len(name) > 64:  # MySQL's limit on lock names
            name = "schemad:" + hashlib.sha256(name.encode()).hexdigest()[:56]
        self.name = name

    def try_acquire(self) -> bool:
        return bool(self._scalar("SELECT GET_LOCK(:name, 0)", name=self.name) == 1)

    def release(self) -> None:
        self._scalar("SELECT RELEASE_LOCK(:name)", name=self.name)

    def holder(self) -> LockHolder | None:
        row = self._first(
            "SELECT p.ID, p.HOST, p.TIME FROM information_schema.PROCESSLIST p "
            "WHERE p.ID = IS_USED_LOCK(:name)",
            name=self.name,
        )
        if row[0] is None:
            return None
        conn_id, host, idle = row
        return LockHolder(
            f"connection {conn_id} from {host}", float(idle) if idle is not None else None
        )


class _FileLock(_Lock):
    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.path = Path(f"{database.url.database}.schemad-lock")
        self.fd: int | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatabaseUnavailableError(
                f"cannot open the lock file {self.path}: {exc.strerror}; schemad needs "
                "write access to the SQLite database's directory"
            ) from exc
        try:
            yield
        finally:
            os.close(self.fd)
            self.fd = None

    def try_acquire(self) -> bool:
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Not the lock itself (that is the flock): a note for waiters.
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{instance_name()} {time.time():.3f}\n".encode(), 0)
        return True

    def release(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def current_holder(self) -> LockHolder | None:
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return None

    def holder(self) -> LockHolder | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if not text:
            return None
        name, _, since = text.rpartition(" ")
        try:
            held = max(time.time() - float(since), 0.0)
        except ValueError:
            return LockHolder(text)
        return LockHolder(name, held)
