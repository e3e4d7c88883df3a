"""Metrics: every series exists from the start; observe() reflects each kind of pass."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from schemad import __version__
from schemad.metrics import DIRECTIONS, Metrics
from schemad.model import AppliedStep, Outcome, Plan, PlanKind, RefusalReason, Result, Step

FINISHED_AT = 1_700_000_000.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def applied_result() -> Result:
    """A pass that took the database from nothing to r2 through r1 and r2."""
    plan = Plan(PlanKind.UPGRADE, current=(), target=("r2",), steps=(Step("r1"), Step("r2")))
    return Result(
        outcome=Outcome.APPLIED,
        run_id="run1",
        started_at=FINISHED_AT - 3,
        duration_seconds=3.0,
        target_spec="head",
        plan=plan,
        applied=(
            AppliedStep("r1", "one", "upgrade", 1.0),
            AppliedStep("r2", "two", "upgrade", 1.5),
        ),
        heads_before=(),
        heads_after=("r2",),
        lock_wait_seconds=0.25,
    )


def in_sync_result(revision: str = "r2") -> Result:
    plan = Plan(PlanKind.IN_SYNC, current=(revision,), target=(revision,), schema_ready=True)
    return Result(
        outcome=Outcome.IN_SYNC,
        run_id="run2",
        started_at=FINISHED_AT - 0.01,
        duration_seconds=0.01,
        target_spec="head",
        plan=plan,
        heads_before=(revision,),
        heads_after=(revision,),
    )


def unavailable_result() -> Result:
    return Result(
        outcome=Outcome.UNAVAILABLE,
        run_id="run3",
        started_at=FINISHED_AT - 2,
        duration_seconds=2.0,
        target_spec="head",
        error="cannot connect to postgresql+psycopg://app:***@db/app",
    )


def refused_result() -> Result:
    plan = Plan(
        PlanKind.REFUSED,
        current=("zz99",),
        target=("r2",),
        reason=RefusalReason.UNKNOWN_REVISION,
        message="database is at revision zz99, which this image does not contain",
    )
    return Result(
        outcome=Outcome.REFUSED,
        run_id="run4",
        started_at=FINISHED_AT - 0.01,
        duration_seconds=0.01,
        target_spec="head",
        plan=plan,
        heads_before=("zz99",),
        heads_after=("zz99",),
        error=plan.message,
    )


def failed_result() -> Result:
    """r1 committed, then r2 raised: one revision is still pending."""
    plan = Plan(PlanKind.UPGRADE, current=(), target=("r2",), steps=(Step("r1"), Step("r2")))
    return Result(
        outcome=Outcome.FAILED,
        run_id="run5",
        started_at=FINISHED_AT - 1,
        duration_seconds=1.0,
        target_spec="head",
        plan=plan,
        applied=(AppliedStep("r1", "one", "upgrade", 0.5),),
        heads_before=(),
        heads_after=("r1",),
        error="revision r2 (two) failed: RuntimeError: boom",
    )


def test_every_outcome_series_exists_before_the_first_pass(registry: CollectorRegistry) -> None:
    """schemad_reconcile_total has a zero series for each outcome from the start."""
    Metrics(registry)
    expected = {outcome.value: 0.0 for outcome in Outcome}
    actual = {
        outcome.value: value(registry, "schemad_reconcile_total", outcome=outcome.value)
        for outcome in Outcome
    }
    assert expected == actual


def test_both_direction_series_exist_before_the_first_pass(registry: CollectorRegistry) -> None:
    """Applied counts and apply-duration histograms exist for both directions from the start."""
    Metrics(registry)
    actual = {
        direction: (
            value(registry, "schemad_revisions_applied_total", direction=direction),
            value(registry, "schemad_revision_apply_duration_seconds_count", direction=direction),
        )
        for direction in DIRECTIONS
    }
    assert actual == {"upgrade": (0.0, 0.0), "downgrade": (0.0, 0.0)}


def test_build_info_names_the_version(registry: CollectorRegistry) -> None:
    """schemad_build_info is 1 with the package version as its label."""
    Metrics(registry)
    assert value(registry, "schemad_build_info", version=__version__) == 1.0


def test_unlabelled_series_exist_before_the_first_pass(registry: CollectorRegistry) -> None:
    """Gauges and histograms without labels are exported (at zero) from the start."""
    Metrics(registry)
    names = [
        "schemad_reconcile_duration_seconds_count",
        "schemad_pending_revisions",
        "schemad_at_target",
        "schemad_last_reconcile_timestamp_seconds",
        "schemad_last_success_timestamp_seconds",
        "schemad_lock_wait_seconds_count",
        "schemad_lock_waiting",
        "schemad_database_up",
        "schemad_interval_seconds",
    ]
    assert {name: 0.0 for name in names} == {name: value(registry, name) for name in names}


def test_applied_pass(registry: CollectorRegistry, metrics: Metrics) -> None:
    """An applied pass counts its revisions and leaves the database at the target."""
    metrics.observe(applied_result(), finished_at=FINISHED_AT)
    expected = {
        "reconcile_applied": 1.0,
        "revisions_upgrade": 2.0,
        "revisions_downgrade": 0.0,
        "apply_count": 2.0,
        "apply_sum": 2.5,
        "pass_count": 1.0,
        "lock_wait_count": 1.0,
        "lock_wait_sum": 0.25,
        "at_target": 1.0,
        "pending": 0.0,
        "current_r2": 1.0,
        "target_r2": 1.0,
        "last_reconcile": FINISHED_AT,
        "last_success": FINISHED_AT,
        "database_up": 1.0,
    }
    actual = {
        "reconcile_applied": value(registry, "schemad_reconcile_total", outcome="applied"),
        "revisions_upgrade": value(
            registry, "schemad_revisions_applied_total", direction="upgrade"
        ),
        "revisions_downgrade": value(
            registry, "schemad_revisions_applied_total", direction="downgrade"
        ),
        "apply_count": value(
            registry, "schemad_revision_apply_duration_seconds_count", direction="upgrade"
        ),
        "apply_sum": value(
            registry, "schemad_revision_apply_duration_seconds_sum", direction="upgrade"
        ),
        "pass_count": value(registry, "schemad_reconcile_duration_seconds_count"),
        "lock_wait_count": value(registry, "schemad_lock_wait_seconds_count"),
        "lock_wait_sum": value(registry, "schemad_lock_wait_seconds_sum"),
        "at_target": value(registry, "schemad_at_target"),
        "pending": value(registry, "schemad_pending_revisions"),
        "current_r2": value(registry, "schemad_current_revision_info", revision="r2"),
        "target_r2": value(registry, "schemad_target_revision_info", revision="r2"),
        "last_reconcile": value(registry, "schemad_last_reconcile_timestamp_seconds"),
        "last_success": value(registry, "schemad_last_success_timestamp_seconds"),
        "database_up": value(registry, "schemad_database_up"),
    }
    assert expected == actual


def test_in_sync_pass(registry: CollectorRegistry, metrics: Metrics) -> None:
    """An in-sync pass counts as in_sync, applies nothing and waits for no lock."""
    metrics.observe(in_sync_result(), finished_at=FINISHED_AT)
    expected = (1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, FINISHED_AT, 1.0)
    actual = (
        value(registry, "schemad_reconcile_total", outcome="in_sync"),
        value(registry, "schemad_revisions_applied_total", direction="upgrade"),
        value(registry, "schemad_lock_wait_seconds_count"),
        value(registry, "schemad_at_target"),
        value(registry, "schemad_pending_revisions"),
        value(registry, "schemad_current_revision_info", revision="r2"),
        value(registry, "schemad_target_revision_info", revision="r2"),
        value(registry, "schemad_last_success_timestamp_seconds"),
        value(registry, "schemad_database_up"),
    )
    assert expected == actual


def test_current_revision_info_keeps_only_the_latest_revision(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    """When the database moves on, the old revision's _info series disappears."""
    metrics.observe(in_sync_result("r1"), finished_at=FINISHED_AT)
    metrics.observe(in_sync_result("r2"), finished_at=FINISHED_AT + 1)
    expected = (None, 1.0)
    actual = (
        value(registry, "schemad_current_revision_info", revision="r1"),
        value(registry, "schemad_current_revision_info", revision="r2"),
    )
    assert expected == actual


