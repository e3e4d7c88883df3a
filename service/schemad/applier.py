"""EDGE: runs a plan's steps through Alembic and the project's own env.py.

schemad does what ``alembic upgrade`` does (an EnvironmentContext whose work
function returns Alembic's own steps, then ``env.py``), with three changes
made in ``configure()`` so that any env.py gets them:

- ``transaction_per_migration=True``: each revision commits together with
  its version-table update, so a crash leaves the database exactly at the
  last completed revision (on databases with transactional DDL);
- a version table that env.py names differently from the settings is an
  error, not a silent second history;
- each step is timed and reported as soon as it has committed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from alembic import context as alembic_context
from alembic.runtime.migration import MigrationStep
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from schemad.database import Database

from schemad.environment import Adopter, EnvRun, env_advice, run_env
from schemad.errors import (
    MigrationFailedError,
    PlanRejectedError,
    SchemadError,
    ScriptError,
    first_line,
)
from schemad.model import AppliedStep, Direction, Plan, PlanKind
from schemad.revisions import Scripts


class StepObserver(Protocol):
    """Told about each revision of a run, and asked whether to go on."""

    def started(self, revision: str, direction: Direction) -> None:
        """Before the revision runs (outside its transaction)."""

    def in_transaction(
        self,
        conn: Connection,
        revision: str,
        direction: Direction,
        seconds: float,
        following: str | None,
    ) -> None:
        """Inside the revision's transaction, after its version-table update
        and before its commit; ``following`` is the revision Alembic runs next."""

    def committed(self, step: AppliedStep) -> None:
        """After the revision's transaction has committed."""

    def before_commit(self, conn: Connection) -> None:
        """Inside a run's one transaction (a bootstrap), after its last
        revision or a graceful stop, just before the transaction commits."""

    def should_stop(self) -> bool:
        """Asked before each revision; True ends the run (a graceful stop)."""


@dataclass(frozen=True)
class Applied:
    """What a run committed, and whether a shutdown ended it early."""

    steps: tuple[AppliedStep, ...]
    stopped: bool


class _Run:
    """The state of one application of a plan: which step, what finished."""

    def __init__(
        self, observer: StepObserver, clock: Callable[[], float], autocommit: Collection[str] = ()
    ) -> None:
        self.observer = observer
        self.clock = clock
        self.autocommit = frozenset(autocommit)
        self.env: EnvRun | None = None
        self.stopped = False
        self.current_started = 0.0
        self.current: MigrationStep | None = None
        self._steps: list[MigrationStep] = []
        self._position = 0
        self.applied: list[AppliedStep] = []
        # Steps done inside a transaction env.py opened itself: committed only
        # when env.py commits, so announced then.
        self._uncommitted: list[AppliedStep] = []
        # The primary database's connection, as the last revision saw it.
        self._connection: Connection | None = None

    def version_applied(self, *, ctx: Any, **_kwargs: Any) -> None:
        """An Alembic ``on_version_apply`` hook: hands the step's connection
        to the observer, still inside the step's transaction."""
        step = self.current
        if step is None or not self._primary(ctx):
            return  # another database of a multidb env.py follows along
        elapsed = self.clock() - self.current_started
        self._connection = ctx.connection
        self.observer.in_transaction(
            ctx.connection, _revision_of(step), _direction_of(step), elapsed, self._next()
        )

    def _primary(self, context: Any) -> bool:
        return self.env is None or self.env.is_primary(context)

    def _next(self) -> str | None:
        """The revision Alembic runs after the current one, if any."""
        index = self._position + 1
        return _revision_of(self._steps[index]) if index < len(self._steps) else None

    def steps_for(self, steps: list[MigrationStep], context: Any) -> Iterable[MigrationStep]:
        """The primary database's steps, timed and told; another's, as they are."""
        if not self._primary(context):
            return steps
        return self.timed(steps)

    def timed(self, steps: Iterable[MigrationStep]) -> Iterator[MigrationStep]:
        # Alembic pulls the next step only after the previous one's
        # transaction has committed, so resuming here marks that commit.
        self._steps = list(steps)
        # Inside one transaction for all (env.py's own, or a bootstrap), a step
        # is committed only when the run ends.
        external = self.env is not None and (
            self.env.external_transaction or self.env.one_transaction
        )
        for position, step in enumerate(self._steps):
            self._position = position
            if self.observer.should_stop():
                # Ends Alembic's loop cleanly: what has committed stays.
                self.stopped = True
                self._ending()
                return
            self.current = step
            self.observer.started(_revision_of(step), _direction_of(step))
            started = self.current_started = self.clock()
            with self._outside_a_transaction(step):
                yield step
            done = AppliedStep(
                revision=_revision_of(step),
                message=_message_of(step),
                direction=_direction_of(step),
                duration_seconds=self.clock() - started,
            )
            self.current = None
            if external:
                self._uncommitted.append(done)
            else:
                self.applied.append(done)
                self.observer.committed(done)
        self._ending()

    def _ending(self) -> None:
        # Alembic asks for no more steps: inside one transaction for all, it
        # commits next. Not reached when a step raised (it rolls back).
        if self.env is not None and self.env.one_transaction and self._connection is not None:
            self.observer.before_commit(self._connection)

    @contextmanager
    def _outside_a_transaction(self, step: MigrationStep) -> Iterator[None]:
        """Run a listed revision's function in Alembic's autocommit block.

        The step's function is swapped for the time of the step, so that a
        revision nobody may edit (a third-party package's) runs as if it used
        ``op.get_context().autocommit_block()`` itself.
        """
        if _revision_of(step) not in self.autocommit:
            yield
            return
        original = step.migration_fn

        @functools.wraps(original)
        def outside(*args: Any, **kwargs: Any) -> Any:
            with alembic_context.get_context().autocommit_block():
                return original(*args, **kwargs)

        step.migration_fn = outside
        try:
            yield
        finally:
            step.migration_fn = original

    def env_committed(self) -> None:
        """env.py's own transaction committed: its steps are applied now."""
        for done in self._uncommitted:
            self.applied.append(done)
            self.observer.committed(done)
        self._uncommitted.clear()


