"""The daemon's scheduling core: backoff, readiness, failures, stop, status documents."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from apscheduler.schedulers import SchedulerNotRunningError
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from schemad.cli import App
from schemad.documents import result_document
from schemad.errors import ConfigError
from schemad.metrics import Metrics
from schemad.model import (
    AppliedStep,
    LockHolder,
    Outcome,
    Plan,
    PlanKind,
    Result,
    Step,
)
from schemad.reconciler import Reconciler
from schemad.scheduler import Daemon, backoff_seconds
from schemad.settings import Settings, load_settings
from support.scripts import linear_project

PASSWORD = "Xy7-unit-S3cret"
WAIT_SECONDS = 10.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)


def settings(**values: Any) -> Settings:
    defaults: dict[str, Any] = {"database_url": "sqlite:///unused.db", "interval_seconds": 3600}
    return Settings(**{**defaults, **values})


def result(outcome: Outcome, **fields: Any) -> Result:
    plan = Plan(PlanKind.IN_SYNC, current=("r1",), target=("r1",), schema_ready=True)
    defaults: dict[str, Any] = {
        "run_id": "run",
        "started_at": 1_700_000_000.0,
        "duration_seconds": 0.5,
        "target_spec": "head",
        "plan": None if outcome is Outcome.UNAVAILABLE else plan,
        "heads_before": ("r1",),
        "heads_after": ("r1",),
    }
    return Result(outcome=outcome, **{**defaults, **fields})


class FakeReconciler:
    """Returns (or raises) the given items in turn; records the daemon's hooks."""

    def __init__(self, *items: Result | Exception, during: Callable[[], None] | None = None):
        self.items = list(items)
        self.calls = 0
        self.during = during
        self.exhausted = threading.Event()
        self.should_stop: Callable[[], bool] | None = None
        self.on_lock_wait: Callable[[LockHolder | None, float], None] | None = None

    def set_hooks(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_lock_wait: Callable[[LockHolder | None, float], None] | None = None,
    ) -> None:
        self.should_stop = should_stop
        self.on_lock_wait = on_lock_wait

    def reconcile_once(self) -> Result:
        self.calls += 1
        if self.during is not None:
            self.during()
        if len(self.items) > 1:
            item = self.items.pop(0)
        else:
            item = self.items[0]
            self.exhausted.set()
        if isinstance(item, Exception):
            raise item
        return item


def daemon(
    fake: FakeReconciler, registry: CollectorRegistry | None = None, **values: Any
) -> Daemon:
    return Daemon(
        settings(**values),
        cast(Reconciler, fake),
        Metrics(registry or CollectorRegistry()),
        database_url="sqlite:///unused.db",
    )


@pytest.fixture
def started() -> Iterator[list[Daemon]]:
    """Daemons whose scheduler a test starts; stopped afterwards whatever happened."""
    daemons: list[Daemon] = []
    yield daemons
    for each in daemons:
        each.request_stop()
        with contextlib.suppress(SchedulerNotRunningError):  # the test stopped it already
            each.wait_until_stopped()


# -- backoff -----------------------------------------------------------------------


def test_backoff_doubles_with_each_failure() -> None:
    """Without jitter the delay is 1, 2, 4, 8, 16 seconds for 1..5 failures."""
    expected = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert expected == [backoff_seconds(n, 300, rand=lambda: 1.0) for n in range(1, 6)]


def test_backoff_is_capped() -> None:
    """However many failures, the delay never exceeds the maximum."""
    assert backoff_seconds(60, 30, rand=lambda: 1.0) == 30.0


def test_backoff_jitter_stays_between_half_and_all_of_the_delay() -> None:
    """The smallest jitter gives half the delay, the largest the whole delay."""
    expected = [(4.0, 8.0), (15.0, 30.0)]
    actual = [
        (backoff_seconds(4, 30, rand=lambda: 0.0), backoff_seconds(4, 30, rand=lambda: 1.0)),
        (backoff_seconds(9, 30, rand=lambda: 0.0), backoff_seconds(9, 30, rand=lambda: 1.0)),
    ]
    assert expected == actual


def test_backoff_with_random_jitter_stays_in_bounds() -> None:
    """The default random source keeps the delay within [capped / 2, capped]."""
    delays = [backoff_seconds(3, 300) for _ in range(200)]
    assert all(2.0 <= delay <= 4.0 for delay in delays)


# -- readiness and failures, one pass at a time -----------------------------------------


