"""Crashes: SIGKILL a ``schemad upgrade`` at random moments of a long upgrade.

The history has 100 revisions; each creates its own table and writes its
ledger row, and every tenth sleeps 0.2 s between the two. After every kill
the database is read from the outside: the version table must name exactly
the last revision whose table and ledger row are present (PostgreSQL and
SQLite commit each revision with its version row). The run after a kill
resumes from there; it is killed in turn or completes to head, and a fresh
database starts the next chain. The moments come from a seeded random
generator (``RELIABILITY_SEED=<seed>`` replays the same delays); the seed
is printed in the figures and in every failure.

MariaDB cannot roll DDL back: a kill inside a revision may leave its table
behind. The run after such a kill must either complete or refuse with exit
65, naming the interrupted revision and ``SCHEMAD_RETRY_INTERRUPTED``; the
test then undoes the partial changes and retries as the message says. At
the end every revision is present exactly once: nothing silently skipped.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from support.databases import connection, ledger_counts, sibling_database, version_rows
from support.forkserver import ForkServer, Job, Started
from support.processes import clean_env
from support.scripts import make_project, write_revision

from .figures import Figures, backend_name

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REVISIONS = 100
SLOW_EVERY = 10
SLOW_SECONDS = 0.2
KILLS = 20
MARIADB_KILLS = 8
# The full upgrade takes 3.5-5 s here; kills land in the first half of a run's
# remaining work, so a chain of runs sweeps the whole history.
KILL_WINDOW_SECONDS = 1.5
RUN_TIMEOUT_SECONDS = 60.0
IDS = [f"r{i:04d}" for i in range(1, REVISIONS + 1)]
SEED = int(os.environ.get("RELIABILITY_SEED", str(time.time_ns() % 1_000_000)))
_RUNNING = re.compile(r"^Running upgrade .*-> (r\d{4})")


def upgrade_body(index: int, revision: str) -> str:
    body = ""
    if index == 1:
        body += 'op.create_table("ledger", sa.Column("revision", sa.String(64), nullable=False))\n'
    body += f'op.create_table("t_{revision}", sa.Column("id", sa.Integer, primary_key=True))\n'
    if index % SLOW_EVERY == 0:
        body += f"import time\ntime.sleep({SLOW_SECONDS})\n"
    body += f"op.execute(\"INSERT INTO ledger (revision) VALUES ('{revision}')\")\n"
    return body


@pytest.fixture(scope="module")
def long_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 revisions, each creating t_rNNNN and its ledger row; every 10th is slow."""
    project = make_project(tmp_path_factory.mktemp("crashes") / "migrations")
    previous = None
    for index, revision in enumerate(IDS, start=1):
        write_revision(project, revision, previous, upgrade=upgrade_body(index, revision))
        previous = revision
    return project


def present(url: str) -> tuple[list[str], set[str], Counter[str]]:
    """Version rows, the revisions whose table exists, and ledger counts."""
    with connection(url) as conn:
        tables = set(sa.inspect(conn).get_table_names())
    made = {name.removeprefix("t_") for name in tables if name.startswith("t_r")}
    return version_rows(url), made, ledger_counts(url)


def prefix(count: int) -> list[str]:
    return IDS[:count]


def last_started(run: Started) -> str | None:
    """The last revision the run's log says Alembic began to apply."""
    found = None
    for line in run.stderr().splitlines():
        try:
            event = str(json.loads(line).get("event", ""))
        except ValueError:
            continue
        match = _RUNNING.match(event)
        if match:
            found = match.group(1)
    return found


class Crasher:
    """Starts upgrades, kills them at seeded random moments, and keeps count."""

    def __init__(
        self, server: ForkServer, project: Path, workdir: Path, rng: random.Random
    ) -> None:
        self.server = server
        self.project = project
        self.workdir = workdir
        self.rng = rng
        self.runs = 0
        self.kills = 0
        self.mid_revision = 0
        self.completions = 0
        self.refusals = 0

    def env(self, url: str, **extra: str) -> dict[str, str]:
        return clean_env(
            database_url=url, script_location=str(self.project), log_format="json", **extra
        )

    def start(self, url: str, **extra: str) -> Started:
        self.runs += 1
        job = Job(["upgrade"], self.env(url, **extra), self.workdir / f"run{self.runs:03d}")
        return self.server.start([job])[0]

    def finish(self, run: Started) -> Started:
        self.server.wait([run], RUN_TIMEOUT_SECONDS)
        return run

    def kill_at_random(self, run: Started) -> bool:
        """SIGKILL ``run`` after a random delay; False when it had exited before that."""
        delay = self.rng.uniform(0.0, KILL_WINDOW_SECONDS)
        deadline = run.started_at + delay
        while time.monotonic() < deadline:
            if not run.running():
                return False
            time.sleep(0.002)
        return self._kill(run)

    def kill_inside(self, run: Started, revisions: set[str], after_seconds: float) -> bool:
        """SIGKILL ``run`` ``after_seconds`` into the first of ``revisions`` it begins."""
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not run.running():
                return False
            if last_started(run) in revisions:
                time.sleep(after_seconds)
                return self._kill(run)
            time.sleep(0.005)
        raise AssertionError("the run never reached a slow revision")

    def _kill(self, run: Started) -> bool:
        with suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
        self.finish(run)
        if run.returncode != -signal.SIGKILL:
            return False
        self.kills += 1
        return True


@contextmanager
def fresh_database(url: str, chain: int) -> Iterator[str]:
    if make_url(url).get_backend_name() == "sqlite":
        path = Path(make_url(url).database or "")
        yield f"sqlite:///{path.with_name(f'chain{chain:02d}.db')}"
        return
    with sibling_database(url) as other:
        yield other


