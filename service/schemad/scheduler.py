"""The daemon (`schemad run`): APScheduler wiring, backoff, signals, and the
state that the HTTP endpoints and metrics report.

One pass at a time, from one worker thread (Alembic's command machinery is
not thread-safe); a late pass is coalesced, never queued. After a pass that
did not reach the target, the next one comes sooner or later by bounded,
jittered exponential backoff. SIGTERM/SIGINT: no new pass starts, a revision
being applied may finish within the grace period, then the process exits 0.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from schemad import logs
from schemad.documents import daemon_document, iso
from schemad.errors import ConfigError, DriftPermissionError, SchemadError
from schemad.metrics import Metrics
from schemad.model import LockHolder, Outcome, Result
from schemad.reconciler import Reconciler
from schemad.settings import Settings
from schemad.webhook import Notifier

if TYPE_CHECKING:
    from schemad.fleet import Fleet, FleetResult
    from schemad.metrics import FleetMetrics

JOB_ID = "reconcile"
DRIFT_JOB_ID = "drift"
BACKOFF_BASE_SECONDS = 1.0


def backoff_seconds(
    failures: int, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the next attempt after ``failures`` failed passes in a row.

    Exponential from one second, capped at ``maximum``, with "equal jitter":
    between half and all of the capped delay.
    """
    capped = min(maximum, BACKOFF_BASE_SECONDS * 2.0 ** max(failures - 1, 0))
    return float(capped / 2 + rand() * capped / 2)


def make_trigger(settings: Settings) -> BaseTrigger:
    """The regular schedule: cron when SCHEMAD_SCHEDULE is set, else interval."""
    jitter = int(settings.jitter_seconds) or None
    if settings.schedule:
        trigger = CronTrigger.from_crontab(settings.schedule, timezone=UTC)
        trigger.jitter = jitter
        return trigger
    return IntervalTrigger(seconds=settings.interval_seconds, jitter=jitter, timezone=UTC)


def period_seconds(trigger: BaseTrigger) -> float:
    """Seconds between two regular passes (for cron, the next two)."""
    if isinstance(trigger, IntervalTrigger):
        return float(trigger.interval.total_seconds())
    now = datetime.now(UTC)
    first = trigger.get_next_fire_time(None, now)
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    if first is None or second is None:
        return 0.0
    return float((second - first).total_seconds())