def test_not_ready_before_the_first_pass() -> None:
    """Readiness says no pass has finished yet, before the first one."""
    assert daemon(FakeReconciler(result(Outcome.IN_SYNC))).ready() == (
        False,
        "no pass has finished yet",
    )


def test_ready_after_an_in_sync_pass() -> None:
    """A pass that found the database at the target makes the daemon ready."""
    subject = daemon(FakeReconciler(result(Outcome.IN_SYNC)))
    subject.run_pass()
    assert subject.ready() == (True, "at target (in_sync)")


def test_not_ready_after_a_failed_pass_names_the_outcome() -> None:
    """A pass that could not reach the database makes readiness fail with its outcome."""
    subject = daemon(FakeReconciler(result(Outcome.IN_SYNC), result(Outcome.UNAVAILABLE)))
    subject.run_pass()
    subject.run_pass()
    assert subject.ready() == (False, "not at target: unavailable")


def test_ready_when_ahead_of_the_target() -> None:
    """A database past the target (allowed by policy) is ready: the app can run."""
    subject = daemon(FakeReconciler(result(Outcome.AHEAD)))
    subject.run_pass()
    assert subject.ready() == (True, "at target (ahead)")


def test_failures_in_a_row_are_counted() -> None:
    """Each failed pass adds one to consecutive_failures."""
    subject = daemon(FakeReconciler(result(Outcome.UNAVAILABLE), result(Outcome.FAILED)))
    subject.run_pass()
    subject.run_pass()
    assert subject.status()["consecutive_failures"] == 2


def test_a_successful_pass_resets_the_failure_count() -> None:
    """consecutive_failures goes back to 0 after a pass at the target."""
    subject = daemon(
        FakeReconciler(
            result(Outcome.UNAVAILABLE), result(Outcome.UNAVAILABLE), result(Outcome.APPLIED)
        )
    )
    for _ in range(3):
        subject.run_pass()
    assert subject.status()["consecutive_failures"] == 0


def test_an_interrupted_pass_is_not_a_failure() -> None:
    """A pass ended by a shutdown request does not count towards backoff."""
    subject = daemon(FakeReconciler(result(Outcome.UNAVAILABLE), result(Outcome.INTERRUPTED)))
    subject.run_pass()
    subject.run_pass()
    assert subject.status()["consecutive_failures"] == 1


def test_no_pass_runs_once_a_stop_is_requested() -> None:
    """After request_stop, run_pass returns None without calling the reconciler."""
    fake = FakeReconciler(result(Outcome.IN_SYNC))
    subject = daemon(fake)
    subject.request_stop()
    assert (subject.run_pass(), fake.calls) == (None, 0)


def test_stop_hook_reports_the_stop_request() -> None:
    """The reconciler's should_stop hook turns true when a stop is requested."""
    fake = FakeReconciler(result(Outcome.IN_SYNC))
    subject = daemon(fake)
    assert fake.should_stop is not None
    before = fake.should_stop()
    subject.request_stop()
    assert (before, fake.should_stop()) == (False, True)


def test_a_config_error_stops_the_daemon() -> None:
    """A ConfigError from a pass is kept for the exit code and requests a stop."""
    error = ConfigError("env.py uses another version table", variable="SCHEMAD_VERSION_TABLE")
    subject = daemon(FakeReconciler(error))
    returned = subject.run_pass()
    assert (returned, subject.config_error, subject.status()["stopping"]) == (None, error, True)


def test_pass_results_reach_the_metrics() -> None:
    """Each pass is recorded on the daemon's metrics."""
    registry = CollectorRegistry()
    subject = daemon(FakeReconciler(result(Outcome.UNAVAILABLE), result(Outcome.IN_SYNC)), registry)
    subject.run_pass()
    down = registry.get_sample_value("schemad_database_up")
    subject.run_pass()
    up = registry.get_sample_value("schemad_database_up")
    assert (down, up) == (0.0, 1.0)


def test_interval_gauge_shows_the_configured_period() -> None:
    """schemad_interval_seconds is the interval, or the cron period when a schedule is set."""
    interval, cron = CollectorRegistry(), CollectorRegistry()
    daemon(FakeReconciler(result(Outcome.IN_SYNC)), interval, interval_seconds=45)
    daemon(FakeReconciler(result(Outcome.IN_SYNC)), cron, schedule="*/5 * * * *")
    assert (
        interval.get_sample_value("schemad_interval_seconds"),
        cron.get_sample_value("schemad_interval_seconds"),
    ) == (45.0, 300.0)


