"""`schemad run` as a real process, seen only through its HTTP endpoints and its logs.

Against SQLite and PostgreSQL: the first pass applies what is pending while
liveness holds and readiness goes 503 -> 200; a revision file dropped in is
applied without a restart; the metrics match what happened and pass
`promtool check metrics`; a database outage (through a TCP fault proxy)
keeps the process alive and backing off until it recovers by itself;
SIGTERM lets the running revision finish and exits 0; a busy port exits 78;
no password ever leaves the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import make_url

from support.daemon import DaemonProcess, Event, daemon_env
from support.databases import table_names, version_rows
from support.faultproxy import FaultProxy
from support.processes import clean_env, json_lines, schemad
from support.scripts import create_table, make_project, write_revision

pytestmark = pytest.mark.e2e

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PASSWORD = "Pr0xy!Secret#e2e"
SECRET_FORMS = (PASSWORD, quote_plus(PASSWORD), quote(PASSWORD, safe=""))
# Generous for a loaded 2-core machine; every wait returns as soon as it is met.
TIMEOUT_SECONDS = 20.0

Start = Callable[..., DaemonProcess]


@pytest.fixture
def start() -> Iterator[Start]:
    """Return ``start(env, wait_for_http=True) -> DaemonProcess``; all are killed afterwards."""
    started: list[DaemonProcess] = []

    def run(env: dict[str, str], *, wait_for_http: bool = True) -> DaemonProcess:
        daemon = DaemonProcess(env)
        started.append(daemon)
        return daemon.start(wait_for_http=wait_for_http)

    yield run
    for daemon in started:
        daemon.kill()


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def url(request: pytest.FixtureRequest) -> str:
    """A fresh SQLite or PostgreSQL database."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    return str(request.getfixturevalue(fixture))


def slow(seconds: float, table: str) -> str:
    """An upgrade body that takes ``seconds`` and then creates ``table``."""
    return f"import time\ntime.sleep({seconds})\n" + create_table(table)


def project(path: Path, revisions: list[tuple[str, str]]) -> Path:
    """A linear migrations project: (revision id, upgrade body) in order."""
    make_project(path)
    previous = None
    for revision, upgrade in revisions:
        write_revision(path, revision, previous, upgrade=upgrade)
        previous = revision
    return path


