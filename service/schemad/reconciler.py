"""One reconcile pass: read -> plan -> lock -> re-read, re-plan -> apply ->
release -> verify -> Result.

Every error a pass can meet ends up in the Result (outcome, message, exit
code); only a bad configuration escapes as an exception, because that one
must stop the process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import structlog
from alembic.config import Config
from sqlalchemy.exc import SQLAlchemyError

from schemad import logs
from schemad.applier import Applied, InTransactionCallback, apply_plan
from schemad.audit import explain_newer, find_tampered, newer_revisions, to_adopt
from schemad.database import Database, LockNotNeeded, StatementGuard
from schemad.drift import DriftChecker, DriftReport
from schemad.errors import (
    ConfigError,
    DatabaseUnavailableError,
    LockTimeoutError,
    MigrationFailedError,
    PlanRejectedError,
    SchemadError,
    ScriptError,
)
from schemad.history import History, now
from schemad.model import (
    AppliedStep,
    DbState,
    LockHolder,
    NewerRevision,
    Outcome,
    Plan,
    PlanKind,
    Policy,
    RefusalReason,
    Result,
    Tampered,
    Target,
)
from schemad.planner import ancestors, make_plan
from schemad.revisions import Scripts, fingerprint_changed, load_scripts
from schemad.settings import Settings

_OUTCOME_OF_PLAN = {
    PlanKind.IN_SYNC: Outcome.IN_SYNC,
    PlanKind.AHEAD: Outcome.AHEAD,
    PlanKind.REFUSED: Outcome.REFUSED,
}
_OUTCOME_OF_ERROR: dict[type[SchemadError], Outcome] = {
    DatabaseUnavailableError: Outcome.UNAVAILABLE,
    LockTimeoutError: Outcome.LOCK_TIMEOUT,
    MigrationFailedError: Outcome.FAILED,
    ScriptError: Outcome.SCRIPT_ERROR,
}
_LOCK_LOG_EVERY_SECONDS = 5.0
# A migrations directory changed this recently may still be receiving a file.
_SETTLE_NS = 2_000_000_000


@dataclass(frozen=True)
class Inspection:
    """What the database and the scripts say now, without the lock."""

    state: DbState
    target: Target
    plan: Plan
    tampered: tuple[Tampered, ...] = ()
    newer: tuple[NewerRevision, ...] = ()


@dataclass(frozen=True)
class _Audit:
    """The last tamper check: what it looked at, what it found, and the
    history it read (with the pass that read it, for that pass's adoption)."""

    key: object
    tampered: tuple[Tampered, ...]
    recorded: dict[str, str]
    run_id: object


@dataclass
class _Pass:
    """What one pass has learnt so far, for the Result."""

    plan: Plan | None = None
    heads_before: tuple[str, ...] = ()
    heads_after: tuple[str, ...] = ()
    applied: list[AppliedStep] = field(default_factory=list)
    lock_wait_seconds: float = 0.0
    lock_holder: LockHolder | None = None
    tampered: tuple[Tampered, ...] = ()
    newer: tuple[NewerRevision, ...] = ()
    history_write_failures: int = 0
    started_rows: dict[str, int] = field(default_factory=dict)


class Reconciler:
    """Keeps one database at the target revision, one pass at a time."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        config: Config,
        *,
        history: History | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.database = database
        self.config = config
        self.history = history
        self.policy = Policy(
            allow_downgrade=settings.allow_downgrade,
            ignore_unknown_revisions=settings.on_unknown_revision == "ignore",
            block_on_tamper=settings.on_tamper == "block",
        )
        self._audit: _Audit | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._should_stop: Callable[[], bool] | None = None
        self._on_lock_wait: Callable[[LockHolder | None, float], None] | None = None
        self._scripts: Scripts | None = None
        self._log = logs.get_logger("schemad.reconciler")
        self._last_lock_log = float("-inf")

    def set_hooks(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_lock_wait: Callable[[LockHolder | None, float], None] | None = None,
    ) -> None:
        """Let the daemon stop a pass between revisions and watch lock waits."""
        self._should_stop = should_stop
        self._on_lock_wait = on_lock_wait

    def scripts(self) -> Scripts:
        """The migration scripts, reloaded only when their files changed.

        Raises:
            ScriptError: the scripts cannot be loaded.
        """
        current = self._scripts
        if current is not None and not fingerprint_changed(
            current.fingerprint, loaded_at_ns=current.loaded_at_ns, settle_ns=_SETTLE_NS
        ):
            return current
        loaded = load_scripts(self.config)
        if current is not None:
            self._log.info(
                "scripts_reloaded",
                revisions=len(loaded.graph.revisions),
                heads=list(loaded.graph.heads),
            )
        self._scripts = loaded
        return loaded

    def inspect(self, *, adopt: bool = False, locked: bool = False) -> Inspection:
        """Read the version table (and history) and plan, without the lock.

        Args:
            adopt: record checksums of applied revisions the history has not
                seen yet (a pass does; read-only commands do not).
            locked: the caller holds the migration lock, so a revision the
                history shows as started but not finished is not being
                applied by anyone: it was interrupted. Without the lock it
                may simply be in progress elsewhere.

        Raises:
            ScriptError, DatabaseUnavailableError: as their names say.
        """
        scripts = self.scripts()
        target = scripts.resolve(self.settings.target_revision)
        state = self.database.read_state()
        tampered = self._tampered(scripts, state, adopt=adopt)
        plan = make_plan(
            scripts.graph,
            state,
            target,
            self.policy,
            tampered=[t.revision for t in tampered],
            interrupted=self._interrupted() if locked else (),
        )
        newer: tuple[NewerRevision, ...] = ()
        if plan.reason is RefusalReason.UNKNOWN_REVISION or plan.kind is PlanKind.AHEAD:
            newer, hint = self._newer(scripts, state)
            if hint:
                plan = replace(plan, message=f"{plan.message}. {hint}")
        return Inspection(state, target, plan, tampered, newer)

    def _interrupted(self) -> set[str]:
        """Revisions cut off half-way where DDL is not transactional."""
        if self.history is None or self.database.transactional_ddl:
            return set()
        try:
            found = self.history.interrupted()
        except DatabaseUnavailableError as exc:
            self._log.warning("history_unreadable", error=exc.message)
            return set()
        return found - {self.settings.retry_interrupted}

    def _tampered(
        self, scripts: Scripts, state: DbState, *, adopt: bool, progress: _Pass | None = None
    ) -> tuple[Tampered, ...]:
        if self.history is None:
            return ()
        key = (scripts.loaded_at_ns, state.heads, adopt)
        looked, adopted = (*key[:2], False), (*key[:2], True)
        last = self._audit
        cached = last.key if last is not None else None
        # A look that adopted also answers a read-only one: nothing is left to adopt.
        if last is not None and cached in (key, adopted):
            return last.tampered
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        if last is not None and cached == looked and last.run_id == run_id:
            # A pass adopting right after its own look: the history it just
            # read is what it adopts against (one read of the table, not two).
            recorded = last.recorded
        else:
            try:
                recorded, _applied = self.history.summary()
            except DatabaseUnavailableError as exc:
                self._log.warning("history_unreadable", error=exc.message)
                return ()
        graph = scripts.graph
        applied = ancestors(graph, [h for h in state.heads if h in graph.revisions])
        tampered = find_tampered(applied, recorded, scripts.checksums)
        # Warn once per scripts and heads, not again when a pass adopts after looking.
        for item in () if cached in (looked, adopted) else tampered:
            self._log.warning(
                "revision_tampered",
                revision=item.revision,
                recorded_checksum=item.recorded_checksum,
                current_checksum=item.current_checksum,
                blocks_upgrades=self.policy.block_on_tamper,
            )
        adoptable = to_adopt(applied, recorded, scripts.checksums) if adopt else ()
        written = not adoptable or self._write_history(
            [self._adopted_row(scripts, r) for r in adoptable], progress
        )
        if adoptable and written:
            self._log.info("revisions_adopted", revisions=list(adoptable))
        # An adoption that could not be written is tried again by the next pass.
        self._audit = _Audit(key if written else looked, tampered, recorded, run_id)
        return tampered

    def _newer(self, scripts: Scripts, state: DbState) -> tuple[tuple[NewerRevision, ...], str]:
        if self.history is None:
            return (), ""
        try:
            _recorded, applied = self.history.summary()
        except DatabaseUnavailableError:
            return (), ""
        newer, landed = newer_revisions(state.heads, scripts.graph.revisions, applied)
        return newer, explain_newer(newer, landed)

    def _adopted_row(self, scripts: Scripts, revision: str) -> dict[str, Any]:
        return {
            "revision": revision,
            "parents": scripts.graph.revisions[revision].parents,
            "direction": "upgrade",
            "outcome": "adopted",
            "finished_at": now(),
            "checksum": scripts.checksums.get(revision),
        }

    def _write_history(self, rows: list[dict[str, Any]], progress: _Pass | None = None) -> bool:
        if self.history is None:
            return True
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        try:
            self.history.write([{**row, "run_id": run_id} for row in rows])
        except (SQLAlchemyError, SchemadError) as exc:
            self._history_failed(exc, progress, len(rows))
            return False
        return True

    def _history_failed(
        self, exc: SQLAlchemyError | SchemadError, progress: _Pass | None, rows: int
    ) -> None:
        if isinstance(exc, SchemadError):
            message = exc.message
        else:  # the driver's first line: the full statement adds nothing
            message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        self._log.error("history_write_failed", error=self.database.redact(message))
        if progress is not None:
            progress.history_write_failures += rows

    def check_drift(self) -> DriftReport:
        """Compare the live schema with what its revision(s) should produce.

        Raises:
            PlanRejectedError: the database is at a revision these scripts lack.
            DriftPermissionError: no privilege to create a scratch database.
            ScriptError, DatabaseUnavailableError, MigrationFailedError: as named.
        """
        scripts = self.scripts()
        state = self.database.read_state()
        unknown = [head for head in state.heads if head not in scripts.graph.revisions]
        if unknown:
            raise PlanRejectedError(
                f"database is at {', '.join(unknown)}, which these migrations do not "
                "contain, so the expected schema cannot be built; check drift with the "
                "image that contains it",
                reason=RefusalReason.UNKNOWN_REVISION.value,
            )
        exclude = {self.settings.version_table, self.settings.history_table}
        report = DriftChecker(self.database, exclude=exclude).check(scripts, state.heads)
        event = self._log.warning if report.drifted else self._log.info
        event(
            "drift_checked",
            revisions=list(report.revisions),
            drifted_objects=len(report.differences),
            differences=[d.describe() for d in report.differences],
        )
        return report

    def reconcile_once(self) -> Result:
        """Run one pass and report it; never raises but for a ConfigError.

        Raises:
            ConfigError: the configuration is wrong (e.g. env.py disagrees
                about the version table); the process should stop.
        """
        run_id = uuid.uuid4().hex[:12]
        started_at, start = self._wall_clock(), self._clock()
        progress = _Pass()
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            self._log.debug("reconcile_started", target=self.settings.target_revision)
            try:
                outcome = self._run(progress)
                error: SchemadError | None = None
            except ConfigError:
                raise
            except SchemadError as exc:
                outcome, error = _OUTCOME_OF_ERROR[type(exc)], exc
            result = self._result(run_id, started_at, start, progress, outcome, error)
            self._log_finished(result)
        return result

    def _run(self, progress: _Pass) -> Outcome:
        # Adopting writes history rows: with work pending, only the lock holder
        # may write, or a bystander adopts revisions that another instance is
        # applying right now (and on SQLite its write makes that migration fail
        # with "database is locked").
        inspection = self.inspect()
        progress.tampered, progress.newer = inspection.tampered, inspection.newer
        progress.plan = inspection.plan
        progress.heads_before = progress.heads_after = inspection.state.heads
        if not inspection.plan.has_work:
            self._tampered(self.scripts(), inspection.state, adopt=True, progress=progress)
            return _OUTCOME_OF_PLAN[inspection.plan.kind]
        self._log.info(
            "plan_made",
            kind=inspection.plan.kind.value,
            pending=[step.revision for step in inspection.plan.steps],
        )
        try:
            with self.database.lock(
                self.settings.lock_wait_seconds,
                on_wait=self._lock_waiting(progress),
                needed=self._still_needed(inspection.target),
            ) as waited:
                progress.lock_wait_seconds = waited
                self._log.info("lock_acquired", wait_seconds=round(waited, 3))
                return self._apply_under_lock(progress)
        except LockNotNeeded as done:
            # The holder brought the database to the target: look again as a
            # new pass would, instead of queueing for the lock only to find
            # nothing left to do (replicas then finish together, not in turn).
            self._log.info("lock_not_needed", wait_seconds=round(done.waited_seconds, 3))
            outcome = self._run(progress)
            progress.lock_wait_seconds += done.waited_seconds
            return outcome

    def _still_needed(self, target: Target) -> Callable[[], bool]:
        wanted = set(target.revisions or ())

        def needed() -> bool:
            try:
                return set(self.database.read_state().heads) != wanted
            except SchemadError:
                return True  # the lock wait reports an outage itself

        return needed

    def _apply_under_lock(self, progress: _Pass) -> Outcome:
        # Someone may have migrated while we waited: plan again.
        inspection = self.inspect(locked=True)
        self._tampered(self.scripts(), inspection.state, adopt=True, progress=progress)
        progress.tampered, progress.newer = inspection.tampered, inspection.newer
        progress.plan = inspection.plan
        progress.heads_before = progress.heads_after = inspection.state.heads
        if not inspection.plan.has_work:
            return _OUTCOME_OF_PLAN[inspection.plan.kind]
        connection = self.database.migration_connection()
        guard = self.database.statement_guard(connection, self.settings.statement_timeout_seconds)
        watchdogs: StatementGuard | None = None
        try:
            unsupported = self.database.apply_session_timeouts(
                connection,
                lock_timeout_seconds=self.settings.ddl_lock_timeout_seconds,
                statement_timeout_seconds=self.settings.statement_timeout_seconds,
                async_commit=self.settings.async_commit,
            )
            for setting in unsupported:
                self._log.warning("timeout_unsupported", setting=setting)
            self._prepare_history()
            with guard as watchdogs:
                applied = self._apply(inspection.plan, connection, progress, watchdogs)
            self._make_durable(connection)
        except MigrationFailedError as exc:
            # When the database stopped answering, more round trips would only
            # each wait out their own timeout: report what we know and go.
            if not (watchdogs and watchdogs.fired):
                self._make_durable(connection)
                progress.heads_after = self._heads_or_unknown()
                if exc.revision is not None:
                    self._record_failure(exc, progress)
            raise
        finally:
            connection.close()
        if applied.stopped:
            self._abandon_started(progress)
            progress.heads_after = self._heads_or_unknown()
            self._log.warning(
                "reconcile_interrupted",
                steps_applied=len(applied.steps),
                steps_left=len(inspection.plan.steps) - len(applied.steps),
            )
            return Outcome.INTERRUPTED
        return self._verify(progress, inspection.target)

    def _apply(
        self, plan: Plan, connection: Any, progress: _Pass, watchdogs: StatementGuard
    ) -> Applied:
        def explain(exc: BaseException) -> str | None:
            return watchdogs.explain() or self.database.explain_failure(exc)

        return apply_plan(
            self.scripts(),
            connection,
            plan,
            self.settings.target_revision,
            version_table=self.settings.version_table,
            version_table_schema=self.settings.version_table_schema,
            on_step=self._step_done(progress),
            should_stop=self._should_stop,
            on_start=self._step_started(progress),
            in_transaction=self._in_transaction(progress),
            explain=explain,
            clock=self._clock,
        )

    def _make_durable(self, connection: Any) -> None:
        # With asynchronous commits, what the pass applied is on disk once this
        # returns. If it cannot be confirmed, the version table read next says
        # where the database is; a server crash loses only whole revisions.
        if not self.settings.async_commit:
            return
        try:
            self.database.make_durable(connection)
        except SchemadError as exc:
            self._log.warning("durable_commit_failed", error=exc.message)

    def _verify(self, progress: _Pass, target: Target) -> Outcome:
        after = self.database.read_state()
        progress.heads_after = after.heads
        wanted = tuple(sorted(target.revisions or ()))
        if tuple(sorted(after.heads)) != wanted:
            raise MigrationFailedError(
                f"after applying, the version table says {list(after.heads)} instead of "
                f"the target {list(wanted)}; check the revisions' upgrade() functions",
                revision=None,
            )
        return Outcome.APPLIED

    def _heads_or_unknown(self) -> tuple[str, ...]:
        try:
            return self.database.read_state().heads
        except SchemadError:
            return ()

    def _record_failure(self, exc: MigrationFailedError, progress: _Pass) -> None:
        row = self._history_row(
            exc.revision or "",
            exc.direction or "upgrade",
            "failed",
            exc.duration_seconds,
            error=exc.message,
        )
        self._save_history(row, progress)

    def _step_started(self, progress: _Pass) -> Callable[[str, str], None] | None:
        # Only where DDL is not transactional: there a revision cut off half-way
        # may have left changes behind, and this row is how the next pass knows.
        if self.history is None or self.database.transactional_ddl:
            return None

        def mark(revision: str, direction: str) -> None:
            if revision in progress.started_rows:  # marked with the previous revision
                return
            row = self._history_row(revision, direction, "started", None)
            try:
                progress.started_rows[revision] = self.history.start(row)  # type: ignore[union-attr]
            except (SQLAlchemyError, SchemadError) as exc:
                self._history_failed(exc, progress, 1)

        return mark

    def _prepare_history(self) -> None:
        # Rows are written inside the revisions' transactions, where creating
        # the table would be too late (and not transactional everywhere).
        if self.history is None:
            return
        try:
            self.history.ensure_table()
        except SchemadError as exc:
            self._history_failed(exc, None, 0)

    def _in_transaction(self, progress: _Pass) -> InTransactionCallback | None:
        if self.history is None:
            return None
        history = self.history

        def record(
            conn: Any, revision: str, direction: str, seconds: float, following: str | None
        ) -> None:
            row = self._history_row(revision, direction, "applied", seconds)
            started = progress.started_rows.pop(revision, None)
            try:
                history.record_in(conn, row, started_id=started)
            except (SQLAlchemyError, SchemadError) as exc:
                self._history_failed(exc, progress, 1)
            if following is not None and not self.database.transactional_ddl:
                # The next revision's "started" mark commits with this one,
                # saving it a connection and a commit of its own.
                self._start_in(conn, following, direction, progress)

        return record

    def _start_in(self, conn: Any, revision: str, direction: str, progress: _Pass) -> None:
        if self.history is None:
            return
        row = self._history_row(revision, direction, "started", None)
        try:
            progress.started_rows[revision] = self.history.start_in(conn, row)
        except (SQLAlchemyError, SchemadError):
            # Not fatal: the revision marks itself when it starts.
            progress.started_rows.pop(revision, None)

    def _abandon_started(self, progress: _Pass) -> None:
        # A pass stopped between revisions may leave the next one marked as
        # started although it never ran: say so, or it would look interrupted.
        for revision, row_id in list(progress.started_rows.items()):
            row = {**self._history_row(revision, "upgrade", "not_started", None)}
            row.pop("direction")
            try:
                if self.history is not None:
                    self.history.finish(row_id, row)
            except (SQLAlchemyError, SchemadError) as exc:
                self._history_failed(exc, progress, 1)
        progress.started_rows.clear()

    def _step_done(self, progress: _Pass) -> Callable[[AppliedStep], None]:
        def record(step: AppliedStep) -> None:
            progress.applied.append(step)
            self._log.info(
                "migration_applied",
                revision=step.revision,
                message=step.message,
                direction=step.direction,
                duration_seconds=round(step.duration_seconds, 4),
            )

        return record

    def _history_row(
        self,
        revision: str,
        direction: str,
        outcome: str,
        duration: float | None,
        *,
        error: str | None = None,
    ) -> dict[str, Any]:
        # The scripts this pass planned with: no reload (and no stat) per revision.
        scripts = self._scripts if self._scripts is not None else self.scripts()
        known = scripts.graph.revisions.get(revision)
        finished = now()
        return {
            "revision": revision,
            "parents": known.parents if known else (),
            "direction": direction,
            "outcome": outcome,
            "started_at": finished - timedelta(seconds=duration or 0),
            "finished_at": None if outcome == "started" else finished,
            "duration_seconds": duration,
            "error": error,
            "checksum": scripts.checksums.get(revision),
            "run_id": structlog.contextvars.get_contextvars().get("run_id"),
        }

    def _save_history(self, row: dict[str, Any], progress: _Pass) -> None:
        started = progress.started_rows.pop(row["revision"], None)
        if started is None or self.history is None:
            self._write_history([row], progress)
            return
        try:
            self.history.finish(started, row)
        except (SQLAlchemyError, SchemadError) as exc:
            self._history_failed(exc, progress, 1)

    def _lock_waiting(self, progress: _Pass) -> Callable[[LockHolder | None, float], None]:
        def waiting(holder: LockHolder | None, waited: float) -> None:
            progress.lock_holder = holder
            if self._on_lock_wait is not None:
                self._on_lock_wait(holder, waited)
            now = self._clock()
            if now - self._last_lock_log >= _LOCK_LOG_EVERY_SECONDS:
                self._last_lock_log = now
                self._log.info(
                    "lock_waiting",
                    holder=holder.description if holder else None,
                    held_seconds=holder.held_seconds if holder else None,
                    waited_seconds=round(waited, 3),
                )

        return waiting

    def _result(
        self,
        run_id: str,
        started_at: float,
        start: float,
        progress: _Pass,
        outcome: Outcome,
        error: SchemadError | None,
    ) -> Result:
        plan = progress.plan
        message = error.message if error else (plan.message if plan else "")
        exit_code = error.exit_code if error else (65 if outcome is Outcome.REFUSED else 0)
        return Result(
            outcome=outcome,
            run_id=run_id,
            started_at=started_at,
            duration_seconds=self._clock() - start,
            target_spec=self.settings.target_revision,
            plan=plan,
            applied=tuple(progress.applied),
            heads_before=progress.heads_before,
            heads_after=progress.heads_after,
            lock_wait_seconds=progress.lock_wait_seconds,
            lock_holder=progress.lock_holder,
            error=self.database.redact(message) if (error or outcome is Outcome.REFUSED) else None,
            exit_code=exit_code,
            tampered=progress.tampered,
            newer=progress.newer,
            history_write_failures=progress.history_write_failures,
        )

    def _log_finished(self, result: Result) -> None:
        fields: dict[str, Any] = {
            "outcome": result.outcome.value,
            "steps_applied": len(result.applied),
            "from_revision": ",".join(result.heads_before) or None,
            "to_revision": ",".join(result.heads_after) or None,
            "target": result.target_spec,
            "duration_seconds": round(result.duration_seconds, 4),
        }
        if result.plan is not None and result.plan.reason is not None:
            fields["reason"] = result.plan.reason.value
        if result.outcome is Outcome.AHEAD and result.plan is not None:
            fields["detail"] = result.plan.message
        if result.error:
            fields["error"] = result.error
            self._log.error("reconcile_finished", **fields)
        elif result.outcome is Outcome.AHEAD:
            self._log.warning("reconcile_finished", **fields)
        else:
            self._log.info("reconcile_finished", **fields)
