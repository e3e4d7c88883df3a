"""EDGE: schemad's audit history table.

Alembic stores only the current revision. schemad also keeps a log, one row
per revision applied, reverted, failed or adopted, with timings, the
deployment identity and the checksum of the revision file as it was applied.
The table is created (and extended with new columns) by schemad itself,
idempotently, before a pass applies anything.

A revision's row is written on the migration's own connection, inside the
revision's transaction, so it commits (or rolls back) with the revision.
Rows about no revision in particular (adoption, a failure, a graceful stop)
are written on a connection of their own. Writing history never breaks a
migration: a failed write is logged and counted by the pass's journal.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from schemad import __version__
from schemad.audit import HistorySnapshot, summarize
from schemad.database import Database
from schemad.errors import DatabaseUnavailableError
from schemad.model import Direction, HistoryOutcome
from schemad.settings import IdentitySettings

ERROR_MAX_CHARS = 2000
_SAVEPOINT = "schemad_history"
# Drivers that send a statement without parameters as one simple query, so
# several statements separated by ";" make one round trip. asyncpg (an
# env.py's own connection) prepares every statement and refuses a batch.
_BATCHING_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg_async"})


def _timestamp(backend: str) -> sa.types.TypeEngine[Any]:
    """A timestamp with time zone; MySQL/MariaDB DATETIME keeps whole seconds
    unless told otherwise (its dialect is imported only for those)."""
    if backend not in ("mysql", "mariadb"):
        return sa.DateTime(timezone=True)
    from sqlalchemy.dialects import mysql

    return mysql.DATETIME(fsp=6)


@dataclass(frozen=True)
class HistoryRow:
    """One row of the history table."""

    revision: str
    parents: tuple[str, ...]
    direction: str
    outcome: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    error: str | None
    checksum: str | None
    schemad_version: str | None
    run_id: str | None
    hostname: str | None
    pod_name: str | None
    pod_namespace: str | None
    node_name: str | None
    image: str | None
    chart_version: str | None
    app_version: str | None
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["parents"] = list(self.parents)
        for key in ("started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True)
class Entry:
    """One row to write: what happened to one revision in one pass."""

    revision: str
    direction: Direction
    outcome: HistoryOutcome
    parents: tuple[str, ...] = ()
    checksum: str | None = None
    run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    error: str | None = None


def history_table(
    name: str, schema: str | None, metadata: sa.MetaData, backend: str = "postgresql"
) -> sa.Table:
    """The history table's definition; new columns must be nullable."""
    text = sa.String(255)
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.String(64), nullable=False, index=True),
        sa.Column("parents", text),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("started_at", _timestamp(backend)),
        sa.Column("finished_at", _timestamp(backend)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("checksum", sa.String(64)),
        sa.Column("schemad_version", sa.String(64)),
        sa.Column("run_id", sa.String(32)),
        sa.Column("hostname", text),
        sa.Column("pod_name", text),
        sa.Column("pod_namespace", text),
        sa.Column("node_name", text),
        sa.Column("image", text),
        sa.Column("chart_version", sa.String(64)),
        sa.Column("app_version", sa.String(64)),
        schema=schema,
    )