class _Rendering:
    """The observer of offline SQL: nothing is committed, nothing stops it."""

    def started(self, revision: str, direction: Direction) -> None:
        return None

    def in_transaction(self, *_args: Any) -> None:
        return None

    def committed(self, step: AppliedStep) -> None:
        return None

    def before_commit(self, conn: Connection) -> None:
        return None

    def should_stop(self) -> bool:
        return False


def apply_plan(
    scripts: Scripts,
    connection: Connection,
    plan: Plan,
    destination: str,
    *,
    database: Database,
    version_table: str,
    version_table_schema: str | None,
    observer: StepObserver,
    adopt: Adopter | None = None,
    explain: Callable[[BaseException, str | None], str | None] | None = None,
    autocommit: Collection[str] = (),
    one_transaction: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Applied:
    """Apply ``plan`` on ``connection``, one committed revision at a time.

    Args:
        scripts: the loaded migration scripts.
        connection: a connection with no transaction begun (see DESIGN.md).
        plan: an upgrade or downgrade plan made under the lock.
        destination: the target spec as Alembic understands it.
        database: the database ``connection`` is on (to recognise env.py's
            own connections to it).
        version_table: the version table schemad reads.
        version_table_schema: its schema, if not the default.
        observer: told about each revision, asked before each whether to stop.
        adopt: puts schemad's session settings on a connection env.py opened
            itself on the same database.
        explain: the database's reading of a failure (e.g. which safety
            timeout fired), told which revision was running, if any.
        autocommit: revisions to run outside a transaction (each statement
            commits on its own), for statements such as CREATE INDEX
            CONCURRENTLY in revisions that cannot be edited.
        one_transaction: every revision in one transaction (an empty database
            with transactional DDL): a failure or a crash leaves it empty.
        clock: a monotonic clock, for durations.

    Returns:
        The committed steps, in order, and whether the observer ended the
        run before all of them.

    Raises:
        MigrationFailedError: a revision raised (earlier steps stay committed),
            or the database refused what env.py or Alembic asked of it.
        ScriptError: env.py failed before any revision ran.
        ConfigError: env.py configures a different version table, or migrates
            another database.
    """
    if plan.kind not in (PlanKind.UPGRADE, PlanKind.DOWNGRADE):
        return Applied((), stopped=False)
    run = _Run(observer, clock, autocommit)
    env = EnvRun(
        scripts,
        database,
        connection,
        version_table,
        version_table_schema,
        adopt=adopt,
        on_version_apply=run.version_applied,
        one_transaction=one_transaction,
    )
    run.env = env
    environment = env.environment(
        fn=_work(scripts, plan, destination, run), destination_rev=destination
    )
    try:
        run_env(env, environment)
    except (SchemadError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # a revision's own code may raise anything, sys.exit() too
        revision = _revision_of(run.current) if run.current is not None else None
        raise _failure(run, exc, explain(exc, revision) if explain else None) from exc
    finally:
        if connection.in_transaction():
            connection.rollback()
    env.layout()  # env.py migrated schemad's database (or it says which it did)
    run.env_committed()
    return Applied(tuple(run.applied), stopped=run.stopped)


def render_sql(
    scripts: Scripts,
    plan: Plan,
    destination: str,
    out: TextIO,
    *,
    database: Database,
    version_table: str,
    version_table_schema: str | None,
) -> None:
    """Write the SQL that applying ``plan`` would run (Alembic's offline mode).

    Raises:
        PlanRejectedError: the database has several heads (offline SQL needs one
            starting revision).
        MigrationFailedError: env.py or a revision failed while rendering.
    """
    if plan.kind not in (PlanKind.UPGRADE, PlanKind.DOWNGRADE):
        return
    if len(plan.current) > 1:
        raise PlanRejectedError(
            "offline SQL needs one starting revision but the database has "
            f"{len(plan.current)} heads; run `schemad upgrade` or render per branch "
            "with `alembic upgrade <from>:<to> --sql`",
            reason="multiple_heads",
        )
    config = scripts.config
    previous, config.output_buffer = config.output_buffer, out
    env = EnvRun(scripts, database, None, version_table, version_table_schema)
    environment = env.environment(
        fn=_work(scripts, plan, destination, _Run(_Rendering(), time.monotonic)),
        as_sql=True,
        starting_rev=plan.current[0] if plan.current else None,
        destination_rev=destination,
    )
    try:
        run_env(env, environment)
    except (SchemadError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        raise MigrationFailedError(
            f"rendering offline SQL failed: {first_line(exc)}", revision=None
        ) from exc
    finally:
        config.output_buffer = previous


def _work(
    scripts: Scripts, plan: Plan, destination: str, run: _Run
) -> Callable[[Any, Any], Iterable[MigrationStep]]:
    directory = scripts.directory
    planned = {step.revision for step in plan.steps}

    def work(heads: Any, context: Any) -> Iterable[MigrationStep]:
        if plan.kind is PlanKind.UPGRADE:
            steps = directory._upgrade_revs(destination, heads)
        else:
            steps = directory._downgrade_revs(destination, heads)
        if not run._primary(context):
            return list(steps)  # another database: what it needs, as Alembic says
        actual = {_revision_of(step) for step in steps}
        if actual != planned:
            raise MigrationFailedError(
                f"Alembic would apply {sorted(actual)} but schemad planned "
                f"{sorted(planned)}; nothing was applied. Please report this with "
                "the output of `alembic history`",
                revision=None,
            )
        return run.timed(steps)

    return work


def _failure(run: _Run, exc: BaseException, explanation: str | None) -> SchemadError:
    step = run.current
    summary = first_line(exc)
    if step is None and not run.applied and not isinstance(exc, DBAPIError):
        return ScriptError(
            f"env.py failed before any revision ran: {summary}; "
            f"{env_advice(exc, '`alembic upgrade head` shows the same error')}"
        )
    if step is None:
        when = (
            f"after {len(run.applied)} revision(s) of this pass were applied (they stay applied)"
            if run.applied
            else "before any revision ran"
        )
        return MigrationFailedError(
            f"the migration environment (env.py) failed {when}: {summary}; "
            f"{explanation or 'fix env.py and run again'}",
            revision=None,
        )
    advice = explanation or "fix the revision and run again"
    revision = _revision_of(step)
    if run.env is not None and run.env.one_transaction:
        kept = "all revisions of this pass ran in one transaction, so none stays applied"
    else:
        kept = f"{len(run.applied)} earlier revision(s) of this pass stay applied"
    return MigrationFailedError(
        f"revision {revision} ({_message_of(step)}) failed: {summary}; {advice}. {kept}",
        revision=revision,
        direction=_direction_of(step),
        duration_seconds=run.clock() - run.current_started,
    )


def _revision_of(step: MigrationStep) -> str:
    return str(step.revision.revision)  # type: ignore[attr-defined]


def _direction_of(step: MigrationStep) -> Direction:
    return Direction.UPGRADE if step.is_upgrade else Direction.DOWNGRADE


def _message_of(step: MigrationStep) -> str:
    return str(step.revision.doc or "").strip()  # type: ignore[attr-defined]
