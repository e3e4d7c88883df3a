"""EDGE: one database: connections, the version table and the migration lock.

What differs between databases is the dialect object's (:mod:`schemad.dialect`);
the lock kinds are in :mod:`schemad.locks`, client-side deadlines in
:mod:`schemad.deadline`. Every failure leaves here as a schemad error whose
message names the database with its password masked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from schemad.deadline import StatementGuard, Watchdog, bounded
from schemad.dialect import Fault, Session, dialect_for
from schemad.engine import create_engine, sync_url
from schemad.errors import ConfigError, DatabaseUnavailableError, first_line
from schemad.locks import WaitCallback, held
from schemad.masking import Secrets
from schemad.model import DbState, LockHolder


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
        self.dialect = dialect_for(url)
        self.backend = self.dialect.name
        self.secrets = Secrets.of_url(url.password and str(url.password), url.query)
        self.connect_timeout_seconds = connect_timeout_seconds
        self._sleep = sleep
        self._clock = clock
        # The URL as written is shown and handed to env.py; schemad's own
        # connections use a synchronous driver (asyncpg's is psycopg).
        self.engine = create_engine(sync_url(url), self.dialect, connect_timeout_seconds)
        self.use_version_table(version_table, version_table_schema)

    def use_version_table(self, table: str, schema: str | None) -> None:
        """Read (and lock for) this version table from now on (where env.py keeps it)."""
        self.version_table = table
        self.version_table_schema = schema
        self._version = sa.table(table, sa.column("version_num"), schema=schema)

    @property
    def masked_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def transactional_ddl(self) -> bool:
        """Whether a failed revision's DDL rolls back (not on MySQL/MariaDB)."""
        return self.dialect.transactional_ddl

    def redact(self, text: str) -> str:
        """Replace every form of every secret of the URL in ``text``."""
        return self.secrets.redact(text)

    def describe(self, exc: BaseException) -> str:
        """The first line of a (driver) error, masked."""
        return self.redact(first_line(exc))

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """Open a connection, translating connect failures.

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
        """
        conn = self._open()
        try:
            yield conn
        finally:
            conn.close()

    def _open(self) -> Connection:
        """A new connection (from the pool), every failure translated.

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
            ConfigError: the driver refused the URL's options (a TLS file
                that does not exist, an argument it does not know).
        """
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to {self.masked_url}: {self.describe(exc)}; "
                f"{self.dialect.connect_advice()}"
            ) from exc
        except (OSError, ValueError, TypeError, LookupError) as exc:
            # Drivers wrap network failures in their own errors: what escapes
            # raw is a local problem with the options (ssl_ca=/missing, ...).
            raise ConfigError(
                f"SCHEMAD_DATABASE_URL={self.masked_url}: the driver refused the "
                f"connection options: {self.describe(exc)}; check the URL's query "
                "options (file paths of ssl_* options must exist in the container)",
                variable="SCHEMAD_DATABASE_URL",
            ) from exc

    @contextmanager
    def exchange(self, conn: Connection, *, translate: bool = True) -> Iterator[Watchdog]:
        """Bound a short exchange on ``conn`` by the connect timeout.

        A SQLAlchemy error inside becomes "did not answer" when the deadline
        cut the connection, else "unavailable" (with ``translate``) or
        propagates for the caller to read.
        """
        with bounded(
            conn,
            self.connect_timeout_seconds,
            no_answer=self._no_answer,
            failed=self.unavailable if translate else None,
        ) as watchdog:
            yield watchdog

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
            with self.connect() as conn, self.exchange(conn, translate=False) as watchdog:
                try:
                    return self._select_heads(conn)
                except DBAPIError as exc:
                    if watchdog.fired:
                        raise  # the exchange reports that the database did not answer
                    if exc.connection_invalidated:
                        if attempt == 1:
                            continue
                        raise self.unavailable(exc) from exc
                    conn.rollback()
                    return self._empty_or_unreadable(conn, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _select_heads(self, conn: Connection) -> DbState:
        rows = conn.execute(sa.select(self._version.c.version_num)).scalars().all()
        conn.rollback()
        return DbState(tuple(sorted(str(row) for row in rows)))

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
            f"cannot read the version table {self.table_name()} on "
            f"{self.masked_url}: {self.describe(exc)}; check that the URL names "
            "the right database and that the user may read the table"
        ) from exc

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

    def migration_connection(self) -> Connection:
        """A fresh connection for Alembic, with no transaction begun on it.

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
            ConfigError: the driver refused the URL's options.
        """
        return self._open()

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
        statements, unsupported = self.dialect.session_statements(
            Session(
                mariadb=bool(getattr(conn.dialect, "is_mariadb", False)),
                lock_seconds=lock_timeout_seconds,
                statement_seconds=statement_timeout_seconds,
                async_commit=async_commit,
            )
        )
        with self.exchange(conn):
            for sql, params in statements:
                conn.execute(sa.text(sql), params)
            conn.commit()
        return unsupported

    def make_durable(self, conn: Connection) -> None:
        """Wait until every commit made on ``conn`` is on disk (PostgreSQL
        with asynchronous commits; elsewhere there is nothing to wait for).

        Raises:
            DatabaseUnavailableError: the database did not confirm the flush.
        """
        statement = self.dialect.durable_commit
        if statement is None:
            return
        with self.exchange(conn):
            try:
                conn.execute(sa.text(statement))
                conn.commit()
            except SQLAlchemyError:
                if conn.in_transaction():
                    conn.rollback()
                raise

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

    @contextmanager
    def short_statements(self, conn: Connection) -> Iterator[StatementGuard]:
        """Bound each statement on ``conn`` by the connect timeout (a dry run of
        env.py: a few reads, however long env.py's own imports take).

        Raises:
            DatabaseUnavailableError: a statement got no answer in time.
        """
        guard = StatementGuard(conn, None, self.connect_timeout_seconds)
        event.listen(conn, "before_cursor_execute", guard.before)
        event.listen(conn, "after_cursor_execute", guard.after)
        try:
            yield guard
        except SQLAlchemyError as exc:
            if guard.fired:
                raise self._no_answer(exc) from exc
            raise
        finally:
            guard.disarm()
            event.remove(conn, "before_cursor_execute", guard.before)
            event.remove(conn, "after_cursor_execute", guard.after)

    def explain_failure(self, exc: BaseException, partial: bool = False) -> str | None:
        """What a failure while migrating means here, beyond the driver's message.

        ``partial``: the failure cut off a revision whose statements commit one
        by one (MySQL/MariaDB DDL, or a revision run outside a transaction),
        so those that ran before it stay applied.
        """
        explanation = self.dialect.explain_error(exc)
        if not partial:
            return explanation
        stays = (
            "statements of the revision that ran before the failure stay applied (they "
            "are not in a transaction): check the schema before running again"
        )
        return f"{explanation}; {stays}" if explanation else stays

    def fault(self, exc: BaseException | None) -> Fault | None:
        """The kind of a driver error, where schemad tells kinds apart."""
        return self.dialect.fault(exc) if exc is not None else None

    @contextmanager
    def lock(
        self,
        wait_seconds: float,
        on_wait: WaitCallback | None = None,
        needed: Callable[[], bool] | None = None,
    ) -> Iterator[float]:
        """Hold the migration lock; yields the seconds spent waiting for it.

        Raises:
            LockNotNeeded: ``needed`` said the lock is no longer needed.
            LockTimeoutError: another instance held it for ``wait_seconds``.
            DatabaseUnavailableError: the database cannot be reached.
        """
        with held(
            self.dialect.new_lock(self),
            wait_seconds,
            on_wait=on_wait,
            needed=needed,
            clock=self._clock,
            sleep=self._sleep,
        ) as waited:
            yield waited

    def adopt(self, theirs: Connection, resources: ExitStack) -> None:
        """Driver settings schemad's engine has, on a connection env.py opened
        (SQLite: begin a transaction before DDL); undone with ``resources``."""
        self.dialect.adopt(theirs, resources)

    def same_database(self, ours: Connection, theirs: Connection) -> bool:
        """Whether ``theirs`` (a connection env.py opened) is on this database,
        where ``ours`` is (see :meth:`Dialect.same_database`).

        Raises:
            DatabaseUnavailableError: the question could not be asked.
        """
        if theirs.dialect.name != ours.dialect.name:
            return False
        try:
            return self.dialect.same_database(ours, theirs)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(
                "cannot tell whether env.py's own connection is on "
                f"{self.masked_url}: {self.describe(exc)}"
            ) from exc

    def lock_holder(self) -> LockHolder | None:
        """Who holds the migration lock now, if anyone (for `status`).

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
        """
        lock = self.dialect.new_lock(self)
        with lock.session(read_only=True) as opened:
            if not opened:
                return None
            try:
                return lock.current_holder()
            except SQLAlchemyError as exc:
                raise self.unavailable(exc) from exc

    def lock_name(self) -> str:
        """A name for this database's lock, unique across a server."""
        database = self.url.database or ""
        if self.dialect.file_based:
            database = str(Path(database).resolve())
        return f"schemad:{database}:{self.table_name()}"

    def table_name(self) -> str:
        """The version table, qualified by its schema when it has one."""
        if self.version_table_schema:
            return f"{self.version_table_schema}.{self.version_table}"
        return self.version_table

    def unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"database {self.masked_url} is unavailable: {self.describe(exc)}"
        )

    def _no_answer(self, _exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"database {self.masked_url} did not answer within "
            f"{self.connect_timeout_seconds:g}s (SCHEMAD_CONNECT_TIMEOUT_SECONDS); is the "
            "network, or a proxy in front of the database, silently dropping traffic?"
        )
