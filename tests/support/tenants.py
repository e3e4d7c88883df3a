"""Projects and databases for fan-out tests: one schema, database or file per tenant.

The env.py is Alembic's cookbook recipe for schema-per-tenant on PostgreSQL
("Rudimental Schema-Level Multi Tenancy"), adapted to schemad: it reads
``-x tenant=...``, sets the search path on the connection schemad hands
over, and keeps the version table in the tenant's schema. Without a tenant
(MariaDB databases, SQLite files) it migrates the database as it is.
Every revision writes one ledger row, and a revision fails for a tenant
given ``-x poison=1``.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from support.scripts import ledger_upgrade, make_project, write_env, write_revision

TENANT_ENV = """\
from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config
tenant = context.get_x_argument(as_dictionary=True).get("tenant")


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection):
    if tenant is not None:
        connection.execute(text('SET search_path TO "%s"' % tenant))
        connection.commit()
        connection.dialect.default_schema_name = tenant
    context.configure(connection=connection, version_table_schema=tenant)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
"""

POISON = textwrap.dedent(
    """\
    from alembic import context
    if context.get_x_argument(as_dictionary=True).get("poison"):
        raise RuntimeError("this tenant is poisoned")
    """
)


def tenant_project(path: Path, count: int = 2, *, poisoned: str = "r0002") -> list[str]:
    """A linear history with ledger rows; ``poisoned`` fails for ``-x poison=1``."""
    make_project(path)
    write_env(path, TENANT_ENV)
    ids = [f"r{i:04d}" for i in range(1, count + 1)]
    previous = None
    for rev in ids:
        body = ledger_upgrade(rev)
        if rev == poisoned:
            body = POISON + body
        write_revision(path, rev, previous, upgrade=body)
        previous = rev
    return ids


def create_schemas(url: str, names: Sequence[str]) -> None:
    """Create PostgreSQL schemas (tenants) in the database at ``url``."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for name in names:
                conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    finally:
        engine.dispose()


def schema_ledger(url: str, schema: str) -> list[str]:
    """The ledger rows in one schema (PostgreSQL), sorted; [] without a ledger."""
    return _column_in_schema(url, schema, "ledger", "revision")


def schema_versions(url: str, schema: str) -> list[str]:
    """The version rows in one schema (PostgreSQL), sorted; [] without a table."""
    return _column_in_schema(url, schema, "alembic_version", "version_num")


def _column_in_schema(url: str, schema: str, table: str, column: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table, schema=schema):
                return []
            rows = conn.exec_driver_sql(f'SELECT {column} FROM "{schema}".{table}').scalars()
            return sorted(str(row) for row in rows)
    finally:
        engine.dispose()


@contextmanager
def server_databases(admin_url: str, count: int) -> Iterator[list[str]]:
    """``count`` fresh databases on the server of ``admin_url``; their URLs; dropped after."""
    url = make_url(admin_url)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    names = [f"schemad_f{uuid.uuid4().hex[:10]}_{i}" for i in range(count)]
    try:
        with engine.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield [url.set(database=name).render_as_string(hide_password=False) for name in names]
    finally:
        with engine.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()
