"""The reconcile pass's decisions, with a fake database, fake scripts and a fake applier.

No database and no Alembic: what is checked here is when a pass takes the
lock, when it applies, how it reads what happened, and which outcome it
reports. The integration suite checks the same passes on real databases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from schemad.applier import Applied, StepObserver
from schemad.dialect import Fault
from schemad.environment import Layout
from schemad.errors import (
    ConfigError,
    DatabaseUnavailableError,
    LockNotNeeded,
    LockTimeoutError,
    MigrationFailedError,
)
from schemad.model import (
    AppliedStep,
    DbState,
    Direction,
    Graph,
    LockHolder,
    Outcome,
    Plan,
    RefusalReason,
    Revision,
    Target,
)
from schemad.reconciler import DatabaseLike, Reconciler
from schemad.revisions import Scripts
from schemad.settings import Settings

PASSWORD = "Fake-pw-7731"
IDS = ("r1", "r2", "r3")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)


class FakeScripts:
    """A linear history r1 -> r2 -> r3; targets resolve to themselves."""

    def __init__(self) -> None:
        parents = {"r1": (), "r2": ("r1",), "r3": ("r2",)}
        revisions = {rev: Revision(rev, parents[rev], f"make {rev}") for rev in IDS}
        self.graph = Graph(revisions, IDS, ("r3",))
        self.fingerprint: tuple[tuple[str, int], ...] = ()
        self.loaded_at_ns = 0
        self.checksums: dict[str, str | None] = {}

    def resolve(self, spec: str) -> Target:
        if spec == "head":
            return Target(spec, ("r3",))
        if spec in self.graph.revisions:
            return Target(spec, (spec,))
        return Target(spec, None, "unknown_target")


class FakeGuard:
    def __init__(self, fired: bool = False) -> None:
        self.fired = fired

    def explain(self) -> str | None:
        return "no answer" if self.fired else None


class FakeConnection:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeDatabase:
    """Answers read_state() from a list of heads in turn (the last one repeats)."""

    transactional_ddl = True
    version_table = "alembic_version"
    version_table_schema: str | None = None

    def __init__(self, *heads: tuple[str, ...] | Exception, lock_error: Exception | None = None):
        self.heads = list(heads)
        self.lock_error = lock_error
        self.locks_taken = 0
        self.durable_calls = 0
        self.connection = FakeConnection()
        self.guard = FakeGuard()

    def read_state(self) -> DbState:
        item = self.heads.pop(0) if len(self.heads) > 1 else self.heads[0]
        if isinstance(item, Exception):
            raise item
        return DbState(item)

    @contextmanager
    def lock(
        self,
        wait_seconds: float,
        on_wait: Callable[[LockHolder | None, float], None] | None = None,
        needed: Callable[[], bool] | None = None,
    ) -> Iterator[float]:
        if self.lock_error is not None:
            error, self.lock_error = self.lock_error, None
            raise error
        self.locks_taken += 1
        yield 0.25

    def lock_holder(self) -> LockHolder | None:
        return None

    def migration_connection(self) -> Any:
        return self.connection

    def apply_session_timeouts(self, conn: Any, **_settings: Any) -> list[str]:
        return []

    @contextmanager
    def statement_guard(self, conn: Any, seconds: float | None) -> Iterator[FakeGuard]:
        yield self.guard

    def make_durable(self, conn: Any) -> None:
        self.durable_calls += 1

    def explain_failure(self, exc: BaseException, in_revision: bool = True) -> str | None:
        return None

    def fault(self, exc: BaseException | None) -> Fault | None:
        return None

    def use_version_table(self, table: str, schema: str | None) -> None:
        self.version_table, self.version_table_schema = table, schema

    def redact(self, text: str) -> str:
        return text.replace(PASSWORD, "***")


class FakeApply:
    """Commits the plan's steps through the observer, or raises after ``fail_after``."""

    def __init__(
        self,
        *,
        fail_after: int | None = None,
        then: Callable[[], None] | None = None,
        error: Exception | None = None,
    ) -> None:
        self.plans: list[Plan] = []
        self.fail_after = fail_after
        self.then = then
        self.error = error

    def __call__(self, _scripts: Any, _conn: Any, plan: Plan, _dest: str, **kw: Any) -> Applied:
        self.plans.append(plan)
        observer: StepObserver = kw["observer"]
        done: list[AppliedStep] = []
        for index, step in enumerate(plan.steps):
            if observer.should_stop():
                return Applied(tuple(done), stopped=True)
            if self.fail_after is not None and index == self.fail_after:
                raise self.error or MigrationFailedError(
                    f"revision {step.revision} failed: boom {PASSWORD}",
                    revision=step.revision,
                )
            applied = AppliedStep(step.revision, step.message, Direction.UPGRADE, 0.01)
            observer.committed(applied)
            done.append(applied)
        if self.then is not None:
            self.then()
        return Applied(tuple(done), stopped=False)


