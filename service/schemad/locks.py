"""EDGE: the migration lock, one kind per database.

The lock lives on its own connection and is released by the database (or
the kernel, for SQLite) when the holder dies; there is never a lock row.

- PostgreSQL: a session advisory lock, polled with ``pg_try_advisory_lock``
  in autocommit so no transaction is open while waiting (a waiting
  transaction deadlocks ``CREATE INDEX CONCURRENTLY`` in the holder).
- MySQL/MariaDB: ``GET_LOCK`` named after the database, since lock names are
  server-wide.
- SQLite: ``flock`` on a file beside the database file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from schemad.engine import instance_name
from schemad.errors import DatabaseUnavailableError, LockNotNeeded, LockTimeoutError
from schemad.model import LockHolder

if TYPE_CHECKING:
    from schemad.database import Database

LOCK_POLL_SECONDS = 0.1
HOLDER_LOOKUP_SECONDS = 1.0
NEEDED_CHECK_SECONDS = 0.5
WaitCallback = Callable[[LockHolder | None, float], None]


class Lock:
    """One database's way of taking the migration lock, on its own session."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self.conn: Connection | None = None

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[bool]:
        """Open the lock's own connection; yields False when there is nothing
        to look at (a read-only look at a lock that was never taken)."""
        with self.db.connect() as conn:
            self.conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield True

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def holder(self) -> LockHolder | None:
        """Who holds the lock, as far as the database can tell."""
        raise NotImplementedError

    def current_holder(self) -> LockHolder | None:
        """Who holds it now, for a look from outside (``status``)."""
        return self.holder()

    def _scalar(self, sql: str, **params: Any) -> Any:
        return self._first(sql, **params)[0]

    def _first(self, sql: str, **params: Any) -> Any:
        assert self.conn is not None
        with self.db.exchange(self.conn, translate=False):
            row = self.conn.execute(sa.text(sql), params).first()
        return row if row is not None else (None,)


