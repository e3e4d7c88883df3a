"""The benchmark cases. Each runs the tools in turn, on fresh databases, and
records every sample in a :class:`Results`; none asserts anything about time.

A tool that fails (non-zero exit, or the database not at the head with every
table afterwards) is recorded as a failure; the harness exits non-zero then.
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import noop_pass
from bench.databases import FreshDatabase, contents, fresh_database, stamp_head
from bench.histories import History, render_floor, write_alembic_ini, write_project
from bench.processes import ALEMBIC, SCHEMAD, ProcessRun, rss_kib, run, run_at_once, tool_env
from bench.roundtrips import TOOLS as ROUND_TRIP_TOOLS

# schemad: an empty database is created in one transaction (the default);
# schemad_per_revision: each revision commits on its own, as on later upgrades.
APPLY_TOOLS = ("floor", "floor_1tx", "alembic", "schemad", "schemad_per_revision")
# schemad_index / wait_index: with the graph index (`schemad index`) built.
NOOP_TOOLS = ("select_1", "alembic", "schemad", "schemad_index", "wait_index")
DIALECT_URLS = {
    "postgresql": "postgresql+psycopg://bench@localhost/bench",
    "mariadb": "mysql+pymysql://bench@localhost/bench",
    "sqlite": "sqlite:///bench.db",
}
DAEMON_START_TIMEOUT_SECONDS = 900.0


@dataclass
class Results:
    """Every sample, keyed by (case, backend, shape, count, tool)."""

    samples: dict[tuple[str, str, str, int, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    failures: list[str] = field(default_factory=list)

    def add(self, key: tuple[str, str, str, int, str], value: float) -> None:
        self.samples[key].append(value)

    def median(self, *key: Any) -> float | None:
        values = self.samples.get(key)  # type: ignore[call-overload]
        return statistics.median(values) if values else None

    def ratio(
        self, case: str, backend: str, shape: str, count: int, top: str, bottom: str
    ) -> float | None:
        """top / bottom: the median of the per-round ratios when every round
        has both (tools of one round run minutes apart at most, so slow drift
        in the machine's speed cancels out), else the ratio of the medians.
        """
        tops = self.samples.get((case, backend, shape, count, top), [])
        bottoms = self.samples.get((case, backend, shape, count, bottom), [])
        if not tops or not bottoms or 0 in bottoms:
            return None
        if len(tops) == len(bottoms):
            return statistics.median(t / b for t, b in zip(tops, bottoms, strict=True))
        return statistics.median(tops) / statistics.median(bottoms)

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def to_json(self) -> str:
        return json.dumps(
            {
                "samples": [
                    {
                        "case": k[0],
                        "backend": k[1],
                        "shape": k[2],
                        "count": k[3],
                        "tool": k[4],
                        "values": v,
                    }
                    for k, v in self.samples.items()
                ],
                "failures": self.failures,
            },
            indent=1,
        )


@dataclass
class Bench:
    """What every case needs: where to work, the generated projects, the results."""

    workdir: Path
    results: Results
    _projects: dict[tuple[str, int], History] = field(default_factory=dict)
    _floors: dict[tuple[str, str, int], tuple[Path, Path]] = field(default_factory=dict)

    def project(self, shape: str, count: int) -> History:
        key = (shape, count)
        if key not in self._projects:
            self._projects[key] = write_project(
                self.workdir / "projects" / f"{shape}-{count}", shape, count
            )
        return self._projects[key]

    def indexed(self, history: History) -> History:
        """A copy of ``history`` with its graph index built (``schemad index``)."""
        key = (f"{history.shape}-indexed", history.count)
        if key not in self._projects:
            copy = replace(history, path=history.path.with_name(f"{history.path.name}-indexed"))
            shutil.copytree(history.path, copy.path)
            run([SCHEMAD, "index"], tool_env(script_location=str(copy.path)))
            self._projects[key] = copy
        return self._projects[key]

    def floor_files(self, backend: str, history: History) -> tuple[Path, Path]:
        key = (backend, history.shape, history.count)
        if key not in self._floors:
            per_revision, single = render_floor(history, DIALECT_URLS[backend])
            base = self.workdir / "floors" / f"{backend}-{history.shape}-{history.count}"
            base.parent.mkdir(parents=True, exist_ok=True)
            paths = (base.with_suffix(".per-revision.sql"), base.with_suffix(".single.sql"))
            paths[0].write_text(per_revision)
            paths[1].write_text(single)
            self._floors[key] = paths
        return self._floors[key]

    @contextmanager
    def database(self, backend: str) -> Iterator[FreshDatabase]:
        with fresh_database(backend, self.workdir) as db:
            yield db

    def schemad_env(self, db: FreshDatabase, history: History, **extra: str) -> dict[str, str]:
        return tool_env(
            database_url=db.url, script_location=str(history.path), log_format="json", **extra
        )

    def alembic_argv(self, db: FreshDatabase, history: History) -> list[str]:
        ini = write_alembic_ini(self.workdir / f"{db.name}.ini", history, db.url)
        return [ALEMBIC, "-c", str(ini), "upgrade", "head"]

    def check(self, label: str, outcome: ProcessRun, db: FreshDatabase, history: History) -> bool:
        """Record a failure unless the tool exited 0 and left the database at head."""
        if not outcome.ok:
            self.results.fail(f"{label}: {outcome.describe_failure()}")
            return False
        return self.check_database(label, db, history)

    def check_database(self, label: str, db: FreshDatabase, history: History) -> bool:
        rows, tables = contents(db.url)
        if rows != (history.head,) or tables != history.count:
            self.results.fail(
                f"{label}: exited 0 but the database holds version {list(rows)} and "
                f"{tables} tables; expected [{history.head!r}] and {history.count}"
            )
            return False
        return True


def rotated(items: Sequence[str], by: int) -> list[str]:
    """Each round starts with a different tool, so drift hits all of them alike."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def apply_all(
    bench: Bench,
    backend: str,
    shape: str,
    count: int,
    rounds: int,
    tools: Sequence[str] = APPLY_TOOLS,
) -> None:
    """Apply every revision to an empty database: the floors, Alembic, schemad."""
    history = bench.project(shape, count)
    per_revision, single = bench.floor_files(backend, history)
    for round_ in range(rounds):
        for tool in rotated(tools, round_):
            with bench.database(backend) as db:
                if tool in ("floor", "floor_1tx"):
                    argv, stdin = db.floor_command(per_revision if tool == "floor" else single)
                    outcome = run(argv, tool_env(), stdin=stdin)
                elif tool == "alembic":
                    outcome = run(bench.alembic_argv(db, history), tool_env())
                elif tool == "schemad_per_revision":
                    env = bench.schemad_env(db, history, bootstrap_in_one_transaction="false")
                    outcome = run([SCHEMAD, "upgrade"], env)
                else:
                    outcome = run([SCHEMAD, "upgrade"], bench.schemad_env(db, history))
                label = f"apply {backend} {shape} N={count} {tool}"
                if bench.check(label, outcome, db, history):
                    key = ("apply", backend, shape, count, tool)
                    bench.results.add(key, outcome.wall_seconds)
                    bench.results.add((*key[:4], f"{tool}_rss"), outcome.peak_rss_kib / 1024)


