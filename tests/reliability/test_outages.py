"""Database outages under a running daemon, through a TCP fault proxy in front of PostgreSQL.

Each fault hits at one of three moments: before the first pass, during a
pass (while a slow revision runs) and between passes (at target, idle; a
new revision file arrives during the outage). The modes:

- ``refuse``: the server is gone: new connections refused, live ones reset;
- ``reset``: every connection, live or new, is reset at once;
- ``blackhole``: connections are accepted and nothing ever comes back;
- ``latency``: 50 ms added to every chunk each way: not an outage, the
  daemon must still converge.

The daemon (``SCHEMAD_CONNECT_TIMEOUT_SECONDS=2``,
``SCHEMAD_STATEMENT_TIMEOUT_SECONDS=5``, ``SCHEMAD_INTERVAL_SECONDS=1``)
must never exit, never hang a pass past its timeouts, report the outage in
/healthz (still 200), /readyz (503), ``schemad_database_up`` (0) and its
logs, and converge to head once traffic passes again. Every wait is
bounded. Also: ``pg_terminate_backend`` of the daemon's own backends in the
middle of a pass.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from support.daemon import DaemonProcess, Event, daemon_env
from support.databases import connection, table_names, version_rows
from support.faultproxy import FaultProxy, _Link
from support.scripts import create_table, make_project, write_revision

from .figures import Figures

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.slow]

PASSWORD = "Rel-S3cret-77"
SECRET_FORMS = (PASSWORD, quote_plus(PASSWORD), quote(PASSWORD, safe=""))
SLOW_SECONDS = 2.0
LATENCY_SECONDS = 0.05
CONNECT_TIMEOUT_SECONDS = 2.0
STATEMENT_TIMEOUT_SECONDS = 5.0
# A pass that meets an outage ends within a few connect timeouts, plus the slow
# revision and one statement timeout when the outage hits during a revision:
# anything longer is a hang.
PASS_BOUND_SECONDS = SLOW_SECONDS + STATEMENT_TIMEOUT_SECONDS + 3 * CONNECT_TIMEOUT_SECONDS + 2
DETECT_TIMEOUT_SECONDS = 30.0
CONVERGE_TIMEOUT_SECONDS = 45.0
PHASES = ("before_first_pass", "during_pass", "between_passes")
MODES = ("refuse", "reset", "blackhole", "latency")


class ResettingProxy(FaultProxy):
    """The fault proxy, plus a mode that resets every connection, live or new."""

    resetting = False

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        if self.resetting:
            link.abort()
            return
        await super()._serve(link, reader)

    def reset_everything(self) -> None:
        self.resetting = True
        self.reset_all()

    def pass_through(self) -> None:
        self.resetting = False
        self.latency_seconds = 0.0
        super().pass_through()


FAULTS: dict[str, Callable[[ResettingProxy], None]] = {
    "refuse": lambda proxy: proxy.cut(),
    "reset": lambda proxy: proxy.reset_everything(),
    "blackhole": lambda proxy: proxy.blackhole(),
    "latency": lambda proxy: setattr(proxy, "latency_seconds", LATENCY_SECONDS),
}


@pytest.fixture
def proxy() -> Iterator[ResettingProxy]:
    """A fault proxy in front of the PostgreSQL server."""
    admin = make_url(os.environ.get("SCHEMAD_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432"))
    with ResettingProxy(admin.host or "127.0.0.1", admin.port or 5432) as running:
        yield running


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` via the proxy, with a password (trust auth ignores it; schemad must hide it)."""
    return (
        make_url(url)
        .set(host="127.0.0.1", port=proxy.port, password=PASSWORD)
        .render_as_string(hide_password=False)
    )


def slow_project(path: Path) -> list[str]:
    """r0001 -> r0002 (sleeps 2 s, then creates its table) -> r0003; tables t_<id>."""
    make_project(path)
    write_revision(path, "r0001", None, upgrade=create_table("t_r0001"))
    write_revision(
        path,
        "r0002",
        "r0001",
        upgrade=f"import time\ntime.sleep({SLOW_SECONDS})\n" + create_table("t_r0002"),
    )
    write_revision(path, "r0003", "r0002", upgrade=create_table("t_r0003"))
    return ["r0001", "r0002", "r0003"]


