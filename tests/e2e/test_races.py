"""Eight `schemad upgrade` processes released at once apply every revision exactly once.

Each revision of the 30-revision history inserts its id into a ledger table,
so a revision applied twice (or not at all) shows up as a count other than 1.
Each also takes REVISION_SECONDS, as real ones do: the migration then lasts
long enough (0.6 s) that every process reaches the database while it runs,
even on a busy 2-core machine where processes are scheduled late.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from support.databases import ledger_counts, version_rows
from support.processes import ALEMBIC, SCHEMAD, clean_env, events, start_together
from support.scripts import ROOT, linear_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PROCESSES = 8
REVISIONS = 30
ROUNDS = 5
REVISION_SECONDS = 0.02


def _report(runs: list[subprocess.CompletedProcess[str]]) -> str:
    return "\n".join(
        f"--- process {i} exit {run.returncode}\n{run.stderr[-3000:]}" for i, run in enumerate(runs)
    )


@pytest.mark.parametrize("round_", range(ROUNDS), ids=lambda n: f"round{n + 1}")
def test_concurrent_upgrades_apply_each_revision_once(
    round_: int, db_url: str, tmp_path: Path
) -> None:
    """All processes exit 0, each ledger row exists once, and the version table is at head."""
    ids = linear_project(
        tmp_path / "migrations", REVISIONS, ledger=True, delay_seconds=REVISION_SECONDS
    )
    env = clean_env(database_url=db_url, script_location=str(tmp_path / "migrations"))

    runs = start_together(SCHEMAD, ["upgrade"], PROCESSES, env, workdir=tmp_path)

    assert [run.returncode for run in runs] == [0] * PROCESSES, _report(runs)
    assert ledger_counts(db_url) == Counter(dict.fromkeys(ids, 1))
    assert version_rows(db_url) == [ids[-1]]
    applied = Counter(
        e["revision"] for run in runs for e in events(run.stderr, "migration_applied")
    )
    assert applied == Counter(dict.fromkeys(ids, 1))


@pytest.mark.postgres
def test_plain_alembic_fails_the_same_race(postgres_url: str, tmp_path: Path) -> None:
    """Plain `alembic upgrade head` x8 on PostgreSQL crashes or doubles a revision.

    Not a test of schemad: the baseline the race tests above guard against. If
    Alembic ever grew a lock of its own, this would fail and should be dropped.
    """
    ids = linear_project(
        tmp_path / "migrations", REVISIONS, ledger=True, delay_seconds=REVISION_SECONDS
    )
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    env = clean_env(database_url=postgres_url)

    runs = start_together(
        ALEMBIC, ["upgrade", "head"], PROCESSES, env, workdir=tmp_path, cwd=tmp_path
    )

    crashed = [run.returncode for run in runs if run.returncode != 0]
    doubled = {rev: n for rev, n in ledger_counts(postgres_url).items() if n > 1}
    assert crashed or doubled, _report(runs)
    assert ids[-1] in version_rows(postgres_url)