def noop_process(bench: Bench, backend: str, count: int, rounds: int) -> None:
    """Already at head, as whole processes: SELECT 1, alembic upgrade head, schemad upgrade."""
    history = bench.project("linear", count)
    with bench.database(backend) as db:
        stamp_head(db.url, history.head)
        indexed = bench.indexed(history)
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "select_1": (db.select_1_command(), tool_env()),
            "alembic": (bench.alembic_argv(db, history), tool_env()),
            "schemad": ([SCHEMAD, "upgrade"], bench.schemad_env(db, history)),
            "schemad_index": ([SCHEMAD, "upgrade"], bench.schemad_env(db, indexed)),
            "wait_index": ([SCHEMAD, "wait"], bench.schemad_env(db, indexed)),
        }
        for argv, env in commands.values():  # warm the page cache; not measured
            run(argv, env)
        for round_ in range(rounds):
            for tool in rotated(NOOP_TOOLS, round_):
                argv, env = commands[tool]
                outcome = run(argv, env)
                if not outcome.ok:
                    bench.results.fail(
                        f"no-op {backend} N={count} {tool}: " + outcome.describe_failure()
                    )
                    continue
                key = ("noop", backend, "linear", count, tool)
                bench.results.add(key, outcome.wall_seconds)
                bench.results.add((*key[:4], f"{tool}_rss"), outcome.peak_rss_kib / 1024)


