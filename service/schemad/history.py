"""EDGE: schemad's audit history table, and revision file checksums.

Alembic stores only the current revision. schemad also keeps a log, one row
per revision applied, reverted, failed or adopted, with timings, the
deployment identity and the checksum of the revision file as it was applied.
The table is created (and extended with new columns) by schemad itself,
idempotently.

Writing history never breaks a migration: rows are written on their own
connection after the revision has committed, and a failed write is logged
and counted, never raised.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import SQLAlchemyError

from schemad import __version__
from schemad.audit import AppliedRecord
from schemad.database import Database
from schemad.errors import DatabaseUnavailableError
from schemad.settings import IdentitySettings

ERROR_MAX_CHARS = 2000
# MySQL/MariaDB DATETIME keeps whole seconds unless told otherwise.
_TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


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


def history_table(name: str, schema: str | None, metadata: sa.MetaData) -> sa.Table:
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
        sa.Column("started_at", _TIMESTAMP),
        sa.Column("finished_at", _TIMESTAMP),
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
        self.table = history_table(table, schema, sa.MetaData())
        # Built once, so that SQLAlchemy's compiled-statement cache serves
        # every revision's write.
        self._finish_started = self.table.update().where(
            self.table.c.id == sa.bindparam("started_id")
        )
        self._ready = False

    @property
    def name(self) -> str:
        return self.table.fullname

    def ensure_table(self) -> None:
        """Create the table, or add columns a newer schemad defines.

        Raises:
            DatabaseUnavailableError: the table can be neither read nor made.
        """
        if self._ready:
            return
        try:
            with self._session() as conn:
                inspector = sa.inspect(conn)
                if not inspector.has_table(self.table.name, schema=self.table.schema):
                    self.table.create(conn, checkfirst=True)
                else:
                    self._add_missing_columns(conn, inspector)
                conn.commit()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(
                f"cannot create the history table {self.name}: "
                f"{self.database.redact(str(getattr(exc, 'orig', exc)))}; grant schemad "
                "CREATE on the database or create the table by hand"
            ) from exc
        self._ready = True

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

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (a dict per row, identity and version added here).

        Raises:
            SQLAlchemyError: the write failed (callers log and count it).
        """
        if not rows:
            return
        values = [self._values(row) for row in rows]
        with self._session() as conn:
            conn.execute(self.table.insert(), values)
            conn.commit()

    def start(self, row: Mapping[str, Any]) -> int:
        """Insert a row with outcome "started"; return its id for :meth:`finish`.

        Raises:
            SQLAlchemyError: the write failed (callers log and count it).
        """
        values = self._values({**row, "outcome": "started"})
        with self._session() as conn:
            result = conn.execute(self.table.insert(), values)
            key: Any = result.inserted_primary_key
            conn.commit()
            return int(key[0])

    def finish(self, row_id: int, row: Mapping[str, Any]) -> None:
        """Complete a started row in place (outcome, times, error, ...).

        Raises:
            SQLAlchemyError: the write failed (callers log and count it).
        """
        values = self._values(row)
        with self._session() as conn:
            conn.execute(self.table.update().where(self.table.c.id == row_id).values(values))
            conn.commit()

    def record_in(
        self, conn: sa.Connection, row: Mapping[str, Any], *, started_id: int | None
    ) -> None:
        """Write a row on the migration's own connection, inside a savepoint.

        Called inside the revision's transaction, the row commits together
        with the revision (no extra commit, and no row for a revision that
        rolled back). The savepoint keeps a failing write from aborting the
        revision's transaction.

        Raises:
            SQLAlchemyError: the write failed and was rolled back to the
                savepoint (callers log and count it).
        """
        if not self._ready:
            # Creating it now would need a second connection while the
            # revision's transaction holds its locks.
            raise DatabaseUnavailableError(f"the history table {self.name} is not available")
        values = self._values(row)
        with _statement_scope(conn):
            if started_id is None:
                conn.execute(self.table.insert(), values)
            else:
                conn.execute(self._finish_started, {**values, "started_id": started_id})

    def start_in(self, conn: sa.Connection, row: Mapping[str, Any]) -> int:
        """Insert a "started" row on the migration's connection, in a savepoint.

        Raises:
            SQLAlchemyError: the write failed (rolled back to the savepoint).
        """
        if not self._ready:
            raise DatabaseUnavailableError(f"the history table {self.name} is not available")
        values = self._values({**row, "outcome": "started"})
        with _statement_scope(conn):
            key: Any = conn.execute(self.table.insert(), values).inserted_primary_key
        return int(key[0])

    @contextmanager
    def _session(self) -> Iterator[sa.Connection]:
        # Bounded like every short exchange: a silent network must not hang a
        # pass in its bookkeeping.
        with self.database.connect() as conn, self.database.deadline(conn):
            yield conn

    def _values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        self.ensure_table()
        stamp = {
            "schemad_version": __version__,
            "hostname": self.hostname,
            "pod_name": self.identity.pod_name,
            "pod_namespace": self.identity.pod_namespace,
            "node_name": self.identity.node_name,
            "image": self.identity.container_image,
            "chart_version": self.identity.helm_chart,
            "app_version": self.identity.app_version,
        }
        value = {**stamp, **row}
        value["parents"] = ",".join(row.get("parents", ()))
        error = value.get("error")
        if error:
            value["error"] = self.database.redact(str(error))[:ERROR_MAX_CHARS]
        return value

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
                f"cannot read the history table {self.name}: "
                f"{self.database.redact(str(getattr(exc, 'orig', exc)))}"
            ) from exc
        return [_row(mapping) for mapping in result]

    def interrupted(self) -> set[str]:
        """Revisions whose last row says "started": cut off while being applied.

        Raises:
            DatabaseUnavailableError: the table exists but cannot be read.
        """
        last: dict[str, str] = {}
        for row in reversed(self.rows()):
            last[row.revision] = row.outcome
        return {revision for revision, outcome in last.items() if outcome == "started"}

    def summary(self) -> tuple[dict[str, str], dict[str, AppliedRecord]]:
        """Per revision: the checksum it was last applied or adopted with, and
        the last time it was applied (who, when, parents).

        Raises:
            DatabaseUnavailableError: the table exists but cannot be read.
        """
        recorded: dict[str, str] = {}
        applied: dict[str, AppliedRecord] = {}
        for row in reversed(self.rows()):
            if row.direction == "downgrade" and row.outcome == "applied":
                recorded.pop(row.revision, None)
                continue
            if row.direction != "upgrade" or row.outcome not in ("applied", "adopted"):
                continue
            if row.checksum:
                recorded[row.revision] = row.checksum
            if row.outcome == "applied":
                applied[row.revision] = AppliedRecord(
                    row.revision,
                    row.parents,
                    row.finished_at.isoformat() if row.finished_at else None,
                    row.pod_name or row.hostname,
                    row.image,
                )
        return recorded, applied


@contextmanager
def _statement_scope(conn: sa.Connection) -> Iterator[None]:
    """Keep a failing history write from taking the revision down with it.

    PostgreSQL aborts the whole transaction on any error, so the write needs a
    savepoint there. MySQL/MariaDB and SQLite roll back only the failed
    statement, so the savepoint's two extra round trips are saved.
    """
    if conn.dialect.name == "postgresql":
        with conn.begin_nested():
            yield
    else:
        yield


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
