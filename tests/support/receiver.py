"""A webhook receiver on loopback: records every request, and can answer slowly
or with an error status. A closed port (:func:`closed_port`) stands for a
receiver that refuses connections.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN = "s3cretW3bh00kT0ken"
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "webhook-event.schema.json"


@dataclass(frozen=True)
class Request:
    """One request the receiver got."""

    method: str
    path: str
    content_type: str
    document: dict[str, Any]


class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 that records requests.

    ``statuses`` are the answers to the first requests, in order (200 after
    them); ``delay_seconds`` holds each answer back that long.
    """

    def __init__(self, statuses: Sequence[int] = (), delay_seconds: float = 0.0) -> None:
        self.requests: list[Request] = []
        self.statuses = list(statuses)
        self.delay_seconds = delay_seconds
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The webhook URL, with a Slack-like secret token in its path."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/services/T000/B000/{TOKEN}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def events(self) -> list[str]:
        """The event names received so far, in order."""
        with self._changed:
            return [r.document.get("event", "") for r in self.requests]

    def wait_for(self, count: int, timeout: float) -> list[Request]:
        """The first ``count`` requests, waiting for them up to ``timeout`` seconds.

        Raises:
            AssertionError: fewer arrived in time.
        """
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            assert arrived, f"{len(self.requests)} of {count} requests within {timeout}s"
            return self.requests[:count]

    def _answer(self) -> int:
        with self._changed:
            return self.statuses.pop(0) if self.statuses else 200

    def _record(self, request: Request) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._record(
                    Request(
                        "POST", self.path, self.headers.get("Content-Type", ""), json.loads(body)
                    )
                )
                if receiver.delay_seconds and receiver._stopping.wait(receiver.delay_seconds):
                    return  # stopped while holding the answer back
                status = receiver._answer()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client gave up waiting: that is what slow tests expect
                    return

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read the requests, not a log."""

        return Handler


@contextmanager
def receiving(statuses: Sequence[int] = (), delay_seconds: float = 0.0) -> Iterator[Receiver]:
    """A running receiver, stopped on the way out."""
    receiver = Receiver(statuses, delay_seconds).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def event_schema() -> dict[str, Any]:
    """docs/webhook-event.schema.json."""
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema
