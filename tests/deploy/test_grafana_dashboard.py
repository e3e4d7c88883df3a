"""The Grafana dashboard: every PromQL expression parsed by the real promtool.

Nothing validates a dashboard against Grafana's schema offline; what can be
checked is its structure and that each query is valid PromQL over metrics
schemad really exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, exported_metric_names, metrics_in, promtool, run

DASHBOARD = DEPLOY / "grafana" / "schemad.json"
# What the dashboard is for (issue 4): revision, pending, outcomes, durations, lock, reachability.
MUST_SHOW = {
    "schemad_current_revision_info",
    "schemad_target_revision_info",
    "schemad_pending_revisions",
    "schemad_at_target",
    "schemad_reconcile_total",
    "schemad_reconcile_duration_seconds_bucket",
    "schemad_revision_apply_duration_seconds_bucket",
    "schemad_lock_wait_seconds_bucket",
    "schemad_lock_waiting",
    "schemad_database_up",
}
# Grafana's variables, replaced by values PromQL accepts.
VARIABLES = {
    r"\$__rate_interval|\$__interval|\$__range": "5m",
    r"\$\{?job\}?": "schemad",
    r"\$\{?instance\}?": ".*",
}


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and query variable."""
    found = []
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert selector, f"variable {variable['name']}: unexpected query {query}"
            found.append((f"variable {variable['name']}", selector.group(1)))
    return found


def substitute(expr: str) -> str:
    """The expression with Grafana's variables replaced."""
    for pattern, value in VARIABLES.items():
        expr = re.sub(pattern, value, expr)
    return expr


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    """Each query, wrapped as a recording rule, passes `promtool check rules`."""
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(expressions())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_expressions_read_only_metrics_schemad_exports() -> None:
    """Every schemad_* series the dashboard queries exists on a fresh registry."""
    used = {name for _, expr in expressions() for name in metrics_in(expr)}
    assert set() == used - exported_metric_names()


def test_dashboard_shows_what_on_call_needs() -> None:
    """Revision, pending count, outcomes, durations, lock waits and reachability are on it."""
    used = {name for _, expr in expressions() for name in metrics_in(expr)}
    assert set() == MUST_SHOW - used


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    """Panel ids are unique and every panel lies within Grafana's 24 columns."""
    all_panels = list(panels(dashboard()["panels"]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in all_panels)


def test_queries_use_the_datasource_variable() -> None:
    """Every query panel reads from ${datasource}, so the dashboard imports anywhere."""
    for panel in panels(dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


@pytest.mark.parametrize("field", ["uid", "title", "schemaVersion"])
def test_dashboard_has_identity(field: str) -> None:
    """uid, title and schemaVersion are set (provisioning keys on uid)."""
    assert dashboard()[field]
