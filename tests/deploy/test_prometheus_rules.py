"""The shipped alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
from typing import Any

import yaml
from deploy_support import DEPLOY, RULES, exported_metric_names, metrics_in, promtool, run

from schemad.model import Outcome

RULE_TESTS = DEPLOY / "prometheus" / "schemad-rules.test.yaml"


def alerts() -> list[dict[str, Any]]:
    """Every alert rule in the shipped file."""
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the file (PromQL, templates, durations)."""
    result = run([promtool(), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes every alert test."""
    result = run([promtool(), "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a unit test where it fires and one where it stays silent."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    names = {a["alert"] for a in alerts()}
    assert (names, names) == (firing, silent)


def test_rules_read_only_metrics_schemad_exports() -> None:
    """Every schemad_* series in an alert exists on a fresh registry."""
    exported = exported_metric_names()
    unknown = {name for rule in alerts() for name in metrics_in(rule["expr"])} - exported
    assert set() == unknown


def test_rules_match_only_real_outcomes() -> None:
    """Outcome labels in the alerts are values of schemad's Outcome."""
    used = set()
    for rule in alerts():
        for matcher in re.findall(r'outcome=~?"([^"]+)"', rule["expr"]):
            used |= set(matcher.split("|"))
    assert used <= {o.value for o in Outcome}


def test_every_alert_has_severity_summary_and_description() -> None:
    """Alerts carry what Alertmanager routes and humans read."""
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_daemon_alerts_select_job_schemad() -> None:
    """SchemadDown and SchemadAbsent select the scrape job the chart and compose name."""
    expressions = {rule["alert"]: rule["expr"] for rule in alerts()}
    assert expressions["SchemadDown"] == 'up{job="schemad"} == 0'
    assert expressions["SchemadAbsent"] == 'absent(up{job="schemad"})'


def test_compose_prometheus_config_is_valid_and_loads_the_rules() -> None:
    """`promtool check config` accepts deploy/prometheus/prometheus.yml and its rule file."""
    config = DEPLOY / "prometheus" / "prometheus.yml"
    result = run([promtool(), "check", "config", str(config)])
    jobs = [job["job_name"] for job in yaml.safe_load(config.read_text())["scrape_configs"]]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    assert jobs == ["schemad"]