def running(revision: str) -> Callable[[Event], bool]:
    """Alembic's own 'Running upgrade ... -> revision' line, routed through structlog."""
    return lambda e: (
        str(e.get("event", "")).startswith("Running upgrade")
        and str(e.get("event", "")).split(",")[0].endswith(f"-> {revision}")
    )


class Watch:
    """Polls a daemon's endpoints, failing at once if liveness ever drops, and keeps bodies."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.bodies: list[str] = []

    def healthy(self) -> None:
        health = self.daemon.get("/healthz")
        assert health.status_code == 200, f"liveness failed: {health.status_code} {health.text}"

    def outage_reported(self, after: int) -> bool:
        self.healthy()
        ready = self.daemon.get("/readyz")
        up = self.daemon.metric("schemad_database_up")
        logged = [
            e
            for e in self.daemon.events[after:]
            if e.get("event") == "reconcile_finished" and e.get("outcome") == "unavailable"
        ]
        self.keep()
        return ready.status_code == 503 and "unavailable" in ready.text and up == 0 and logged != []

    def at(self, head: str) -> bool:
        self.healthy()
        last = self.daemon.status()["last_pass"]
        ready = self.daemon.get("/readyz").status_code == 200
        return bool(ready and last and last["current"] == [head])

    def keep(self) -> None:
        self.bodies.extend(self.daemon.get(path).text for path in ("/status", "/metrics"))


def wait(watch: Watch, condition: Callable[[], bool], timeout: float, message: str) -> float:
    """Seconds until ``condition`` held (bounded; the daemon must stay alive meanwhile)."""
    began = time.monotonic()
    watch.daemon.wait_until(condition, timeout=timeout, message=message, interval=0.1)
    return time.monotonic() - began


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("phase", PHASES)
def test_daemon_rides_out_a_database_outage(
    phase: str,
    mode: str,
    postgres_url: str,
    proxy: ResettingProxy,
    daemons: list[DaemonProcess],
    figures: Figures,
    tmp_path: Path,
) -> None:
    """Alive throughout, the outage reported, no pass past its bound, converged afterwards."""
    project = tmp_path / "migrations"
    ids = slow_project(project)
    env = daemon_env(
        through(proxy, postgres_url),
        project,
        connect_timeout_seconds=f"{CONNECT_TIMEOUT_SECONDS:g}",
        statement_timeout_seconds=f"{STATEMENT_TIMEOUT_SECONDS:g}",
        interval_seconds="1",
    )
    fault = FAULTS[mode]
    if phase == "before_first_pass":
        fault(proxy)
    daemon = DaemonProcess(env)
    daemons.append(daemon)
    daemon.start()
    watch = Watch(daemon)
    if phase == "during_pass":
        daemon.wait_for(running("r0002"), timeout=30, description="r0002 running")
        fault(proxy)
    elif phase == "between_passes":
        wait(watch, lambda: watch.at(ids[-1]), CONVERGE_TIMEOUT_SECONDS, "at head")
        daemon.wait_for_event("reconcile_finished", timeout=10, after=daemon.mark())
        fault(proxy)
        write_revision(project, "r0004", "r0003", upgrade=create_table("t_r0004"))
        ids.append("r0004")
    mark = daemon.mark()

    detected = None
    if mode != "latency":
        detected = wait(
            watch, lambda: watch.outage_reported(mark), DETECT_TIMEOUT_SECONDS, "outage reported"
        )
        daemon.wait_until(
            lambda: sum(e.get("event") == "backoff_scheduled" for e in daemon.events[mark:]) >= 2,
            timeout=DETECT_TIMEOUT_SECONDS,
            message="two retries during the outage",
        )
        proxy.pass_through()
    recovered = wait(watch, lambda: watch.at(ids[-1]), CONVERGE_TIMEOUT_SECONDS, "converged")
    if mode == "latency":
        proxy.pass_through()
    watch.keep()

    figures.add("outage", mode=mode, phase=phase, detected=detected, recovered=recovered)
    durations = [e["duration_seconds"] for e in daemon.named("reconcile_finished")]
    applied = Counter(e["revision"] for e in daemon.named("migration_applied"))
    expected = {
        "alive": True,
        "passes_bounded": True,
        "version_table": [ids[-1]],
        "tables": True,
        "applied_once": Counter(dict.fromkeys(ids, 1)),
        "database_up": 1.0,
        "non_json_lines": [],
        "scheduler_warnings": [],
        "secrets": [],
    }
    actual = {
        "alive": daemon.alive(),
        # Under latency every exchange is slower (a pass took ~10 s here) but no
        # timeout is met; convergence itself is bounded above.
        "passes_bounded": max(durations)
        <= (CONVERGE_TIMEOUT_SECONDS if mode == "latency" else PASS_BOUND_SECONDS),
        "version_table": version_rows(postgres_url),
        "tables": {f"t_{rev}" for rev in ids} <= table_names(postgres_url),
        "applied_once": applied,
        "database_up": daemon.metric("schemad_database_up"),
        "non_json_lines": daemon.non_json_lines(),
        # A pass outliving the interval is coalesced on purpose: no warning per tick.
        "scheduler_warnings": [
            e["event"] for e in daemon.events if str(e.get("logger", "")).startswith("apscheduler")
        ],
        "secrets": [
            s for s in SECRET_FORMS for text in (daemon.output(), *watch.bodies) if s in text
        ],
    }
    assert expected == actual, f"pass durations {durations}"


def terminate_backends(url: str) -> int:
    """pg_terminate_backend on every schemad session of this test's own database."""
    database = make_url(url).database
    with connection(url) as conn:
        ended = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND application_name LIKE 'schemad:%' "
                "AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar_one()
    return int(ended)