class History:
    """Reads and writes the history table of one database."""

    def __init__(
        self, database: Database, *, table: str, schema: str | None, identity: IdentitySettings
    ) -> None:
        self.database = database
        self.identity = identity
        self.hostname = socket.gethostname()
        self._name = table
        self.use_schema(schema)

    def use_schema(self, schema: str | None) -> None:
        """Keep the table in this schema from now on (the version table's)."""
        self.table = history_table(self._name, schema, sa.MetaData(), self.database.dialect.name)
        # Built once, so that SQLAlchemy's compiled-statement cache serves
        # every revision's write.
        self._insert = self.table.insert()
        self._finish_started = self.table.update().where(
            self.table.c.id == sa.bindparam("started_id")
        )
        self._ready = False

    @property
    def name(self) -> str:
        return self.table.fullname

    @property
    def ready(self) -> bool:
        """Whether the table is known to exist with every column."""
        return self._ready

    def ensure_table(self) -> bool:
        """Create the table, or add columns a newer schemad defines.

        Returns:
            False when its schema does not exist yet (env.py may create it
            while migrating): nothing was created, try again later.

        Raises:
            DatabaseUnavailableError: the table can be neither read nor made.
        """
        if self._ready:
            return True
        schema = self.table.schema
        try:
            with self._session() as conn:
                inspector = sa.inspect(conn)
                if schema is not None and not inspector.has_schema(schema):
                    return False
                if not inspector.has_table(self.table.name, schema=schema):
                    self.table.create(conn, checkfirst=True)
                else:
                    self._add_missing_columns(conn, inspector)
                conn.commit()
        except SQLAlchemyError as exc:
            advice = self.database.explain_failure(exc) or (
                "grant schemad CREATE on the database or create the table by hand"
            )
            raise DatabaseUnavailableError(
                f"cannot create the history table {self.name}: "
                f"{self.database.describe(exc)}; {advice}"
            ) from exc
        self._ready = True
        return True

    def _require_ready(self) -> None:
        """Make the table if need be, for a write on a connection of its own.

        Raises:
            DatabaseUnavailableError: it cannot be made, or its schema is missing.
        """
        if not self.ensure_table():
            raise DatabaseUnavailableError(
                f"the schema of the history table {self.name} does not exist"
            )

    def _add_missing_columns(self, conn: sa.Connection, inspector: sa.Inspector) -> None:
        present = {c["name"] for c in inspector.get_columns(self.table.name, self.table.schema)}
        preparer = conn.dialect.identifier_preparer
        for column in self.table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(
                f"ALTER TABLE {preparer.format_table(self.table)} "
                f"ADD COLUMN {preparer.format_column(column)} {kind}"
            )

    def write(self, entries: Sequence[Entry]) -> None:
        """Append rows on a connection of their own (creating the table first).

        Raises:
            SQLAlchemyError, DatabaseUnavailableError: the write failed
                (callers log and count it).
        """
        if not entries:
            return
        self._require_ready()
        with self._session() as conn:
            conn.execute(self._insert, [self._values(entry) for entry in entries])
            conn.commit()

    def start(self, entry: Entry) -> int:
        """Insert a row with outcome "started"; return its id for :meth:`finish`.

        Raises:
            SQLAlchemyError, DatabaseUnavailableError: the write failed.
        """
        self._require_ready()
        values = self._values(entry, outcome=HistoryOutcome.STARTED)
        with self._session() as conn:
            key: Any = conn.execute(self._insert, values).inserted_primary_key
            conn.commit()
            return int(key[0])

    def finish(self, row_id: int, entry: Entry) -> None:
        """Complete a started row in place (outcome, times, error, ...).

        Raises:
            SQLAlchemyError, DatabaseUnavailableError: the write failed.
        """
        self._require_ready()
        with self._session() as conn:
            conn.execute(self._finish_started, {**self._values(entry), "started_id": row_id})
            conn.commit()

    def record_in(self, conn: sa.Connection, entry: Entry, *, started_id: int | None) -> None:
        """Write a row on the migration's own connection, inside its transaction.

        Called inside the revision's transaction, the row commits together
        with the revision (no extra commit, and no row for a revision that
        rolled back). Where a failed statement aborts the whole transaction,
        a savepoint keeps a failing write from taking the revision with it.

        Raises:
            SQLAlchemyError, DatabaseUnavailableError: the write failed (and
                was rolled back alone; callers log and count it).
        """
        self._require_table()
        values = self._values(entry)
        if (
            started_id is None
            and self.database.dialect.history_needs_savepoint
            and conn.dialect.driver in _BATCHING_DRIVERS
        ):
            self._insert_in_one_round_trip(conn, values)
            return
        with self._statement_scope(conn):
            if started_id is None:
                conn.execute(self._insert, values)
            else:
                conn.execute(self._finish_started, {**values, "started_id": started_id})

    def record_many_in(self, conn: sa.Connection, entries: Sequence[Entry]) -> None:
        """Write rows on the migration's own connection, inside its transaction,
        in one statement (SQLAlchemy sends the rows as one multi-row INSERT).

        Raises:
            SQLAlchemyError, DatabaseUnavailableError: the write failed (and
                was rolled back alone; callers log and count it).
        """
        self._require_table()
        with self._statement_scope(conn):
            conn.execute(self._insert, [self._values(entry) for entry in entries])

    def _insert_in_one_round_trip(self, conn: sa.Connection, values: dict[str, Any]) -> None:
        """Savepoint, insert and release as one statement batch (PostgreSQL).

        Three statements, one round trip: the values are rendered as literals
        by the connection's own dialect (so quoting follows the server's
        settings). A failing insert stops the batch with the transaction
        aborted back to the savepoint, which is then rolled back to; the
        revision's own work stands either way.
        """
        insert = self.table.insert().inline().values(values)
        sql = str(insert.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        try:
            conn.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}; {sql}; RELEASE SAVEPOINT {_SAVEPOINT}")
        except SQLAlchemyError:
            conn.exec_driver_sql(
                f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}"
            )
            raise

    def start_in(self, conn: sa.Connection, entry: Entry) -> int:
        """Insert a "started" row on the migration's connection.

        Raises:
            SQLAlchemyError, DatabaseUnavailableError: the write failed.
        """
        self._require_table()
        values = self._values(entry, outcome=HistoryOutcome.STARTED)
        with self._statement_scope(conn):
            key: Any = conn.execute(self._insert, values).inserted_primary_key
        return int(key[0])

    def _require_table(self) -> None:
        # Creating it now would need a second connection while the revision's
        # transaction holds its locks: it is made before the pass applies.
        if not self._ready:
            raise DatabaseUnavailableError(f"the history table {self.name} is not available")

    @contextmanager
    def _statement_scope(self, conn: sa.Connection) -> Iterator[None]:
        if self.database.dialect.history_needs_savepoint:
            with conn.begin_nested():
                yield
        else:
            yield

    @contextmanager
    def _session(self) -> Iterator[sa.Connection]:
        # Bounded like every short exchange: a silent network must not hang a
        # pass in its bookkeeping.
        with self.database.connect() as conn, self.database.exchange(conn, translate=False):
            yield conn

    def _values(self, entry: Entry, *, outcome: HistoryOutcome | None = None) -> dict[str, Any]:
        error = entry.error
        return {
            "revision": entry.revision,
            "parents": ",".join(entry.parents),
            "direction": entry.direction.value,
            "outcome": (outcome or entry.outcome).value,
            "started_at": entry.started_at,
            "finished_at": entry.finished_at,
            "duration_seconds": entry.duration_seconds,
            "error": self.database.redact(error)[:ERROR_MAX_CHARS] if error else None,
            "checksum": entry.checksum,
            "run_id": entry.run_id,
            "schemad_version": __version__,
            "hostname": self.hostname,
            "pod_name": self.identity.pod_name,
            "pod_namespace": self.identity.pod_namespace,
            "node_name": self.identity.node_name,
            "image": self.identity.container_image,
            "chart_version": self.identity.helm_chart,
            "app_version": self.identity.app_version,
        }

    def rows(
        self,
        *,
        revision: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[HistoryRow]:
        """Rows newest first, optionally filtered; [] when there is no table.

        Raises:
            DatabaseUnavailableError: the table exists but cannot be read.
        """
        query = sa.select(self.table).order_by(self.table.c.id.desc())
        if revision is not None:
            query = query.where(self.table.c.revision == revision)
        if since is not None:
            # SQLite and MySQL store the UTC wall time and drop any offset they are given.
            utc = since.astimezone(UTC) if since.tzinfo else since
            query = query.where(self.table.c.finished_at >= utc)
        if limit is not None:
            query = query.limit(limit)
        try:
            with self._session() as conn:
                if not sa.inspect(conn).has_table(self.table.name, schema=self.table.schema):
                    return []
                result = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(
                f"cannot read the history table {self.name}: {self.database.describe(exc)}"
            ) from exc
        return [_row(mapping) for mapping in result]

    def snapshot(self) -> HistorySnapshot:
        """One read of the whole table, reduced to what the audit needs.

        Raises:
            DatabaseUnavailableError: the table exists but cannot be read.
        """
        return summarize(reversed(self.rows()))


def now() -> datetime:
    return datetime.now(UTC)


def _row(mapping: Any) -> HistoryRow:
    data: dict[str, Any] = dict(mapping)
    parents = data.get("parents") or ""
    data["parents"] = tuple(p for p in parents.split(",") if p)
    for key in ("started_at", "finished_at"):
        value = data.get(key)
        if isinstance(value, datetime) and value.tzinfo is None:
            data[key] = value.replace(tzinfo=UTC)
    fields: dict[str, Any] = {k: data.get(k) for k in HistoryRow.__dataclass_fields__}
    return HistoryRow(**fields)
