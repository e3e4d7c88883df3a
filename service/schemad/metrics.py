"""Every metric, declared once on a registry that is passed in.

Names follow Prometheus conventions: ``schemad_`` prefix, base units,
``_total`` only on counters, revision ids only as labels of ``_info`` gauges.
Every labelled child is created at start so each series exists before its
first event.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemad import __version__
from schemad.model import Direction, Outcome, Result

DIRECTIONS = tuple(direction.value for direction in Direction)
WEBHOOK_OUTCOMES = ("delivered", "failed")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """schemad's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "schemad_build_info", "schemad version; always 1.", ["version"], registry=registry
        )
        self.reconciles = Counter(
            "schemad_reconcile", "Reconcile passes, by outcome.", ["outcome"], registry=registry
        )
        self.reconcile_duration = Histogram(
            "schemad_reconcile_duration_seconds",
            "Duration of reconcile passes.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            "schemad_pending_revisions",
            "Revisions between the database and the target, at the last pass.",
            registry=registry,
        )
        self.at_target = Gauge(
            "schemad_at_target",
            "1 when the last pass found the database at the target, else 0.",
            registry=registry,
        )
        self.current_revision = Gauge(
            "schemad_current_revision_info",
            "The database's current revision(s); value 1.",
            ["revision"],
            registry=registry,
        )
        self.target_revision = Gauge(
            "schemad_target_revision_info",
            "The target revision(s) as resolved; value 1.",
            ["revision"],
            registry=registry,
        )
        self.last_reconcile = Gauge(
            "schemad_last_reconcile_timestamp_seconds",
            "Unix time the last pass ended.",
            registry=registry,
        )
        self.last_success = Gauge(
            "schemad_last_success_timestamp_seconds",
            "Unix time the last pass ended with the database at the target.",
            registry=registry,
        )
        self.revisions_applied = Counter(
            "schemad_revisions_applied",
            "Revisions applied (or reverted), by direction.",
            ["direction"],
            registry=registry,
        )
        self.revision_duration = Histogram(
            "schemad_revision_apply_duration_seconds",
            "Duration of applying one revision, by direction.",
            ["direction"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.lock_wait = Histogram(
            "schemad_lock_wait_seconds",
            "Time spent waiting for the migration lock.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.lock_waiting = Gauge(
            "schemad_lock_waiting",
            "1 while this instance waits for another instance's migration lock.",
            registry=registry,
        )
        self.database_up = Gauge(
            "schemad_database_up",
            "1 when the last pass could reach the database, else 0.",
            registry=registry,
        )
        self.interval = Gauge(
            "schemad_interval_seconds",
            "Configured seconds between passes (for alerts on missed passes).",
            registry=registry,
        )
        self.tampered = Gauge(
            "schemad_tampered_revisions",
            "Applied revisions whose file no longer matches the recorded checksum.",
            registry=registry,
        )
        self.history_write_failures = Counter(
            "schemad_history_write_failures",
            "History rows that could not be written (the migrations still stand).",
            registry=registry,
        )
        self.drift_objects = Gauge(
            "schemad_drift_objects",
            "Schema objects that differ from what the current revision should produce.",
            registry=registry,
        )
        self.drift_checked = Gauge(
            "schemad_drift_last_check_timestamp_seconds",
            "Unix time of the last completed drift check.",
            registry=registry,
        )
        self.drift_check_failures = Counter(
            "schemad_drift_check_failures",
            "Drift checks that could not run (no privilege, migrations failing, ...).",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "schemad_webhook_deliveries",
            "Webhook events by delivery outcome (failed: after every retry).",
            ["outcome"],
            registry=registry,
        )
        self.build_info.labels(__version__).set(1)
        for outcome in Outcome:
            self.reconciles.labels(outcome.value)
        for direction in DIRECTIONS:
            self.revisions_applied.labels(direction)
            self.revision_duration.labels(direction)
        for delivery in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(delivery)

    def webhook_delivered(self, outcome: str) -> None:
        """Count one webhook event, ``delivered`` or ``failed``."""
        self.webhook_deliveries.labels(outcome).inc()

    def observe(self, result: Result, *, finished_at: float) -> None:
        """Record one finished pass."""
        self.reconciles.labels(result.outcome.value).inc()
        self.reconcile_duration.observe(result.duration_seconds)
        self.last_reconcile.set(finished_at)
        self.database_up.set(0 if result.outcome is Outcome.UNAVAILABLE else 1)
        self.lock_waiting.set(0)
        if result.lock_wait_seconds > 0 or result.applied:
            self.lock_wait.observe(result.lock_wait_seconds)
        for step in result.applied:
            self.revisions_applied.labels(step.direction).inc()
            self.revision_duration.labels(step.direction).observe(step.duration_seconds)
        # Like /readyz: a pass that could not tell is not at the target.
        self.at_target.set(1 if result.at_target else 0)
        self.history_write_failures.inc(result.history_write_failures)
        if result.outcome is Outcome.UNAVAILABLE or result.plan is None:
            return
        self.tampered.set(len(result.tampered))
        plan = result.plan
        left = max(len(plan.steps) - len(result.applied), 0)
        self.pending.set(0 if result.at_target else left)
        if result.at_target:
            self.last_success.set(finished_at)
        _set_info(self.current_revision, result.heads_after)
        _set_info(self.target_revision, plan.target)


def _set_info(gauge: Gauge, revisions: tuple[str, ...]) -> None:
    gauge.clear()
    for revision in revisions or ("base",):
        gauge.labels(revision).set(1)


# The states of schemad_targets (skipped targets count as behind).
TARGET_STATES = ("at_target", "behind", "failed", "refused", "unavailable")


class FleetMetrics:
    """Fan-out's metrics, on the daemon's registry (only when targets are listed).

    Per-target series exist only for targets that are not at their target,
    at most ``series_limit`` of them, replaced at each pass: a fleet of
    thousands of tenants at head costs five series, not thousands.
    """

    def __init__(self, registry: CollectorRegistry, *, series_limit: int = 100) -> None:
        self.series_limit = series_limit
        self.targets = Gauge(
            "schemad_targets",
            "Targets by state at the last pass (skipped targets count as behind).",
            ["state"],
            registry=registry,
        )
        self.applied = Gauge(
            "schemad_targets_applied",
            "Targets that applied revisions in the last pass.",
            registry=registry,
        )
        self.not_at_target = Gauge(
            "schemad_target_not_at_target",
            "1 for each target not at its target at the last pass (at most "
            "SCHEMAD_TARGET_SERIES_LIMIT series).",
            ["target", "state"],
            registry=registry,
        )
        for state in TARGET_STATES:
            self.targets.labels(state)

    def observe(self, states: Sequence[tuple[str, str]], *, applied: int) -> None:
        """Record one pass: each target's (name, state), in the run's order."""
        counts = dict.fromkeys(TARGET_STATES, 0)
        for _name, state in states:
            counts[_metric_state(state)] += 1
        for state, count in counts.items():
            self.targets.labels(state).set(count)
        self.applied.set(applied)
        self.not_at_target.clear()
        missing = [(name, state) for name, state in states if state != "at_target"]
        for name, state in missing[: self.series_limit]:
            self.not_at_target.labels(name, _metric_state(state)).set(1)


def _metric_state(state: str) -> str:
    return state if state in TARGET_STATES else "behind"
