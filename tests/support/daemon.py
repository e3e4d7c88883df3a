"""Run ``schemad run`` as a real process and watch it from the outside.

The daemon is started with ``SCHEMAD_HTTP_PORT=0`` and JSON logs; a thread
reads its stderr line by line, and the port comes from the ``http_started``
event. Tests then wait for log events or for conditions on the HTTP
endpoints, always with a deadline. The process is killed at teardown
whatever happened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.processes import SCHEMAD, clean_env

T = TypeVar("T")
Event = dict[str, Any]
START_TIMEOUT_SECONDS = 20.0
POLL_SECONDS = 0.05


def daemon_env(database_url: str, project: Path, **settings: str) -> dict[str, str]:
    """The environment for ``schemad run``: JSON logs, a free port on loopback.

    ``settings`` are SCHEMAD_* variables without the prefix; they override
    the defaults given here.
    """
    defaults = {
        "database_url": database_url,
        "script_location": str(project),
        "http_host": "127.0.0.1",
        "http_port": "0",
        "log_format": "json",
        "interval_seconds": "1",
        "backoff_max_seconds": "2",
        "connect_timeout_seconds": "2",
        "shutdown_grace_seconds": "15",
    }
    return clean_env(**{**defaults, **settings})


class DaemonProcess:
    """One ``schemad run`` process, its log events and its HTTP endpoints."""

    def __init__(self, env: Mapping[str, str], *, cwd: Path | None = None) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.lines: list[str] = []
        self.events: list[Event] = []
        self.stdout: list[str] = []
        self.port: int | None = None
        self._changed = threading.Condition()
        self._ended = False
        self._process: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._client = httpx.Client(timeout=5.0)

    # -- lifecycle -----------------------------------------------------------

    def start(self, *, wait_for_http: bool = True) -> DaemonProcess:
        """Start the process; by default wait for its HTTP server's port."""
        self._process = subprocess.Popen(
            [str(SCHEMAD), "run"],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stderr, args=(self._process.stderr,), daemon=True),
            threading.Thread(target=self._read_stdout, args=(self._process.stdout,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if wait_for_http:
            started = self.wait_for_event("http_started", timeout=START_TIMEOUT_SECONDS)
            self.port = int(started["port"])
        return self

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "the daemon was not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit and for its output to be read; return its code."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        """Kill the process if it still runs, and release everything (idempotent)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        for reader in self._readers:
            reader.join(10)
        if self._process is not None:
            for stream in (self._process.stdout, self._process.stderr):
                if stream is not None:
                    stream.close()
        self._client.close()

    # -- log output ------------------------------------------------------------

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            with self._changed:
                self.lines.append(line)
                if isinstance(parsed, dict):
                    self.events.append(parsed)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.stdout.append(line)

    def named(self, name: str, **fields: Any) -> list[Event]:
        """The events called ``name`` (so far) whose fields match ``fields``."""
        with self._changed:
            return [e for e in self.events if e.get("event") == name and _matches(e, fields)]

    def non_json_lines(self) -> list[str]:
        """stderr lines that are not one JSON object (there should be none)."""
        with self._changed:
            return [line for line in self.lines if not _is_json_object(line)]

    def output(self) -> str:
        """Everything the process wrote so far, stderr then stdout."""
        with self._changed:
            return "".join(self.lines) + "".join(self.stdout)

    def wait_for_event(self, name: str, *, timeout: float, after: int = 0, **fields: Any) -> Event:
        """The first event called ``name`` matching ``fields``, at index ``after`` or later.

        Raises:
            AssertionError: the time ran out or the process ended first.
        """
        return self.wait_for(
            lambda e: e.get("event") == name and _matches(e, fields),
            timeout=timeout,
            after=after,
            description=f"{name!r} event with {fields}",
        )

    def wait_for(
        self,
        predicate: Callable[[Event], bool],
        *,
        timeout: float,
        after: int = 0,
        description: str = "a matching event",
    ) -> Event:
        """The first event (at index ``after`` or later) for which ``predicate`` is true.

        Raises:
            AssertionError: the time ran out or the process ended first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    why = "the process ended" if self._ended else f"{timeout}s passed"
                    raise AssertionError(
                        f"no {description} before {why}; log:\n" + "".join(self.lines[-60:])
                    )
                self._changed.wait(remaining)

    def mark(self) -> int:
        """An index for ``wait_for_event(after=...)``: only events from now on."""
        with self._changed:
            return len(self.events)

    # -- HTTP ----------------------------------------------------------------------

    def url(self, path: str) -> str:
        assert self.port is not None, "the daemon's port is not known yet"
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._client.get(self.url(path), **kwargs)

    def status(self) -> dict[str, Any]:
        response = self.get("/status")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def scrape(self) -> str:
        """/metrics in the Prometheus text format (what promtool reads)."""
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics by (name, sorted labels), parsed by prometheus-client."""
        samples = {}
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample's value from a fresh scrape, or None when absent."""
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def wait_until(
        self,
        condition: Callable[[], T],
        *,
        timeout: float,
        message: str = "condition",
        interval: float = POLL_SECONDS,
    ) -> T:
        """Poll ``condition`` until it returns something truthy; return that.

        Exceptions from ``condition`` count as "not yet" (the server may be
        busy); the last one is reported if time runs out.

        Raises:
            AssertionError: the time ran out or the process exited first.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = condition()
            except (httpx.HTTPError, AssertionError) as exc:
                value, last = None, exc  # type: ignore[assignment]
            else:
                last = value
            if value:
                return value
            if not self.alive():
                raise AssertionError(
                    f"the daemon exited ({self.process.returncode}) while waiting for "
                    f"{message}; log:\n" + "".join(self.lines[-60:])
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{message} not met within {timeout}s (last: {last!r}); log:\n"
                    + "".join(self.lines[-60:])
                )
            time.sleep(interval)

    def wait_for_status(self, path: str, code: int, *, timeout: float) -> httpx.Response:
        """Poll ``path`` until it answers ``code``; return that response."""

        def answered() -> httpx.Response | None:
            response = self.get(path)
            return response if response.status_code == code else None

        return self.wait_until(answered, timeout=timeout, message=f"GET {path} -> {code}")


@contextmanager
def running_daemon(env: Mapping[str, str], *, cwd: Path | None = None) -> Iterator[DaemonProcess]:
    """Start ``schemad run`` and kill it on the way out, whatever happened."""
    daemon = DaemonProcess(env, cwd=cwd)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.kill()


def _matches(event: Event, fields: Mapping[str, Any]) -> bool:
    return all(event.get(key) == value for key, value in fields.items())


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
