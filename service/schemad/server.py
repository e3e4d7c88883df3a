"""EDGE: the daemon's HTTP endpoints, served by one thread running an asyncio loop.

Four routes do not need a framework: ``/metrics`` (Prometheus text or
OpenMetrics, by the Accept header), ``/healthz`` (liveness), ``/readyz``
(readiness) and ``/status`` (JSON of the last pass). Anything else is 404,
any method but GET and HEAD is 405.

Why one event loop and no thread per connection: the standard library's
``ThreadingHTTPServer`` gave every connection a thread that waited for the
client without a deadline. Idle and slowloris connections stayed open for
good, about 40 of them under a thread limit (``RLIMIT_NPROC``) made
``/healthz`` fail with "can't start new thread" tracebacks, and out of file
descriptors its accept loop spun at 100% CPU, so the liveness probe would
have killed a pod that only had to shed load. Here one thread runs an
asyncio event loop: a connection costs a socket and a small task, never a
thread, and every wait on a client has a deadline. The loop accepts by
itself rather than through ``asyncio.start_server``, whose accept loop,
after ``EMFILE``, still tries the rest of its batch and schedules a retry
and an error report for each try (see :meth:`HttpServer._accept`); here any
accept error stops listening for one second. The answers are read from
memory in well under a millisecond, so they run on the loop itself: serving
them in parallel would gain nothing, and the server never needs a second
thread. The HTTP/1.1 parser is the few dozen lines below (request line,
headers, ``Content-Length``, keep-alive), with every size capped; no
framework for four routes.

Limits (keyword arguments of :class:`HttpServer`; the defaults are for production):

- a request head must be complete ``request_timeout_seconds`` (10) after the
  connection was accepted or its previous answer sent, however slowly it
  trickles in; a request body being read counts towards the same deadline;
- a connection that has not started a request ``idle_timeout_seconds`` (5)
  after it was accepted or its previous answer sent is closed;
- an answer the client has not taken within ``write_timeout_seconds`` (10)
  ends the connection;
- at most ``max_connections`` (256) are open. A connection over the bound
  displaces the one that has waited longest for its next request, because
  idle and trickling connections are what starves a server, and so a probe
  gets in; only when every connection is busy taking an answer is the new
  one refused with a short 503. The kernel queues up to ``backlog`` (1024)
  connections not yet accepted;
- the request line and each header line are at most 8 KiB (414, 431), the
  whole head 32 KiB and 100 header lines (431); request bodies
  (``Content-Length``) are read and discarded up to ``max_body_bytes``
  (1 MiB), a larger one gets 413 and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from schemad import logs
from schemad.errors import ConfigError

LINE_BYTES = 8 * 1024
HEAD_BYTES = 32 * 1024
HEADER_LINES = 100
# How long a closing connection may still send (and have discarded) what it
# had in flight, so that its answer is not destroyed by a reset.
LINGER_SECONDS = 2.0
STOP_WAIT_SECONDS = 5.0
ACCEPT_BATCH = 64
ACCEPT_RETRY_SECONDS = 1.0
ACCEPT_FAILURE_LOG_SECONDS = 60.0
_CHUNK_BYTES = 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_DIGITS = re.compile(r"[0-9]{1,18}")
_EMPTY_LINES = (b"\r\n", b"\n")


class StatusSource(Protocol):
    """What the server asks the daemon."""

    def alive(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...

    def status(self, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The status document; ``query`` holds the request's query parameters
        (fan-out pages its targets by them). Raises ValueError for a bad one."""
        ...


@dataclass(frozen=True)
class Limits:
    """How much one client may ask of the server (see the module docstring)."""

    request_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 5.0
    write_timeout_seconds: float = 10.0
    max_connections: int = 256
    max_body_bytes: int = 1024 * 1024
    backlog: int = 1024


@dataclass(frozen=True)
class Request:
    """A parsed request head; ``body_bytes`` of body follow it."""

    method: str
    path: str
    headers: dict[str, str]
    keep_alive: bool
    body_bytes: int
    query: str = ""