def samples(daemon: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return daemon.metrics()


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def assert_log_is_json_lines(daemon: DaemonProcess) -> None:
    """One pipeline: every stderr line is a JSON object (Alembic's and APScheduler's too)."""
    assert daemon.non_json_lines() == []


def assert_one_summary_per_pass(daemon: DaemonProcess) -> None:
    """No pass logs reconcile_finished twice, and every summary has a run_id."""
    counts = Counter(e.get("run_id") for e in daemon.named("reconcile_finished"))
    assert (None not in counts, [run for run, n in counts.items() if n > 1]) == (True, [])


# -- the first pass ------------------------------------------------------------------------


def test_first_pass_applies_pending_revisions_while_probes_answer(
    start: Start, url: str, tmp_path: Path
) -> None:
    """Readiness is 503 during the slow first pass and 200 after; liveness is 200 throughout."""
    migrations = project(
        tmp_path / "migrations",
        [("r0001", slow(2, "t_r0001")), ("r0002", create_table("t_r0002"))],
    )
    daemon = start(daemon_env(url, migrations))

    daemon.wait_until(
        lambda: daemon.status()["pass_running_since"], timeout=TIMEOUT_SECONDS, message="a pass"
    )
    during = (daemon.get("/readyz"), daemon.get("/healthz"))
    ready = daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
    finished = daemon.wait_for_event("reconcile_finished", timeout=5, outcome="applied")

    applied = daemon.named("migration_applied")
    expected = {
        "readyz_during": (503, "no pass has finished yet\n"),
        "healthz_during": (200, "ok\n"),
        "readyz_after": "at target (applied)\n",
        "applied": ["r0001", "r0002"],
        "applied_run_ids": {finished["run_id"]},
        "finished": (2, None, "r0002"),
        "version_table": ["r0002"],
        "tables": True,
    }
    actual = {
        "readyz_during": (during[0].status_code, during[0].text),
        "healthz_during": (during[1].status_code, during[1].text),
        "readyz_after": ready.text,
        "applied": [e["revision"] for e in applied],
        "applied_run_ids": {e["run_id"] for e in applied},
        "finished": (
            finished["steps_applied"],
            finished["from_revision"],
            finished["to_revision"],
        ),
        "version_table": version_rows(url),
        "tables": {"t_r0001", "t_r0002"} <= table_names(url),
    }
    assert expected == actual
    assert_log_is_json_lines(daemon)
    assert_one_summary_per_pass(daemon)


def test_metrics_match_what_happened(start: Start, url: str, tmp_path: Path) -> None:
    """After the first pass, the scraped metrics agree with the log and the database."""
    migrations = project(
        tmp_path / "migrations",
        [("r0001", slow(0.3, "t_r0001")), ("r0002", "pass"), ("r0003", "pass")],
    )
    daemon = start(daemon_env(url, migrations))
    daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)

    def logged_in_sync() -> int:
        return len(daemon.named("reconcile_finished", outcome="in_sync"))

    def agreeing_scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        # A pass logs its summary just before it is counted, and the log reader
        # may lag: compare at a moment when neither is in flight.
        before = logged_in_sync()
        scraped = samples(daemon)
        counted = scraped[key("schemad_reconcile_total", outcome="in_sync")]
        return scraped if before == counted == logged_in_sync() >= 2 else None

    metrics = daemon.wait_until(
        agreeing_scrape, timeout=TIMEOUT_SECONDS, message="in_sync passes counted as logged"
    )

    expected = {
        "applied_passes": 1.0,
        "failed_passes": 0.0,
        "unavailable_passes": 0.0,
        "revisions_upgraded": 3.0,
        "revisions_downgraded": 0.0,
        "apply_durations": 3.0,
        "apply_seconds_at_least_the_sleep": True,
        "at_target": 1.0,
        "pending": 0.0,
        "current": {"r0003"},
        "target": {"r0003"},
        "database_up": 1.0,
        "interval": 1.0,
        "success_after_start": True,
    }
    actual = {
        "applied_passes": metrics[key("schemad_reconcile_total", outcome="applied")],
        "failed_passes": metrics[key("schemad_reconcile_total", outcome="failed")],
        "unavailable_passes": metrics[key("schemad_reconcile_total", outcome="unavailable")],
        "revisions_upgraded": metrics[key("schemad_revisions_applied_total", direction="upgrade")],
        "revisions_downgraded": metrics[
            key("schemad_revisions_applied_total", direction="downgrade")
        ],
        "apply_durations": metrics[
            key("schemad_revision_apply_duration_seconds_count", direction="upgrade")
        ],
        "apply_seconds_at_least_the_sleep": metrics[
            key("schemad_revision_apply_duration_seconds_sum", direction="upgrade")
        ]
        >= 0.3,
        "at_target": metrics[key("schemad_at_target")],
        "pending": metrics[key("schemad_pending_revisions")],
        "current": {
            dict(labels)["revision"]
            for (name, labels), value in metrics.items()
            if name == "schemad_current_revision_info" and value == 1
        },
        "target": {
            dict(labels)["revision"]
            for (name, labels), value in metrics.items()
            if name == "schemad_target_revision_info" and value == 1
        },
        "database_up": metrics[key("schemad_database_up")],
        "interval": metrics[key("schemad_interval_seconds")],
        "success_after_start": metrics[key("schemad_last_success_timestamp_seconds")]
        >= time.time() - 60,
    }
    assert expected == actual


def test_promtool_accepts_a_real_scrape(start: Start, sqlite_url: str, tmp_path: Path) -> None:
    """`promtool check metrics` finds nothing to complain about in the text format."""
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (apt-get install -y prometheus)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true needs it")
        pytest.skip(message)
    migrations = project(tmp_path / "migrations", [("r0001", "pass"), ("r0002", "pass")])
    daemon = start(daemon_env(sqlite_url, migrations))
    daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
    response = daemon.get("/metrics")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=response.text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    expected = (True, 0, "", "")
    assert expected == (
        response.headers["content-type"].startswith("text/plain"),
        checked.returncode,
        checked.stdout,
        checked.stderr,
    )


# -- changes while running -------------------------------------------------------------------


