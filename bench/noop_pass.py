"""Benchmark: the cost of a no-op reconcile pass inside the running daemon.

For linear histories of N = 10, 100, 1000 trivial revisions (bench/histories.py),
already at head (the version table stamped with the head), it measures in the
same run and on the same database:

- floor:   Alembic's ``MigrationContext.get_current_revision()`` on an open
           connection (one query, nothing else);
- alembic: ``alembic.command.upgrade(cfg, "head")`` repeated in one process
           (what a naive "run alembic in a loop" sidecar costs);
- schemad: ``Reconciler.reconcile_once()`` repeated, as the daemon does.

It prints medians and ratios; it asserts nothing (these machines are noisy).

    python bench/noop_pass.py [--quick] [--backend sqlite|postgresql|mariadb|both|all]

(``both`` is SQLite and PostgreSQL.) ``python -m bench`` runs this measurement
too, as its "daemon no-op" case.
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
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

if __package__ in (None, ""):  # run as a script: python bench/noop_pass.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.databases import fresh_database, stamp_head
from bench.histories import write_project
from schemad import logs
from schemad.cli import App
from schemad.settings import Settings

BACKEND_CHOICES = {
    "sqlite": ("sqlite",),
    "postgresql": ("postgresql",),
    "mariadb": ("mariadb",),
    "both": ("sqlite", "postgresql"),
    "all": ("sqlite", "postgresql", "mariadb"),
}


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def measure(backend: str, count: int, repeat: int) -> dict[str, float]:
    """Median milliseconds of the floor, Alembic's and schemad's no-op."""
    quiet_logs()
    with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as db:
        url = db.url
        project = Path(tmp) / "migrations"
        history = write_project(project, "linear", count)
        stamp_head(url, history.head)
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


def quiet_logs() -> None:
    """schemad's logging into a sink: the passes measured here log every time."""
    logs.configure("json", "warning", stream=io.StringIO())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=10 and 100, few repeats")
    parser.add_argument("--backend", choices=sorted(BACKEND_CHOICES), default="both")
    args = parser.parse_args()
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    repeat = 10 if args.quick else 50
    backends = BACKEND_CHOICES[args.backend]
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