def reconciler(
    database: FakeDatabase, apply: FakeApply | None = None, **settings: Any
) -> Reconciler:
    scripts = cast(Scripts, FakeScripts())
    return Reconciler(
        Settings(database_url="sqlite:///unused.db", **settings),
        cast(DatabaseLike, database),
        lambda: scripts,
        apply=apply or FakeApply(),
        probe=lambda _scripts: Layout("alembic_version", None),
        clock=iter(range(1000)).__next__,
        wall_clock=lambda: 1_700_000_000.0,
    )


def test_at_the_target_no_lock_is_taken() -> None:
    """A database at the target is in sync without taking the lock or applying."""
    database, apply = FakeDatabase(("r3",)), FakeApply()
    result = reconciler(database, apply).reconcile_once()
    assert (result.outcome, database.locks_taken, apply.plans) == (Outcome.IN_SYNC, 0, [])


def test_behind_applies_under_the_lock_and_verifies() -> None:
    """Pending revisions are applied under the lock, then the version table is read again."""
    database = FakeDatabase(("r1",), ("r1",), ("r3",))
    apply = FakeApply()
    result = reconciler(database, apply).reconcile_once()
    expected = (Outcome.APPLIED, 1, ["r2", "r3"], ("r1",), ("r3",))
    assert expected == (
        result.outcome,
        database.locks_taken,
        [step.revision for step in result.applied],
        result.heads_before,
        result.heads_after,
    )


def test_work_done_by_another_instance_while_waiting_is_not_redone() -> None:
    """If the version table reached the target while we waited for the lock, nothing is applied."""
    database, apply = FakeDatabase(("r1",), ("r3",)), FakeApply()
    result = reconciler(database, apply).reconcile_once()
    assert (result.outcome, database.locks_taken, apply.plans) == (Outcome.IN_SYNC, 1, [])


def test_lock_not_needed_looks_again_without_the_lock() -> None:
    """A wait ended by LockNotNeeded is followed by a new look; its wait is counted."""
    database = FakeDatabase(("r1",), ("r3",), lock_error=LockNotNeeded(1.5))
    apply = FakeApply()
    with capture_logs() as logs:
        result = reconciler(database, apply).reconcile_once()
    events = [e["event"] for e in logs]
    expected = (Outcome.IN_SYNC, 0, 1.5, True)
    assert expected == (
        result.outcome,
        database.locks_taken,
        result.lock_wait_seconds,
        "lock_not_needed" in events,
    )


def test_lock_timeout_is_its_own_outcome() -> None:
    """Another instance holding the lock too long ends the pass with lock_timeout."""
    database = FakeDatabase(("r1",), lock_error=LockTimeoutError("held by someone"))
    result = reconciler(database).reconcile_once()
    assert (result.outcome, result.error) == (Outcome.LOCK_TIMEOUT, "held by someone")


def test_a_failed_revision_reports_where_the_database_was_left() -> None:
    """A failure reads the version table again, makes the commits durable and reports failed."""
    database = FakeDatabase(("r1",), ("r1",), ("r2",))
    result = reconciler(database, FakeApply(fail_after=1)).reconcile_once()
    expected = (Outcome.FAILED, ["r2"], ("r2",), 1, True)
    assert expected == (
        result.outcome,
        [step.revision for step in result.applied],
        result.heads_after,
        database.durable_calls,
        result.error is not None and PASSWORD not in result.error,
    )


