"""The lock holder dies: a waiting replica takes over by itself, well within its bound.

A ``schemad upgrade`` holds the migration lock while a slow revision runs
(it sleeps only in the holder, through an environment variable); a second
one waits with ``SCHEMAD_LOCK_WAIT_SECONDS=20``. The holder is SIGKILLed:
the database (or, for SQLite, the kernel) drops its lock, and the waiter
takes it without any manual step. The takeover time is the waiter's
``lock_acquired`` timestamp minus the moment of the kill.

On MariaDB a revision killed half-way may have left DDL behind, so the
waiter takes the lock and then refuses by name (exit 65) until told to
retry; killed while holding the lock before any revision began (a slow
env.py), the takeover completes with no manual step there too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from support.databases import ledger_counts, version_rows
from support.forkserver import ForkServer, Job, Started
from support.processes import clean_env
from support.scripts import ledger_upgrade, make_project, write_revision

from .figures import Figures, backend_name

pytestmark = [pytest.mark.reliability]

LOCK_WAIT_SECONDS = 20.0
# "Well within the bound": the lock is polled every 0.1 s.
TAKEOVER_LIMIT_SECONDS = 5.0
IDS = ["r0001", "r0002", "r0003"]
HOLD = "RELIABILITY_HOLD"


def project_with_slow_step(path: Path) -> Path:
    """r0001 -> r0002 -> r0003, ledger rows; r0002 (or env.py) sleeps when HOLD says so."""
    make_project(path)
    env_py = path / "env.py"
    env_py.write_text(
        # schemad runs env.py twice: a dry run before the lock (as `alembic
        # current`), then the run that migrates, under the lock: hold in that one.
        "import os as _os, time as _time\n"
        f"if _os.environ.get({HOLD!r}) == 'env':\n"
        "    if _os.environ.get('_HOLD_ENV_SEEN'):\n"
        "        _time.sleep(60)\n"
        "    _os.environ['_HOLD_ENV_SEEN'] = '1'\n" + env_py.read_text()
    )
    slow = f"import os, time\nif os.environ.get({HOLD!r}) == 'revision':\n    time.sleep(60)\n"
    previous = None
    for revision in IDS:
        body = ledger_upgrade(revision)
        write_revision(
            path, revision, previous, upgrade=(slow if revision == "r0002" else "") + body
        )
        previous = revision
    return path


def events(run: Started) -> list[dict[str, Any]]:
    parsed = []
    for line in run.stderr().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            parsed.append(event)
    return parsed


def wait_for(run: Started, predicate: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = not run.running()
        for event in events(run):
            if predicate(event):
                return event
        if ended:
            raise AssertionError(f"the process ended before {what}:\n{run.output()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"no {what} within {timeout}s:\n{run.output()[-3000:]}")


def named(name: str) -> Any:
    return lambda e: e.get("event") == name


def running(revision: str) -> Any:
    return lambda e: (
        str(e.get("event", "")).startswith("Running upgrade")
        and str(e["event"]).split(",")[0].endswith(f"-> {revision}")
    )


def timestamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def take_over(
    server: ForkServer, url: str, project: Path, workdir: Path, hold: str
) -> tuple[Started, float]:
    """Kill a holder held up in ``hold``; return the waiter (finished) and the takeover time."""
    env = clean_env(
        database_url=url,
        script_location=str(project),
        log_format="json",
        lock_wait_seconds=f"{LOCK_WAIT_SECONDS:g}",
    )
    holder = server.start([Job(["upgrade"], {**env, HOLD: hold}, workdir / "holder")])[0]
    waiter: Started | None = None
    try:
        if hold == "revision":
            wait_for(holder, running("r0002"), "holder inside r0002")
        else:
            wait_for(holder, named("lock_acquired"), "holder with the lock")
            time.sleep(0.3)  # inside env.py's sleep
        waiter = server.start([Job(["upgrade"], env, workdir / "waiter")])[0]
        wait_for(waiter, named("lock_waiting"), "waiter waiting for the lock")
        killed_at = time.time()
        os.kill(holder.pid, signal.SIGKILL)
        server.wait([holder], 10)
        acquired = wait_for(waiter, named("lock_acquired"), "takeover", LOCK_WAIT_SECONDS + 10)
        server.wait([waiter], 60)
    finally:
        server.kill([holder] if waiter is None else [holder, waiter])
    return waiter, timestamp(acquired) - killed_at


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return project_with_slow_step(tmp_path / "migrations")


@pytest.mark.parametrize(
    "url",
    [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_waiter_takes_over_from_a_killed_holder(
    url: str, project: Path, forkserver: ForkServer, figures: Figures, tmp_path: Path
) -> None:
    """Holder killed inside a slow revision: the waiter takes the lock and finishes the job."""
    waiter, seconds = take_over(forkserver, url, project, tmp_path, "revision")
    figures.add(
        "takeover",
        backend=backend_name(url),
        during="inside a slow revision",
        bound=LOCK_WAIT_SECONDS,
        seconds=seconds,
        outcome=f"exit {waiter.returncode}, at head",
    )
    expected = (0, True, [IDS[-1]], Counter(dict.fromkeys(IDS, 1)))
    actual = (waiter.returncode, 0 <= seconds < TAKEOVER_LIMIT_SECONDS)
    actual += (version_rows(url), ledger_counts(url))
    assert expected == actual, f"takeover {seconds:.2f}s\n{waiter.output()[-3000:]}"


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """A fresh SQLite or PostgreSQL database."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.mark.mariadb
def test_mariadb_waiter_takes_over_from_a_holder_killed_before_any_revision(
    mariadb_url: str, project: Path, forkserver: ForkServer, figures: Figures, tmp_path: Path
) -> None:
    """Holder killed with the lock but no revision begun: the waiter completes, no manual step."""
    waiter, seconds = take_over(forkserver, mariadb_url, project, tmp_path, "env")
    figures.add(
        "takeover",
        backend="mariadb",
        during="holding the lock, before any revision",
        bound=LOCK_WAIT_SECONDS,
        seconds=seconds,
        outcome=f"exit {waiter.returncode}, at head",
    )
    expected = (0, True, [IDS[-1]], Counter(dict.fromkeys(IDS, 1)))
    actual = (waiter.returncode, 0 <= seconds < TAKEOVER_LIMIT_SECONDS)
    actual += (version_rows(mariadb_url), ledger_counts(mariadb_url))
    assert expected == actual, f"takeover {seconds:.2f}s\n{waiter.output()[-3000:]}"


@pytest.mark.mariadb
def test_mariadb_waiter_takes_over_then_refuses_the_interrupted_revision_by_name(
    mariadb_url: str, project: Path, forkserver: ForkServer, figures: Figures, tmp_path: Path
) -> None:
    """Holder killed inside r0002: the waiter takes the lock, refuses (65) naming r0002; a
    retry with SCHEMAD_RETRY_INTERRUPTED=r0002 completes."""
    waiter, seconds = take_over(forkserver, mariadb_url, project, tmp_path, "revision")
    output = waiter.output()
    env = clean_env(
        database_url=mariadb_url,
        script_location=str(project),
        log_format="json",
        retry_interrupted="r0002",
    )
    retried = forkserver.run(Job(["upgrade"], env, tmp_path / "retry"), 60)
    figures.add(
        "takeover",
        backend="mariadb",
        during="inside a slow revision",
        bound=LOCK_WAIT_SECONDS,
        seconds=seconds,
        outcome=f"exit {waiter.returncode} naming r0002, then retried: exit {retried.returncode}",
    )
    expected = {
        "takeover_in_time": True,
        "waiter": (65, True, True, False),
        "retried": 0,
        "version": [IDS[-1]],
        "ledger": Counter(dict.fromkeys(IDS, 1)),
    }
    actual = {
        "takeover_in_time": 0 <= seconds < TAKEOVER_LIMIT_SECONDS,
        "waiter": (
            waiter.returncode,
            "revision r0002" in output,
            "SCHEMAD_RETRY_INTERRUPTED=r0002" in output,
            "Traceback" in output,
        ),
        "retried": retried.returncode,
        "version": version_rows(mariadb_url),
        "ledger": ledger_counts(mariadb_url),
    }
    assert expected == actual, f"takeover {seconds:.2f}s\n{output[-3000:]}"