def test_terminated_backends_mid_pass_are_survived(
    postgres_url: str, daemons: list[DaemonProcess], figures: Figures, tmp_path: Path
) -> None:
    """pg_terminate_backend on the daemon's sessions mid-revision: it retries and converges."""
    project = tmp_path / "migrations"
    ids = slow_project(project)
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    daemon = DaemonProcess(daemon_env(url, project, interval_seconds="1"))
    daemons.append(daemon)
    daemon.start()
    watch = Watch(daemon)
    daemon.wait_for(running("r0002"), timeout=30, description="r0002 running")
    mark = daemon.mark()
    ended = terminate_backends(postgres_url)
    failed = daemon.wait_for(
        lambda e: e.get("event") == "reconcile_finished" and e.get("outcome") != "applied",
        timeout=DETECT_TIMEOUT_SECONDS,
        after=mark,
        description="the interrupted pass",
    )
    recovered = wait(watch, lambda: watch.at(ids[-1]), CONVERGE_TIMEOUT_SECONDS, "converged")
    watch.keep()
    figures.add(
        "outage",
        mode="terminate",
        phase="during_pass",
        detected=None,
        recovered=recovered,
    )
    applied = Counter(e["revision"] for e in daemon.named("migration_applied"))
    expected = {
        "terminated_some": True,
        "failed_outcome": True,
        "alive": True,
        "version_table": [ids[-1]],
        "tables": True,
        "applied_once": Counter(dict.fromkeys(ids, 1)),
        "secrets": [],
    }
    actual = {
        "terminated_some": ended >= 1,
        "failed_outcome": failed["outcome"] in ("failed", "unavailable"),
        "alive": daemon.alive(),
        "version_table": version_rows(postgres_url),
        "tables": {f"t_{rev}" for rev in ids} <= table_names(postgres_url),
        "applied_once": applied,
        "secrets": [
            s for s in SECRET_FORMS for text in (daemon.output(), *watch.bodies) if s in text
        ],
    }
    assert expected == actual
