"""The HTTP server: four routes, probes from the status source, 404/405 for the rest."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from schemad.cli import exit_code
from schemad.errors import ConfigError
from schemad.metrics import Metrics
from schemad.reconciler import Reconciler
from schemad.scheduler import Daemon
from schemad.server import HttpServer
from schemad.settings import Settings

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class FakeSource:
    """Answers the probes and /status with whatever the test sets."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.live: tuple[bool, str] = (True, "ok")
        self.readiness: tuple[bool, str] = (False, "no pass has finished yet")
        self.document: dict[str, Any] = {"target": "head", "last_pass": None}

    def alive(self) -> tuple[bool, str]:
        return self.live

    def ready(self) -> tuple[bool, str]:
        return self.readiness

    def status(self) -> dict[str, Any]:
        return self.document


Serve = Callable[..., httpx.Client]
# A stopping server waits out serve_forever()'s 0.5 s poll: share one per module.
_SHARED_SOURCE = FakeSource()


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    """Return ``serve(source, registry=None) -> client`` for a server on a free port."""
    servers: list[HttpServer] = []
    clients: list[httpx.Client] = []

    def start(source: Any, registry: CollectorRegistry | None = None) -> httpx.Client:
        registry = registry if registry is not None else CollectorRegistry()
        server = HttpServer("127.0.0.1", 0, registry, source)
        server.start()
        servers.append(server)
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_client(serve: Serve) -> httpx.Client:
    registry = CollectorRegistry()
    Metrics(registry)
    return serve(_SHARED_SOURCE, registry)


@pytest.fixture
def source() -> FakeSource:
    """The shared server's source, reset for each test."""
    _SHARED_SOURCE.reset()
    return _SHARED_SOURCE


@pytest.fixture
def client(shared_client: httpx.Client, source: FakeSource) -> httpx.Client:
    return shared_client


def test_healthz_is_200_while_alive(client: httpx.Client) -> None:
    """Liveness answers 200 with the reason as plain text."""
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")


def test_healthz_is_503_when_not_alive(client: httpx.Client, source: FakeSource) -> None:
    """Liveness answers 503 with the reason when the scheduler is gone."""
    source.live = (False, "scheduler is not running")
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (503, "scheduler is not running\n")


def test_readyz_is_503_with_the_reason_when_not_ready(client: httpx.Client) -> None:
    """Readiness answers 503 and says why."""
    response = client.get("/readyz")
    assert (response.status_code, response.text) == (503, "no pass has finished yet\n")


def test_readyz_is_200_when_ready(client: httpx.Client, source: FakeSource) -> None:
    """Readiness answers 200 once the source is ready."""
    source.readiness = (True, "at target (in_sync)")
    response = client.get("/readyz")
    assert (response.status_code, response.text) == (200, "at target (in_sync)\n")


def test_status_is_the_sources_document_as_json(client: httpx.Client) -> None:
    """/status returns the source's status document as JSON."""
    response = client.get("/status")
    expected = (200, "application/json", {"target": "head", "last_pass": None})
    assert expected == (
        response.status_code,
        response.headers["content-type"],
        response.json(),
    )


def test_a_query_string_does_not_change_the_route(client: httpx.Client) -> None:
    """/healthz?verbose=1 is still /healthz."""
    assert client.get("/healthz", params={"verbose": "1"}).status_code == 200


def test_unknown_path_is_404(client: httpx.Client) -> None:
    """A path that is not one of the four routes is 404."""
    responses = [client.get(path).status_code for path in ("/", "/nope", "/metrics/x", "/HEALTHZ")]
    assert responses == [404, 404, 404, 404]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(client: httpx.Client, method: str) -> None:
    """Methods other than GET and HEAD get 405 and an Allow header."""
    response = client.request(method, "/healthz")
    assert (response.status_code, response.headers.get("allow")) == (405, "GET, HEAD")


def test_post_with_a_body_is_405_not_a_reset(client: httpx.Client) -> None:
    """A POST with a large body still gets a clean 405 (the body is not left unread)."""
    response = client.post("/metrics", content=b"x" * 1_000_000)
    assert (response.status_code, response.headers.get("allow")) == (405, "GET, HEAD")


def test_head_has_headers_but_no_body(client: httpx.Client) -> None:
    """HEAD answers like GET without the body."""
    get, head = client.get("/healthz"), client.head("/healthz")
    expected = (200, get.headers["content-length"], b"")
    assert expected == (head.status_code, head.headers["content-length"], head.content)


def test_head_on_unknown_path_is_404(client: httpx.Client) -> None:
    """HEAD follows the same routing as GET."""
    assert client.head("/nope").status_code == 404


def test_metrics_default_to_the_prometheus_text_format(client: httpx.Client) -> None:
    """Without an OpenMetrics Accept header, /metrics is the Prometheus text format."""
    response = client.get("/metrics")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    expected = (200, TEXT_FORMAT, True)
    assert expected == (
        response.status_code,
        response.headers["content-type"],
        {"schemad_reconcile", "schemad_database_up", "schemad_build_info"} <= names,
    )


def test_metrics_negotiate_openmetrics(client: httpx.Client) -> None:
    """An OpenMetrics Accept header gets the OpenMetrics format, ending in # EOF."""
    response = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    expected = (200, True, True)
    assert expected == (
        response.status_code,
        response.headers["content-type"].startswith(OPENMETRICS),
        response.text.endswith("# EOF\n"),
    )


def test_a_malformed_request_does_not_stop_the_server(client: httpx.Client) -> None:
    """Garbage on the socket gets a 400 error page; the next request is served."""
    port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\x00\x01 not http\r\n\r\n")
        reply = b"".join(iter(lambda: raw.recv(4096), b""))
    assert (b"Error code: 400" in reply, client.get("/healthz").status_code) == (True, 200)


def test_a_busy_port_is_a_config_error() -> None:
    """Listening on a port already in use raises a ConfigError naming SCHEMAD_HTTP_PORT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            HttpServer("127.0.0.1", port, CollectorRegistry(), FakeSource())
    error = caught.value
    assert (exit_code(error), error.variable, str(port) in error.message) == (
        78,
        "SCHEMAD_HTTP_PORT",
        True,
    )


def test_readyz_of_a_daemon_before_its_first_pass(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served from a real Daemon, readiness is 503 until a pass has finished."""
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)

    class NoReconciler:
        def set_hooks(self, **_hooks: Any) -> None:
            return None

    registry = CollectorRegistry()
    daemon = Daemon(
        Settings(database_url="sqlite:///unused.db"),
        cast(Reconciler, NoReconciler()),
        Metrics(registry),
        database_url="sqlite:///unused.db",
    )
    client = serve(daemon, registry)
    ready, status = client.get("/readyz"), client.get("/status")
    expected = (503, "no pass has finished yet\n", None)
    assert expected == (ready.status_code, ready.text, status.json()["last_pass"])
