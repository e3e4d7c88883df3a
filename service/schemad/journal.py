"""The journal of one pass: what it applied, and the history rows it writes.

A journal is the pass's :class:`~schemad.applier.StepObserver`: it collects
the committed revisions, logs each one, and answers "should we stop?". The
:class:`Journal` also keeps the history table in step with the revisions;
:class:`NullJournal` is the same pass with the history turned off.

Where DDL is not transactional (MySQL/MariaDB) a revision is marked
"started" before it runs, so a revision cut off half-way can be told apart
from one never begun; the next revision's mark commits with the previous
revision, saving it a connection and a commit of its own. A history write
that fails is logged and counted, never raised: the migration stands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from schemad.errors import MigrationFailedError, SchemadError, first_line
from schemad.history import Entry, History, now
from schemad.model import AppliedStep, Direction, HistoryOutcome

if TYPE_CHECKING:
    from schemad.index import IndexedScripts
    from schemad.revisions import Scripts


class NullJournal:
    """A pass's journal without a history table: the applied steps and logs."""

    def __init__(self, run_id: str, *, log: Any, stop: Callable[[], bool] | None = None) -> None:
        self.run_id = run_id
        self.applied: list[AppliedStep] = []
        self.write_failures = 0
        self._log = log
        self._stop = stop

    def prepare(self, *, one_transaction: bool = False) -> None:
        """Before applying: make sure rows can be written inside revisions.

        ``one_transaction``: every revision runs in one transaction (a
        bootstrap), so their rows can wait and go in together before it
        commits (:meth:`before_commit`).
        """

    def adopt(self, revisions: Sequence[str]) -> bool:
        """Record the checksums of applied revisions the history has not seen.

        Returns:
            Whether the rows were written (a failure is retried by a later pass).
        """
        return True

    def failed(self, exc: MigrationFailedError) -> None:
        """Record a revision that raised."""

    def stopped(self) -> None:
        """A graceful stop ended the pass between revisions."""

    def started(self, revision: str, direction: Direction) -> None:
        return None

    def in_transaction(
        self,
        conn: Connection,
        revision: str,
        direction: Direction,
        seconds: float,
        following: str | None,
    ) -> None:
        return None

    def before_commit(self, conn: Connection) -> None:
        return None

    def committed(self, step: AppliedStep) -> None:
        self.applied.append(step)
        self._log.info(
            "migration_applied",
            revision=step.revision,
            message=step.message,
            direction=str(step.direction),
            duration_seconds=round(step.duration_seconds, 4),
        )

    def should_stop(self) -> bool:
        return self._stop is not None and self._stop()


