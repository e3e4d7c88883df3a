"""Run a tool as a real process: wall time, exit code and peak RSS.

Each tool is started by a small launcher (``python -S``, about 10 MiB) that
times it from just before ``posix_spawn`` to its reap by ``os.wait4``, and
reports the child's own ``ru_maxrss`` from that ``wait4``: the high-water
mark of its resident set (Linux, KiB), exact per process. The launcher is
there because Linux carries the *parent's* high-water mark into a child at
``fork``/``exec``, so a tool spawned straight from this harness (80 MiB once
SQLAlchemy, Alembic and schemad are imported) would report at least that;
``getrusage(RUSAGE_CHILDREN)`` deltas have the same flaw and only ever show
the largest child so far. The daemon's idle RSS is read from
``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) while it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
SCHEMAD = str(BIN / "schemad")
ALEMBIC = str(BIN / "alembic")
TIMEOUT_SECONDS = 900

# argv[1]: JSON [argv, stdin path, output path, timeout seconds, wait for a gate]
_LAUNCHER = r"""
import json, os, signal, sys, time
argv, stdin, output, timeout, gated = json.loads(sys.argv[1])
if gated:
    print("ready", flush=True)
    sys.stdin.readline()
actions = [
    (os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    (os.POSIX_SPAWN_DUP2, 1, 2),
]
start = time.monotonic()
pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(timeout)
_, status, usage = os.wait4(pid, 0)
end = time.monotonic()
print(json.dumps([start, end, os.waitstatus_to_exitcode(status), usage.ru_maxrss]), flush=True)
"""


@dataclass(frozen=True)
class ProcessRun:
    """One finished process; times are CLOCK_MONOTONIC seconds."""

    argv: tuple[str, ...]
    started: float
    ended: float
    exit_code: int
    peak_rss_kib: int
    output_tail: str

    @property
    def wall_seconds(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe_failure(self) -> str:
        return f"`{' '.join(self.argv[:3])} ...` exited {self.exit_code}:\n{self.output_tail}"


class _Launch:
    """A launcher running one tool; the tool's output goes to a temporary file."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], stdin: Path | None, gated: bool
    ) -> None:
        self.argv = tuple(argv)
        handle, name = tempfile.mkstemp(prefix="bench-output-")
        os.close(handle)
        self.output = Path(name)
        spec = [list(self.argv), str(stdin or os.devnull), name, TIMEOUT_SECONDS, gated]
        self.launcher = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, json.dumps(spec)],
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.launcher.stdin is not None
        assert self.launcher.stdout is not None
        if gated:
            self.launcher.stdout.readline()  # "ready"
        else:
            self.launcher.stdin.close()

    def open_gate(self) -> None:
        assert self.launcher.stdin is not None
        self.launcher.stdin.write("go\n")
        self.launcher.stdin.close()

    def result(self) -> ProcessRun:
        assert self.launcher.stdout is not None
        stdout = self.launcher.stdout.read()
        self.launcher.stdout.close()
        self.launcher.wait()
        try:
            tail = self.output.read_bytes()[-4000:].decode(errors="replace")
        finally:
            self.output.unlink(missing_ok=True)
        if self.launcher.returncode != 0:
            return ProcessRun(self.argv, 0.0, 0.0, -1, 0, f"the launcher failed: {stdout}{tail}")
        started, ended, code, rss = json.loads(stdout.strip().splitlines()[-1])
        return ProcessRun(self.argv, started, ended, code, rss, tail)


def run(argv: Sequence[str], env: Mapping[str, str], *, stdin: Path | None = None) -> ProcessRun:
    """Run ``argv`` to completion (``stdin``: a file to read from, else /dev/null)."""
    return _Launch(argv, env, stdin, gated=False).result()


def run_at_once(
    argvs: Sequence[Sequence[str]], env: Mapping[str, str]
) -> tuple[float, list[ProcessRun]]:
    """Start every command at the same moment (each launcher waits at a gate
    until all are ready); return the seconds from that moment until the last
    one exited, and each run.
    """
    launches = [_Launch(argv, env, None, gated=True) for argv in argvs]
    for launch in launches:
        launch.open_gate()
    runs = [launch.result() for launch in launches]
    timed = [r for r in runs if r.ended]
    last = max(r.ended for r in timed) - min(r.started for r in timed) if timed else 0.0
    return last, runs


def tool_env(**settings: str) -> dict[str, str]:
    """This environment without SCHEMAD_* variables, plus ``settings`` (no prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCHEMAD_")}
    env.update({f"SCHEMAD_{key.upper()}": value for key, value in settings.items()})
    env.pop("FORCE_COLOR", None)
    return env


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a running process, in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found