def check_at_committed_revision(url: str, context: str) -> int:
    """The version table names exactly the last revision whose changes are present."""
    versions, made, ledger = present(url)
    count = IDS.index(versions[0]) + 1 if versions else 0
    assert len(versions) <= 1, f"{context}: version rows {versions}"
    expected = (prefix(count), Counter(dict.fromkeys(prefix(count), 1)))
    assert expected == (sorted(made), ledger), f"{context}: at {versions}"
    return count


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """A fresh SQLite or PostgreSQL database."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.mark.parametrize(
    "url",
    [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_sigkill_leaves_the_database_at_the_last_committed_revision(
    url: str, long_project: Path, forkserver: ForkServer, figures: Figures, tmp_path: Path
) -> None:
    """After every kill the version table matches the schema; the next run resumes to head."""
    rng = random.Random(SEED)
    crasher = Crasher(forkserver, long_project, tmp_path, rng)
    chain = 0
    while crasher.kills < KILLS:
        chain += 1
        with fresh_database(url, chain) as database:
            while True:
                run = crasher.start(database)
                context = f"seed {SEED}, chain {chain}, run {crasher.runs}"
                if crasher.kill_at_random(run):
                    count = check_at_committed_revision(database, context)
                    crasher.mid_revision += count < REVISIONS and last_started(run) == IDS[count]
                    if crasher.kills >= KILLS:
                        run = crasher.finish(crasher.start(database))
                    else:
                        continue
                crasher.finish(run)
                assert run.returncode == 0, f"{context}: {run.output()[-3000:]}"
                assert present(database) == (
                    [IDS[-1]],
                    set(IDS),
                    Counter(dict.fromkeys(IDS, 1)),
                ), context
                crasher.completions += 1
                break
    figures.add(
        "crashes",
        backend=backend_name(url),
        kills=crasher.kills,
        seed=SEED,
        revisions=REVISIONS,
        mid_revision=crasher.mid_revision,
        completions=crasher.completions,
    )
    assert crasher.kills >= KILLS


# -- MariaDB: DDL cannot be rolled back ------------------------------------------------------

SLOW = {rev for index, rev in enumerate(IDS, start=1) if index % SLOW_EVERY == 0}


def undo_partial(url: str, revision: str) -> None:
    """What the message asks a human to do: drop what the interrupted revision made."""
    with connection(url) as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS t_{revision}")
        if sa.inspect(conn).has_table("ledger"):
            conn.execute(sa.text("DELETE FROM ledger WHERE revision = :r"), {"r": revision})
        conn.commit()


@pytest.mark.mariadb
def test_mariadb_kill_inside_a_revision_is_completed_or_refused_by_name(
    mariadb_url: str, long_project: Path, forkserver: ForkServer, figures: Figures, tmp_path: Path
) -> None:
    """The run after a kill completes or refuses (65) naming the revision and the way out."""
    rng = random.Random(SEED)
    crasher = Crasher(forkserver, long_project, tmp_path, rng)
    chain = 0
    while crasher.kills < MARIADB_KILLS:
        chain += 1
        with fresh_database(mariadb_url, chain) as database:
            retry: dict[str, str] = {}
            while True:
                run = crasher.start(database, **retry)
                context = f"seed {SEED}, chain {chain}, run {crasher.runs}"
                # Every other kill is aimed inside a slow revision, after its CREATE TABLE;
                # once all kills are done, the chain runs to its end.
                if crasher.kills >= MARIADB_KILLS:
                    killed = False
                elif crasher.kills % 2:
                    killed = crasher.kill_inside(run, SLOW, SLOW_SECONDS / 2)
                else:
                    killed = crasher.kill_at_random(run)
                if killed:
                    count = check_after_mariadb_kill(database, context)
                    crasher.mid_revision += count < REVISIONS and last_started(run) == IDS[count]
                    run = crasher.finish(crasher.start(database))
                    if run.returncode == 65:
                        interrupted = expect_refusal(run, IDS[count], context)
                        crasher.refusals += 1
                        undo_partial(database, interrupted)
                        retry = {"retry_interrupted": interrupted}
                        continue
                crasher.finish(run)
                assert run.returncode == 0, f"{context}: {run.output()[-3000:]}"
                assert present(database) == (
                    [IDS[-1]],
                    set(IDS),
                    Counter(dict.fromkeys(IDS, 1)),
                ), context
                crasher.completions += 1
                break
    figures.add(
        "crashes",
        backend="mariadb",
        kills=crasher.kills,
        seed=SEED,
        revisions=REVISIONS,
        mid_revision=crasher.mid_revision,
        completions=crasher.completions,
        refusals=crasher.refusals,
    )


def check_after_mariadb_kill(url: str, context: str) -> int:
    """Committed revisions are complete; at most the next one is partly there."""
    versions, made, ledger = present(url)
    count = IDS.index(versions[0]) + 1 if versions else 0
    done = prefix(count)
    partial = sorted(made - set(done))
    allowed = ([], [IDS[count]]) if count < REVISIONS else ([],)
    assert partial in allowed, f"{context}: tables beyond {versions}: {partial}"
    assert set(done) <= made, f"{context}: committed revisions lost their tables"
    assert ledger == Counter(dict.fromkeys(done, 1)), f"{context}: ledger {ledger}"
    return count


def expect_refusal(run: Started, revision: str, context: str) -> str:
    """Exit 65 naming the interrupted revision and how to apply it again; return it."""
    output = run.output()
    expected = (65, True, True, False)
    actual = (
        run.returncode,
        f"revision {revision}" in output,
        f"SCHEMAD_RETRY_INTERRUPTED={revision}" in output,
        "Traceback" in output,
    )
    assert expected == actual, f"{context}: {output[-3000:]}"
    return revision