# -- status --------------------------------------------------------------------------


def test_status_shows_the_lock_holder_while_waiting() -> None:
    """While a pass waits for the lock, status names the holder; afterwards it does not."""
    seen: dict[str, Any] = {}
    fake = FakeReconciler(result(Outcome.APPLIED))
    subject = daemon(fake)

    def wait_for_lock() -> None:
        assert fake.on_lock_wait is not None
        fake.on_lock_wait(LockHolder("schemad:pod-a:7", 12.0), 1.0)
        seen.update(subject.status())

    fake.during = wait_for_lock
    subject.run_pass()
    expected = (
        {"waiting": True, "holder": "schemad:pod-a:7", "held_seconds": 12.0},
        {"waiting": False, "holder": None, "held_seconds": None},
    )
    assert expected == (seen["lock"], subject.status()["lock"])


def test_status_shows_the_running_pass() -> None:
    """pass_running_since is set while a pass runs and cleared afterwards."""
    seen: dict[str, Any] = {}
    fake = FakeReconciler(result(Outcome.IN_SYNC))
    subject = daemon(fake)
    fake.during = lambda: seen.update(subject.status())
    subject.run_pass()
    assert (seen["pass_running_since"] is not None, subject.status()["pass_running_since"]) == (
        True,
        None,
    )


def test_result_document_lists_only_revisions_still_pending() -> None:
    """After r1 committed and r2 failed, only r2 is pending."""
    plan = Plan(PlanKind.UPGRADE, current=(), target=("r2",), steps=(Step("r1"), Step("r2")))
    failed = result(
        Outcome.FAILED,
        plan=plan,
        heads_before=(),
        heads_after=("r1",),
        applied=(AppliedStep("r1", "one", "upgrade", 0.1),),
        error="revision r2 failed",
    )
    document = result_document(failed)
    assert (document["pending"], [a["revision"] for a in document["applied"]]) == (
        ["r2"],
        ["r1"],
    )


def test_status_and_result_hold_no_password(tmp_path: Path) -> None:
    """A pass against an unreachable database with a password never shows the password."""
    project = tmp_path / "migrations"
    linear_project(project, 1)
    os.environ["SCHEMAD_DATABASE_URL"] = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app"
    os.environ["SCHEMAD_SCRIPT_LOCATION"] = str(project)
    os.environ["SCHEMAD_CONNECT_TIMEOUT_SECONDS"] = "1"
    app = App.build(load_settings(), io.StringIO())
    try:
        subject = Daemon(
            app.settings,
            app.reconciler,
            Metrics(CollectorRegistry()),
            database_url=app.database.masked_url,
        )
        with capture_logs():
            returned = subject.run_pass()
        text = json.dumps(subject.status()) + json.dumps(result_document(returned))  # type: ignore[arg-type]
    finally:
        app.database.dispose()
    assert returned is not None
    assert (returned.outcome, PASSWORD in text, "***" in text) == (Outcome.UNAVAILABLE, False, True)


def test_a_real_sqlite_pass_makes_the_daemon_ready(tmp_path: Path) -> None:
    """Driven with a real reconciler, the first pass applies the revisions and readiness follows."""
    project = tmp_path / "migrations"
    ids = linear_project(project, 2)
    os.environ["SCHEMAD_DATABASE_URL"] = f"sqlite:///{tmp_path / 'app.db'}"
    os.environ["SCHEMAD_SCRIPT_LOCATION"] = str(project)
    app = App.build(load_settings(), io.StringIO())
    try:
        subject = Daemon(
            app.settings,
            app.reconciler,
            Metrics(CollectorRegistry()),
            database_url=app.database.masked_url,
        )
        before = subject.ready()
        with capture_logs():
            subject.run_pass()
        after = subject.ready()
        last = subject.status()["last_pass"]
    finally:
        app.database.dispose()
    expected = (False, True, "applied", ids, ids[-1:])
    actual = (
        before[0],
        after[0],
        last["outcome"],
        [a["revision"] for a in last["applied"]],
        last["current"],
    )
    assert expected == actual


# -- the scheduler itself ----------------------------------------------------------------


