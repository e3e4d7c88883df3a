"""deploy/docker-compose.yml: the local try-out wires real settings and files.

No container engine runs here, so the file is checked for what can go wrong
without one: settings, paths, the scrape target and the rules.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, ROOT, load_settings_from

from schemad.settings import setting_names

COMPOSE = DEPLOY / "docker-compose.yml"


def services() -> dict[str, Any]:
    """The compose file's services."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return loaded


def test_compose_runs_postgres_schemad_and_prometheus() -> None:
    """The three services of the try-out are there."""
    assert sorted(services()) == ["postgres", "prometheus", "schemad"]


def test_schemad_is_built_from_the_repository_dockerfile() -> None:
    """The schemad service builds this repository's Dockerfile and runs the daemon."""
    schemad = services()["schemad"]
    context = (DEPLOY / schemad["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / schemad["build"]["dockerfile"]).is_file()
    assert schemad["command"] == ["run"]
    assert schemad["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_schemad_environment_is_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SCHEMAD_* variable is a setting, and Settings accepts the defaults given."""
    env = {
        name: str(value).split(":-", 1)[-1].rstrip("}")
        if str(value).startswith("${")
        else str(value)
        for name, value in services()["schemad"]["environment"].items()
    }
    assert set(env) <= set(setting_names())
    settings = load_settings_from(env, monkeypatch)
    assert settings.url().host == "postgres"


def test_prometheus_scrapes_schemad_with_the_shipped_rules() -> None:
    """Prometheus' mounted config and rules exist and point at the schemad service."""
    prometheus = services()["prometheus"]
    mounted = [volume.split(":")[0] for volume in prometheus["volumes"]]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    port = services()["schemad"]["ports"][0].rsplit(":", 1)[-1]
    assert all((DEPLOY / path).is_file() for path in mounted)
    assert [f"schemad:{port}"] == targets


def test_ports_are_published_on_loopback_only() -> None:
    """The try-out does not expose the database or the daemon beyond this machine."""
    for service in services().values():
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", []))
