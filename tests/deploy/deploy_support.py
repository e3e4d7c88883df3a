"""Shared helpers for the deploy tests: tools, Kubernetes validation, pod checks.

A tool that is missing skips the test with a reason, except under CI=true,
where it fails: CI must run every check.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "schemad"
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "schemad-rules.yaml"
KUBE_VERSION = "1.30"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Custom resources the Kubernetes schemas do not know; they are checked against
# the prometheus-operator models instead.
CRD_KINDS = frozenset(
    {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
)
DOWNWARD_API = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "NODE_NAME": "spec.nodeName",
}


def missing(reason: str) -> NoReturn:
    """Skip for a missing tool, or fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing tool fails instead of skipping)")
    pytest.skip(reason)


def import_tool(module: str, package: str) -> ModuleType:
    """Import a test tool's module, or skip (fail in CI) naming its package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{package} is not installed ({exc}); pip install -e '.[test]'")


def tool(name: str, package: str) -> str:
    """Path of a command: the virtualenv's own first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        missing(f"`{name}` is not installed; it comes from {package}")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on exit status."""
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120, **kwargs)


@functools.cache
def _prometheus_operator_models() -> dict[str, Any]:
    models = import_tool(
        "cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator"
    )
    return {"ServiceMonitor": models.ServiceMonitor, "PrometheusRule": models.PrometheusRule}


def validate_object(doc: dict[str, Any]) -> None:
    """Validate one object against the Kubernetes schemas (strict) or, for
    ServiceMonitor/PrometheusRule, the prometheus-operator models.

    The models ignore unknown fields, so every field of the object must also
    come back in the model's dump: a misspelt field is dropped and shows up here.
    """
    kind = (doc.get("apiVersion"), doc.get("kind"))
    if kind in CRD_KINDS:
        model = _prometheus_operator_models()[doc["kind"]].model_validate(doc)
        dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
        assert _dropped(doc, dumped) == [], f"{doc['kind']} has fields the CRD does not know"
        return
    kubernetes_validate = import_tool("kubernetes_validate", "kubernetes-validate")
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths present in `given` that are missing from `kept`."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [
            p
            for key, value in given.items()
            for p in (
                _dropped(value, kept[key], f"{path}.{key}")
                if key in kept
                else ([] if value in (None, {}, []) else [f"{path}.{key}"])
            )
        ]
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=True))
            for p in _dropped(g, k, f"{path}[{i}]")
        ]
    return []


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Job or Deployment."""
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a pod spec, init containers first."""
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_names(container: dict[str, Any]) -> list[str]:
    """Names of the container's `env` entries, in order."""
    return [entry["name"] for entry in container.get("env", [])]


def setting_env_names(container: dict[str, Any]) -> set[str]:
    """The SCHEMAD_* variables a container sets through `env`."""
    return {name for name in env_names(container) if name.startswith("SCHEMAD_")}


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env entries that carry a literal value."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def assert_hardened(spec: dict[str, Any], container: dict[str, Any]) -> None:
    """The pod and container run non-root, read-only, without privileges, with
    /tmp writable, and without Kubernetes' service-link variables."""
    assert spec.get("enableServiceLinks") is False
    pod_security = spec.get("securityContext", {})
    security = container["securityContext"]
    assert True in (pod_security.get("runAsNonRoot"), security.get("runAsNonRoot"))
    seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile")
    assert seccomp == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp_mounts) == 1
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[tmp_mounts[0]["name"]]


def assert_downward_api(container: dict[str, Any]) -> None:
    """POD_NAME, POD_NAMESPACE and NODE_NAME come from the downward API."""
    refs = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert {k: refs.get(k) for k in DOWNWARD_API} == DOWNWARD_API


def http_probe(container: dict[str, Any], probe: str) -> tuple[str, int]:
    """(path, port number) of an HTTP probe, resolving a named port."""
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        port = ports[port]
    return get["path"], port


def exported_metric_names() -> set[str]:
    """Every series name schemad's /metrics can carry (counters with _total,
    histograms with _bucket/_sum/_count), from a fresh registry; with many
    targets the fan-out metrics join them."""
    from prometheus_client import CollectorRegistry

    from schemad.metrics import FleetMetrics, Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    FleetMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def metrics_in(expr: str) -> set[str]:
    """The schemad_* metric names a PromQL expression reads."""
    import re

    return set(re.findall(r"\bschemad_[a-z0-9_]+\b", expr))


def promtool() -> str:
    """The promtool command (Debian package `prometheus`)."""
    return tool("promtool", "the Debian package `prometheus` (apt-get install prometheus)")


def load_settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """schemad's Settings loaded from exactly these SCHEMAD_* variables."""
    from schemad.settings import load_settings

    for name in [n for n in os.environ if n.upper().startswith("SCHEMAD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()
