"""Races: many migrators at once apply every revision exactly once.

Sixteen ``schemad upgrade`` processes are released at the same moment
against one empty database, ten rounds on each backend; every revision of
the 30-revision history appends its id to a ledger table, so a revision
applied twice (or never) shows as a count other than one. Then four
daemons share one database while new revision files appear in their
migrations directory.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import DaemonProcess, daemon_env
from support.databases import ledger_counts, version_rows
from support.forkserver import ForkServer, Job, Started
from support.processes import clean_env, json_lines
from support.scripts import ledger_upgrade, linear_project, write_revision

from .figures import Figures, backend_name

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROCESSES = 16
ROUNDS = 10
REVISIONS = 30
DAEMONS = 4
TIMEOUT_SECONDS = 60.0


def report(runs: list[Started]) -> str:
    return "\n".join(
        f"--- process {i} exit {run.returncode}\n{run.output()[-2000:]}"
        for i, run in enumerate(runs)
    )


@pytest.fixture(scope="module")
def ledger_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One 30-revision ledger history shared by every round (each round has its own database)."""
    path = tmp_path_factory.mktemp("races") / "migrations"
    return path, linear_project(path, REVISIONS, ledger=True)


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1), ids=lambda n: f"round{n}")
def test_sixteen_upgrades_at_once_apply_each_revision_once(
    round_: int,
    db_url: str,
    ledger_project: tuple[Path, list[str]],
    forkserver: ForkServer,
    figures: Figures,
    tmp_path: Path,
) -> None:
    """Every process exits 0, each ledger row exists once, the version table is at head."""
    project, ids = ledger_project
    env = clean_env(database_url=db_url, script_location=str(project), log_format="json")
    jobs = [Job(["upgrade"], env, tmp_path / f"p{i:02d}") for i in range(PROCESSES)]

    started = time.monotonic()
    runs = forkserver.run_together(jobs, timeout=TIMEOUT_SECONDS)
    seconds = time.monotonic() - started

    logs = [json_lines(run.stderr()) for run in runs]
    applied = Counter(
        e["revision"] for log in logs for e in log if e["event"] == "migration_applied"
    )
    ledger = ledger_counts(db_url)
    figures.add(
        "races",
        backend=backend_name(db_url),
        processes=PROCESSES,
        revisions=REVISIONS,
        exit_0=sum(run.returncode == 0 for run in runs),
        ledger_once=sum(ledger[rev] == 1 for rev in ids),
        queued=sum(any(e["event"] == "plan_made" for e in log) for log in logs),
        seconds=seconds,
    )
    once = Counter(dict.fromkeys(ids, 1))
    assert [run.returncode for run in runs] == [0] * PROCESSES, report(runs)
    assert (ledger, version_rows(db_url), applied) == (once, [ids[-1]], once)
    assert [run for run in runs if "Traceback" in run.output()] == []


# -- daemons ------------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons started by the test; all killed afterwards."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def drop_revision(project: Path, staging: Path, revision: str, down: str) -> None:
    """Write a ledger revision elsewhere, then move it in whole (as a volume update would)."""
    written = write_revision(staging, revision, down, upgrade=ledger_upgrade(revision))
    os.replace(written, project / "versions" / written.name)


def all_ready_at(fleet: list[DaemonProcess], head: str) -> bool:
    for daemon in fleet:
        last = daemon.status()["last_pass"]
        if not (last and last["ready"] and last["current"] == [head]):
            return False
        if daemon.get("/readyz").status_code != 200:
            return False
    return True


def test_four_daemons_apply_each_new_revision_once(
    db_url: str, daemons: list[DaemonProcess], figures: Figures, tmp_path: Path
) -> None:
    """Revision files dropped into a shared directory are applied once; all daemons get ready."""
    project = tmp_path / "migrations"
    ids = linear_project(project, 5, ledger=True)
    staging = tmp_path / "staging"
    (staging / "versions").mkdir(parents=True)
    env = daemon_env(db_url, project, interval_seconds="1")
    for _ in range(DAEMONS):
        daemons.append(DaemonProcess(env).start(wait_for_http=False))
    for daemon in daemons:
        daemon.port = int(daemon.wait_for_event("http_started", timeout=30)["port"])
    lead = daemons[0]
    lead.wait_until(lambda: all_ready_at(daemons, ids[-1]), timeout=30, message="all ready")

    convergence = []
    for batch in (["r0006"], ["r0007", "r0008"]):
        for revision in batch:
            drop_revision(project, staging, revision, ids[-1])
            ids.append(revision)
        dropped = time.monotonic()
        lead.wait_until(
            lambda: all_ready_at(daemons, ids[-1]),
            timeout=TIMEOUT_SECONDS,
            message=f"all daemons ready at {ids[-1]}",
        )
        convergence.append(time.monotonic() - dropped)

    applied = Counter(e["revision"] for d in daemons for e in d.named("migration_applied"))
    once = Counter(dict.fromkeys(ids, 1))
    ledger = ledger_counts(db_url)
    figures.add(
        "daemons",
        backend=backend_name(db_url),
        daemons=DAEMONS,
        new_revisions=3,
        once=ledger == once,
        head=ids[-1],
        convergence=convergence,
    )
    expected = {
        "ledger": once,
        "applied": once,
        "version_table": [ids[-1]],
        "alive": [True] * DAEMONS,
        "non_json_lines": [],
    }
    actual = {
        "ledger": ledger,
        "applied": applied,
        "version_table": version_rows(db_url),
        "alive": [d.alive() for d in daemons],
        "non_json_lines": [line for d in daemons for line in d.non_json_lines()],
    }
    assert expected == actual