class Daemon:
    """Runs reconcile passes on a schedule and keeps what the endpoints show."""

    def __init__(
        self,
        settings: Settings,
        reconciler: Reconciler,
        metrics: Metrics,
        *,
        database_url: str,
        wall_clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.reconciler = reconciler
        self.metrics = metrics
        self.notifier = notifier or Notifier(None)
        self.notifier.observe(metrics.webhook_delivered)
        self.database_url = database_url
        self._wall_clock = wall_clock
        self._log = logs.get_logger("schemad.daemon")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._started_at = wall_clock()
        self._last: Result | None = None
        self._last_success_at: float | None = None
        self._pass_started_at: float | None = None
        self._waiting_for: LockHolder | None = None
        self._failures = 0
        self._drift: dict[str, Any] | None = None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self.config_error: ConfigError | None = None
        self._trigger = make_trigger(settings)
        reconciler.set_hooks(should_stop=self._stop.is_set, on_lock_wait=self._lock_waiting)
        metrics.interval.set(period_seconds(self._trigger))

    def start(self) -> None:
        """Schedule the first pass now and the rest by the trigger."""
        self._scheduler.add_job(
            self.run_pass,
            trigger=self._trigger,
            id=JOB_ID,
            next_run_time=datetime.now(UTC),
        )
        if self.settings.drift_interval_seconds is not None:
            self._scheduler.add_job(
                self.run_drift_check,
                trigger=IntervalTrigger(seconds=self.settings.drift_interval_seconds, timezone=UTC),
                id=DRIFT_JOB_ID,
            )
        self._scheduler.start()
        self._log.info(
            "daemon_started",
            schedule=self.settings.schedule,
            interval_seconds=None if self.settings.schedule else self.settings.interval_seconds,
            target=self.settings.target_revision,
            database=self.database_url,
        )

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Stop scheduling; the pass in progress ends after its current revision."""
        if not self._stop.is_set():
            name = signal.Signals(signum).name if signum else "request"
            self._log.info("shutdown_requested", signal=name)
        self._stop.set()

    def wait_until_stopped(self) -> bool:
        """Block until a stop is requested, then shut down within the grace period.

        Returns:
            True when no pass was left running at exit.
        """
        self._stop.wait()
        self._scheduler.shutdown(wait=False)
        finished = self._idle.wait(self.settings.shutdown_grace_seconds)
        if finished:
            self._log.info("daemon_stopped")
        else:
            self._log.error(
                "shutdown_grace_expired",
                grace_seconds=self.settings.shutdown_grace_seconds,
                detail="a revision was still running; the database rolls it back "
                "where DDL is transactional",
            )
        return finished

    def install_signal_handlers(self) -> None:
        # Python as PID 1 ignores SIGTERM unless a handler is installed.
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run_pass(self) -> Result | None:
        """Run one reconcile pass (from the scheduler's single worker)."""
        # Busy before looking at the stop flag, and until the pass is recorded:
        # a stop then never misses a pass starting, nor exits before its result.
        self._idle.clear()
        try:
            if self._stop.is_set():
                return None
            return self._run_and_record()
        finally:
            self._idle.set()

    def _run_and_record(self) -> Result | None:
        with self._lock:
            self._pass_started_at = self._wall_clock()
        try:
            result = self.reconciler.reconcile_once()
        except ConfigError as exc:
            # The command logs it with its exit code once the daemon has stopped.
            self.config_error = exc
            self.request_stop()
            return None
        finally:
            with self._lock:
                self._pass_started_at = None
                self._waiting_for = None
        self._record(result)
        return result

    def run_drift_check(self) -> None:
        """Compare the live schema with the expected one (same worker as passes)."""
        # Busy like a pass, so a shutdown waits for it within the grace period.
        self._idle.clear()
        try:
            if not self._stop.is_set():
                self._check_drift()
        finally:
            self._idle.set()

    def _check_drift(self) -> None:
        checked_at = self._wall_clock()
        try:
            report = self.reconciler.check_drift()
        except DriftPermissionError as exc:
            self._log.error("drift_disabled", error=exc.message)
            self.metrics.drift_check_failures.inc()
            self._set_drift({"error": exc.message, "disabled": True}, checked_at)
            with contextlib.suppress(LookupError):
                self._scheduler.remove_job(DRIFT_JOB_ID)
            return
        except SchemadError as exc:
            self._log.error("drift_check_failed", error=exc.message)
            self.metrics.drift_check_failures.inc()
            self._set_drift({"error": exc.message, "disabled": False}, checked_at)
            return
        self.metrics.drift_objects.set(len(report.differences))
        self.metrics.drift_checked.set(checked_at)
        self._set_drift(report.as_dict(), checked_at)
        self.notifier.drift_checked(report.revisions, [d.describe() for d in report.differences])

    def _set_drift(self, document: dict[str, Any], checked_at: float) -> None:
        with self._lock:
            self._drift = {**document, "checked_at": iso(checked_at)}

    def _record(self, result: Result) -> None:
        finished_at = self._wall_clock()
        self.metrics.observe(result, finished_at=finished_at)
        self.notifier.pass_finished(result)
        with self._lock:
            self._last = result
            if result.ready:
                self._last_success_at = finished_at
                self._failures = 0
            elif result.outcome is not Outcome.INTERRUPTED:
                self._failures += 1
            failures = self._failures
        if failures and not self._stop.is_set():
            self._back_off(failures)

    def _back_off(self, failures: int) -> None:
        delay = backoff_seconds(failures, self.settings.backoff_max_seconds)
        when = datetime.now(UTC) + timedelta(seconds=delay)
        try:
            self._scheduler.modify_job(JOB_ID, next_run_time=when)
        except LookupError:  # the job is gone: shutting down
            return
        self._log.info(
            "backoff_scheduled",
            consecutive_failures=failures,
            delay_seconds=round(delay, 3),
        )

    def _lock_waiting(self, holder: LockHolder | None, _waited: float) -> None:
        self.metrics.lock_waiting.set(1)
        with self._lock:
            self._waiting_for = holder

    def alive(self) -> tuple[bool, str]:
        """Liveness: the scheduler is running (also while a pass is long)."""
        if self._stop.is_set():
            return True, "stopping"
        if self._scheduler.running:
            return True, "ok"
        return False, "scheduler is not running"

    def ready(self) -> tuple[bool, str]:
        """Readiness: the last pass found the database at the target."""
        with self._lock:
            last = self._last
        if last is None:
            return False, "no pass has finished yet"
        if last.ready:
            return True, f"at target ({last.outcome.value})"
        return False, f"not at target: {last.outcome.value}"

    def status(self, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The last pass and the daemon's state, as JSON-able data (``query`` is
        for fan-out's paging; one database has nothing to page)."""
        with self._lock:
            last, running_since = self._last, self._pass_started_at
            waiting_for, failures = self._waiting_for, self._failures
            last_success, drift = self._last_success_at, self._drift
        job = self._scheduler.get_job(JOB_ID) if self._scheduler.running else None
        return daemon_document(
            database=self.database_url,
            target=self.settings.target_revision,
            started_at=self._started_at,
            stopping=self._stop.is_set(),
            pass_running_since=running_since,
            next_pass_at=job.next_run_time if job else None,
            consecutive_failures=failures,
            last_success_at=last_success,
            waiting_for=waiting_for,
            last=last,
            drift=drift,
        )


STATUS_PAGE_DEFAULT = 100
STATUS_PAGE_MAX = 10_000


class FleetDaemon(Daemon):
    """The daemon over many targets: each pass lists the targets afresh (a
    tenant that appears is migrated on the next pass) and runs the fleet.

    What differs from one database: a pass is :meth:`Fleet.upgrade`;
    readiness means every target is at its target; ``/status`` pages the
    targets (``?state=failed``, ``?limit=N``); the metrics are fan-out's.
    A pass that cannot list its targets counts as a failed pass (backoff);
    a bad configuration stops the daemon, as for one database.
    """

    def __init__(
        self,
        settings: Settings,
        fleet: Fleet,
        metrics: Metrics,
        fleet_metrics: FleetMetrics,
        *,
        database_url: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.fleet_metrics = fleet_metrics
        self._fleet_last: FleetResult | None = None
        self._pass_error: str | None = None
        super().__init__(
            settings,
            cast(Reconciler, _Hooks(fleet)),
            metrics,
            database_url=database_url,
            wall_clock=wall_clock,
        )

    def _run_and_record(self) -> Result | None:
        with self._lock:
            self._pass_started_at = self._wall_clock()
        try:
            result = self.fleet.upgrade()
        except ConfigError as exc:
            self.config_error = exc
            self.request_stop()
            return None
        except SchemadError as exc:
            self._log.error("fleet_pass_failed", error=self.fleet.secrets.redact(exc.message))
            self._record_fleet(None, self.fleet.secrets.redact(exc.message))
            return None
        finally:
            with self._lock:
                self._pass_started_at = None
        self._record_fleet(result, None)
        return None

    def _record_fleet(self, result: FleetResult | None, error: str | None) -> None:
        finished_at = self._wall_clock()
        metrics = self.metrics
        metrics.last_reconcile.set(finished_at)
        if result is not None:
            metrics.reconcile_duration.observe(result.duration_seconds)
            self.fleet_metrics.observe(
                [(report.name, report.state.value) for report in result.reports],
                applied=sum(bool(report.applied) for report in result.reports),
            )
        ok = result is not None and result.at_target
        metrics.at_target.set(1 if ok else 0)
        if ok:
            metrics.last_success.set(finished_at)
        with self._lock:
            self._fleet_last = result if result is not None else self._fleet_last
            self._pass_error = error
            if ok:
                self._last_success_at = finished_at
                self._failures = 0
            else:
                self._failures += 1
            failures = self._failures
        if failures and not self._stop.is_set():
            self._back_off(failures)

    def run_drift_check(self) -> None:
        """Drift checks are for one database; fan-out does not schedule them."""

    def ready(self) -> tuple[bool, str]:
        """Readiness: the last pass found every target at its target."""
        with self._lock:
            last, error = self._fleet_last, self._pass_error
        if error is not None:
            return False, f"the last pass failed: {error}"
        if last is None:
            return False, "no pass has finished yet"
        if last.at_target:
            return True, f"all {len(last.reports)} target(s) at the target"
        return False, last.describe_problems()

    def status(self, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The daemon's state and a page of targets.

        Raises:
            ValueError: ``state`` or ``limit`` in ``query`` is not valid.
        """
        from schemad.fleet import fleet_status_document

        state, limit = _page(query or {})
        with self._lock:
            last, running_since, failures = (
                self._fleet_last,
                self._pass_started_at,
                self._failures,
            )
            last_success, error = self._last_success_at, self._pass_error
        job = self._scheduler.get_job(JOB_ID) if self._scheduler.running else None
        return {
            "database": self.database_url,
            "target": self.settings.target_revision,
            "started_at": iso(self._started_at),
            "stopping": self._stop.is_set(),
            "pass_running_since": iso(running_since),
            "next_pass_at": job.next_run_time.isoformat() if job and job.next_run_time else None,
            "consecutive_failures": failures,
            "last_success_at": iso(last_success),
            "last_pass_error": error,
            **fleet_status_document(last, state=state, limit=limit),
        }


class _Hooks:
    """What the base daemon asks of its reconciler, given to the fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def set_hooks(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_lock_wait: Callable[..., None] | None = None,
    ) -> None:
        if should_stop is not None:
            self.fleet.should_stop = should_stop


def _page(query: Mapping[str, str]) -> tuple[str | None, int]:
    from schemad.targets import State

    state = query.get("state") or None
    if state is not None and state not in {s.value for s in State}:
        known = ", ".join(s.value for s in State)
        raise ValueError(f"state must be one of {known}, not {state[:40]!r}")
    raw = query.get("limit", str(STATUS_PAGE_DEFAULT))
    if not raw.isdigit() or not 1 <= int(raw) <= STATUS_PAGE_MAX:
        raise ValueError(f"limit must be a whole number from 1 to {STATUS_PAGE_MAX}")
    return state, int(raw)