def round_trips(bench: Bench, backend: str, count: int) -> None:
    """Statements, commits, rollbacks and savepoints per revision (bench/roundtrips.py)."""
    history = bench.project("linear", count)
    for tool in ROUND_TRIP_TOOLS:
        with bench.database(backend) as db:
            done = subprocess.run(
                [sys.executable, "-m", "bench.roundtrips", backend, tool, db.url,
                 str(history.path), str(count)],
                env=tool_env(), capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                bench.results.fail(f"round trips {backend} {tool}: {done.stderr[-2000:]}")
                continue
            for kind, value in json.loads(done.stdout).items():
                bench.results.add(("roundtrips", backend, "linear", count, f"{tool}:{kind}"), value)


def daemon_noop(bench: Bench, backend: str, count: int, repeat: int) -> None:
    """The no-op pass inside the daemon, measured as bench/noop_pass.py does."""
    measured = noop_pass.measure(backend, count, repeat)
    for tool, milliseconds in measured.items():
        bench.results.add(("daemon_noop", backend, "linear", count, tool), milliseconds)


def replicas(bench: Bench, backend: str, count: int, rounds: int, replicas: int) -> None:
    """``replicas`` schemad upgrade processes started at once on an empty
    database, against one alone; every one must exit 0.
    """
    history = bench.project("linear", count)
    for round_ in range(rounds):
        for mode in rotated(("single", "many"), round_):
            with bench.database(backend) as db:
                env = bench.schemad_env(db, history)
                label = f"replicas {backend} N={count} {mode}"
                if mode == "single":
                    outcome = run([SCHEMAD, "upgrade"], env)
                    if bench.check(label, outcome, db, history):
                        bench.results.add(
                            ("replicas", backend, "linear", count, "single"), outcome.wall_seconds
                        )
                    continue
                last, outcomes = run_at_once([[SCHEMAD, "upgrade"]] * replicas, env)
                failed = [o for o in outcomes if not o.ok]
                key = ("replicas", backend, "linear", count)
                bench.results.add((*key, "failed"), len(failed))
                for outcome in failed:
                    bench.results.fail(f"{label}: {outcome.describe_failure()}")
                if not failed and bench.check_database(label, db, history):
                    bench.results.add((*key, "last"), last)
                    bench.results.add((*key, "first"), min(o.wall_seconds for o in outcomes))
                    bench.results.add(
                        (*key, "rss_max"), max(o.peak_rss_kib for o in outcomes) / 1024
                    )


def daemon_rss(bench: Bench, backend: str, count: int, *, settle_seconds: float) -> None:
    """RSS of `schemad run` idle after its first pass: started at head, and
    started on an empty database (its first pass applies every revision).
    The RSS is read ``settle_seconds`` after the first pass has finished.
    """
    history = bench.project("linear", count)
    for state in ("at_head", "applied"):
        with bench.database(backend) as db:
            if state == "at_head":
                stamp_head(db.url, history.head)
            env = bench.schemad_env(
                db, history, http_host="127.0.0.1", http_port="0", interval_seconds="86400"
            )
            label = f"daemon {backend} N={count} {state}"
            memory = _idle_daemon_memory(label, env, bench, settle_seconds)
            if memory is None:
                continue
            if state == "applied" and not bench.check_database(label, db, history):
                continue
            key = ("daemon_rss", backend, "linear", count)
            bench.results.add((*key, f"{state}_rss"), memory["VmRSS"] / 1024)
            bench.results.add((*key, f"{state}_hwm"), memory["VmHWM"] / 1024)


def _idle_daemon_memory(
    label: str, env: dict[str, str], bench: Bench, settle_seconds: float
) -> dict[str, int] | None:
    process = subprocess.Popen(
        [SCHEMAD, "run"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_pass: list[str] = []
    lines: list[str] = []
    finished = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            event = _json_event(line)
            if event.get("event") == "reconcile_finished":
                first_pass.append(str(event.get("outcome")))
                finished.set()
        finished.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        finished.wait(DAEMON_START_TIMEOUT_SECONDS)
        time.sleep(settle_seconds)
        if process.poll() is not None or first_pass[:1] not in (["applied"], ["in_sync"]):
            bench.results.fail(
                f"{label}: the first pass did not reach head ({first_pass[:1]}); "
                f"output:\n{''.join(lines[-20:])}"
            )
            return None
        return rss_kib(process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)


def _json_event(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
