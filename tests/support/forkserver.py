"""Many ``schemad`` processes cheaply: fork them from an interpreter that has imported schemad.

Starting ``schemad`` costs about half a second of CPU for the imports; the
reliability suite starts hundreds of processes on a 2-core machine. A fork
server is one ``python`` process (spawned clean, not forked from pytest)
that imports schemad and its drivers once and then, on request, forks
children. Each child is a separate OS process that replaces its
environment, working directory, stdout and stderr, waits at a shared gate
and runs ``schemad.cli.main(argv)``, exactly what the ``schemad`` console
script runs, then exits with its return code. Nothing runs in the server
before the fork but imports (no connection, no thread, no log
configuration), so every child starts from the same state as a fresh
``schemad``; only the import time is saved.

Usage::

    with ForkServer() as server:
        runs = server.run_together([Job(["upgrade"], env, workdir / "p0"), ...])
        started = server.start([Job(["upgrade"], env, workdir / "k")])
        os.kill(started[0].pid, signal.SIGKILL)
        server.wait(started)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

DEFAULT_TIMEOUT_SECONDS = 120.0

_SERVER = r"""
import json, logging.config, os, sys, traceback
import sqlite3
import psycopg, pymysql, sqlalchemy
import schemad.applier, schemad.cli, schemad.reconciler, schemad.scheduler
from schemad.cli import main


def child(job, gate):
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    os.read(gate, 1)  # returns b"" once the server has closed every write end
    try:
        code = main(job["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "start":
        gate_read, gate_write = os.pipe()
        pids = []
        for job in request["jobs"]:
            pid = os.fork()
            if pid == 0:
                os.close(gate_write)
                child(job, gate_read)
            pids.append(pid)
        os.close(gate_read)
        os.close(gate_write)
        print(json.dumps({"pids": pids}), flush=True)
    elif request["op"] == "wait":
        codes = []
        for pid in request["pids"]:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        print(json.dumps({"codes": codes}), flush=True)
"""


@dataclass(frozen=True)
class Job:
    """One ``schemad`` invocation: its arguments, environment and a directory for its output."""

    argv: Sequence[str]
    env: Mapping[str, str]
    workdir: Path
    cwd: Path | None = None
    uid: int | None = None  # run as this (unprivileged) user and group id

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr"


@dataclass
class Started:
    """A forked child that has been released from the gate."""

    job: Job
    pid: int
    started_at: float
    returncode: int | None = None
    ended_at: float | None = None
    _reaped: bool = field(default=False, repr=False)

    def running(self) -> bool:
        """Whether the child is still running (an exited, unreaped child is not)."""
        return not self._reaped and _exists(self.pid)

    def stderr(self) -> str:
        return _read(self.job.stderr_path)

    def stdout(self) -> str:
        return _read(self.job.stdout_path)

    def output(self) -> str:
        return self.stdout() + self.stderr()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class ForkServer:
    """A clean interpreter with schemad imported, forking ``schemad`` runs on request."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, object] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._live: set[int] = set()

    def start_server(self) -> ForkServer:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCHEMAD_")}
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self._reply(DEFAULT_TIMEOUT_SECONDS)
        return self

    def __enter__(self) -> ForkServer:
        return self.start_server()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill whatever still runs (children and server) and reap the server."""
        for pid in list(self._live):
            _kill(pid)
        if self._process is not None and self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(10)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()

    # -- requests ----------------------------------------------------------------------

    def start(self, jobs: Sequence[Job]) -> list[Started]:
        """Fork one child per job and release them all at the same moment."""
        for job in jobs:
            job.workdir.mkdir(parents=True, exist_ok=True)
        payload = [
            {
                "argv": list(job.argv),
                "env": dict(job.env),
                "cwd": str(job.cwd or job.workdir),
                "stdout": str(job.stdout_path),
                "stderr": str(job.stderr_path),
                "uid": job.uid,
            }
            for job in jobs
        ]
        with self._lock:
            self._send({"op": "start", "jobs": payload})
            pids = self._reply(30.0)["pids"]
        started_at = time.monotonic()
        assert isinstance(pids, list)
        self._live.update(pids)
        return [Started(job, pid, started_at) for job, pid in zip(jobs, pids, strict=True)]

    def wait(self, started: Sequence[Started], timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """Wait for the children to exit; fill in their exit codes (-9 for SIGKILL).

        Raises:
            AssertionError: they did not all exit within ``timeout`` (they are killed).
        """
        pending = [s for s in started if not s._reaped]
        if not pending:
            return
        deadline = time.monotonic() + timeout
        waiter = threading.Thread(target=self._watch, args=(pending, deadline), daemon=True)
        with self._lock:
            self._send({"op": "wait", "pids": [s.pid for s in pending]})
            waiter.start()
            codes = self._reply(timeout + 30.0)["codes"]
        assert isinstance(codes, list)
        now = time.monotonic()
        for item, code in zip(pending, codes, strict=True):
            item.returncode, item._reaped = int(code), True
            item.ended_at = item.ended_at or now
            self._live.discard(item.pid)
        waiter.join(5)
        late = [s for s in pending if s.ended_at is not None and s.ended_at > deadline]
        assert not late, f"{len(late)} process(es) did not exit within {timeout}s: killed"

    def kill(self, started: Sequence[Started]) -> None:
        """SIGKILL whichever of ``started`` still run, and reap them all."""
        for item in started:
            if not item._reaped:
                _kill(item.pid)
        self.wait(started, 10.0)

    def run_together(
        self, jobs: Sequence[Job], timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> list[Started]:
        """Start the jobs together and wait for every one of them."""
        started = self.start(jobs)
        self.wait(started, timeout)
        return started

    def run(self, job: Job, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Started:
        """Run one job to completion."""
        return self.run_together([job], timeout)[0]

    # -- plumbing ----------------------------------------------------------------------

    def _watch(self, pending: list[Started], deadline: float) -> None:
        # Record when each child ends (the server reaps them in order, so its
        # answer comes only after the slowest); kill the ones past the deadline.
        while True:
            alive = [s for s in pending if s.ended_at is None]
            if not alive:
                return
            now = time.monotonic()
            for item in alive:
                if not _exists(item.pid):
                    item.ended_at = now
                elif now > deadline:
                    item.ended_at = now
                    _kill(item.pid)
            time.sleep(0.005)

    def _send(self, request: dict[str, object]) -> None:
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()

    def _reply(self, timeout: float) -> dict[str, object]:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the fork server did not answer within {timeout}s") from None
        if reply is None:
            raise AssertionError("the fork server exited")
        return reply

    def _pump(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)


def _exists(pid: int) -> bool:
    """Whether ``pid`` is still running (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