class Journal(NullJournal):
    """A pass's journal that writes the history table as revisions go."""

    def __init__(
        self,
        run_id: str,
        *,
        history: History,
        scripts: Scripts | IndexedScripts,
        log: Any,
        redact: Callable[[str], str],
        stop: Callable[[], bool] | None = None,
        outside_transactions: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(run_id, log=log, stop=stop)
        self.history = history
        self._scripts = scripts
        self._redact = redact
        # A revision whose statements commit one by one is marked started, so
        # that one cut off half-way is told apart from one never begun.
        self._mark_started = outside_transactions or (
            lambda _revision: not history.database.transactional_ddl
        )
        self._started: dict[str, tuple[int, Direction]] = {}
        # Rows of revisions applied before the table's schema existed.
        self._unwritten: list[Entry] = []
        self._deferred = False
        # Rows of a run in one transaction, written together before it commits.
        self._batch: list[Entry] | None = None

    def prepare(self, *, one_transaction: bool = False) -> None:
        self._batch = [] if one_transaction else None
        # Rows are written inside the revisions' transactions, where creating
        # the table would be too late (and not transactional everywhere). A
        # schema that does not exist yet is env.py's to create: the table
        # follows once the first revision has committed.
        try:
            self._deferred = not self.history.ensure_table()
        except SchemadError as exc:
            self._write_failed(exc, 0)

    def adopt(self, revisions: Sequence[str]) -> bool:
        if not revisions:
            return True
        entries = [
            self._entry(revision, Direction.UPGRADE, HistoryOutcome.ADOPTED, finished=True)
            for revision in revisions
        ]
        if not self._write(lambda: self.history.write(entries), len(entries)):
            return False
        self._log.info("revisions_adopted", revisions=list(revisions))
        return True

    def failed(self, exc: MigrationFailedError) -> None:
        if exc.revision is None:
            return
        entry = self._entry(
            exc.revision,
            Direction(exc.direction or Direction.UPGRADE),
            HistoryOutcome.FAILED,
            seconds=exc.duration_seconds,
            error=exc.message,
        )
        started = self._started.pop(exc.revision, None)
        if started is None:
            self._write(lambda: self.history.write([entry]), 1)
        else:
            self._write(lambda: self.history.finish(started[0], entry), 1)

    def stopped(self) -> None:
        # A pass stopped between revisions may leave the next one marked as
        # started although it never ran: say so, or it would look interrupted.
        for revision, (row_id, direction) in list(self._started.items()):
            entry = self._entry(revision, direction, HistoryOutcome.NOT_STARTED)
            self._write(partial(self.history.finish, row_id, entry), 1)
        self._started.clear()

    def started(self, revision: str, direction: Direction) -> None:
        # Only where DDL is not transactional: there a revision cut off half-way
        # may have left changes behind, and this row is how the next pass knows.
        if not self._mark_started(revision) or revision in self._started or self._deferred:
            return
        entry = self._entry(revision, direction, HistoryOutcome.STARTED, finished=False)
        try:
            self._started[revision] = (self.history.start(entry), direction)
        except (SQLAlchemyError, SchemadError) as exc:
            self._write_failed(exc, 1)

    def in_transaction(
        self,
        conn: Connection,
        revision: str,
        direction: Direction,
        seconds: float,
        following: str | None,
    ) -> None:
        entry = self._entry(revision, direction, HistoryOutcome.APPLIED, seconds=seconds)
        if self._deferred:
            self._unwritten.append(entry)
            return
        if self._batch is not None:
            self._batch.append(entry)
            return
        started = self._started.pop(revision, None)
        started_id = started[0] if started else None
        self._write(lambda: self.history.record_in(conn, entry, started_id=started_id), 1)
        if following is not None and self._mark_started(following):
            # The next revision's "started" mark commits with this one.
            mark = self._entry(following, direction, HistoryOutcome.STARTED, finished=False)
            try:
                self._started[following] = (self.history.start_in(conn, mark), direction)
            except (SQLAlchemyError, SchemadError):
                # Not fatal: the revision marks itself when it starts.
                self._started.pop(following, None)

    def before_commit(self, conn: Connection) -> None:
        # One statement (one savepoint on PostgreSQL) for every row of the
        # run; they commit with the revisions, or not at all.
        if self._batch:
            entries, self._batch = self._batch, []
            self._write(lambda: self.history.record_many_in(conn, entries), len(entries))

    def committed(self, step: AppliedStep) -> None:
        super().committed(step)
        if not self._deferred:
            return
        try:
            self._deferred = not self.history.ensure_table()
        except SchemadError as exc:
            self._deferred = False
            self._write_failed(exc, len(self._unwritten))
            self._unwritten.clear()
            return
        if not self._deferred:
            entries, self._unwritten = self._unwritten, []
            self._write(lambda: self.history.write(entries), len(entries))

    def _entry(
        self,
        revision: str,
        direction: Direction,
        outcome: HistoryOutcome,
        *,
        seconds: float | None = None,
        error: str | None = None,
        finished: bool = True,
    ) -> Entry:
        known = self._scripts.graph.revisions.get(revision)
        finished_at = now()
        return Entry(
            revision=revision,
            direction=direction,
            outcome=outcome,
            parents=known.parents if known else (),
            checksum=self._scripts.checksums.get(revision),
            run_id=self.run_id,
            started_at=finished_at - timedelta(seconds=seconds or 0),
            finished_at=finished_at if finished else None,
            duration_seconds=seconds,
            error=error,
        )

    def _write(self, write: Callable[[], object], rows: int) -> bool:
        try:
            write()
        except (SQLAlchemyError, SchemadError) as exc:
            self._write_failed(exc, rows)
            return False
        return True

    def _write_failed(self, exc: SQLAlchemyError | SchemadError, rows: int) -> None:
        message = exc.message if isinstance(exc, SchemadError) else first_line(exc)
        self._log.error("history_write_failed", error=self._redact(message))
        self.write_failures += rows