def test_scheduler_backs_off_after_failures_and_recovers(started: list[Daemon]) -> None:
    """Failed passes schedule retries sooner than the interval, with growing backoff."""
    fake = FakeReconciler(
        result(Outcome.UNAVAILABLE), result(Outcome.UNAVAILABLE), result(Outcome.IN_SYNC)
    )
    subject = daemon(fake, backoff_max_seconds=0.2)
    with capture_logs() as logs:
        subject.start()
        started.append(subject)
        assert fake.exhausted.wait(WAIT_SECONDS), "the third pass never came"
        subject.request_stop()
        clean = subject.wait_until_stopped()
    backoffs = [e for e in logs if e["event"] == "backoff_scheduled"]
    expected = (True, 3, [1, 2], True, 0, True)
    actual = (
        clean,
        fake.calls,
        [e["consecutive_failures"] for e in backoffs],
        all(0.1 <= e["delay_seconds"] <= 0.2 for e in backoffs),
        subject.status()["consecutive_failures"],
        subject.ready()[0],
    )
    assert expected == actual


def test_scheduler_is_alive_while_running_and_stops_cleanly(started: list[Daemon]) -> None:
    """Liveness holds while the scheduler runs; a stop request ends it with daemon_stopped."""
    fake = FakeReconciler(result(Outcome.IN_SYNC))
    subject = daemon(fake)
    with capture_logs() as logs:
        subject.start()
        started.append(subject)
        assert fake.exhausted.wait(WAIT_SECONDS)
        alive = subject.alive()
        subject.request_stop(15)
        clean = subject.wait_until_stopped()
    events = [e["event"] for e in logs]
    expected = ((True, "ok"), True, (True, "stopping"), True, True)
    actual = (
        alive,
        clean,
        subject.alive(),
        "shutdown_requested" in events,
        events[-1] == "daemon_stopped",
    )
    assert expected == actual


def test_stop_waits_for_the_running_pass(started: list[Daemon]) -> None:
    """A stop requested during a pass waits for it to end before reporting a clean stop."""
    entered, release = threading.Event(), threading.Event()

    def slow_pass() -> None:
        entered.set()
        assert release.wait(WAIT_SECONDS)

    fake = FakeReconciler(result(Outcome.INTERRUPTED), during=slow_pass)
    subject = daemon(fake, shutdown_grace_seconds=WAIT_SECONDS)
    subject.start()
    started.append(subject)
    assert entered.wait(WAIT_SECONDS)
    subject.request_stop()
    outcome: list[bool] = []
    stopper = threading.Thread(target=lambda: outcome.append(subject.wait_until_stopped()))
    with capture_logs():
        stopper.start()
        stopper.join(0.05)
        stopped_early = not stopper.is_alive()
        release.set()
        stopper.join(WAIT_SECONDS)
    assert (stopped_early, outcome) == (False, [True])


def test_stop_reports_a_pass_that_outlives_the_grace_period(started: list[Daemon]) -> None:
    """When the running pass does not end within the grace period, the stop is not clean."""
    entered, release = threading.Event(), threading.Event()

    def stuck_pass() -> None:
        entered.set()
        release.wait(WAIT_SECONDS)

    fake = FakeReconciler(result(Outcome.INTERRUPTED), during=stuck_pass)
    subject = daemon(fake, shutdown_grace_seconds=0.05)
    subject.start()
    started.append(subject)
    assert entered.wait(WAIT_SECONDS)
    subject.request_stop()
    with capture_logs() as logs:
        clean = subject.wait_until_stopped()
    release.set()
    assert (clean, [e["event"] for e in logs]) == (False, ["shutdown_grace_expired"])


def test_stop_waits_until_the_last_pass_is_recorded(started: list[Daemon]) -> None:
    """wait_until_stopped returns only once the running pass's result is recorded."""

    class SlowMetrics(Metrics):
        entered = threading.Event()

        def observe(self, result: Result, *, finished_at: float) -> None:
            self.entered.set()
            # Bounded: long enough for a premature stop to show, never a hang.
            threading.Event().wait(0.2)
            super().observe(result, finished_at=finished_at)

    subject = Daemon(
        settings(),
        cast(Reconciler, FakeReconciler(result(Outcome.IN_SYNC))),
        SlowMetrics(CollectorRegistry()),
        database_url="sqlite:///unused.db",
    )
    subject.start()
    started.append(subject)
    assert SlowMetrics.entered.wait(WAIT_SECONDS)
    subject.request_stop()
    with capture_logs():
        clean = subject.wait_until_stopped()
    assert (clean, subject.status()["last_pass"] is not None) == (True, True)