def test_empty_database_is_reported_as_base(registry: CollectorRegistry, metrics: Metrics) -> None:
    """A database with no revision has current revision 'base'."""
    plan = Plan(PlanKind.IN_SYNC, current=(), target=(), schema_ready=True)
    result = Result(
        outcome=Outcome.IN_SYNC,
        run_id="r",
        started_at=FINISHED_AT,
        duration_seconds=0.0,
        target_spec="base",
        plan=plan,
    )
    metrics.observe(result, finished_at=FINISHED_AT)
    assert value(registry, "schemad_current_revision_info", revision="base") == 1.0


def test_unavailable_pass(registry: CollectorRegistry, metrics: Metrics) -> None:
    """An unreachable database: database_up 0, not at target, last known revisions kept."""
    metrics.observe(in_sync_result(), finished_at=FINISHED_AT)
    metrics.observe(unavailable_result(), finished_at=FINISHED_AT + 10)
    expected = {
        "unavailable": 1.0,
        "database_up": 0.0,
        "at_target": 0.0,
        "current_r2": 1.0,
        "last_reconcile": FINISHED_AT + 10,
        "last_success": FINISHED_AT,
    }
    actual = {
        "unavailable": value(registry, "schemad_reconcile_total", outcome="unavailable"),
        "database_up": value(registry, "schemad_database_up"),
        "at_target": value(registry, "schemad_at_target"),
        "current_r2": value(registry, "schemad_current_revision_info", revision="r2"),
        "last_reconcile": value(registry, "schemad_last_reconcile_timestamp_seconds"),
        "last_success": value(registry, "schemad_last_success_timestamp_seconds"),
    }
    assert expected == actual


