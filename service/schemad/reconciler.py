"""One reconcile pass: read -> plan -> lock -> re-read, re-plan -> apply ->
release -> verify -> Result.

Every error a pass can meet ends up in the Result (outcome and message);
only a bad configuration escapes as an exception, because that one must
stop the process. What a pass writes to the history goes through its
journal (:mod:`schemad.journal`); what it concludes from the history comes
from the pure :mod:`schemad.audit` over one read of it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from sqlalchemy.engine import Connection

from schemad import logs
from schemad.audit import (
    HistorySnapshot,
    explain_newer,
    find_tampered,
    newer_revisions,
    to_adopt,
)
from schemad.database import Database
from schemad.deadline import StatementGuard
from schemad.dialect import Fault
from schemad.errors import (
    ConfigError,
    DatabaseUnavailableError,
    LockNotNeeded,
    MigrationFailedError,
    PlanRejectedError,
    SchemadError,
)
from schemad.history import History
from schemad.index import IndexedScripts, fingerprint_changed
from schemad.journal import Journal, NullJournal
from schemad.locks import WaitCallback
from schemad.model import (
    DbState,
    Inspection,
    Layout,
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
from schemad.settings import Settings

if TYPE_CHECKING:
    from schemad.applier import Applied, StepObserver
    from schemad.drift import DriftReport
    from schemad.environment import Adopter
    from schemad.revisions import Scripts

_OUTCOME_OF_PLAN = {
    PlanKind.IN_SYNC: Outcome.IN_SYNC,
    PlanKind.AHEAD: Outcome.AHEAD,
    PlanKind.REFUSED: Outcome.REFUSED,
}
_LOCK_LOG_EVERY_SECONDS = 5.0
# A migrations directory changed this recently may still be receiving a file.
_SETTLE_NS = 2_000_000_000
ApplyFn = Callable[..., "Applied"]


class DatabaseLike(Protocol):
    """What a pass needs of the database (:class:`schemad.database.Database`)."""

    @property
    def transactional_ddl(self) -> bool: ...

    def read_state(self) -> DbState: ...

    def lock(
        self,
        wait_seconds: float,
        on_wait: WaitCallback | None = None,
        needed: Callable[[], bool] | None = None,
    ) -> AbstractContextManager[float]: ...

    def lock_holder(self) -> LockHolder | None: ...

    def migration_connection(self) -> Connection: ...

    def apply_session_timeouts(
        self,
        conn: Connection,
        *,
        lock_timeout_seconds: float | None,
        statement_timeout_seconds: float | None,
        async_commit: bool = False,
    ) -> list[str]: ...

    def statement_guard(
        self, conn: Connection, statement_timeout_seconds: float | None
    ) -> AbstractContextManager[StatementGuard]: ...

    def make_durable(self, conn: Connection) -> None: ...

    def explain_failure(self, exc: BaseException, partial: bool = False) -> str | None: ...

    def fault(self, exc: BaseException | None) -> Fault | None: ...

    def same_database(self, ours: Connection, theirs: Connection) -> bool: ...

    def adopt(self, theirs: Connection, resources: ExitStack) -> None: ...

    @property
    def version_table(self) -> str: ...

    @property
    def version_table_schema(self) -> str | None: ...

    def use_version_table(self, table: str, schema: str | None) -> None: ...

    def redact(self, text: str) -> str: ...


@dataclass(frozen=True)
class _Audited:
    """For these scripts and database heads the history has been read,
    checked and adopted: later passes need not read it again."""

    loaded_at_ns: int
    heads: tuple[str, ...]
    tampered: tuple[Tampered, ...]


class _Reads:
    """The history as one look (or one pass) read it: once for a given set
    of database heads, again only when the heads moved or on request."""

    def __init__(self, history: History | None, log: Any) -> None:
        self.history = history
        self.failed = False
        self.warned: set[str] = set()
        self._log = log
        self._snapshot: HistorySnapshot | None = None
        self._heads: tuple[str, ...] | None = None

    def snapshot(self, heads: tuple[str, ...], *, fresh: bool = False) -> HistorySnapshot:
        if self.history is None:
            return HistorySnapshot()
        if self._snapshot is None or fresh or heads != self._heads:
            try:
                self._snapshot, self.failed = self.history.snapshot(), False
            except DatabaseUnavailableError as exc:
                self._log.warning("history_unreadable", error=exc.message)
                self._snapshot, self.failed = HistorySnapshot(), True
            self._heads = heads
        return self._snapshot


@dataclass
class _Pass:
    """What one pass has learnt so far, for the Result."""

    run_id: str
    journal: NullJournal
    reads: _Reads
    plan: Plan | None = None
    heads_before: tuple[str, ...] = ()
    heads_after: tuple[str, ...] = ()
    lock_wait_seconds: float = 0.0
    lock_holder: LockHolder | None = None
    tampered: tuple[Tampered, ...] = ()
    newer: tuple[NewerRevision, ...] = ()
    last_lock_log: float = field(default=float("-inf"))

    def saw(self, inspection: Inspection) -> None:
        self.plan = inspection.plan
        self.tampered, self.newer = inspection.tampered, inspection.newer
        self.heads_before = self.heads_after = inspection.state.heads


class Reconciler:
    """Keeps one database at the target revision, one pass at a time."""

    def __init__(
        self,
        settings: Settings,
        database: DatabaseLike,
        load: Callable[[], Scripts | IndexedScripts],
        *,
        full_load: Callable[[], Scripts] | None = None,
        history: History | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        apply: ApplyFn | None = None,
        probe: Callable[[Scripts], Layout] | None = None,
    ) -> None:
        """A reconciler for one database.

        Args:
            settings: what the user configured.
            database: the database (its version table, lock and sessions).
            load: loads the scripts: from the index when it can, which keeps
                Alembic out of a pass that has nothing to do.
            full_load: loads them through Alembic, for a pass with work (when
                ``load`` may give the index).
            history: the audit history, or None when it is off.
            clock, wall_clock: injected for tests.
            apply: applies a plan (the applier's ``apply_plan``).
            probe: tells where env.py keeps the version table (a dry run of it).
        """
        self.settings = settings
        self.database = database
        self.history = history
        self.policy = Policy(
            allow_downgrade=settings.allow_downgrade,
            ignore_unknown_revisions=settings.on_unknown_revision == "ignore",
            block_on_tamper=settings.on_tamper == "block",
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._load = load
        self._full_load = full_load
        self._apply = apply
        self._probe = probe or self._probe_env_py
        self._layout: tuple[Scripts | IndexedScripts, Layout] | None = None
        self._adoption_logged = False
        self._should_stop: Callable[[], bool] | None = None
        self._on_lock_wait: WaitCallback | None = None
        self._scripts: Scripts | IndexedScripts | None = None
        self._audited: _Audited | None = None
        self._log = logs.get_logger("schemad.reconciler")
        # Read-only looks (`status`, each poll of `wait`) share one read of the
        # history until the database's heads move.
        self._looks = _Reads(history, self._log)

    def set_hooks(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_lock_wait: WaitCallback | None = None,
    ) -> None:
        """Let the daemon stop a pass between revisions and watch lock waits."""
        self._should_stop = should_stop
        self._on_lock_wait = on_lock_wait

    def scripts(self) -> Scripts | IndexedScripts:
        """The migration scripts, reloaded only when their files changed.

        Raises:
            ScriptError: the scripts cannot be loaded.
            ConfigError: a setting names a revision the scripts lack.
        """
        current = self._scripts
        if current is not None and not fingerprint_changed(
            current.fingerprint, loaded_at_ns=current.loaded_at_ns, settle_ns=_SETTLE_NS
        ):
            return current
        loaded = self._load()
        retry = self.settings.retry_interrupted
        if retry is not None and retry not in loaded.graph.revisions:
            raise ConfigError(
                f"SCHEMAD_RETRY_INTERRUPTED={retry}: no such revision in the migrations; "
                "name the revision the interrupted_revision refusal names, or unset it",
                variable="SCHEMAD_RETRY_INTERRUPTED",
            )
        unknown = sorted(self.settings.autocommit_revision_ids() - set(loaded.graph.revisions))
        if unknown:
            raise ConfigError(
                f"SCHEMAD_AUTOCOMMIT_REVISIONS names {', '.join(unknown)}, which the migrations "
                "do not contain; list full revision ids (`alembic history` shows them)",
                variable="SCHEMAD_AUTOCOMMIT_REVISIONS",
            )
        if current is not None:
            self._log.info(
                "scripts_reloaded",
                revisions=len(loaded.graph.revisions),
                heads=list(loaded.graph.heads),
            )
        self._scripts = loaded
        return loaded

    def ready_scripts(self) -> Scripts | IndexedScripts:
        """The scripts, with where env.py keeps the version table known.

        env.py is run once per load of the scripts, as ``alembic current``
        would run it (nothing written), before anything is read or locked.

        Raises:
            ScriptError: the scripts cannot be loaded, or env.py fails.
            ConfigError: env.py disagrees with an explicit version-table
                setting, or migrates another database.
            DatabaseUnavailableError: the database cannot be reached.
        """
        scripts = self.scripts()
        if self._layout is None or self._layout[0] is not scripts:
            # Indexed: read from env.py's source; else a dry run of env.py.
            layout = scripts.layout if isinstance(scripts, IndexedScripts) else self._probe(scripts)
            self.database.use_version_table(layout.version_table, layout.version_table_schema)
            if self.history is not None:
                self.history.use_schema(layout.version_table_schema)
            self._layout = (scripts, layout)
        return scripts

    def full_scripts(self) -> Scripts:
        """The scripts loaded through Alembic (leaving the index for good).

        Raises:
            ScriptError, ConfigError, DatabaseUnavailableError: as ready_scripts.
        """
        scripts = self.ready_scripts()
        if isinstance(scripts, IndexedScripts):
            assert self._full_load is not None, "an index without a way to the full scripts"
            self._load, self._full_load = self._full_load, None
            self._scripts = None
            scripts = self.ready_scripts()
        return cast("Scripts", scripts)

    def _probe_env_py(self, scripts: Scripts) -> Layout:
        from schemad.environment import probe

        explicit = bool({"version_table", "version_table_schema"} & self.settings.model_fields_set)
        return probe(
            scripts,
            cast(Database, self.database),
            version_table=self.settings.version_table,
            version_table_schema=self.settings.version_table_schema,
            explicit=explicit,
        )

    def inspect(self, *, locked: bool = False) -> Inspection:
        """Read the version table (and history) and plan, changing nothing.

        Args:
            locked: the caller holds the migration lock, so a revision the
                history shows as started but not finished is not being
                applied by anyone: it was interrupted. Without the lock it
                may simply be in progress elsewhere.

        Raises:
            ScriptError, DatabaseUnavailableError: as their names say.
        """
        return self._inspect(self.ready_scripts(), self._looks, locked=locked)

    def inspect_as_a_pass_would(self) -> Inspection:
        """The inspection a pass would make, for read-only commands.

        Where DDL is not transactional, a revision marked started but never
        finished was interrupted only if nobody is applying it: nobody holds
        the lock before the look, nor after it (else it may be running now,
        and the report says behind, as without history).

        Raises:
            ScriptError, DatabaseUnavailableError: as their names say.
        """
        if self.database.transactional_ddl and not self.settings.autocommit_revision_ids():
            return self.inspect()
        inspection = self.inspect(locked=self.database.lock_holder() is None)
        if (
            inspection.plan.reason is RefusalReason.INTERRUPTED_REVISION
            and self.database.lock_holder() is not None
        ):
            inspection = self.inspect()
        return inspection

    def _inspect(
        self, scripts: Scripts | IndexedScripts, reads: _Reads, *, locked: bool
    ) -> Inspection:
        target = scripts.resolve(self.settings.target_revision)
        state = self.database.read_state()
        # Before the tamper check, which then reuses this fresh read.
        interrupted = self._interrupted(state, reads) if locked else frozenset()
        tampered = self._tampered(scripts, state, reads)
        plan = make_plan(
            scripts.graph,
            state,
            target,
            self.policy,
            tampered=[t.revision for t in tampered],
            interrupted=interrupted,
        )
        newer: tuple[NewerRevision, ...] = ()
        if plan.reason is RefusalReason.UNKNOWN_REVISION or plan.kind is PlanKind.AHEAD:
            last_applied = reads.snapshot(state.heads).last_applied
            newer, landed = newer_revisions(state.heads, scripts.graph.revisions, last_applied)
            hint = explain_newer(newer, landed)
            if hint:
                plan = replace(plan, message=f"{plan.message}. {hint}")
        return Inspection(state, target, plan, tampered, newer)

    def _interrupted(self, state: DbState, reads: _Reads) -> frozenset[str]:
        """Revisions cut off half-way, read afresh: another instance may have
        marked one while we waited for the lock."""
        autocommit = self.settings.autocommit_revision_ids()
        if self.history is None or (self.database.transactional_ddl and not autocommit):
            return frozenset()
        found = reads.snapshot(state.heads, fresh=True).interrupted
        return frozenset(r for r in found if self._outside_transactions(r)) - {
            self.settings.retry_interrupted
        }

    def _tampered(
        self, scripts: Scripts | IndexedScripts, state: DbState, reads: _Reads
    ) -> tuple[Tampered, ...]:
        if self.history is None:
            return ()
        audited = self._audited_for(scripts, state)
        if audited is not None:
            return audited.tampered
        snapshot = reads.snapshot(state.heads)
        tampered = find_tampered(_applied(scripts, state), snapshot.recorded, scripts.checksums)
        for item in tampered:
            if item.revision in reads.warned:
                continue
            reads.warned.add(item.revision)
            self._log.warning(
                "revision_tampered",
                revision=item.revision,
                recorded_checksum=item.recorded_checksum,
                current_checksum=item.current_checksum,
                blocks_upgrades=self.policy.block_on_tamper,
            )
        return tampered

    def _adopt(self, scripts: Scripts | IndexedScripts, inspection: Inspection, run: _Pass) -> None:
        """Record checksums of applied revisions the history has not seen yet.

        With work pending only the lock holder adopts: a bystander would adopt
        revisions another instance is applying right now (and on SQLite its
        write makes that migration fail with "database is locked").
        """
        state = inspection.state
        if self.history is None or self._audited_for(scripts, state) is not None:
            return
        snapshot = run.reads.snapshot(state.heads)
        if run.reads.failed:
            return
        adoptable = to_adopt(_applied(scripts, state), snapshot.recorded, scripts.checksums)
        if run.journal.adopt(adoptable):
            self._audited = _Audited(scripts.loaded_at_ns, state.heads, inspection.tampered)

    def _audited_for(self, scripts: Scripts | IndexedScripts, state: DbState) -> _Audited | None:
        audited = self._audited
        if audited is None:
            return None
        if (audited.loaded_at_ns, audited.heads) != (scripts.loaded_at_ns, state.heads):
            return None
        return audited

    def check_drift(self) -> DriftReport:
        """Compare the live schema with what its revision(s) should produce.

        Raises:
            PlanRejectedError: the database is at a revision these scripts lack.
            DriftPermissionError: no privilege to create a scratch database.
            ScriptError, DatabaseUnavailableError, MigrationFailedError: as named.
        """
        scripts = self.full_scripts()
        state = self.database.read_state()
        unknown = [head for head in state.heads if head not in scripts.graph.revisions]
        if unknown:
            raise PlanRejectedError(
                f"database is at {', '.join(unknown)}, which these migrations do not "
                "contain, so the expected schema cannot be built; check drift with the "
                "image that contains it",
                reason=RefusalReason.UNKNOWN_REVISION.value,
            )
        exclude = {self.database.version_table, self.settings.history_table}
        # Drift reflects schemas through the engine: only a real Database has one.
        from schemad.drift import DriftChecker

        database = cast(Database, self.database)
        report = DriftChecker(database, exclude=exclude).check(scripts, state.heads)
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
        run = _Pass(run_id, NullJournal(run_id, log=self._log), _Reads(self.history, self._log))
        # Bound for the log lines of the pass (Alembic's too), never read back.
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            self._log.debug("reconcile_started", target=self.settings.target_revision)
            error: SchemadError | None = None
            try:
                outcome = self._run(run)
            except ConfigError:
                raise
            except SchemadError as exc:
                outcome, error = Outcome(exc.outcome), exc
            result = self._result(run, started_at, start, outcome, error)
            self._log_finished(result)
        return result

    def _run(self, run: _Pass) -> Outcome:
        # One set of scripts for the whole pass, however the files change meanwhile.
        scripts = self.ready_scripts()
        run.journal = self._journal(run.run_id, scripts)
        return self._look_then_lock(scripts, run)

    def _journal(self, run_id: str, scripts: Scripts | IndexedScripts) -> NullJournal:
        if self.history is None:
            return NullJournal(run_id, log=self._log, stop=self._should_stop)
        return Journal(
            run_id,
            history=self.history,
            scripts=scripts,
            log=self._log,
            redact=self.database.redact,
            stop=self._should_stop,
            outside_transactions=self._outside_transactions,
        )

    def _look_then_lock(self, scripts: Scripts | IndexedScripts, run: _Pass) -> Outcome:
        look = self._inspect(scripts, run.reads, locked=False)
        run.saw(look)
        if look.plan.has_work and isinstance(scripts, IndexedScripts):
            # Work to do: from here on the scripts as Alembic loads them.
            scripts = self.full_scripts()
            run.journal = self._journal(run.run_id, scripts)
            return self._look_then_lock(scripts, run)
        if not look.plan.has_work:
            self._adopt(scripts, look, run)
            return _OUTCOME_OF_PLAN[look.plan.kind]
        self._log.info(
            "plan_made",
            kind=look.plan.kind.value,
            pending=[step.revision for step in look.plan.steps],
        )
        try:
            with self.database.lock(
                self.settings.lock_wait_seconds,
                on_wait=self._lock_waiting(run),
                needed=self._still_needed(look.target),
            ) as waited:
                run.lock_wait_seconds = waited
                self._log.info("lock_acquired", wait_seconds=round(waited, 3))
                return self._apply_under_lock(cast("Scripts", scripts), run)
        except LockNotNeeded as done:
            # The holder brought the database to the target: look again as a
            # new pass would, instead of queueing for the lock only to find
            # nothing left to do (replicas then finish together, not in turn).
            self._log.info("lock_not_needed", wait_seconds=round(done.waited_seconds, 3))
            outcome = self._look_then_lock(scripts, run)
            run.lock_wait_seconds += done.waited_seconds
            return outcome

    def _still_needed(self, target: Target) -> Callable[[], bool]:
        wanted = set(target.revisions or ())

        def needed() -> bool:
            try:
                return set(self.database.read_state().heads) != wanted
            except SchemadError:
                return True  # the lock wait reports an outage itself

        return needed

    def _apply_under_lock(self, scripts: Scripts, run: _Pass) -> Outcome:
        # Someone may have migrated while we waited: plan again.
        look = self._inspect(scripts, run.reads, locked=True)
        self._adopt(scripts, look, run)
        run.saw(look)
        if not look.plan.has_work:
            return _OUTCOME_OF_PLAN[look.plan.kind]
        connection = self.database.migration_connection()
        guard = self.database.statement_guard(connection, self.settings.statement_timeout_seconds)
        watchdogs: StatementGuard | None = None
        try:
            for setting in self.database.apply_session_timeouts(
                connection,
                lock_timeout_seconds=self.settings.ddl_lock_timeout_seconds,
                statement_timeout_seconds=self.settings.statement_timeout_seconds,
                async_commit=self.settings.async_commit,
            ):
                self._log.warning("timeout_unsupported", setting=setting)
            one_transaction = self._bootstraps(look)
            run.journal.prepare(one_transaction=one_transaction)
            if one_transaction:
                self._log.info("bootstrap_in_one_transaction", revisions=len(look.plan.steps))
            with guard as watchdogs:
                applied = self._apply_steps(
                    scripts, look.plan, connection, run.journal, watchdogs, one_transaction
                )
            self._make_durable(connection)
        except MigrationFailedError as exc:
            # When the database stopped answering, more round trips would only
            # each wait out their own timeout: report what we know and go.
            if not (watchdogs and watchdogs.fired):
                self._make_durable(connection)
                run.heads_after = self._heads_or_unknown()
                run.journal.failed(exc)
            raise self._reclassified(exc) from exc.__cause__
        finally:
            connection.close()
        if applied.stopped:
            run.journal.stopped()
            run.heads_after = self._heads_or_unknown()
            self._log.warning(
                "reconcile_interrupted",
                steps_applied=len(applied.steps),
                steps_left=len(look.plan.steps) - len(applied.steps),
            )
            return Outcome.INTERRUPTED
        return self._verify(run, look.target)

    def _apply_steps(
        self,
        scripts: Scripts,
        plan: Plan,
        connection: Connection,
        observer: StepObserver,
        watchdogs: StatementGuard,
        one_transaction: bool = False,
    ) -> Applied:
        def explain(exc: BaseException, revision: str | None) -> str | None:
            partial = revision is not None and self._outside_transactions(revision)
            return watchdogs.explain() or self.database.explain_failure(exc, partial)

        apply = self._apply or _apply_plan()
        return apply(
            scripts,
            connection,
            plan,
            self.settings.target_revision,
            database=self.database,
            version_table=self.database.version_table,
            version_table_schema=self.database.version_table_schema,
            observer=observer,
            adopt=self._adopter(watchdogs),
            explain=explain,
            autocommit=self.settings.autocommit_revision_ids(),
            one_transaction=one_transaction,
            clock=self._clock,
        )

    def _bootstraps(self, look: Inspection) -> bool:
        """Whether this pass creates the schema of an empty database in one
        transaction: nothing else waits on a database that is being created,
        and a failure or a crash then leaves it empty, never half-made."""
        plan = look.plan
        return (
            self.settings.bootstrap_in_one_transaction
            and plan.kind is PlanKind.UPGRADE
            and not look.state.heads
            and self.database.transactional_ddl
            and not {step.revision for step in plan.steps} & self.settings.autocommit_revision_ids()
        )

    def _outside_transactions(self, revision: str) -> bool:
        """Whether a revision's statements commit one by one: on MySQL/MariaDB,
        or when SCHEMAD_AUTOCOMMIT_REVISIONS lists it."""
        return (
            not self.database.transactional_ddl
            or revision in self.settings.autocommit_revision_ids()
        )

    def _adopter(self, guard: StatementGuard) -> Adopter:
        """Put the migration session's settings on a connection env.py opened
        itself on this database, as on schemad's own."""

        def adopt(theirs: Connection, resources: ExitStack) -> None:
            database = self.database
            if not theirs.in_transaction():
                database.apply_session_timeouts(
                    theirs,
                    lock_timeout_seconds=self.settings.ddl_lock_timeout_seconds,
                    statement_timeout_seconds=self.settings.statement_timeout_seconds,
                    async_commit=self.settings.async_commit,
                )
            theirs_guard = resources.enter_context(
                database.statement_guard(theirs, self.settings.statement_timeout_seconds)
            )
            guard.follow(theirs_guard)
            database.adopt(theirs, resources)
            self._log_adoption(theirs, theirs_guard)

        return adopt

    def _log_adoption(self, theirs: Connection, guard: StatementGuard) -> None:
        if self._adoption_logged:
            return
        self._adoption_logged = True
        lost = ["SCHEMAD_CONNECT_TIMEOUT_SECONDS and TCP keepalives (env.py opens the connection)"]
        if self.settings.statement_timeout_seconds is not None and not guard.can_cut:
            lost.append("the client-side statement deadline (this driver's socket is hidden)")
        self._log.info(
            "env_connection_adopted",
            driver=theirs.dialect.driver,
            detail="env.py opens its own connection to this database; schemad gives it "
            "its session settings and one transaction per revision",
            not_applied=lost,
        )

    def _reclassified(self, exc: MigrationFailedError) -> SchemadError:
        """A failure that is not the revisions' fault, told as what it is.

        A version-table schema that does not exist is a configuration error
        (when env.py did not create it either); a database that refuses
        writes cannot be migrated by any revision.
        """
        fault = self.database.fault(exc.__cause__)
        schema = self.database.version_table_schema
        if fault is Fault.MISSING_SCHEMA and exc.revision is None and schema:
            return ConfigError(
                f"SCHEMAD_VERSION_TABLE_SCHEMA={schema}: the schema does not exist, so the "
                f"version table cannot be created there ({exc.message}); create the schema "
                "(or let env.py create it) or fix the setting",
                variable="SCHEMAD_VERSION_TABLE_SCHEMA",
            )
        if fault is Fault.READ_ONLY:
            return DatabaseUnavailableError(exc.message)
        return exc

    def _make_durable(self, connection: Connection) -> None:
        # With asynchronous commits, what the pass applied is on disk once this
        # returns. If it cannot be confirmed, the version table read next says
        # where the database is; a server crash loses only whole revisions.
        if not self.settings.async_commit:
            return
        try:
            self.database.make_durable(connection)
        except SchemadError as exc:
            self._log.warning("durable_commit_failed", error=exc.message)

    def _verify(self, run: _Pass, target: Target) -> Outcome:
        after = self.database.read_state()
        run.heads_after = after.heads
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

    def _lock_waiting(self, run: _Pass) -> WaitCallback:
        def waiting(holder: LockHolder | None, waited: float) -> None:
            run.lock_holder = holder
            if self._on_lock_wait is not None:
                self._on_lock_wait(holder, waited)
            now = self._clock()
            if now - run.last_lock_log >= _LOCK_LOG_EVERY_SECONDS:
                run.last_lock_log = now
                self._log.info(
                    "lock_waiting",
                    holder=holder.description if holder else None,
                    held_seconds=holder.held_seconds if holder else None,
                    waited_seconds=round(waited, 3),
                )

        return waiting

    def _result(
        self,
        run: _Pass,
        started_at: float,
        start: float,
        outcome: Outcome,
        error: SchemadError | None,
    ) -> Result:
        plan = run.plan
        message = error.message if error else (plan.message if plan else "")
        return Result(
            outcome=outcome,
            run_id=run.run_id,
            started_at=started_at,
            duration_seconds=self._clock() - start,
            target_spec=self.settings.target_revision,
            plan=plan,
            applied=tuple(run.journal.applied),
            heads_before=run.heads_before,
            heads_after=run.heads_after,
            lock_wait_seconds=run.lock_wait_seconds,
            lock_holder=run.lock_holder,
            error=self.database.redact(message) if (error or outcome is Outcome.REFUSED) else None,
            failed_revision=error.revision if isinstance(error, MigrationFailedError) else None,
            tampered=run.tampered,
            newer=run.newer,
            history_write_failures=run.journal.write_failures,
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


def _apply_plan() -> ApplyFn:
    # Imported when a pass has work: it brings Alembic in.
    from schemad.applier import apply_plan

    return apply_plan


def _applied(scripts: Scripts | IndexedScripts, state: DbState) -> frozenset[str]:
    """Every revision the database's known heads imply was applied."""
    graph = scripts.graph
    return ancestors(graph, [head for head in state.heads if head in graph.revisions])
