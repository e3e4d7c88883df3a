"""A peer that accepts TCP connections and never says a word.

That is what a sidecar proxy in front of a dead database looks like. PyMySQL's
``connect_timeout`` covers the TCP connect only, so the server greeting was
awaited forever: `wait` outlived its own timeout, `status` and `upgrade` hung,
and a daemon's pass never ended. Every command must now end within its
bounds (SCHEMAD_CONNECT_TIMEOUT_SECONDS for one look, SCHEMAD_WAIT_TIMEOUT_SECONDS
for `wait`), on MySQL/MariaDB and PostgreSQL alike, and the daemon must
report the outage and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import running_daemon
from support.processes import SCHEMAD, clean_env
from support.scripts import linear_project

from .figures import Figures

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CONNECT_TIMEOUT_SECONDS = 2.0
WAIT_TIMEOUT_SECONDS = 5.0
# Starting the interpreter and importing schemad takes up to a few seconds on
# a loaded 2-core machine; anything beyond the bound plus this is a hang.
STARTUP_SLACK_SECONDS = 6.0
HANG_SECONDS = 60.0
URLS = {
    "mysql": "mysql+pymysql://app:pw@127.0.0.1:{port}/app",
    "postgresql": "postgresql+psycopg://app:pw@127.0.0.1:{port}/app",
}


class SilentPeer:
    """Accepts every connection and keeps it open, never sending a byte."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self.server.getsockname()[1])
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _address = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def peer() -> Iterator[SilentPeer]:
    silent = SilentPeer()
    yield silent
    silent.close()


@pytest.fixture(params=sorted(URLS))
def url(request: pytest.FixtureRequest, peer: SilentPeer) -> str:
    return URLS[str(request.param)].format(port=peer.port)


def run(url: str, project: Path, command: str, **settings: str) -> tuple[int, float, str]:
    env = clean_env(
        database_url=url,
        script_location=str(project),
        connect_timeout_seconds=f"{CONNECT_TIMEOUT_SECONDS:g}",
        log_format="json",
        **settings,
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(SCHEMAD), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`schemad {command}` was still running after {HANG_SECONDS:g}s")
    return done.returncode, time.monotonic() - started, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["status", "upgrade"])
def test_one_shot_commands_give_up_within_the_connect_timeout(
    url: str, tmp_path: Path, command: str, figures: Figures
) -> None:
    """`status` and `upgrade` exit 69 within the connect timeout (plus start-up)."""
    linear_project(tmp_path / "migrations", 2)
    code, seconds, output = run(url, tmp_path / "migrations", command)
    figures.add("silent_peer", backend=url.split("+")[0], command=command, seconds=seconds)
    assert (code, seconds < CONNECT_TIMEOUT_SECONDS * 2 + STARTUP_SLACK_SECONDS) == (69, True), (
        seconds,
        output,
    )


def test_wait_never_outlives_its_timeout(url: str, tmp_path: Path, figures: Figures) -> None:
    """`wait` exits 75 at SCHEMAD_WAIT_TIMEOUT_SECONDS, naming what it last saw."""
    linear_project(tmp_path / "migrations", 2)
    code, seconds, output = run(
        url,
        tmp_path / "migrations",
        "wait",
        wait_timeout_seconds=f"{WAIT_TIMEOUT_SECONDS:g}",
        wait_interval_seconds="1",
    )
    figures.add("silent_peer", backend=url.split("+")[0], command="wait", seconds=seconds)
    assert (code, seconds < WAIT_TIMEOUT_SECONDS + STARTUP_SLACK_SECONDS) == (75, True), (
        seconds,
        output,
    )
    assert "within 5s (SCHEMAD_WAIT_TIMEOUT_SECONDS)" in output


def test_the_daemon_reports_the_outage_and_stops_cleanly(url: str, tmp_path: Path) -> None:
    """A pass against the silent peer ends unavailable; SIGTERM then exits 0 within the grace."""
    linear_project(tmp_path / "migrations", 2)
    env = clean_env(
        database_url=url,
        script_location=str(tmp_path / "migrations"),
        connect_timeout_seconds=f"{CONNECT_TIMEOUT_SECONDS:g}",
        log_format="json",
        http_host="127.0.0.1",
        http_port="0",
        interval_seconds="60",
        shutdown_grace_seconds="10",
    )
    with running_daemon(env) as daemon:
        finished = daemon.wait_for_event("reconcile_finished", timeout=30)
        ready = daemon.get("/readyz")
        daemon.send_signal()
        code = daemon.wait_exit(20)
    assert (finished["outcome"], ready.status_code, code) == ("unavailable", 503, 0)
    assert daemon.named("shutdown_grace_expired") == []
