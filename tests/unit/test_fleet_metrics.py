"""Fan-out metrics: counts by state, and per-target series only where needed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from schemad.metrics import FleetMetrics


def series(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every schemad_target_not_at_target sample by (target, state)."""
    return {
        (sample.labels["target"], sample.labels["state"]): sample.value
        for metric in registry.collect()
        if metric.name == "schemad_target_not_at_target"
        for sample in metric.samples
    }


def test_states_are_counted_and_skipped_counts_as_behind() -> None:
    """schemad_targets{state} counts each state; skipped is behind; every state exists."""
    registry = CollectorRegistry()
    metrics = FleetMetrics(registry)
    assert registry.get_sample_value("schemad_targets", {"state": "refused"}) == 0
    metrics.observe(
        [("a", "at_target"), ("b", "failed"), ("c", "skipped"), ("d", "behind")], applied=1
    )
    counts = {
        state: registry.get_sample_value("schemad_targets", {"state": state})
        for state in ("at_target", "behind", "failed", "refused", "unavailable")
    }
    assert counts == {"at_target": 1, "behind": 2, "failed": 1, "refused": 0, "unavailable": 0}
    assert registry.get_sample_value("schemad_targets_applied") == 1


def test_per_target_series_are_limited_and_replaced_each_pass() -> None:
    """Only targets not at target get a series, at most the limit, and a target
    back at its target loses its series on the next pass."""
    registry = CollectorRegistry()
    metrics = FleetMetrics(registry, series_limit=2)
    metrics.observe(
        [("a", "failed"), ("b", "unavailable"), ("c", "behind"), ("d", "at_target")], applied=0
    )
    assert series(registry) == {("a", "failed"): 1, ("b", "unavailable"): 1}
    metrics.observe([("a", "at_target"), ("b", "at_target"), ("c", "skipped")], applied=2)
    assert series(registry) == {("c", "behind"): 1}
