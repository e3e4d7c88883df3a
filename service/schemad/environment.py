"""EDGE: running the project's env.py under schemad, whatever shape it has.

schemad runs env.py through Alembic's own ``EnvironmentContext`` and wraps
the instance's ``configure()`` (Alembic's ``alembic.context`` proxy copies
the instance's attributes, so env.py's ``context.configure()`` reaches the
wrapper). What the wrapper sees is every connection env.py migrates on:

- the connection schemad handed over in ``config.attributes["connection"]``
  (the cookbook's way), or
- a connection env.py opened itself: the default and async templates build
  an engine from ``sqlalchemy.url``; an env.py may read its own variable.

A connection of env.py's own is asked, by the database itself, whether it is
a session on schemad's database (see :meth:`Dialect.same_database`). If it
is, schemad adopts it: the session gets schemad's timeouts and statement
guard, SQLite's driver is told to begin transactions before DDL, and every
revision still commits with its version-table row. If it is not, and no
other connection of the run is, env.py migrates a database schemad neither
locks nor reads: that is refused. With several databases (Alembic's
``multidb`` template) the one that is schemad's is the primary: its
revisions are the pass's; the others follow along.

A dry run (:func:`probe`) is Alembic's ``alembic current``: env.py runs with
``dont_mutate`` and no revisions, which tells where env.py keeps the version
table before anything is read, locked or written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from schemad import logs
from schemad.engine import DRIVER_PACKAGES
from schemad.errors import (
    ConfigError,
    DatabaseUnavailableError,
    SchemadError,
    ScriptError,
    first_line,
)
from schemad.model import Layout

if TYPE_CHECKING:
    from schemad.database import Database
    from schemad.revisions import Scripts

# Told about a connection env.py opened itself on schemad's database, before
# Alembic uses it; schemad's session settings go onto it here. What it enters
# into the stack is undone when the run ends.
Adopter = Callable[[Connection, ExitStack], None]


@dataclass
class _Configured:
    """One ``context.configure()`` call of a run."""

    connection: Connection | None
    version_table: str | None
    version_table_schema: str | None
    schema_given: bool
    primary: bool
    external_transaction: bool


@dataclass
class EnvRun:
    """One run of env.py: what it configured, and schemad's part in it."""

    scripts: Scripts
    database: Database
    connection: Connection | None
    """schemad's own connection, handed to env.py (None: offline SQL)."""
    version_table: str
    version_table_schema: str | None
    explicit: bool = True
    """Whether the version table came from the settings: a different one in
    env.py is then an error, not something to follow."""
    adopt: Adopter | None = None
    on_version_apply: Callable[..., None] | None = None
    dont_mutate: bool = False
    one_transaction: bool = False
    """All revisions in one transaction (bootstrapping an empty database)."""
    strict: bool = False
    """Refuse any connection that is not on the database, before Alembic uses it
    (drift: env.py must never reach beyond the scratch database)."""
    calls: list[_Configured] = field(default_factory=list)

    def environment(self, **kwargs: Any) -> EnvironmentContext:
        """Alembic's EnvironmentContext, its ``configure`` wrapped by schemad."""
        environment = EnvironmentContext(self.scripts.config, self.scripts.directory, **kwargs)
        configure = environment.configure
        resources = ExitStack()
        self._resources = resources

        def schemad_configure(*args: Any, **options: Any) -> None:
            call = self._record(options)
            self._check_version_table(call)
            options["version_table"] = call.version_table or self.version_table
            options["version_table_schema"] = (
                call.version_table_schema if call.schema_given else self.version_table_schema
            )
            options["transaction_per_migration"] = not self.one_transaction
            if self.database.transactional_ddl:
                # Alembic assumes SQLite's DDL is not transactional; schemad's
                # BEGIN makes it so, which lets one transaction span revisions.
                options["transactional_ddl"] = True
            if self.dont_mutate:
                options["dont_mutate"] = True
            if self.on_version_apply is not None:
                # After env.py's own callbacks, if it has any.
                options["on_version_apply"] = (
                    *_as_tuple(options.get("on_version_apply")),
                    self.on_version_apply,
                )
            configure(*args, **options)

        environment.configure = schemad_configure  # type: ignore[method-assign]
        return environment

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hand the connection over for the run, and take everything back after."""
        config = self.scripts.config
        if self.connection is not None:
            config.attributes["connection"] = _usable_as_engine(self.connection)
        try:
            with logs.preserved():
                yield
        finally:
            config.attributes.pop("connection", None)
            _resources = getattr(self, "_resources", None)
            if _resources is not None:
                _resources.close()

    def is_primary(self, context: MigrationContext) -> bool:
        """Whether a migration context is on schemad's database."""
        connection = context.connection
        return any(c.primary and c.connection is connection for c in self.calls)

    @property
    def external_transaction(self) -> bool:
        """env.py began the primary connection's transaction itself (``multidb``):
        its revisions commit together when env.py commits."""
        return any(c.primary and c.external_transaction for c in self.calls)

    def layout(self) -> Layout:
        """What the run showed, once it is over.

        Raises:
            ConfigError: env.py migrated no connection on schemad's database.
        """
        primary = [c for c in self.calls if c.primary]
        if not primary:
            raise ConfigError(
                "env.py migrates a database other than SCHEMAD_DATABASE_URL (it opens "
                "a connection of its own, from another URL), so schemad's lock and "
                "version-table reads would not cover it; make env.py use "
                "config.attributes['connection'] or sqlalchemy.url, or point "
                "SCHEMAD_DATABASE_URL at the database env.py migrates",
                variable="SCHEMAD_DATABASE_URL",
            )
        first = primary[0]
        return Layout(
            version_table=first.version_table or self.version_table,
            version_table_schema=(
                first.version_table_schema if first.schema_given else self.version_table_schema
            ),
            own_connection=first.connection is not self.connection,
            databases=len(self.calls),
        )

    def _record(self, options: dict[str, Any]) -> _Configured:
        connection = options.get("connection")
        if isinstance(connection, Engine):
            raise ConfigError(
                "env.py passes an Engine to context.configure(connection=...); Alembic "
                "needs a Connection: `with engine.connect() as connection: "
                "context.configure(connection=connection, ...)`",
                variable=None,
            )
        external = bool(connection is not None and connection.in_transaction())
        primary = connection is not None and (
            connection is self.connection or self._adopted(connection)
        )
        call = _Configured(
            connection=connection,
            version_table=options.get("version_table"),
            version_table_schema=options.get("version_table_schema"),
            schema_given="version_table_schema" in options,
            primary=primary,
            external_transaction=external,
        )
        if self.strict and not primary:
            raise ConfigError(
                f"env.py migrates a database other than {self.database.masked_url} (it "
                "opens a connection of its own, from its own URL), so schemad does not "
                "run it there; make env.py use config.attributes['connection'] or "
                "sqlalchemy.url",
                variable="SCHEMAD_DATABASE_URL",
            )
        self.calls.append(call)
        return call

    def _adopted(self, theirs: Connection) -> bool:
        """Whether env.py's own connection is on schemad's database; if so,
        schemad's session settings go onto it (once per connection)."""
        if self.connection is None or not self.database.same_database(self.connection, theirs):
            return False
        if self.adopt is not None and not self.dont_mutate:
            self.adopt(theirs, self._resources)
        return True

    def _check_version_table(self, call: _Configured) -> None:
        if not call.primary or not self.explicit:
            return
        table = call.version_table or self.version_table
        schema = call.version_table_schema if call.schema_given else self.version_table_schema
        if (table, schema) != (self.version_table, self.version_table_schema):
            raise ConfigError(
                f"env.py uses the version table {_qualified(table, schema)} but schemad "
                f"is set to read {_qualified(self.version_table, self.version_table_schema)}; "
                "set SCHEMAD_VERSION_TABLE (and SCHEMAD_VERSION_TABLE_SCHEMA) to match, or "
                "unset them to follow env.py",
                variable="SCHEMAD_VERSION_TABLE",
            )


