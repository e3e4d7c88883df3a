"""Benchmark: fan-out over many tenants (issue #14).

For N tenants (PostgreSQL: schemas of one database, listed by
SCHEMAD_TARGETS_QUERY; MariaDB: databases; SQLite: files, both listed in
SCHEMAD_TARGETS_FILE) and a linear history of R trivial revisions (each
creates one table in the tenant), it measures, each on its own fresh set of
tenants:

- schemad:  ``schemad upgrade`` over all tenants (apply from empty), then
            again (the no-op pass: one batched read of the version tables);
- alembic CLI: ``alembic -x tenant=... upgrade head``, one process per
            tenant, timed on a sample of tenants and extrapolated to N (the
            table says so);
- in-process loop: ``alembic.command.upgrade(cfg, "head")`` for every
            tenant in one Python process, apply then no-op.

It prints the times, the ratios schemad / in-process loop and schemad /
CLI per tenant, and peak RSS: the schemad process's own, and its largest
worker's (``getrusage(RUSAGE_CHILDREN)`` in schemad, logged as
``worker_peak_rss_kib``; a forked worker counts the pages it shares with
its parent). It asserts nothing (these machines are shared and noisy).

    python -m bench.fleet [--tenants 100] [--revisions 20] [--sample 10]
                          [--backends postgresql,mariadb,sqlite] [--quick]

``--quick`` (the test suite's smoke run): 3 SQLite tenants, 3 revisions,
a sample of 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bench.databases import MARIADB_ADMIN_URL, available, fresh_database, unique_name
from bench.processes import ALEMBIC, SCHEMAD, ProcessRun, run, tool_env
from bench.report import machine, num, table

BACKENDS = ("postgresql", "mariadb", "sqlite")
TENANT_QUERY = (
    "SELECT nspname AS name, nspname AS tenant, nspname AS version_table_schema "
    "FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'"
)
# The cookbook's schema-per-tenant env.py (PostgreSQL), which also migrates a
# database of its own (-x url=... under plain alembic; the connection schemad
# hands over under schemad).
ENV_PY = """\
from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config
x = context.get_x_argument(as_dictionary=True)
tenant = x.get("tenant")


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = x.get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
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
REVISION = '''\
"""revision {rev}"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("t_{rev}", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("t_{rev}")
'''


@dataclass
class Tenants:
    """One fresh set of tenants on one backend, and how each tool reaches them."""

    backend: str
    names: list[str]
    control_url: str
    urls: dict[str, str] = field(default_factory=dict)
    """Tenant -> URL, for tenants that are databases or files of their own."""

    def schemad_settings(self, workdir: Path) -> dict[str, str]:
        if self.backend == "postgresql":
            return {"database_url": self.control_url, "targets_query": TENANT_QUERY}
        path = workdir / f"targets-{unique_name()}.json"
        path.write_text(json.dumps([{"name": n, "url": self.urls[n]} for n in self.names]))
        return {"database_url": self.control_url, "targets_file": str(path)}

    def x_args(self, name: str) -> list[str]:
        if self.backend == "postgresql":
            return [f"tenant={name}", f"url={self.control_url}"]
        return [f"url={self.urls[name]}"]

    def at_head(self, head: str) -> int:
        """How many tenants have exactly ``head`` in their version table."""
        if self.backend == "postgresql":
            return _count_schemas_at(self.control_url, self.names, head)
        return sum(_version_rows(self.urls[name]) == [head] for name in self.names)


