"""The HTTP server's limits: clients that hold, flood or starve it cannot stop /healthz.

Idle and slowloris connections are closed after their timeouts, connections
over the bound make way or are refused with a 503, oversized requests get
413/431, and out of file descriptors or threads the server neither spins nor
writes tracebacks. The last two run the server in a child process under
``setrlimit``. Timeouts and bounds are made small through the constructor's
keyword arguments; every wait in these tests is a generous upper bound.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from schemad.server import HttpServer

StartServer = Callable[..., HttpServer]
Connect = Callable[..., socket.socket]
StartChild = Callable[[str, Path], tuple[subprocess.Popen[bytes], int]]

NOBODY = 65534
# The child drops to user nobody after its imports: the interpreter may live
# where nobody cannot read (here under /root), so preexec_fn cannot do it.
CHILD = textwrap.dedent(
    """
    import os, resource, sys
    if sys.argv[1] == "nofile":
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    from prometheus_client import CollectorRegistry
    from schemad import logs
    from schemad.server import HttpServer

    logs.configure("json")  # to stderr, as in the daemon

    class Alive:
        def alive(self): return True, "ok"
        def ready(self): return True, "ok"
        def status(self): return {}

    server = HttpServer("127.0.0.1", 0, CollectorRegistry(), Alive())
    if sys.argv[1] == "nproc":
        resource.setrlimit(resource.RLIMIT_NPROC, (40, 40))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    server.start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()
    """
).replace("NOBODY", str(NOBODY))


class Source:
    """Alive and ready, with a status document the test chooses."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document = document if document is not None else {}

    def alive(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return False, "not yet"

    def status(self) -> dict[str, Any]:
        return self.document


class BrokenLiveness(Source):
    """A source whose liveness check raises."""

    def alive(self) -> tuple[bool, str]:
        raise RuntimeError("liveness check broke")


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Return ``start(source=None, **limits) -> HttpServer`` on a free port; stopped afterwards."""
    servers: list[HttpServer] = []

    def start(source: Source | None = None, **limits: Any) -> HttpServer:
        source = source if source is not None else Source()
        server = HttpServer("127.0.0.1", 0, CollectorRegistry(), source, **limits)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Return ``connect(port, receive_buffer_bytes=None, timeout_seconds=5) -> socket``; all closed afterwards."""  # noqa: E501
    with contextlib.ExitStack() as sockets:

        def open_one(
            port: int, receive_buffer_bytes: int | None = None, timeout_seconds: float = 5.0
        ) -> socket.socket:
            sock = sockets.enter_context(socket.socket())
            if receive_buffer_bytes is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            sock.settimeout(timeout_seconds)
            sock.connect(("127.0.0.1", port))
            return sock

        yield open_one


@pytest.fixture
def start_child() -> Iterator[StartChild]:
    """Return ``start(limit, stderr_path) -> (process, port)`` for a server in a child process."""
    children: list[subprocess.Popen[bytes]] = []

    def start(limit: str, stderr_path: Path) -> tuple[subprocess.Popen[bytes], int]:
        with stderr_path.open("wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, limit],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        children.append(child)
        assert child.stdout is not None
        return child, int(child.stdout.readline())

    yield start
    for child in children:
        stop_child(child)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Close the child's stdin (it stops its server and exits); kill it if it does not."""
    try:
        child.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()


def probe_client(port: int) -> httpx.Client:
    """An httpx client that opens a new connection for every request, like a kubelet."""
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=5.0,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def probe(port: int) -> int | str:
    """/healthz's status code, or the name of the error that stopped the request."""
    with probe_client(port) as client:
        try:
            return client.get("/healthz").status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__


def connection_states(sockets: list[socket.socket], within_seconds: float) -> list[str]:
    """For each socket "eof", "reset" or "open", waiting up to the bound for them to close."""
    states = ["open"] * len(sockets)
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(sockets):
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + within_seconds
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _events in selector.select(left):
                try:
                    data = sockets[key.data].recv(65536)
                except ConnectionError:
                    data, states[key.data] = b"", "reset"
                else:
                    states[key.data] = "open" if data else "eof"
                if not data:
                    selector.unregister(key.fileobj)
    return states


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and all its threads, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Send one more header byte on every socket each second, as slowloris does."""
    while not stop.wait(1.0):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.send(b"a")


@pytest.mark.slow
def test_healthz_answers_while_idle_and_slowloris_connections_are_held(
    start_server: StartServer, connect: Connect
) -> None:
    """With 300 idle and 100 slowloris connections open every probe gets 200, and the server closes all 400 after its timeouts."""  # noqa: E501
    server = start_server(request_timeout_seconds=4, idle_timeout_seconds=2, max_connections=1000)
    idle = [connect(server.port) for _ in range(300)]
    slow = [connect(server.port) for _ in range(100)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    stop = threading.Event()
    trickler = threading.Thread(target=trickle, args=(slow, stop))
    trickler.start()
    try:
        codes = []
        window_ends = time.monotonic() + 6.0  # past both timeouts
        while time.monotonic() < window_ends:
            codes.append(probe(server.port))
            stop.wait(0.2)
    finally:
        stop.set()
        trickler.join()
    closed = [state != "open" for state in connection_states(idle + slow, within_seconds=10.0)]
    expected = ([200] * len(codes), 400)
    assert expected == (codes, sum(closed))


def test_connections_over_the_bound_displace_the_longest_idle_ones(
    start_server: StartServer, connect: Connect
) -> None:
    """Over max_connections, each new connection closes the longest-idle one, so /healthz still gets in."""  # noqa: E501
    server = start_server(max_connections=20, idle_timeout_seconds=60, request_timeout_seconds=60)
    held = [connect(server.port) for _ in range(30)]
    code = probe(server.port)
    # 10 made way for connections 21 to 30, one more for the probe.
    expected = (200, ["eof"] * 11 + ["open"] * 19)
    assert expected == (code, connection_states(held, within_seconds=1.0))


def test_a_connection_is_refused_with_503_when_every_slot_is_busy(
    start_server: StartServer, connect: Connect
) -> None:
    """When all max_connections are busy taking an answer, a new connection gets a short 503 and is closed."""  # noqa: E501
    # 8 MB cannot fit in the kernel's buffers (4 MiB at most), so sending it keeps a slot busy.
    server = start_server(Source({"padding": "x" * 8_000_000}), max_connections=2)
    for _ in range(2):
        reader = connect(server.port, receive_buffer_bytes=4096)
        reader.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
        reader.recv(1, socket.MSG_PEEK)  # the answer has started: that slot is busy
    late = connect(server.port)
    reply = b"".join(iter(lambda: late.recv(4096), b""))
    status_line, _, rest = reply.partition(b"\r\n")
    expected = (b"HTTP/1.1 503 Service Unavailable", True)
    assert expected == (status_line, b"Connection: close" in rest)


def test_a_body_over_the_cap_is_413_and_closes_the_connection(start_server: StartServer) -> None:
    """A request body over max_body_bytes gets 413 and Connection: close, not a reset."""
    server = start_server()
    with probe_client(server.port) as client:
        response = client.post("/metrics", content=b"x" * 2_000_000)
    expected = (413, "close")
    assert expected == (response.status_code, response.headers.get("connection"))


def test_an_oversized_header_line_is_431(start_server: StartServer) -> None:
    """A header line over 8 KiB gets 431 instead of being read into memory."""
    server = start_server()
    with probe_client(server.port) as client:
        response = client.get("/healthz", headers={"X-Big": "a" * 16_000})
    assert response.status_code == 431


def test_keep_alive_serves_several_requests_on_one_connection(start_server: StartServer) -> None:
    """An HTTP/1.1 connection stays open between requests, as httpx and Prometheus expect."""
    server = start_server()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    answers = []
    try:
        for _ in range(3):
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            answers.append((response.status, response.read(), response.will_close))
    finally:
        connection.close()
    expected = [(200, b"ok\n", False)] * 3
    assert expected == answers


def test_a_handler_that_raises_is_a_500_and_the_server_goes_on(start_server: StartServer) -> None:
    """A route whose check raises answers 500, logs http_request_failed, and the next request is served."""  # noqa: E501
    server = start_server(BrokenLiveness())
    with capture_logs() as entries, probe_client(server.port) as client:
        codes = (client.get("/healthz").status_code, client.get("/readyz").status_code)
    expected = ((500, 503), ["http_request_failed"])
    assert expected == (codes, [entry["event"] for entry in entries])


def test_stop_closes_every_connection(start_server: StartServer, connect: Connect) -> None:
    """stop() closes idle client connections instead of leaving them open."""
    server = start_server()
    idle = connect(server.port)
    assert probe(server.port) == 200  # accepted after the idle one: both are being served
    server.stop()
    expected = ["eof"]
    assert expected == connection_states([idle], within_seconds=5.0)


@pytest.mark.slow
def test_out_of_file_descriptors_the_server_does_not_spin(
    start_child: StartChild, connect: Connect, tmp_path: Path
) -> None:
    """Under RLIMIT_NOFILE=48, 100 connections all get in, the server uses under 1 s of CPU in 3 s, and /healthz answers once they close."""  # noqa: E501
    child, port = start_child("nofile", tmp_path / "stderr")
    held, not_connected = [], 0
    for _ in range(100):
        try:  # the kernel completes the handshake while the backlog has room
            held.append(connect(port, timeout_seconds=1.0))
        except OSError:
            not_connected += 1
    time.sleep(1.0)  # let it run out of descriptors
    before = cpu_seconds(child.pid)
    time.sleep(3.0)
    used_seconds = cpu_seconds(child.pid) - before
    for sock in held:
        sock.close()
    with httpx.Client(timeout=10.0) as client:
        code = client.get(f"http://127.0.0.1:{port}/healthz").status_code
    expected = (0, True, 200)
    assert expected == (not_connected, used_seconds < 1.0, code), f"{used_seconds:.2f} s of CPU"


def test_out_of_threads_healthz_answers_without_tracebacks(
    start_child: StartChild, connect: Connect, tmp_path: Path
) -> None:
    """Running as nobody under RLIMIT_NPROC=40, 60 idle connections break neither /healthz nor stderr."""  # noqa: E501
    if os.geteuid() != 0:
        pytest.skip(
            "RLIMIT_NPROC does not bind root, and for any other user it counts every process "
            "of that user: only root can run the child as the otherwise unused user nobody"
        )
    child, port = start_child("nproc", tmp_path / "stderr")
    held = [connect(port) for _ in range(60)]
    codes = [probe(port) for _ in range(3)]
    for sock in held:
        sock.close()
    stop_child(child)
    stderr = (tmp_path / "stderr").read_text()
    expected = ([200, 200, 200], False)
    assert expected == (codes, "Traceback" in stderr)
