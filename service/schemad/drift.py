"""Drift detection: does the live schema match what its revision should be?

The expected schema is built for real: the project's migrations are run
into a scratch database on the same server (a temporary file for SQLite)
up to the live database's revision(s), both are reflected with SQLAlchemy,
and :func:`compare` (pure) lists the differences. The scratch database is
dropped afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from schemad import logs
from schemad.database import Database
from schemad.environment import EnvRun, run_env
from schemad.errors import (
    DatabaseUnavailableError,
    DriftPermissionError,
    MigrationFailedError,
    SchemadError,
    first_line,
)
from schemad.revisions import Scripts

SCRATCH_PREFIX = "schemad_scratch_"
# The scratch database is migrated by env.py alone, which keeps Alembic's default
# version table name unless it names one (schemad's setting does not reach it).
_ALEMBIC_VERSION_TABLE = "alembic_version"
# sqlstate / MySQL error numbers that mean "you may not create a database".
_NO_PRIVILEGE = {"42501"}
_MYSQL_NO_PRIVILEGE = {1044, 1045, 1142, 1227}

Table = dict[str, Any]
Snapshot = dict[str, Table]


@dataclass(frozen=True)
class Difference:
    """One way the live schema differs from the expected one."""

    kind: str
    object: str
    expected: str | None
    found: str | None

    def describe(self) -> str:
        return f"{self.kind} {self.object}: expected {self.expected}, found {self.found}"


@dataclass(frozen=True)
class DriftReport:
    """The outcome of one drift check."""

    revisions: tuple[str, ...]
    differences: tuple[Difference, ...] = field(default=())

    @property
    def drifted(self) -> bool:
        return bool(self.differences)

    def as_dict(self) -> dict[str, Any]:
        return {
            "revisions": list(self.revisions),
            "drifted": self.drifted,
            "differences": [
                {"kind": d.kind, "object": d.object, "expected": d.expected, "found": d.found}
                for d in self.differences
            ],
        }


def compare(expected: Mapping[str, Table], live: Mapping[str, Table]) -> tuple[Difference, ...]:
    """List how ``live`` differs from ``expected`` (pure; snapshots are plain data)."""
    found: list[Difference] = []
    for name in sorted(set(expected) | set(live)):
        if name not in live:
            found.append(Difference("missing_table", name, "present", "absent"))
        elif name not in expected:
            found.append(Difference("extra_table", name, "absent", "present"))
        else:
            found.extend(_compare_table(name, expected[name], live[name]))
    return tuple(found)


def _compare_table(name: str, expected: Table, live: Table) -> list[Difference]:
    found = _compare_columns(name, expected["columns"], live["columns"])
    if expected["primary_key"] != live["primary_key"]:
        found.append(
            Difference("primary_key", name, str(expected["primary_key"]), str(live["primary_key"]))
        )
    for kind in ("index", "unique", "foreign_key"):
        want, have = expected[kind], live[kind]
        for key in sorted(set(want) | set(have)):
            if want.get(key) != have.get(key):
                found.append(
                    Difference(
                        kind,
                        f"{name}.{key}",
                        want.get(key, "absent"),
                        have.get(key, "absent"),
                    )
                )
    return found


def _compare_columns(
    table: str, expected: Mapping[str, Table], live: Mapping[str, Table]
) -> list[Difference]:
    found = []
    for column in sorted(set(expected) | set(live)):
        where = f"{table}.{column}"
        if column not in live:
            found.append(Difference("missing_column", where, "present", "absent"))
        elif column not in expected:
            found.append(Difference("extra_column", where, "absent", "present"))
        else:
            for attribute in ("type", "nullable", "default"):
                want, have = expected[column][attribute], live[column][attribute]
                if want != have:
                    found.append(Difference(f"column_{attribute}", where, str(want), str(have)))
    return found


def snapshot(conn: sa.Connection, *, exclude: set[str]) -> Snapshot:
    """Reflect the default schema into plain data for :func:`compare`."""
    inspector = sa.inspect(conn)
    dialect = conn.dialect
    tables: Snapshot = {}
    for name in inspector.get_table_names():
        if name in exclude or name.startswith("sqlite_"):
            continue
        columns = {
            col["name"]: {
                "type": str(col["type"].compile(dialect=dialect)),
                "nullable": bool(col["nullable"]),
                "default": _text(col.get("default")),
            }
            for col in inspector.get_columns(name)
        }
        pk = inspector.get_pk_constraint(name).get("constrained_columns") or []
        tables[name] = {
            "columns": columns,
            "primary_key": tuple(pk),
            "index": {
                str(ix["name"]): f"{'unique ' if ix.get('unique') else ''}"
                f"({', '.join(str(c) for c in ix['column_names'])})"
                for ix in inspector.get_indexes(name)
            },
            "unique": {
                str(uq["name"]): f"({', '.join(uq['column_names'])})"
                for uq in inspector.get_unique_constraints(name)
            },
            "foreign_key": {
                str(fk.get("name") or "-".join(fk["constrained_columns"])): (
                    f"({', '.join(fk['constrained_columns'])}) -> {fk['referred_table']}"
                    f"({', '.join(fk['referred_columns'])})"
                )
                for fk in inspector.get_foreign_keys(name)
            },
        }
    return tables


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class DriftChecker:
    """Builds the expected schema in a scratch database and compares."""

    def __init__(self, database: Database, *, exclude: set[str]) -> None:
        self.database = database
        self.exclude = exclude
        self._log = logs.get_logger("schemad.drift")

    def check(self, scripts: Scripts, heads: tuple[str, ...]) -> DriftReport:
        """Compare the live schema with the one ``heads`` should produce.

        Raises:
            DriftPermissionError: a scratch database cannot be created.
            DatabaseUnavailableError: the database cannot be reached.
            MigrationFailedError: the migrations fail in the scratch database.
        """
        with self._scratch() as scratch:
            self._migrate(scripts, scratch, heads)
            try:
                with scratch.connect() as conn:
                    expected = snapshot(conn, exclude=self.exclude | {_ALEMBIC_VERSION_TABLE})
                with self.database.connect() as conn:
                    live = snapshot(conn, exclude=self.exclude)
            except SQLAlchemyError as exc:
                raise DatabaseUnavailableError(
                    f"cannot reflect the schema: {self.database.describe(exc)}"
                ) from exc
        return DriftReport(heads, compare(expected, live))

    def _migrate(self, scripts: Scripts, scratch: Database, heads: tuple[str, ...]) -> None:
        """Run the migrations into ``scratch`` up to ``heads``, through env.py.

        env.py gets the scratch connection and the scratch URL as
        ``sqlalchemy.url``; a connection of its own to any other database is
        refused before Alembic uses it, so drift never changes the live
        database (or another one env.py knows).
        """
        config = scripts.config
        live_url = config.get_main_option("sqlalchemy.url")
        plain = scratch.url.render_as_string(hide_password=False).replace("%", "%%")
        config.set_main_option("sqlalchemy.url", plain)
        try:
            with scratch.connect() as conn:
                for head in heads:
                    self._upgrade(scripts, scratch, conn, head)
                if conn.in_transaction():
                    conn.commit()
        except (SchemadError, KeyboardInterrupt):
            raise
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(
                f"cannot migrate the scratch database: {self.database.describe(exc)}"
            ) from exc
        except BaseException as exc:  # the project's own migration code
            raise MigrationFailedError(
                "the migrations failed in the scratch database: "
                f"{self.database.redact(first_line(exc))}",
                revision=None,
            ) from exc
        finally:
            config.set_main_option("sqlalchemy.url", (live_url or "").replace("%", "%%"))

    def _upgrade(self, scripts: Scripts, scratch: Database, conn: sa.Connection, head: str) -> None:
        directory = scripts.directory
        run = EnvRun(
            scripts,
            scratch,
            conn,
            self.database.version_table,
            None,
            explicit=False,
            strict=True,
        )
        environment = run.environment(
            fn=lambda current, _context: directory._upgrade_revs(head, current),
            destination_rev=head,
        )
        run_env(run, environment)

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Database]:
        name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:10]}"
        if self.database.dialect.file_based:
            with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as directory:
                scratch = _like(
                    self.database,
                    self.database.url.set(database=str(Path(directory) / "scratch.db")),
                )
                try:
                    yield scratch
                finally:
                    scratch.dispose()
            return
        self._create(name)
        scratch = _like(self.database, self.database.url.set(database=name))
        try:
            yield scratch
        finally:
            scratch.dispose()
            self._drop(name)

    def _create(self, name: str) -> None:
        try:
            self._autocommit(self.database.dialect.create_scratch(name))
        except SQLAlchemyError as exc:
            if _no_privilege(exc):
                raise DriftPermissionError(_privilege_message(self.database, name)) from exc
            raise DatabaseUnavailableError(
                f"cannot create the scratch database {name}: {self.database.describe(exc)}"
            ) from exc

    def _drop(self, name: str) -> None:
        try:
            self._autocommit(self.database.dialect.drop_scratch(name))
        except (SQLAlchemyError, DatabaseUnavailableError) as exc:
            message = exc.message if isinstance(exc, DatabaseUnavailableError) else None
            self._log.error(
                "drift_scratch_not_dropped",
                database=name,
                error=message or self.database.describe(exc),
            )

    def _autocommit(self, sql: str) -> None:
        """One statement outside any transaction (CREATE/DROP DATABASE).

        Raises:
            DatabaseUnavailableError: the server cannot be reached.
            SQLAlchemyError: the statement failed.
        """
        with self.database.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(sql)


def _like(database: Database, url: URL) -> Database:
    return Database(
        url,
        version_table=database.version_table,
        version_table_schema=database.version_table_schema,
        connect_timeout_seconds=database.connect_timeout_seconds,
    )


def _no_privilege(exc: SQLAlchemyError) -> bool:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _NO_PRIVILEGE:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in _MYSQL_NO_PRIVILEGE


def _privilege_message(database: Database, name: str) -> str:
    user = database.url.username or "the schemad user"
    grant = database.dialect.grant_scratch(user, SCRATCH_PREFIX)
    return (
        f"drift checks need to create a scratch database ({name}) on the same server, "
        f"and {user} may not; grant it ({grant}) or turn drift checks off "
        "(unset SCHEMAD_DRIFT_INTERVAL_SECONDS). Reconciliation is not affected"
    )
