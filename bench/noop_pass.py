"""Benchmark: the cost of a no-op reconcile pass inside the running daemon.

For linear histories of N = 10, 100, 1000 trivial revisions, already at head,
it measures in the same run and on the same database:

- floor:   Alembic's ``MigrationContext.get_current_revision()`` on an open
           connection (one query, nothing else);
- alembic: ``alembic.command.upgrade(cfg, "head")`` repeated in one process
           (what a naive "run alembic in a loop" sidecar costs);
- schemad: ``Reconciler.reconcile_once()`` repeated, as the daemon does.

It prints medians and ratios; it asserts nothing (these machines are noisy).

    python bench/noop_pass.py [--quick] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from schemad import logs  # noqa: E402
from schemad.cli import App  # noqa: E402
from schemad.settings import Settings  # noqa: E402
from support.scripts import linear_project  # noqa: E402

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"schemad_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def measure(backend: str, count: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, database(backend, Path(tmp)) as url:
        project = Path(tmp) / "migrations"
        linear_project(project, count)
        # As in an image built earlier: files older than the settle window.
        past = time.time() - 60
        for directory in (project, project / "versions"):
            os.utime(directory, (past, past))
        settings = Settings(database_url=url, script_location=str(project))
        app = App.build(settings, io.StringIO())
        first = app.reconciler.reconcile_once()
        assert first.at_target, first.error
        alembic_cfg = Config()
        alembic_cfg.set_main_option("script_location", str(project))
        alembic_cfg.set_main_option("sqlalchemy.url", url)
        alembic_cfg.attributes["schemad"] = True  # env.py: keep our logging
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            floor = median_ms(
                lambda: MigrationContext.configure(conn).get_current_revision(), repeat
            )
            alembic_cfg.attributes["connection"] = conn
            alembic = median_ms(lambda: command.upgrade(alembic_cfg, "head"), max(repeat // 4, 3))
        engine.dispose()
        schemad = median_ms(app.reconciler.reconcile_once, repeat)
        app.database.dispose()
    return {"floor": floor, "alembic": alembic, "schemad": schemad}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=10 and 100, few repeats")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    logs.configure("json", "warning", stream=io.StringIO())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    repeat = 10 if args.quick else 50
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    print("no-op pass, median ms (ratios: x the floor; alembic/schemad = how many times faster)")
    print(
        f"{'backend':<11}{'N':>6}{'floor':>9}{'alembic':>10}{'schemad':>10}"
        f"{'schemad/floor':>15}{'alembic/schemad':>17}{'target<=2ms':>13}"
    )
    for backend in backends:
        for count in sizes:
            m = measure(backend, count, repeat)
            met = "met" if m["schemad"] <= 2.0 else "MISSED"
            print(
                f"{backend:<11}{count:>6}{m['floor']:>9.3f}{m['alembic']:>10.2f}"
                f"{m['schemad']:>10.3f}{m['schemad'] / m['floor']:>14.1f}x"
                f"{m['alembic'] / m['schemad']:>16.1f}x{met:>13}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