def test_a_silent_database_gets_no_more_round_trips() -> None:
    """When the statement guard cut the connection, the failure is reported without reads."""
    database = FakeDatabase(("r1",), ("r1",), DatabaseUnavailableError("must not be read"))
    database.guard = FakeGuard(fired=True)
    result = reconciler(database, FakeApply(fail_after=0)).reconcile_once()
    assert (result.outcome, result.heads_after, database.durable_calls) == (
        Outcome.FAILED,
        ("r1",),
        0,
    )


def test_a_stop_between_revisions_is_interrupted() -> None:
    """A stop requested during a pass ends it after the revision in progress."""
    database = FakeDatabase(("r1",), ("r1",), ("r2",))
    subject = reconciler(database)
    asked: list[bool] = []

    def stop_after_one() -> bool:
        asked.append(True)
        return len(asked) > 1

    subject.set_hooks(should_stop=stop_after_one)
    result = subject.reconcile_once()
    assert (result.outcome, [s.revision for s in result.applied], result.heads_after) == (
        Outcome.INTERRUPTED,
        ["r2"],
        ("r2",),
    )


def test_a_version_table_short_of_the_target_after_applying_is_a_failure() -> None:
    """If the version table does not say the target after applying, the pass failed."""
    database = FakeDatabase(("r1",), ("r1",), ("r2",))
    result = reconciler(database).reconcile_once()
    assert (result.outcome, result.heads_after) == (Outcome.FAILED, ("r2",))
    assert result.error is not None
    assert "instead of the target ['r3']" in result.error


def test_an_unreachable_database_is_unavailable_and_masked() -> None:
    """A read failure ends the pass as unavailable, its message masked."""
    database = FakeDatabase(DatabaseUnavailableError(f"cannot connect to x:{PASSWORD}@db"))
    result = reconciler(database).reconcile_once()
    assert (result.outcome, result.error) == (Outcome.UNAVAILABLE, "cannot connect to x:***@db")


def test_a_configuration_error_escapes_the_pass() -> None:
    """A ConfigError is not a pass outcome: it stops the process."""
    database = FakeDatabase(("r1",))
    apply = FakeApply(fail_after=0, error=ConfigError("env.py uses another version table"))
    with pytest.raises(ConfigError):
        reconciler(database, apply).reconcile_once()


def test_an_unknown_revision_is_refused() -> None:
    """A database at a revision the scripts lack is refused, with the planner's message."""
    result = reconciler(FakeDatabase(("zz9",))).reconcile_once()
    assert result.plan is not None
    assert (result.outcome, result.plan.reason) == (
        Outcome.REFUSED,
        RefusalReason.UNKNOWN_REVISION,
    )
    assert result.error is not None
    assert "zz9" in result.error


def test_an_unknown_revision_can_be_ignored_as_ahead() -> None:
    """With SCHEMAD_ON_UNKNOWN_REVISION=ignore the same database is ahead, and ready."""
    result = reconciler(FakeDatabase(("zz9",)), on_unknown_revision="ignore").reconcile_once()
    assert (result.outcome, result.ready, result.error) == (Outcome.AHEAD, True, None)


def test_a_pinned_target_behind_the_database_is_refused_without_downgrades() -> None:
    """A target older than the database is refused unless downgrades are allowed."""
    database, apply = FakeDatabase(("r3",)), FakeApply()
    result = reconciler(database, apply, target_revision="r1").reconcile_once()
    assert result.plan is not None
    assert (result.outcome, result.plan.reason, apply.plans) == (
        Outcome.REFUSED,
        RefusalReason.DOWNGRADE_NOT_ALLOWED,
        [],
    )


def test_every_pass_logs_one_canonical_line() -> None:
    """reconcile_finished is logged exactly once per pass, with the pass's run id."""
    database = FakeDatabase(("r1",), ("r1",), ("r3",))
    with capture_logs() as logs:
        result = reconciler(database).reconcile_once()
    finished = [e for e in logs if e["event"] == "reconcile_finished"]
    assert [(e["outcome"], e["steps_applied"]) for e in finished] == [("applied", 2)]
    assert result.run_id
