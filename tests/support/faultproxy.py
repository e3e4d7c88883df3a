"""A small TCP fault proxy for tests: put it between a client and a database.

No toxiproxy is installable here, so this is the part of it the tests need,
on an asyncio loop in its own thread so that synchronous tests can drive it:

- ``pass_through()``: forward bytes both ways (the default);
- ``refuse()``: stop listening, so new connections are refused (RST);
- ``reset_all()``: abort every live connection with a TCP reset;
- ``blackhole()``: accept connections, never forward a byte (live ones too);
- ``latency_seconds``: delay every forwarded chunk.

Usage::

    with FaultProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
        ...
        proxy.reset_all()
        proxy.refuse()
        ...
        proxy.pass_through()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK_BYTES = 65536
_CALL_TIMEOUT_SECONDS = 10.0


class Mode(enum.Enum):
    """What the proxy does with connections."""

    PASS_THROUGH = "pass_through"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


class _Link:
    """One proxied connection: the client's stream and the upstream's."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Close both sides at once; the client sees a reset, not a clean close."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # Linger 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """A TCP proxy to ``upstream_host:upstream_port`` with switchable faults."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.latency_seconds = 0.0
        self.accepted = 0
        self._mode = Mode.PASS_THROUGH
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the loop thread and listen; ``port`` is the bound port afterwards."""
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close every connection and the listener, then end the loop thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CALL_TIMEOUT_SECONDS)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def live_connections(self) -> int:
        """Connections currently open through the proxy."""
        return self._call(self._count())

    def pass_through(self) -> None:
        """Forward again (and listen again after ``refuse()``)."""
        self._call(self._set_mode(Mode.PASS_THROUGH))

    def refuse(self) -> None:
        """Stop listening: new connections are refused; live ones are kept."""
        self._call(self._set_mode(Mode.REFUSE))

    def blackhole(self) -> None:
        """Accept new connections but forward nothing, on new and live connections."""
        self._call(self._set_mode(Mode.BLACKHOLE))

    def reset_all(self) -> None:
        """Abort every live connection with a TCP reset (the mode is unchanged)."""
        self._call(self._reset_all())

    def cut(self) -> None:
        """A full outage: refuse new connections and reset the live ones."""
        self.refuse()
        self.reset_all()

    # -- inside the loop -------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(_CALL_TIMEOUT_SECONDS)

    async def _count(self) -> int:
        return len(self._links)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _close_listener(self) -> None:
        # close() stops listening at once; wait_closed() would also wait for
        # the live connections (Python 3.12+), which refuse() keeps.
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _set_mode(self, mode: Mode) -> None:
        self._mode = mode
        if mode is Mode.REFUSE:
            self._close_listener()
        elif self._server is None:
            await self._listen()

    async def _reset_all(self) -> None:
        for link in list(self._links):
            link.abort()
        # Let the handlers finish closing before anyone looks again.
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _shutdown(self) -> None:
        self._close_listener()
        await self._reset_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._serve(link, reader)
        except asyncio.CancelledError:
            pass
        finally:
            self._links.discard(link)
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            for side in (link.client, link.upstream):
                if side is not None:
                    side.close()
                    with contextlib.suppress(Exception):
                        await side.wait_closed()
            self._handlers.discard(handler)

    async def _serve(self, link: _Link, reader: asyncio.StreamReader) -> None:
        if self._mode is Mode.BLACKHOLE:
            link.tasks = [asyncio.create_task(self._swallow(reader))]
        else:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                link.abort()
                return
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, link.client)),
            ]
        await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(_CHUNK_BYTES):
                pass

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(_CHUNK_BYTES):
                if self.latency_seconds > 0:
                    await asyncio.sleep(self.latency_seconds)
                if self._mode is Mode.BLACKHOLE:
                    continue
                sink.write(data)
                await sink.drain()