def test_a_new_revision_file_is_applied_without_a_restart(
    start: Start, url: str, tmp_path: Path
) -> None:
    """A revision dropped into the versions directory is applied by a later pass."""
    migrations = project(tmp_path / "migrations", [("r0001", "pass"), ("r0002", "pass")])
    daemon = start(daemon_env(url, migrations))
    daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
    pid = daemon.pid

    mark = daemon.mark()
    write_revision(migrations, "r0003", "r0002", upgrade=create_table("t_r0003"))
    applied = daemon.wait_for_event(
        "migration_applied", timeout=TIMEOUT_SECONDS, after=mark, revision="r0003"
    )
    finished = daemon.wait_for_event(
        "reconcile_finished", timeout=5, after=mark, run_id=applied["run_id"]
    )
    # The summary is logged just before the pass is recorded for the endpoints.
    status = daemon.wait_until(
        lambda: (doc := daemon.status())["last_pass"]["run_id"] == applied["run_id"] and doc,
        timeout=5,
        message="/status to show the pass",
    )
    metrics = samples(daemon)
    expected = {
        "same_process": True,
        "finished": ("applied", 1, "r0002", "r0003"),
        "status_current": ["r0003"],
        "version_table": ["r0003"],
        "current_info": (1.0, None),
        "applied_passes": 2.0,
        "revisions_upgraded": 3.0,
        "readyz": 200,
    }
    actual = {
        "same_process": daemon.alive() and daemon.pid == pid,
        "finished": (
            finished["outcome"],
            finished["steps_applied"],
            finished["from_revision"],
            finished["to_revision"],
        ),
        "status_current": status["last_pass"]["current"],
        "version_table": version_rows(url),
        "current_info": (
            metrics.get(key("schemad_current_revision_info", revision="r0003")),
            metrics.get(key("schemad_current_revision_info", revision="r0002")),
        ),
        "applied_passes": metrics[key("schemad_reconcile_total", outcome="applied")],
        "revisions_upgraded": metrics[key("schemad_revisions_applied_total", direction="upgrade")],
        "readyz": daemon.get("/readyz").status_code,
    }
    assert expected == actual
    assert_log_is_json_lines(daemon)


