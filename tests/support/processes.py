"""Run the installed ``schemad`` and ``alembic`` commands as real processes."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

BIN = Path(sys.executable).parent
SCHEMAD = BIN / "schemad"
ALEMBIC = BIN / "alembic"
DEFAULT_TIMEOUT_SECONDS = 120.0


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any SCHEMAD_* variable, plus ``settings``.

    ``settings`` keys are given without the prefix: ``database_url=...``
    becomes ``SCHEMAD_DATABASE_URL``.
    """
    env = {
        key: value for key, value in os.environ.items() if not key.upper().startswith("SCHEMAD_")
    }
    env.update({f"SCHEMAD_{key.upper()}": value for key, value in settings.items()})
    # Never a terminal here, but say so: the logs must be JSON lines.
    env.pop("FORCE_COLOR", None)
    return env


def run(
    command: list[str | Path],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output as text."""
    return subprocess.run(
        [str(part) for part in command],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def schemad(
    *args: str, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``schemad`` command."""
    return run([SCHEMAD, *args], env, cwd=cwd)


def alembic(*args: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``alembic`` command."""
    return run([ALEMBIC, *args], env, cwd=cwd)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every line of ``text`` as one JSON object (schemad's log format)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events(text: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines whose event is ``name``."""
    return [line for line in json_lines(text) if line.get("event") == name]


class LineReader:
    """Collects a pipe's lines on a thread, so a test can wait for one line."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, fragment: str, timeout: float) -> str:
        """Return the first line (from now on) containing ``fragment``.

        Raises:
            AssertionError: the stream ended or the time ran out first.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {fragment!r} within {timeout}s: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stream ended before a line with {fragment!r}: {self.lines}")
            self.lines.append(line)
            if fragment in line:
                return line

    def rest(self, timeout: float = 10.0) -> str:
        """Everything read so far plus the remainder, once the stream has ended."""
        self._thread.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


# Imports first, then wait at the gate, then run the installed console script:
# the processes race on the database, not on Python's start-up time.
_GATED = """\
import runpy, sys, time
from pathlib import Path
import psycopg, pymysql, sqlalchemy
{preload}
script, ready, gate, *argv = sys.argv[1:]
Path(ready).touch()
while not Path(gate).exists():
    time.sleep(0.001)
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""
_PRELOAD = {
    "schemad": "import schemad.cli, schemad.applier, schemad.reconciler",
    "alembic": "import alembic.config, alembic.command, schemad.settings",
}


def start_together(
    script: Path,
    args: list[str],
    count: int,
    env: Mapping[str, str],
    *,
    workdir: Path,
    cwd: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``count`` copies of ``script args`` released at the same moment; wait for all.

    Each copy imports its modules, reports ready, and waits for one shared
    gate file, so they all reach the database together.
    """
    gate = workdir / "gate"
    code = _GATED.format(preload=_PRELOAD[script.name])
    processes = []
    # Files, not pipes: a full pipe would stall a process we are not reading yet.
    outputs = [(workdir / f"out-{i}", workdir / f"err-{i}") for i in range(count)]
    for index, (out, err) in enumerate(outputs):
        ready = workdir / f"ready-{index}"
        with out.open("w") as stdout, err.open("w") as stderr:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, str(script), str(ready), str(gate), *args],
                    env=dict(env),
                    cwd=cwd,
                    stdout=stdout,
                    stderr=stderr,
                    text=True,
                )
            )
    try:
        deadline = time.monotonic() + timeout
        while not all((workdir / f"ready-{i}").exists() for i in range(count)):
            assert time.monotonic() < deadline, "the processes did not get ready in time"
            assert all(p.poll() is None for p in processes), "a process died before the gate"
            time.sleep(0.01)
        gate.touch()
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [
        subprocess.CompletedProcess(
            process.args, process.returncode, out.read_text(), err.read_text()
        )
        for process, (out, err) in zip(processes, outputs, strict=True)
    ]
