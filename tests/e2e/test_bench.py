"""The benchmark harness still runs end to end (its smoke mode, tiny histories).

Figures are never asserted (these machines are shared and noisy): only that
every case ran every tool to the right end state and that the targets table
has a measurement and a verdict in every row.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.scripts import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.mariadb]

BACKENDS = ("postgresql", "mariadb", "sqlite")


def test_quick_benchmark_runs_every_case_and_prints_every_target(
    postgres_url: str, mariadb_url: str
) -> None:
    """`python -m bench --quick` at N=10 exits 0 (every tool reached head, every
    process exited as expected) and judges every target on every backend."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sizes", "10", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "per revision, applying 10 revisions in one process" in done.stdout
    table = done.stdout.split("targets (issue 15 marked [15], then issue 6)", 1)[1]
    rows = [line for line in table.splitlines() if line.rstrip().endswith(("met", "MISSED"))]
    judged = {backend: [row for row in rows if f", {backend}" in row] for backend in BACKENDS}
    # issue 15: apply vs Alembic, no-op with the index, wait with the index, and the
    # bootstrap vs the floor where DDL is transactional; issue 6: apply x2 shapes,
    # no-op process, daemon pass, replicas, idle RSS x2, peak RSS x2
    expected = {"sqlite": 13, "postgresql": 13, "mariadb": 12}
    assert {backend: len(found) for backend, found in judged.items()} == expected
    unmeasured = [line for line in table.splitlines() if line.rstrip().endswith(" -")]
    assert unmeasured == []


def test_fleet_benchmark_smoke_run_prints_the_ratios() -> None:
    """`python -m bench.fleet --quick` (3 SQLite tenants) exits 0, every tool reached
    head, and it prints both ratio lines and the peak RSS line."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.fleet", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "fleet: sqlite, 3 tenants x 3 revisions" in done.stdout
    assert (
        "ratio schemad / in-process loop (schemad's process start included): apply " in done.stdout
    )
    assert "ratio schemad / CLI per tenant (extrapolated): apply " in done.stdout
    assert "peak RSS: schemad process " in done.stdout