def probe(
    scripts: Scripts,
    database: Database,
    *,
    version_table: str,
    version_table_schema: str | None,
    explicit: bool,
) -> Layout:
    """Run env.py as ``alembic current`` does, to learn its layout; nothing is written.

    Raises:
        ConfigError: env.py's version table differs from an explicit setting,
            or env.py migrates another database.
        ScriptError: env.py failed (raised or exited).
        DatabaseUnavailableError: the database cannot be reached.
    """
    with database.connect() as connection:
        run = EnvRun(
            scripts,
            database,
            connection,
            version_table,
            version_table_schema,
            explicit=explicit,
            dont_mutate=True,
        )
        environment = run.environment(fn=lambda _heads, _context: [])
        try:
            with _quiet("alembic"), database.short_statements(connection):
                run_env(run, environment)
        except (SchemadError, KeyboardInterrupt):
            raise
        except DBAPIError as exc:
            if run.calls:
                # Configured, then Alembic could not read the version table: that
                # is for the pass to report, with the layout now known.
                return run.layout()
            raise DatabaseUnavailableError(
                f"env.py could not reach its database: {database.describe(exc)}"
            ) from exc
        except BaseException as exc:  # env.py's own code: anything, sys.exit() too
            raise ScriptError(
                f"env.py failed before any revision ran: {first_line(exc)}; "
                f"{env_advice(exc, '`alembic current` shows the same error')}"
            ) from exc
        finally:
            if connection.in_transaction():
                connection.rollback()
    return run.layout()


def env_advice(exc: BaseException, same_error: str) -> str:
    """What to do about env.py failing: install a driver it imports, or fix it."""
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing in DRIVER_PACKAGES or missing == "greenlet":
        package = "greenlet" if missing == "greenlet" else DRIVER_PACKAGES[str(missing)]
        return (
            f"env.py's database driver is not installed: pip install {package} (or "
            "'schemad[async]') where schemad runs, or name a driver that is installed"
        )
    return f"fix env.py ({same_error})"


def run_env(run: EnvRun, environment: EnvironmentContext) -> None:
    """Run env.py once in ``environment``, with schemad's connection handed over."""
    with environment, run.running():
        run.scripts.directory.run_env()


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Alembic's INFO lines ("Context impl ...") say nothing about a dry run."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _usable_as_engine(connection: Connection) -> Connection:
    """Let an env.py that treats ``config.attributes["connection"]`` as an Engine
    (``with connectable.connect() as connection:``) get the same connection."""
    connection.connect = lambda: _NotClosing(connection)  # type: ignore[attr-defined]
    return connection


class _NotClosing:
    """``with connectable.connect() as c`` on a connection: the connection, left open."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def __enter__(self) -> Connection:
        return self.connection

    def __exit__(self, *_exc: object) -> None:
        return None


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _qualified(table: str, schema: str | None) -> str:
    return f"{schema}.{table}" if schema else table