@contextmanager
def tenants(backend: str, count: int, workdir: Path) -> Iterator[Tenants]:
    """``count`` empty tenants on ``backend``, removed afterwards."""
    names = [f"tenant_{i:04d}" for i in range(count)]
    if backend == "postgresql":
        with fresh_database("postgresql", workdir) as database:
            engine = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
            with engine.begin() as conn:
                for name in names:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
            engine.dispose()
            yield Tenants(backend, names, database.url)
        return
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="tenants-", dir=workdir))
        try:
            urls = {name: f"sqlite:///{folder / name}.db" for name in names}
            yield Tenants(backend, names, f"sqlite:///{folder / 'control.db'}", urls)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    prefix = unique_name()
    databases = {name: f"{prefix}_{name}" for name in names}
    base = MARIADB_ADMIN_URL.rsplit("/", 1)[0]
    _admin(MARIADB_ADMIN_URL, [f"CREATE DATABASE {db}" for db in databases.values()])
    try:
        urls = {name: f"{base}/{db}" for name, db in databases.items()}
        yield Tenants(backend, names, MARIADB_ADMIN_URL, urls)
    finally:
        _admin(MARIADB_ADMIN_URL, [f"DROP DATABASE IF EXISTS {db}" for db in databases.values()])


def _admin(url: str, statements: Sequence[str]) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _count_schemas_at(url: str, schemas: Sequence[str], head: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            selects = " UNION ALL ".join(
                f'SELECT version_num FROM "{schema}".alembic_version' for schema in schemas
            )
            rows = conn.exec_driver_sql(selects).scalars().all()
    except sa.exc.ProgrammingError:
        return 0  # some schema has no version table
    finally:
        engine.dispose()
    return sum(1 for row in rows if row == head)


def _version_rows(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return []
            return sorted(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    finally:
        engine.dispose()


def write_project(folder: Path, revisions: int) -> tuple[Path, str]:
    """The migrations directory and alembic.ini; returns the ini and the head."""
    migrations = folder / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(ENV_PY)
    down = None
    for i in range(1, revisions + 1):
        rev = f"f{i:04d}"
        (migrations / "versions" / f"{rev}.py").write_text(REVISION.format(rev=rev, down=down))
        down = rev
    ini = folder / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
        "sqlalchemy.url = sqlite:///unused.db\n"
    )
    assert down is not None
    return ini, down


@dataclass
class Measured:
    apply_seconds: float
    noop_seconds: float
    note: str = ""


def measure_schemad(
    group: Tenants, ini: Path, workdir: Path, head: str, concurrency: int | None
) -> tuple[Measured, dict[str, object], ProcessRun]:
    settings = {
        **group.schemad_settings(workdir),
        "script_location": str(ini.parent / "migrations"),
        "log_format": "json",
        "canary": "0",
    }
    if concurrency is not None:
        settings["concurrency"] = str(concurrency)
    env = tool_env(**settings)
    applied = run([SCHEMAD, "upgrade"], env)
    _require(applied.ok, applied.describe_failure())
    at_head = group.at_head(head)
    _require(at_head == len(group.names), f"schemad left {at_head}/{len(group.names)} at head")
    finished = _fleet_finished(applied.output_tail)
    noop = run([SCHEMAD, "upgrade"], env)
    _require(noop.ok, noop.describe_failure())
    return Measured(applied.wall_seconds, noop.wall_seconds), finished, applied


def _fleet_finished(output: str) -> dict[str, object]:
    for line in reversed(output.splitlines()):
        if '"fleet_finished"' in line:
            event: dict[str, object] = json.loads(line)
            return event
    return {}


def measure_cli(group: Tenants, ini: Path, head: str, total: int) -> Measured:
    env = tool_env()
    walls: list[list[float]] = [[], []]
    for phase in (0, 1):
        for name in group.names:
            argv = [ALEMBIC, "-c", str(ini)]
            for arg in group.x_args(name):
                argv += ["-x", arg]
            done = run([*argv, "upgrade", "head"], env)
            _require(done.ok, done.describe_failure())
            walls[phase].append(done.wall_seconds)
    _require(group.at_head(head) == len(group.names), "alembic CLI did not reach head")
    scale = total / len(group.names)
    note = f"measured on {len(group.names)} tenants, x{scale:g}"
    return Measured(sum(walls[0]) * scale, sum(walls[1]) * scale, note)


def measure_loop(group: Tenants, ini: Path, head: str) -> Measured:
    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)
    times = []
    for _phase in (0, 1):
        start = time.perf_counter()
        for name in group.names:
            config = Config(str(ini), cmd_opts=Namespace(x=group.x_args(name)))
            command.upgrade(config, "head")
        times.append(time.perf_counter() - start)
    _require(group.at_head(head) == len(group.names), "the in-process loop did not reach head")
    return Measured(times[0], times[1])


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"bench.fleet: {message}")


