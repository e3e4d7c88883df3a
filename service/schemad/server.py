"""EDGE: the daemon's HTTP endpoints, on the standard library's server.

Four routes do not need a framework: ``/metrics`` (Prometheus text or
OpenMetrics, by the Accept header), ``/healthz`` (liveness), ``/readyz``
(readiness) and ``/status`` (JSON of the last pass). Anything else is 404,
any method but GET and HEAD is 405.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from schemad.errors import ConfigError


class StatusSource(Protocol):
    """What the server asks the daemon."""

    def alive(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...

    def status(self) -> dict[str, Any]: ...


class HttpServer:
    """The daemon's HTTP server, serving from its own thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, source: StatusSource
    ) -> None:
        handler = _handler(registry, source)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"SCHEMAD_HTTP_HOST={host}, SCHEMAD_HTTP_PORT={port}: cannot listen "
                f"({exc.strerror or exc}); pick a free port or another address",
                variable="SCHEMAD_HTTP_PORT",
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="schemad-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, source: StatusSource) -> type[BaseHTTPRequestHandler]:
    def metrics(handler: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
        encoder, content_type = choose_encoder(handler.headers.get("Accept", ""))
        return HTTPStatus.OK, content_type, encoder(registry)

    def probe(check: Callable[[], tuple[bool, str]]) -> Callable[..., tuple[int, str, bytes]]:
        def respond(_handler: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
            ok, reason = check()
            code = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            return code, "text/plain; charset=utf-8", f"{reason}\n".encode()

        return respond

    def status(_handler: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
        body = json.dumps(source.status(), indent=2, sort_keys=True).encode()
        return HTTPStatus.OK, "application/json", body + b"\n"

    routes: dict[str, Callable[[BaseHTTPRequestHandler], tuple[int, str, bytes]]] = {
        "/metrics": metrics,
        "/healthz": probe(source.alive),
        "/readyz": probe(source.ready),
        "/status": status,
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "schemad"
        sys_version = ""

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def _serve(self, *, send_body: bool) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", send_body)
                return
            code, content_type, body = route(self)
            self._reply(code, content_type, body, send_body)

        def _reply(self, code: int, content_type: str, body: bytes, send_body: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if code == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _not_allowed(self) -> None:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"method not allowed\n", True)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would drown the pass events.
            return

    return Handler