@contextmanager
def held(
    lock: Lock,
    wait_seconds: float,
    *,
    on_wait: WaitCallback | None = None,
    needed: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[float]:
    """Hold ``lock``; yields the seconds spent waiting for it.

    Args:
        lock: the database's lock.
        wait_seconds: how long another instance may keep it from us.
        on_wait: told who holds it, and for how long we waited, while waiting.
        needed: asked every ``NEEDED_CHECK_SECONDS`` while waiting; False
            (the holder did the work) ends the wait with LockNotNeeded.
        clock, sleep: injected for tests.

    Raises:
        LockNotNeeded: ``needed`` said the lock is no longer needed.
        LockTimeoutError: another instance held it for ``wait_seconds``.
        DatabaseUnavailableError: the database cannot be reached.
    """
    with lock.session():
        try:
            waited = _acquire(lock, wait_seconds, on_wait, needed, clock, sleep)
        except SQLAlchemyError as exc:
            raise lock.db.unavailable(exc) from exc
        try:
            yield waited
        finally:
            # If the session died, the server already dropped the lock.
            with suppress(SQLAlchemyError):
                lock.release()


def _acquire(
    lock: Lock,
    wait_seconds: float,
    on_wait: WaitCallback | None,
    needed: Callable[[], bool] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> float:
    started = checked = clock()
    deadline = started + wait_seconds
    holder: LockHolder | None = None
    looked = float("-inf")
    while not lock.try_acquire():
        now = clock()
        if needed is not None and now - checked >= NEEDED_CHECK_SECONDS:
            checked = now
            if not needed():
                raise LockNotNeeded(now - started)
        # Asking who holds the lock reads the server's lock table (on
        # PostgreSQL, pg_locks takes every lock partition): not on every
        # poll, or a crowd of waiters slows down the migration they wait for.
        if now - looked >= HOLDER_LOOKUP_SECONDS or now >= deadline:
            holder, looked = lock.holder(), now
        if now >= deadline:
            raise LockTimeoutError(
                f"the migration lock is still held by {_who(holder)} after "
                f"{wait_seconds:g}s (SCHEMAD_LOCK_WAIT_SECONDS); another "
                "instance is migrating. Retry later, or if the holder is "
                "gone for good see 'Breaking a stuck lock' in the README",
                holder=holder.description if holder else None,
            )
        if on_wait is not None:
            on_wait(holder, now - started)
        sleep(min(LOCK_POLL_SECONDS, max(deadline - now, 0.0)))
    return clock() - started


def _who(holder: LockHolder | None) -> str:
    if holder is None:
        return "another instance"
    if holder.held_seconds is None:
        return holder.description
    return f"{holder.description} (for {holder.held_seconds:.0f}s)"


class PostgresLock(Lock):
    """A session advisory lock keyed by a hash of the lock name."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        digest = hashlib.blake2b(database.lock_name().encode(), digest_size=8).digest()
        self.key = int.from_bytes(digest, "big", signed=True)

    def try_acquire(self) -> bool:
        return bool(self._scalar("SELECT pg_try_advisory_lock(:key)", key=self.key))

    def release(self) -> None:
        self._scalar("SELECT pg_advisory_unlock(:key)", key=self.key)

    def holder(self) -> LockHolder | None:
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        row = self._first(
            "SELECT a.pid, a.application_name, host(a.client_addr), "
            "EXTRACT(EPOCH FROM now() - a.state_change) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = CAST(CAST(:hi AS bigint) AS oid) "
            "AND l.objid = CAST(CAST(:lo AS bigint) AS oid) "
            "AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())",
            hi=unsigned >> 32,
            lo=unsigned & 0xFFFFFFFF,
        )
        if row[0] is None:
            return None
        pid, app, addr, idle = row
        name = app or "a client"
        return LockHolder(
            f"{name} (backend pid {pid}{', from ' + addr if addr else ''})",
            float(idle) if idle is not None else None,
        )


class MySQLLock(Lock):
    """``GET_LOCK`` on a name that includes the database (names are server-wide)."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        name = database.lock_name()
        if len(name) > 64:  # MySQL's limit on lock names
            name = "schemad:" + hashlib.sha256(name.encode()).hexdigest()[:56]
        self.name = name

    def try_acquire(self) -> bool:
        return bool(self._scalar("SELECT GET_LOCK(:name, 0)", name=self.name) == 1)

    def release(self) -> None:
        self._scalar("SELECT RELEASE_LOCK(:name)", name=self.name)

    def holder(self) -> LockHolder | None:
        row = self._first(
            "SELECT p.ID, p.HOST, p.TIME FROM information_schema.PROCESSLIST p "
            "WHERE p.ID = IS_USED_LOCK(:name)",
            name=self.name,
        )
        if row[0] is None:
            return None
        conn_id, host, idle = row
        return LockHolder(
            f"connection {conn_id} from {host}", float(idle) if idle is not None else None
        )


class FileLock(Lock):
    """``flock`` on ``<database file>.schemad-lock``, with a note for waiters."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.path = Path(f"{database.url.database}.schemad-lock")
        self.fd: int | None = None

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[bool]:
        try:
            if read_only:
                # A look from outside needs no write access: a missing lock
                # file was never taken, and a read descriptor can test flock.
                self.fd = os.open(self.path, os.O_RDONLY)
            else:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            if read_only:
                yield False
                return
            raise self._unopenable(FileNotFoundError()) from None
        except OSError as exc:
            raise self._unopenable(exc) from exc
        try:
            yield True
        finally:
            os.close(self.fd)
            self.fd = None

    def _unopenable(self, exc: OSError) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"cannot open the lock file {self.path}: {exc.strerror or 'no such file'}; "
            "schemad needs write access to the SQLite database's directory"
        )

    def try_acquire(self) -> bool:
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Not the lock itself (that is the flock): a note for waiters.
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{instance_name()} {time.time():.3f}\n".encode(), 0)
        return True

    def release(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def current_holder(self) -> LockHolder | None:
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return None

    def holder(self) -> LockHolder | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if not text:
            return None
        name, _, since = text.rpartition(" ")
        try:
            held = max(time.time() - float(since), 0.0)
        except ValueError:
            return LockHolder(text)
        return LockHolder(name, held)