def run_backend(backend: str, options: argparse.Namespace, workdir: Path) -> str:
    project = Path(tempfile.mkdtemp(prefix="fleet-project-", dir=workdir))
    ini, head = write_project(project, options.revisions)
    count, sample = options.tenants, min(options.sample, options.tenants)
    with tenants(backend, count, workdir) as group:
        schemad, finished, applied = measure_schemad(group, ini, workdir, head, options.concurrency)
    with tenants(backend, sample, workdir) as group:
        cli = measure_cli(group, ini, head, count)
    with tenants(backend, count, workdir) as group:
        loop = measure_loop(group, ini, head)
    rows = [
        ["schemad upgrade (fan-out)", num(schemad.apply_seconds), num(schemad.noop_seconds), ""],
        [
            "alembic CLI, one process per tenant",
            num(cli.apply_seconds),
            num(cli.noop_seconds),
            cli.note,
        ],
        [
            "alembic.command.upgrade loop, one process",
            num(loop.apply_seconds),
            num(loop.noop_seconds),
            "",
        ],
    ]
    worker_rss = finished.get("worker_peak_rss_kib")
    lines = [
        f"fleet: {backend}, {count} tenants x {options.revisions} revisions, "
        f"{finished.get('workers', '?')} worker(s)",
        table(["tool", "apply s", "no-op s", "note"], rows),
        "ratio schemad / in-process loop (schemad's process start included): apply "
        f"{_ratio(schemad.apply_seconds, loop.apply_seconds)}, "
        f"no-op {_ratio(schemad.noop_seconds, loop.noop_seconds)}",
        f"ratio schemad / CLI per tenant (extrapolated): apply "
        f"{_ratio(schemad.apply_seconds, cli.apply_seconds)}, "
        f"no-op {_ratio(schemad.noop_seconds, cli.noop_seconds)}",
        f"peak RSS: schemad process {applied.peak_rss_kib / 1024:.1f} MiB, largest worker "
        + (
            f"{int(worker_rss) / 1024:.1f} MiB" if isinstance(worker_rss, int) else "- (in-process)"
        ),
    ]
    return "\n".join(lines)


def _ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.2f}" if bottom > 0 else "-"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--revisions", type=int, default=20)
    parser.add_argument(
        "--sample", type=int, default=10, help="tenants the alembic CLI is timed on"
    )
    parser.add_argument(
        "--backends", default="postgresql", help="comma list of " + ",".join(BACKENDS)
    )
    parser.add_argument("--concurrency", type=int, default=None, help="SCHEMAD_CONCURRENCY")
    parser.add_argument("--quick", action="store_true", help="smoke: 3 SQLite tenants, 3 revisions")
    options = parser.parse_args(argv)
    if options.quick:
        options.tenants, options.revisions, options.sample = 3, 3, 2
        if options.backends == "postgresql":
            options.backends = "sqlite"
    options.backends = [b.strip() for b in options.backends.split(",") if b.strip()]
    unknown = set(options.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {BACKENDS}")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as folder:
        for backend in options.backends:
            why = available(backend) if backend != "sqlite" else None
            if why is not None:
                print(f"fleet: {backend} skipped: {why}", flush=True)
                continue
            print(run_backend(backend, options, Path(folder)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("SCHEMAD_LOG_FORMAT", None)
    sys.exit(main())