def test_database_up_returns_after_an_outage(registry: CollectorRegistry, metrics: Metrics) -> None:
    """database_up goes back to 1 with the first pass that reaches the database."""
    metrics.observe(unavailable_result(), finished_at=FINISHED_AT)
    metrics.observe(in_sync_result(), finished_at=FINISHED_AT + 1)
    assert (value(registry, "schemad_database_up"), value(registry, "schemad_at_target")) == (
        1.0,
        1.0,
    )


def test_refused_pass(registry: CollectorRegistry, metrics: Metrics) -> None:
    """A refused plan: database reachable, not at target, its revision and target shown."""
    metrics.observe(in_sync_result(), finished_at=FINISHED_AT)
    metrics.observe(refused_result(), finished_at=FINISHED_AT + 5)
    expected = {
        "refused": 1.0,
        "database_up": 1.0,
        "at_target": 0.0,
        "current_zz99": 1.0,
        "current_r2": None,
        "target_r2": 1.0,
        "last_reconcile": FINISHED_AT + 5,
        "last_success": FINISHED_AT,
    }
    actual = {
        "refused": value(registry, "schemad_reconcile_total", outcome="refused"),
        "database_up": value(registry, "schemad_database_up"),
        "at_target": value(registry, "schemad_at_target"),
        "current_zz99": value(registry, "schemad_current_revision_info", revision="zz99"),
        "current_r2": value(registry, "schemad_current_revision_info", revision="r2"),
        "target_r2": value(registry, "schemad_target_revision_info", revision="r2"),
        "last_reconcile": value(registry, "schemad_last_reconcile_timestamp_seconds"),
        "last_success": value(registry, "schemad_last_success_timestamp_seconds"),
    }
    assert expected == actual


def test_failed_pass_counts_only_the_revisions_left(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    """After a failure part-way, pending is what is still missing, not the whole plan."""
    metrics.observe(failed_result(), finished_at=FINISHED_AT)
    expected = (1.0, 1.0, 0.0, 1.0, 1.0)
    actual = (
        value(registry, "schemad_reconcile_total", outcome="failed"),
        value(registry, "schemad_pending_revisions"),
        value(registry, "schemad_at_target"),
        value(registry, "schemad_current_revision_info", revision="r1"),
        value(registry, "schemad_revisions_applied_total", direction="upgrade"),
    )
    assert expected == actual


def test_lock_waiting_is_cleared_when_a_pass_ends(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    """schemad_lock_waiting set during a wait goes back to 0 at the end of the pass."""
    metrics.lock_waiting.set(1)
    metrics.observe(applied_result(), finished_at=FINISHED_AT)
    assert value(registry, "schemad_lock_waiting") == 0.0
