"""EDGE: client-side deadlines on a database connection.

A peer that accepts connections but never answers (a blackholed network
behind a proxy that still acknowledges TCP) would block a read forever:
keepalives are answered and the drivers have no read timeout of their own.
A :class:`Watchdog` shuts the connection's socket down when an exchange
outlives its deadline, which makes the blocked read fail at once; the
caller then reports "did not answer" instead of the driver's error.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

ErrorFactory = Callable[[BaseException], Exception]


class Watchdog:
    """Shuts a connection's socket down if an exchange outlives its deadline."""

    def __init__(self, conn: Connection, seconds: float) -> None:
        self.shutdown = socket_shutdown(conn)
        self.seconds = seconds
        self.fired = False
        self._done = False
        self._guard = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Watchdog:
        if self.shutdown is not None:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._guard:  # after this the timer can no longer touch the socket
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        with self._guard:
            if self._done or self.shutdown is None:
                return
            self.fired = True
            with suppress(OSError):
                self.shutdown()


@contextmanager
def bounded(
    conn: Connection,
    seconds: float,
    *,
    no_answer: ErrorFactory,
    failed: ErrorFactory | None = None,
) -> Iterator[Watchdog]:
    """Bound a short exchange on ``conn`` and translate its failure.

    A SQLAlchemy error raised inside becomes ``no_answer(exc)`` when the
    watchdog cut the socket, else ``failed(exc)`` (or propagates unchanged
    when ``failed`` is None, for callers that read the error themselves).
    """
    with Watchdog(conn, seconds) as watchdog:
        try:
            yield watchdog
        except SQLAlchemyError as exc:
            if watchdog.fired:
                raise no_answer(exc) from exc
            if failed is None:
                raise
            raise failed(exc) from exc


class StatementGuard:
    """One watchdog per statement on the migration connection."""

    def __init__(
        self, conn: Connection, statement_seconds: float | None, connect_seconds: float
    ) -> None:
        self.conn = conn
        self.bound_seconds = (statement_seconds or 0.0) + connect_seconds
        self._fired = False
        self._current: Watchdog | None = None
        self._followed: list[StatementGuard] = []

    @property
    def fired(self) -> bool:
        """Whether this guard (or one it follows) cut a statement off."""
        return self._fired or any(guard.fired for guard in self._followed)

    @property
    def can_cut(self) -> bool:
        """Whether this driver's socket can be reached, to cut a silent statement."""
        return socket_shutdown(self.conn) is not None

    def follow(self, other: StatementGuard) -> None:
        """Report ``other``'s cuts as this guard's (another connection of one run)."""
        self._followed.append(other)

    def before(self, *_args: Any) -> None:
        # A statement that raised never reached after(): disarm its watchdog here.
        self.disarm()
        self._current = Watchdog(self.conn, self.bound_seconds).__enter__()

    def after(self, *_args: Any) -> None:
        self.disarm()

    def disarm(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.__exit__()
            self._fired = self._fired or current.fired

    def explain(self) -> str | None:
        """Why the last statement failed, when the guard cut it off."""
        if not self.fired:
            return None
        return (
            f"the database did not answer a statement within {self.bound_seconds:g}s "
            "(SCHEMAD_STATEMENT_TIMEOUT_SECONDS + SCHEMAD_CONNECT_TIMEOUT_SECONDS); is "
            "the network, or a proxy in front of the database, dropping traffic?"
        )


def socket_shutdown(conn: Connection) -> Callable[[], None] | None:
    """How to cut the driver's socket: PyMySQL's object, psycopg's descriptor."""
    try:
        raw = conn.connection.dbapi_connection
    except SQLAlchemyError:
        return None
    sock = getattr(raw, "_sock", None)
    if isinstance(sock, socket.socket):
        return lambda: sock.shutdown(socket.SHUT_RDWR)
    pgconn = getattr(raw, "pgconn", None)
    fd = getattr(pgconn, "socket", None) if pgconn is not None else None
    if isinstance(fd, int) and fd >= 0:
        return lambda: _shutdown_fd(fd)
    return None


def _shutdown_fd(fd: int) -> None:
    # shutdown() acts on the socket, not on the descriptor: a duplicate
    # descriptor reaches it without closing the driver's own.
    with socket.socket(fileno=os.dup(fd)) as view:
        view.shutdown(socket.SHUT_RDWR)