@dataclass(frozen=True)
class Answer:
    """A response, whole; ``close`` ends the connection after it."""

    status: int
    content_type: str
    body: bytes
    close: bool = False


Route = Callable[[Request], Answer]


class _Refused(Exception):
    """The request cannot be served: answer ``answer`` and close the connection."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.answer = _error(status, reason)


class HttpServer:
    """The daemon's HTTP server, serving from its own thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        source: StatusSource,
        *,
        request_timeout_seconds: float = Limits.request_timeout_seconds,
        idle_timeout_seconds: float = Limits.idle_timeout_seconds,
        write_timeout_seconds: float = Limits.write_timeout_seconds,
        max_connections: int = Limits.max_connections,
        max_body_bytes: int = Limits.max_body_bytes,
        backlog: int = Limits.backlog,
    ) -> None:
        """Listen on ``host:port`` at once (serving starts with :meth:`start`).

        Raises:
            ConfigError: the address cannot be listened on (in use, not local).
        """
        self._limits = Limits(
            request_timeout_seconds,
            idle_timeout_seconds,
            write_timeout_seconds,
            max_connections,
            max_body_bytes,
            backlog,
        )
        self._routes = _routes(registry, source)
        self._sock = _listen(host, port, backlog)
        self._port = int(self._sock.getsockname()[1])
        self._peers = _Peers(max_connections)
        self._log = logs.get_logger("schemad.http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resume_accepting: asyncio.TimerHandle | None = None
        self._accept_failure_quiet_until = 0.0
        self._thread = threading.Thread(target=self._run, name="schemad-http", daemon=True)

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every connection; returns once the thread has ended."""
        if self._loop is None or not self._thread.is_alive():
            self._sock.close()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.close()  # the thread never started
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: stopped already
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(STOP_WAIT_SECONDS)

    def _run(self) -> None:
        assert self._loop is not None
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        loop.add_reader(self._sock, self._accept)
        try:
            await self._stopping.wait()
        finally:
            loop.remove_reader(self._sock)
            if self._resume_accepting is not None:
                self._resume_accepting.cancel()
            self._sock.close()
            for writer in self._peers.all():
                _close(writer)
            await _finish(self._tasks)

    def _accept(self) -> None:
        """Take what the backlog holds; on an error, stop listening for a second.

        Not ``asyncio.start_server``: after EMFILE its accept loop goes on
        through the rest of its batch (as many tries as the backlog), each
        failure scheduling a retry and reporting an error (Python 3.11 to
        3.13), which costs a tenth of a core and floods the log.
        """
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset while it waited in the backlog
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                self._pause_accepting(exc)
                return
            task = asyncio.get_running_loop().create_task(self._serve_socket(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause_accepting(self, error: OSError) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock)
        self._resume_accepting = loop.call_later(
            ACCEPT_RETRY_SECONDS, loop.add_reader, self._sock, self._accept
        )
        if loop.time() >= self._accept_failure_quiet_until:
            self._accept_failure_quiet_until = loop.time() + ACCEPT_FAILURE_LOG_SECONDS
            self._log.warning(
                "http_accept_failed", error=str(error), retry_in_seconds=ACCEPT_RETRY_SECONDS
            )

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        self._log.error("http_loop_error", message=context.get("message"), error=repr(error))

    async def _serve_socket(self, conn: socket.socket) -> None:
        if self._stopping.is_set():  # accepted just before stop()
            conn.close()
            return
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=LINE_BYTES)
        except OSError:
            conn.close()  # reset before it could be served
            return
        if not self._peers.admit(writer):
            writer.write(_encode(_error(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections")))
            writer.close()
            return
        try:
            await self._converse(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client left or ran out of time: there is nobody to answer
        except Exception:
            self._log.exception("http_connection_failed")
        finally:
            self._peers.drop(writer)
            _close(writer)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one connection until either side ends it."""
        while True:
            self._peers.waiting(writer)
            try:
                request = await self._read_request(reader)
            except _Refused as refused:
                await self._send(writer, refused.answer, head_only=False)
                await _linger(reader, writer)
                return
            if request is None:
                return
            self._peers.busy(writer)
            answer = self._answer(request)
            await self._send(writer, answer, head_only=request.method == "HEAD")
            if answer.close:
                self._peers.waiting(writer)
                await _linger(reader, writer)
                return

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        """The next request with its body read; None when the client closed instead.

        Raises:
            _Refused: the request is malformed or too large.
            TimeoutError: the client was idle, or too slow sending the request.
        """
        limits = self._limits
        started = asyncio.get_running_loop().time()
        deadline = started + limits.request_timeout_seconds
        async with asyncio.timeout_at(min(started + limits.idle_timeout_seconds, deadline)):
            first = await reader.read(1)
        if not first:
            return None
        async with asyncio.timeout_at(deadline):
            request = await _read_head(reader, first)
            if request.body_bytes > limits.max_body_bytes:
                raise _Refused(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body over {limits.max_body_bytes} bytes",
                )
            await _discard(reader, request.body_bytes)
        return request

    def _answer(self, request: Request) -> Answer:
        route = self._routes.get(request.path)
        if request.method not in ("GET", "HEAD"):
            answer = Answer(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"method not allowed\n")
        elif route is None:
            answer = Answer(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        else:
            try:
                answer = route(request)
            except Exception:
                self._log.exception("http_request_failed", path=request.path)
                answer = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "the handler failed", close=False)
        if request.keep_alive:
            return answer
        return Answer(answer.status, answer.content_type, answer.body, close=True)

    async def _send(self, writer: asyncio.StreamWriter, answer: Answer, *, head_only: bool) -> None:
        writer.write(_encode(answer, head_only=head_only))
        async with asyncio.timeout(self._limits.write_timeout_seconds):
            await writer.drain()


class _Peers:
    """The open connections, and which one makes way when there are too many."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: set[asyncio.StreamWriter] = set()
        # Connections waiting for their next request, the longest-waiting first.
        self._waiting: dict[asyncio.StreamWriter, None] = {}

    def admit(self, writer: asyncio.StreamWriter) -> bool:
        """Count a new connection in, closing the longest-waiting one at the bound.

        Returns False, admitting nothing, when every open connection is busy.
        """
        if len(self._open) >= self._limit:
            if not self._waiting:
                return False
            displaced = next(iter(self._waiting))
            self.drop(displaced)
            displaced.close()  # its reader sees the end of the stream and its task ends
        self._open.add(writer)
        self.waiting(writer)
        return True

    def waiting(self, writer: asyncio.StreamWriter) -> None:
        self._waiting.pop(writer, None)
        self._waiting[writer] = None

    def busy(self, writer: asyncio.StreamWriter) -> None:
        self._waiting.pop(writer, None)

    def drop(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        self._waiting.pop(writer, None)

    def all(self) -> list[asyncio.StreamWriter]:
        return list(self._open)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        raise ConfigError(
            f"SCHEMAD_HTTP_HOST={host}, SCHEMAD_HTTP_PORT={port}: cannot listen "
            f"({exc.strerror or exc}); pick a free port or another address",
            variable="SCHEMAD_HTTP_PORT",
        ) from exc


async def _finish(tasks: set[asyncio.Task[None]]) -> None:
    """Wait for the connections' tasks, whose streams are closed, to end; cancel stragglers."""
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    # Closed transports close their sockets on the loop's next iteration.
    await asyncio.sleep(0)


async def _read_head(reader: asyncio.StreamReader, first: bytes) -> Request:
    line = first if first == b"\n" else first + await _read_line(reader, too_long=414)
    if line in _EMPTY_LINES:  # RFC 9112 2.2: one empty line before a request is ignored
        line = await _read_line(reader, too_long=414)
    method, target, minor = _parse_request_line(line)
    path, _, query = target.partition("?")
    headers = await _read_headers(reader, budget_bytes=HEAD_BYTES - len(line))
    body_bytes = _body_bytes(headers)
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    # A chunked body is not read, so where the next request starts is unknown.
    keep_alive = minor >= 1 and "close" not in connection and "transfer-encoding" not in headers
    return Request(method, path, headers, keep_alive, body_bytes, query)


async def _read_line(reader: asyncio.StreamReader, *, too_long: int) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise _Refused(HTTPStatus(too_long), f"line over {LINE_BYTES} bytes") from exc


async def _read_headers(reader: asyncio.StreamReader, *, budget_bytes: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(HEADER_LINES + 1):
        line = await _read_line(reader, too_long=431)
        budget_bytes -= len(line)
        if budget_bytes < 0:
            raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        if line in _EMPTY_LINES:
            return headers
        name, value = _parse_header(line)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header lines")


def _parse_request_line(line: bytes) -> tuple[str, str, int]:
    """Method, request target (path and query) and HTTP/1 minor version of a request line."""
    parts = line.rstrip(b"\r\n").decode("latin-1").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _Refused(HTTPStatus.BAD_REQUEST, "bad request line")
    method, target, version = parts
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise _Refused(HTTPStatus.BAD_REQUEST, f"bad HTTP version {version[:20]!r}")
    if matched[1] != "1":
        raise _Refused(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is served")
    return method, target, int(matched[2])


def _parse_header(line: bytes) -> tuple[str, str]:
    name, colon, value = line.rstrip(b"\r\n").decode("latin-1").partition(":")
    if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
        raise _Refused(HTTPStatus.BAD_REQUEST, "bad header line")
    return name.lower(), value.strip(" \t")


def _body_bytes(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers or "content-length" not in headers:
        return 0
    values = {value.strip() for value in headers["content-length"].split(",")}
    length = values.pop() if len(values) == 1 else ""
    if not _DIGITS.fullmatch(length):
        raise _Refused(HTTPStatus.BAD_REQUEST, "bad Content-Length")
    return int(length)


async def _discard(reader: asyncio.StreamReader, size_bytes: int) -> None:
    while size_bytes > 0:
        chunk = await reader.readexactly(min(size_bytes, _CHUNK_BYTES))
        size_bytes -= len(chunk)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends, for a while.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the answer before the client reads it (a large POST would
    see a reset instead of its 413).
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(_CHUNK_BYTES):
                pass


def _close(writer: asyncio.StreamWriter) -> None:
    if writer.transport.get_write_buffer_size():
        writer.transport.abort()  # the client stopped reading: do not wait to flush
    else:
        writer.close()


def _error(status: HTTPStatus, reason: str, *, close: bool = True) -> Answer:
    body = f"Error code: {status.value}\nMessage: {reason}.\n".encode()
    return Answer(status, "text/plain; charset=utf-8", body, close=close)


def _encode(answer: Answer, *, head_only: bool = False) -> bytes:
    status = HTTPStatus(answer.status)
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        "Server: schemad",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
    ]
    if status is HTTPStatus.METHOD_NOT_ALLOWED:
        lines.append("Allow: GET, HEAD")
    if answer.close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + answer.body


def _routes(registry: CollectorRegistry, source: StatusSource) -> dict[str, Route]:
    def metrics(request: Request) -> Answer:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Answer(HTTPStatus.OK, content_type, encoder(registry))

    def probe(check: Callable[[], tuple[bool, str]]) -> Route:
        def respond(_request: Request) -> Answer:
            ok, reason = check()
            code = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            return Answer(code, "text/plain; charset=utf-8", f"{reason}\n".encode())

        return respond

    def status(request: Request) -> Answer:
        query = {key: values[-1] for key, values in parse_qs(request.query).items()}
        try:
            document = source.status(query) if query else source.status()
        except ValueError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc), close=False)
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        return Answer(HTTPStatus.OK, "application/json", body + b"\n")

    return {
        "/metrics": metrics,
        "/healthz": probe(source.alive),
        "/readyz": probe(source.ready),
        "/status": status,
    }