# -- database outage ------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A fault proxy in front of the PostgreSQL server."""
    admin = make_url(os.environ.get("SCHEMAD_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432"))
    with FaultProxy(admin.host or "127.0.0.1", admin.port or 5432) as running:
        yield running


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` via the proxy, with a password (trust auth ignores it; schemad must hide it)."""
    return (
        make_url(url)
        .set(host="127.0.0.1", port=proxy.port, password=PASSWORD)
        .render_as_string(hide_password=False)
    )


def assert_no_secret(*texts: str) -> None:
    leaks = [form for form in SECRET_FORMS for text in texts if form in text]
    assert leaks == []


@pytest.mark.postgres
def test_outage_keeps_the_process_alive_and_it_recovers(
    start: Start, postgres_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Cut connections: liveness 200, readiness 503, database_up 0, backoff; then recovery."""
    migrations = project(tmp_path / "migrations", [("r0001", "pass")])
    daemon = start(daemon_env(through(proxy, postgres_url), migrations))
    seen: list[str] = []

    def scrape_all() -> None:
        for path in ("/status", "/metrics"):
            seen.append(daemon.get(path).text)

    def healthy_and(condition: Callable[[], object]) -> Callable[[], object]:
        def check() -> object:
            health = daemon.get("/healthz")
            assert health.status_code == 200, f"liveness failed: {health.status_code}"
            return condition()

        return check

    daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
    up_before = daemon.metric("schemad_database_up")
    scrape_all()

    mark = daemon.mark()
    proxy.cut()
    not_ready = daemon.wait_until(
        healthy_and(lambda: (r := daemon.get("/readyz")).status_code == 503 and r.text),
        timeout=TIMEOUT_SECONDS,
        message="readiness 503",
    )
    daemon.wait_until(
        healthy_and(lambda: len(daemon.named("backoff_scheduled")) >= 2),
        timeout=TIMEOUT_SECONDS,
        message="two backoffs",
    )
    down = daemon.metric("schemad_database_up")
    outage_status = daemon.status()
    scrape_all()
    backoffs = [e for e in daemon.events[mark:] if e.get("event") == "backoff_scheduled"]
    alive_during = daemon.alive()

    mark = daemon.mark()
    proxy.pass_through()
    daemon.wait_until(
        healthy_and(lambda: daemon.get("/readyz").status_code == 200),
        timeout=TIMEOUT_SECONDS,
        message="recovery",
    )
    recovered = daemon.wait_for_event(
        "reconcile_finished", timeout=5, after=mark, outcome="in_sync"
    )
    scrape_all()

    expected = {
        "up_before": 1.0,
        "readyz_outage": "not at target: unavailable\n",
        "up_during": 0.0,
        "alive_during": True,
        "backoff_failures": [1, 2],
        "backoff_bounded": True,
        "status_outcome": "unavailable",
        "status_failures_counted": True,
        "up_after": 1.0,
        "recovered": "r0001",
        "failures_reset": 0,
    }
    actual = {
        "up_before": up_before,
        "readyz_outage": not_ready,
        "up_during": down,
        "alive_during": alive_during,
        "backoff_failures": [e["consecutive_failures"] for e in backoffs[:2]],
        "backoff_bounded": all(0 < e["delay_seconds"] <= 2 for e in backoffs),
        "status_outcome": outage_status["last_pass"]["outcome"],
        "status_failures_counted": outage_status["consecutive_failures"] >= 1,
        "up_after": daemon.metric("schemad_database_up"),
        "recovered": recovered["to_revision"],
        "failures_reset": daemon.status()["consecutive_failures"],
    }
    assert expected == actual
    assert_no_secret(daemon.output(), *seen)
    assert_log_is_json_lines(daemon)


@pytest.mark.postgres
def test_a_blackholed_database_does_not_hang_the_daemon(
    start: Start, postgres_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Connections that are accepted but never answered end the pass within a bound."""
    migrations = project(tmp_path / "migrations", [("r0001", "pass")])
    daemon = start(daemon_env(through(proxy, postgres_url), migrations))
    daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
    # A no-op pass afterwards leaves an idle connection in the pool.
    daemon.wait_for_event("reconcile_finished", timeout=TIMEOUT_SECONDS, outcome="in_sync")
    proxy.blackhole()
    # connect timeout 2 s, a few tries, backoff at most 2 s: 10 s is plenty.
    not_ready = daemon.wait_for_status("/readyz", 503, timeout=10)
    assert (
        not_ready.text,
        daemon.get("/healthz").status_code,
        daemon.metric("schemad_database_up"),
    ) == ("not at target: unavailable\n", 200, 0.0)


@pytest.mark.postgres
def test_no_password_leaves_the_process(
    start: Start, postgres_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The password appears in no log line, /status or /metrics, even in error messages."""
    migrations = project(tmp_path / "migrations", [("r0001", "pass")])
    proxy.refuse()  # the first pass fails to connect: an error message with the URL
    daemon = start(daemon_env(through(proxy, postgres_url), migrations))
    daemon.wait_for_event("reconcile_finished", timeout=TIMEOUT_SECONDS, outcome="unavailable")
    failing = [daemon.get(path).text for path in ("/status", "/metrics", "/readyz")]
    proxy.pass_through()
    daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
    working = [daemon.get(path).text for path in ("/status", "/metrics", "/healthz")]
    masked = daemon.status()["database"]
    assert (masked.count("***"), "127.0.0.1" in masked) == (1, True)
    assert_no_secret(daemon.output(), *failing, *working)


# -- graceful stop ---------------------------------------------------------------------------------


def running_upgrade(revision: str) -> Callable[[Event], bool]:
    """Alembic's own 'Running upgrade ... -> revision' line, routed through structlog."""
    return lambda e: (
        str(e.get("event", "")).startswith("Running upgrade")
        and str(e.get("event", "")).split(",")[0].endswith(f"-> {revision}")
    )


@pytest.mark.postgres
def test_sigterm_lets_the_running_revision_finish_and_exits_0(
    start: Start, postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM mid-revision: that revision commits, the next never starts, exit 0 in time."""
    grace_seconds = 10.0
    migrations = project(
        tmp_path / "migrations",
        [("r0001", slow(3, "t_r0001")), ("r0002", slow(3, "t_r0002"))],
    )
    daemon = start(daemon_env(postgres_url, migrations, shutdown_grace_seconds=str(grace_seconds)))
    daemon.wait_for(running_upgrade("r0001"), timeout=TIMEOUT_SECONDS, description="r0001")
    signalled = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait_exit(timeout=grace_seconds + 10)
    took = time.monotonic() - signalled

    names = [e.get("event") for e in daemon.events]
    interrupted = daemon.named("reconcile_interrupted")
    expected = {
        "exit_code": 0,
        "within_grace": True,
        "applied": ["r0001"],
        "r0002_started": False,
        "interrupted": [(1, 1)],
        "finished": ["interrupted"],
        "signal": ["SIGTERM"],
        "stopped_last": "daemon_stopped",
        "version_table": ["r0001"],
        "tables": (True, False),
    }
    actual = {
        "exit_code": code,
        "within_grace": took < grace_seconds,
        "applied": [e["revision"] for e in daemon.named("migration_applied")],
        "r0002_started": any(running_upgrade("r0002")(e) for e in daemon.events),
        "interrupted": [(e["steps_applied"], e["steps_left"]) for e in interrupted],
        "finished": [e["outcome"] for e in daemon.named("reconcile_finished")],
        "signal": [e["signal"] for e in daemon.named("shutdown_requested")],
        "stopped_last": names[-1],
        "version_table": version_rows(postgres_url),
        "tables": (
            "t_r0001" in table_names(postgres_url),
            "t_r0002" in table_names(postgres_url),
        ),
    }
    assert expected == actual
    assert_log_is_json_lines(daemon)


@pytest.mark.postgres
def test_sigterm_exits_1_when_the_revision_outlives_the_grace_period(
    start: Start, postgres_url: str, tmp_path: Path
) -> None:
    """A revision still running when the grace period ends: exit 1 then, rolled back."""
    grace_seconds = 1.0
    migrations = project(tmp_path / "migrations", [("r0001", slow(6, "t_r0001"))])
    daemon = start(daemon_env(postgres_url, migrations, shutdown_grace_seconds=str(grace_seconds)))
    daemon.wait_for(running_upgrade("r0001"), timeout=TIMEOUT_SECONDS, description="r0001")
    signalled = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait_exit(timeout=TIMEOUT_SECONDS)
    took = time.monotonic() - signalled
    expected = (1, True, 1, [], [], False)
    actual = (
        code,
        grace_seconds <= took < grace_seconds + 3,
        len(daemon.named("shutdown_grace_expired")),
        daemon.named("migration_applied"),
        version_rows(postgres_url),
        "t_r0001" in table_names(postgres_url),
    )
    assert expected == actual


def test_sigterm_when_idle_exits_0_at_once(start: Start, sqlite_url: str, tmp_path: Path) -> None:
    """Between passes, SIGTERM (and SIGINT) stop the daemon promptly with exit 0."""
    migrations = project(tmp_path / "migrations", [("r0001", "pass")])
    codes = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        daemon = start(daemon_env(sqlite_url, migrations))
        daemon.wait_for_status("/readyz", 200, timeout=TIMEOUT_SECONDS)
        daemon.send_signal(signum)
        codes.append((daemon.wait_exit(timeout=10), daemon.named("daemon_stopped") != []))
    assert codes == [(0, True), (0, True)]


# -- configuration --------------------------------------------------------------------------


def test_a_busy_port_exits_78_before_touching_the_database(start: Start, tmp_path: Path) -> None:
    """A port already in use stops the process with exit 78 and a line naming the setting."""
    database = tmp_path / "app.db"
    migrations = project(tmp_path / "migrations", [("r0001", create_table("t_r0001"))])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start(
            daemon_env(f"sqlite:///{database}", migrations, http_port=str(port)),
            wait_for_http=False,
        )
        code = daemon.wait_exit(timeout=TIMEOUT_SECONDS)
    failures = daemon.named("config_invalid")
    expected = (78, 1, True, True, 78, [], [])
    actual = (
        code,
        len(failures),
        f"SCHEMAD_HTTP_PORT={port}" in failures[0]["error"],
        "in use" in failures[0]["error"],
        failures[0]["exit_code"],
        daemon.named("reconcile_finished"),
        version_rows(f"sqlite:///{database}") if database.exists() else [],
    )
    assert expected == actual


def test_health_command_follows_the_daemon(start: Start, sqlite_url: str, tmp_path: Path) -> None:
    """`schemad health` exits 0 while the daemon answers /healthz and 1 once it is gone."""
    migrations = project(tmp_path / "migrations", [("r0001", "pass")])
    daemon = start(daemon_env(sqlite_url, migrations))
    env = clean_env(http_port=str(daemon.port), http_host="0.0.0.0", log_format="json")
    alive = schemad("health", env=env)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait_exit(timeout=TIMEOUT_SECONDS)
    gone = schemad("health", env=env)
    failed = [e for e in json_lines(gone.stderr) if e.get("event") == "health_failed"]
    assert (alive.returncode, gone.returncode, len(failed)) == (0, 1, 1)
