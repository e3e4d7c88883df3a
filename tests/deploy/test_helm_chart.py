"""The Helm chart, rendered and linted by the real Helm SDK (helm-python-sdk).

Scenarios are the chart's own ci/*-values.yaml files (what chart-testing
lints too); every rendered object is validated against the Kubernetes 1.30
schemas in strict mode.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    CHART,
    ROOT,
    RULES,
    assert_downward_api,
    assert_hardened,
    containers,
    http_probe,
    import_tool,
    literal_env,
    load_settings_from,
    pod_spec,
    setting_env_names,
    validate_object,
)

import schemad
from schemad.notices import EVENTS
from schemad.settings import Settings, setting_names

SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)
URL = "postgresql+psycopg://app:s3cret@db:5432/app"
# Where the chart's default deliberately differs from schemad's own (values.yaml says why).
# The chart leaves the version table unset, so that schemad follows env.py.
CHART_DEFAULTS = {"lock_wait_seconds": 180.0, "log_format": "json", "version_table": None}
# Settings that come from `database` and `notifications.webhook`, not from `config`.
URL_SETTINGS = {"database_url", "database_url_file"}
WEBHOOK_SETTINGS = {"webhook_url", "webhook_url_file", "webhook_events", "webhook_timeout_seconds"}
# Set from job.shards and each pod's completion index.
SHARD_SETTINGS = {"shard_index", "shard_count"}
NOT_IN_CONFIG = URL_SETTINGS | WEBHOOK_SETTINGS | SHARD_SETTINGS
HOOK = "https://hooks.slack.com/services/T0000/B0000/XXXXs3cretXXXX"


@pytest.fixture(scope="module")
def helm() -> Any:
    """The helm_python module, its Go logging silenced."""
    module = import_tool("helm_python", "helm-python-sdk")
    module.disable_logging()
    return module


@pytest.fixture(scope="module")
def chart(helm: Any) -> Iterator[Any]:
    """The chart, loaded once."""
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


def scenario_values(name: str) -> dict[str, Any]:
    """The values of one ci/ scenario."""
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return values


def render(chart: Any, values: dict[str, Any], name: str = "rel") -> list[dict[str, Any]]:
    """Every object the chart renders with these values."""
    rendered = chart.render(values, name=name, namespace="apps")
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of a kind."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job or Deployment."""
    found = [o for o in objects if o["kind"] in ("Job", "Deployment")]
    assert len(found) == 1
    return found[0]


def camel_to_setting(key: str) -> str:
    """config key (camelCase) -> Settings field (snake_case), as the chart's snakecase does."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def render_error(helm: Any, chart: Any, values: dict[str, Any]) -> str:
    """The message of the render failure these values cause."""
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name="rel", namespace="apps")
    return str(caught.value)


# -- lint and schema validation ------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chart_lints_strictly_clean(helm: Any, scenario: str) -> None:
    """`helm lint --strict` for Kubernetes 1.30 reports no warning or error."""
    report = helm.lint(
        CHART, scenario_values(scenario), strict=True, kube_version="v1.30.0", namespace="apps"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert (problems, report["errors"]) == ([], [])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_for_kubernetes_1_30(chart: Any, scenario: str) -> None:
    """Each object validates strictly (CRDs against the prometheus-operator models)."""
    objects = render(chart, scenario_values(scenario))
    assert objects
    for doc in objects:
        validate_object(doc)


# -- the shapes ----------------------------------------------------------------------


def test_job_mode_renders_a_pre_install_pre_upgrade_hook_job(chart: Any) -> None:
    """The Job runs `schemad upgrade` as a hook that never blocks the next release."""
    objects = render(chart, scenario_values("job"))
    job = one(objects, "Job")
    annotations = job["metadata"]["annotations"]
    spec = job["spec"]
    container = pod_spec(job)["containers"][0]
    assert {"Job", "Secret"} == {o["kind"] for o in objects}
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert annotations["argocd.argoproj.io/sync-wave"] == "-1"
    assert spec["activeDeadlineSeconds"] < 300  # Helm's default --timeout is 5m
    assert 0 <= spec["backoffLimit"] <= 3
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert container["args"] == ["upgrade"]
    assert "livenessProbe" not in container


def test_job_shards_render_an_indexed_job_whose_pods_know_their_share(chart: Any) -> None:
    """job.shards > 1: an Indexed Job (completions = parallelism = shards) whose pods get
    SCHEMAD_SHARD_COUNT and their completion index as SCHEMAD_SHARD_INDEX; 1 is a plain Job."""
    sharded = one(render(chart, scenario_values("job-shards")), "Job")
    env = {e["name"]: e for e in pod_spec(sharded)["containers"][0]["env"]}
    plain = one(render(chart, scenario_values("job")), "Job")
    plain_env = {e["name"] for e in pod_spec(plain)["containers"][0]["env"]}
    spec = sharded["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert env["SCHEMAD_SHARD_COUNT"]["value"] == "4"
    assert env["SCHEMAD_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert "like 'tenant\\_%'" in env["SCHEMAD_TARGETS_QUERY"]["value"]
    assert not {"completionMode", "completions", "parallelism"} & set(plain["spec"])
    assert not {"SCHEMAD_SHARD_COUNT", "SCHEMAD_SHARD_INDEX"} & plain_env


def test_job_mode_secret_is_a_hook_created_before_the_job(chart: Any) -> None:
    """Hooks run before ordinary resources exist, so the Job's Secret is an earlier hook."""
    objects = render(chart, scenario_values("job"))
    job = one(objects, "Job")["metadata"]["annotations"]
    secret = one(objects, "Secret")["metadata"]["annotations"]
    assert secret["helm.sh/hook"] == job["helm.sh/hook"]
    assert int(secret["helm.sh/hook-weight"]) < int(job["helm.sh/hook-weight"])
    assert int(secret["argocd.argoproj.io/sync-wave"]) < int(job["argocd.argoproj.io/sync-wave"])


def test_job_mode_without_argocd_has_no_argocd_annotations(chart: Any) -> None:
    """job.argocd.enabled=false leaves only Helm's hook annotations."""
    job = one(render(chart, scenario_values("job-existing-secret-file")), "Job")
    assert not [k for k in job["metadata"]["annotations"] if k.startswith("argocd.")]


def test_deployment_mode_runs_the_daemon_with_probes_on_its_endpoints(chart: Any) -> None:
    """Liveness and startup on /healthz, readiness on /readyz, at SCHEMAD_HTTP_PORT."""
    objects = render(chart, scenario_values("deployment"))
    deployment = one(objects, "Deployment")
    container = pod_spec(deployment)["containers"][0]
    port = int(literal_env(container)["SCHEMAD_HTTP_PORT"])
    probes = {
        p: http_probe(container, p) for p in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert {"Deployment", "Service"} == {o["kind"] for o in objects}
    assert deployment["spec"]["replicas"] == 1
    assert container["args"] == ["run"]
    assert {
        "livenessProbe": ("/healthz", port),
        "readinessProbe": ("/readyz", port),
        "startupProbe": ("/healthz", port),
    } == probes
    assert "resources" not in container


def test_probes_follow_a_changed_http_port(chart: Any) -> None:
    """With config.httpPort=9464 the containerPort, probes and env all say 9464."""
    deployment = one(render(chart, scenario_values("deployment-full")), "Deployment")
    container = pod_spec(deployment)["containers"][0]
    assert literal_env(container)["SCHEMAD_HTTP_PORT"] == "9464"
    assert [p["containerPort"] for p in container["ports"]] == [9464]
    assert http_probe(container, "readinessProbe") == ("/readyz", 9464)


def test_service_reaches_the_daemon_port(chart: Any) -> None:
    """The Service selects the daemon's pods and targets its named HTTP port."""
    objects = render(chart, scenario_values("deployment"))
    service = one(objects, "Service")
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in pod_spec(deployment)["containers"][0]["ports"]}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_none_mode_renders_only_the_secret(chart: Any) -> None:
    """mode=none deploys no workload, just the Secret for the named templates."""
    objects = render(chart, scenario_values("none"))
    assert [o["kind"] for o in objects] == ["Secret"]
    assert "helm.sh/hook" not in objects[0]["metadata"].get("annotations", {})


@pytest.mark.parametrize(
    "scenario", ["job", "job-existing-secret-file", "deployment", "deployment-full"]
)
def test_pods_are_hardened(chart: Any, scenario: str) -> None:
    """Non-root, read-only root, no privileges, /tmp on an emptyDir, no service links."""
    spec = pod_spec(workload(render(chart, scenario_values(scenario))))
    for container in containers(spec):
        assert_hardened(spec, container)
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("scenario", ["job", "deployment-full"])
def test_pods_get_their_identity_from_the_downward_api(chart: Any, scenario: str) -> None:
    """POD_NAME, POD_NAMESPACE and NODE_NAME are set, not SCHEMAD_-prefixed."""
    container = pod_spec(workload(render(chart, scenario_values(scenario))))["containers"][0]
    assert_downward_api(container)


def test_pods_carry_image_and_chart_identity_for_the_history(chart: Any) -> None:
    """CONTAINER_IMAGE, HELM_CHART and APP_VERSION reach schemad's IdentitySettings."""
    container = pod_spec(workload(render(chart, scenario_values("job"))))["containers"][0]
    env = literal_env(container)
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    expected = (
        True,
        f"{chart_meta['name']}-{chart_meta['version']}",
        str(chart_meta["appVersion"]),
    )
    actual = (
        ":" in env["CONTAINER_IMAGE"] or "@" in env["CONTAINER_IMAGE"],
        env["HELM_CHART"],
        env["APP_VERSION"],
    )
    assert actual == expected


# -- settings: the env vars are exactly schemad's ---------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chart_sets_only_real_settings(chart: Any, scenario: str) -> None:
    """Every SCHEMAD_* variable the chart sets is a schemad setting."""
    objects = render(chart, scenario_values(scenario))
    for doc in objects:
        if doc["kind"] in ("Job", "Deployment"):
            for container in containers(pod_spec(doc)):
                assert setting_env_names(container) <= set(setting_names())


def test_every_setting_is_reachable_from_values(chart: Any) -> None:
    """Across the URL-as-env and URL-as-file shapes, the chart can set every setting."""
    full = scenario_values("deployment-full")
    as_file = {
        **full,
        "database": {"existingSecret": "app-db", "mountAsFile": True},
        "notifications": {"webhook": {"existingSecret": "hook", "url": "", "mountAsFile": True}},
    }
    reached: set[str] = set()
    for values in (full, as_file):
        container = pod_spec(one(render(chart, values), "Deployment"))["containers"][0]
        reached |= setting_env_names(container)
    sharded = one(render(chart, scenario_values("job-shards")), "Job")
    reached |= setting_env_names(pod_spec(sharded)["containers"][0])
    assert sorted(setting_names()) == sorted(reached)


def test_config_keys_are_the_settings() -> None:
    """values.yaml's config has one key per setting (bar the URL), named after it."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {camel_to_setting(k) for k in values["config"]}
    assert sorted(set(Settings.model_fields) - NOT_IN_CONFIG) == sorted(keys)


def test_config_defaults_are_schemads_defaults() -> None:
    """Defaults in values.yaml equal the Settings defaults, except the documented ones.

    An unset optional setting is "" (strings) or null (numbers) in values.yaml.
    """
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_defaults = {
        camel_to_setting(k): None if v == "" else v for k, v in values["config"].items()
    }
    expected = {
        field: CHART_DEFAULTS.get(field, info.default)
        for field, info in Settings.model_fields.items()
        if field not in NOT_IN_CONFIG
    }
    assert expected == chart_defaults


def test_webhook_defaults_are_schemads_defaults() -> None:
    """notifications.webhook's events and timeout default to SCHEMAD_WEBHOOK_*'s defaults."""
    hook = yaml.safe_load((CHART / "values.yaml").read_text())["notifications"]["webhook"]
    fields = Settings.model_fields
    expected = (fields["webhook_events"].default, fields["webhook_timeout_seconds"].default)
    assert expected == (",".join(hook["events"]), hook["timeoutSeconds"])


@pytest.mark.parametrize("scenario", ["job", "job-existing-secret-file", "deployment-full"])
def test_rendered_settings_load_in_schemad(
    chart: Any, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment the chart renders is accepted by schemad's own Settings."""
    values = scenario_values(scenario)
    container = pod_spec(workload(render(chart, values)))["containers"][0]
    env = {k: v for k, v in literal_env(container).items() if k.startswith("SCHEMAD_")}
    if "SCHEMAD_DATABASE_URL" in setting_env_names(container):
        env["SCHEMAD_DATABASE_URL"] = URL  # the secretKeyRef, resolved
    settings = load_settings_from(env, monkeypatch)
    expected_target = values.get("config", {}).get("targetRevision", "head")
    assert expected_target == settings.target_revision


def test_a_fully_configured_daemon_gets_every_value(
    chart: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each config value arrives in Settings unchanged."""
    values = scenario_values("deployment-full")
    container = pod_spec(one(render(chart, values), "Deployment"))["containers"][0]
    env = {k: v for k, v in literal_env(container).items() if k.startswith("SCHEMAD_")}
    loaded = load_settings_from({**env, "SCHEMAD_DATABASE_URL": URL}, monkeypatch).model_dump()
    got = {camel_to_setting(k): loaded[camel_to_setting(k)] for k in values["config"]}
    want = {camel_to_setting(k): v for k, v in values["config"].items()}
    got = {k: str(v) if isinstance(v, Path) else v for k, v in got.items()}
    assert want == got


def test_a_fully_configured_daemon_gets_the_webhook_values(
    chart: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notifications.webhook's events and timeout arrive in Settings unchanged."""
    values = scenario_values("deployment-full")
    container = pod_spec(one(render(chart, values), "Deployment"))["containers"][0]
    env = {k: v for k, v in literal_env(container).items() if k.startswith("SCHEMAD_")}
    loaded = load_settings_from({**env, "SCHEMAD_DATABASE_URL": URL}, monkeypatch)
    hook = values["notifications"]["webhook"]
    expected = (tuple(sorted(hook["events"])), float(hook["timeoutSeconds"]))
    assert expected == (tuple(sorted(loaded.webhook_event_names)), loaded.webhook_timeout_seconds)


def test_url_from_an_existing_secret_uses_secret_key_ref(chart: Any) -> None:
    """database.existingSecret + secretKey becomes a secretKeyRef, and no Secret is made."""
    values = {"mode": "deployment", "database": {"existingSecret": "app-db", "secretKey": "dsn"}}
    objects = render(chart, values)
    container = pod_spec(one(objects, "Deployment"))["containers"][0]
    url = next(e for e in container["env"] if e["name"] == "SCHEMAD_DATABASE_URL")
    assert url["valueFrom"] == {"secretKeyRef": {"name": "app-db", "key": "dsn"}}
    assert "Secret" not in {o["kind"] for o in objects}


def test_url_from_values_goes_into_a_secret_never_into_the_pod(chart: Any) -> None:
    """database.url is stored base64 in the chart's Secret; the pod spec holds no password."""
    objects = render(chart, {"mode": "deployment", "database": {"url": URL}})
    secret = one(objects, "Secret")
    deployment = one(objects, "Deployment")
    assert "url" in secret["data"]
    assert "s3cret" not in yaml.safe_dump(deployment)


def test_url_as_a_file_mounts_the_secret(chart: Any) -> None:
    """mountAsFile points SCHEMAD_DATABASE_URL_FILE at the mounted Secret's key."""
    job = one(render(chart, scenario_values("job-existing-secret-file")), "Job")
    spec = pod_spec(job)
    container = spec["containers"][0]
    path = literal_env(container)["SCHEMAD_DATABASE_URL_FILE"]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "SCHEMAD_DATABASE_URL" not in setting_env_names(container)
    assert volume["secret"]["secretName"] == "app-db"
    assert [{"key": "dsn", "path": Path(path).name}] == volume["secret"]["items"]


def test_changing_the_url_rolls_the_pods(chart: Any) -> None:
    """The pod template carries a checksum of the chart's Secret."""

    def checksum(url: str) -> str:
        deployment = one(
            render(chart, {"mode": "deployment", "database": {"url": url}}), "Deployment"
        )
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/secret"]

    assert checksum(URL) != checksum(URL.replace("s3cret", "rotated"))


# -- notifications and the termination message -------------------------------------------


def test_webhook_from_an_existing_secret_uses_secret_key_ref(chart: Any) -> None:
    """notifications.webhook.existingSecret + key becomes a secretKeyRef; no Secret is made."""
    values = {
        "mode": "deployment",
        "database": {"existingSecret": "app-db"},
        "notifications": {"webhook": {"existingSecret": "slack", "key": "hook"}},
    }
    objects = render(chart, values)
    container = pod_spec(one(objects, "Deployment"))["containers"][0]
    hook = next(e for e in container["env"] if e["name"] == "SCHEMAD_WEBHOOK_URL")
    expected = ({"secretKeyRef": {"name": "slack", "key": "hook"}}, False)
    assert expected == (hook["valueFrom"], "Secret" in {o["kind"] for o in objects})


def test_webhook_url_from_values_goes_into_the_secret_never_into_the_pod(chart: Any) -> None:
    """notifications.webhook.url is stored in the chart's Secret beside the database URL."""
    values = {"mode": "deployment", "database": {"url": URL}}
    objects = render(chart, {**values, "notifications": {"webhook": {"url": HOOK}}})
    secret = one(objects, "Secret")
    deployment = one(objects, "Deployment")
    hook = next(
        e
        for e in pod_spec(deployment)["containers"][0]["env"]
        if e["name"] == "SCHEMAD_WEBHOOK_URL"
    )
    expected = (["url", "webhook-url"], "webhook-url", False)
    actual = (
        list(secret["data"]),
        hook["valueFrom"]["secretKeyRef"]["key"],
        "s3cret" in yaml.safe_dump(deployment),
    )
    assert expected == actual


def test_webhook_url_alone_makes_the_chart_keep_a_secret(chart: Any) -> None:
    """With the database URL in your Secret, the chart's Secret holds only the webhook URL."""
    values = {
        "mode": "deployment",
        "database": {"existingSecret": "app-db"},
        "notifications": {"webhook": {"url": HOOK}},
    }
    objects = render(chart, values)
    deployment = one(objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (list(one(objects, "Secret")["data"]), "checksum/secret" in annotations) == (
        ["webhook-url"],
        True,
    )


def test_webhook_url_as_a_file_mounts_its_secret(chart: Any) -> None:
    """mountAsFile points SCHEMAD_WEBHOOK_URL_FILE at the mounted Secret's key."""
    job = one(render(chart, scenario_values("job-existing-secret-file")), "Job")
    spec = pod_spec(job)
    container = spec["containers"][0]
    path = literal_env(container)["SCHEMAD_WEBHOOK_URL_FILE"]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    expected = (False, "slack-webhook", [{"key": "webhook", "path": Path(path).name}])
    actual = (
        "SCHEMAD_WEBHOOK_URL" in setting_env_names(container),
        volume["secret"]["secretName"],
        volume["secret"]["items"],
    )
    assert expected == actual


def test_no_webhook_sets_no_webhook_variable(chart: Any) -> None:
    """Without a webhook the containers get no SCHEMAD_WEBHOOK_* variable at all."""
    container = pod_spec(workload(render(chart, scenario_values("job"))))["containers"][0]
    assert sorted(n for n in setting_env_names(container) if "WEBHOOK" in n) == []


@pytest.mark.parametrize("scenario", ["job", "deployment", "deployment-full"])
def test_containers_fall_back_to_logs_on_error(chart: Any, scenario: str) -> None:
    """Job and Deployment containers show the log's tail when no message was written."""
    spec = pod_spec(workload(render(chart, scenario_values(scenario))))
    policies = [c["terminationMessagePolicy"] for c in containers(spec)]
    assert policies == ["FallbackToLogsOnError"] * len(policies)


def test_a_changed_termination_path_moves_the_container_too(chart: Any) -> None:
    """config.terminationMessagePath sets both the setting and the container's path."""
    container = pod_spec(one(render(chart, scenario_values("deployment-full")), "Deployment"))[
        "containers"
    ][0]
    path = "/var/run/schemad/termination-log"
    expected = (path, path)
    actual = (
        literal_env(container)["SCHEMAD_TERMINATION_MESSAGE_PATH"],
        container["terminationMessagePath"],
    )
    assert expected == actual


def test_the_default_termination_path_is_kubernetes_own(chart: Any) -> None:
    """Unset, neither the setting nor the container's path is rendered (both default)."""
    container = pod_spec(one(render(chart, scenario_values("job")), "Job"))["containers"][0]
    expected = (False, False)
    actual = (
        "SCHEMAD_TERMINATION_MESSAGE_PATH" in setting_env_names(container),
        "terminationMessagePath" in container,
    )
    assert expected == actual


# -- values that must fail, readably ---------------------------------------------------


def test_both_secret_sources_fail_with_a_clear_message(helm: Any, chart: Any) -> None:
    """database.url and database.existingSecret together are refused."""
    message = render_error(helm, chart, {"database": {"url": URL, "existingSecret": "app-db"}})
    assert "set database.url or database.existingSecret, not both" in message


def test_no_secret_source_fails_with_a_clear_message(helm: Any, chart: Any) -> None:
    """Without a database the chart says how to configure one."""
    message = render_error(helm, chart, {})
    assert "no database configured; set database.existingSecret" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"config": {"lockWaitSeconds": 240}},
            "config.lockWaitSeconds (240) must be below job.activeDeadlineSeconds",
        ),
        (
            {"mode": "job", "serviceMonitor": {"enabled": True}},
            "serviceMonitor.enabled needs mode=deployment",
        ),
        ({"config": {"shutdownGraceSeconds": 60}}, "must be below terminationGracePeriodSeconds"),
        (
            {"extraEnv": [{"name": "SCHEMAD_TARGET_REVISION", "value": "x"}]},
            "extraEnv sets SCHEMAD_TARGET_REVISION",
        ),
        (
            {"notifications": {"webhook": {"url": HOOK, "existingSecret": "slack"}}},
            "set notifications.webhook.url or notifications.webhook.existingSecret, not both",
        ),
        (
            {"config": {"targetsQuery": "select 'a' as name", "targetsFile": "/etc/t.yaml"}},
            "set config.targetsQuery or config.targetsFile, not both",
        ),
        ({"job": {"shards": 3}}, "job.shards (3) shares targets between pods"),
        (
            {"mode": "deployment", "job": {"shards": 2}, "config": {"targetsFile": "/t.yaml"}},
            "job.shards (2) needs mode=job",
        ),
    ],
)
def test_conflicting_values_fail_with_a_clear_message(
    helm: Any, chart: Any, values: dict[str, Any], expected: str
) -> None:
    """Checks across values that the schema cannot express end in a `fail` message."""
    message = render_error(helm, chart, {"database": {"existingSecret": "app-db"}, **values})
    assert expected in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"mode": "cronjob"}, "at '/mode': value must be one of 'job', 'deployment', 'none'"),
        ({"config": {"logLevel": "verbose"}}, "at '/config/logLevel': value must be one of"),
        (
            {"config": {"lockWait": 30}},
            "at '/config': additional properties 'lockWait' not allowed",
        ),
        ({"config": {"lockWaitSeconds": 0}}, "at '/config/lockWaitSeconds'"),
        (
            {"config": {"lockWaitSeconds": "5m"}},
            "at '/config/lockWaitSeconds': got string, want number",
        ),
        ({"config": {"targetRevision": "head:1"}}, "at '/config/targetRevision'"),
        ({"config": {"httpPort": 70000}}, "at '/config/httpPort'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        ({"database": {"url": "not a url"}}, "at '/database/url'"),
        ({"job": {"backoffLimit": 50}}, "at '/job/backoffLimit'"),
        ({"job": {"shards": 0}}, "at '/job/shards'"),
        ({"config": {"canary": "a, b"}}, "at '/config/canary'"),
        ({"config": {"targetsFile": "targets.yaml"}}, "at '/config/targetsFile'"),
        ({"config": {"maxFailures": -1}}, "at '/config/maxFailures'"),
        (
            {"prometheusRule": {"disabledAlerts": ["NoSuchAlert"]}},
            "at '/prometheusRule/disabledAlerts/0'",
        ),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        (
            {"notifications": {"webhook": {"events": ["failed", "exploded"]}}},
            "at '/notifications/webhook/events/1': value must be one of",
        ),
        ({"notifications": {"webhook": {"events": []}}}, "at '/notifications/webhook/events'"),
        ({"notifications": {"webhook": {"url": "ftp://x/y"}}}, "at '/notifications/webhook/url'"),
        (
            {"notifications": {"webhook": {"timeoutSeconds": 0}}},
            "at '/notifications/webhook/timeoutSeconds'",
        ),
        (
            {"notifications": {"slack": {"url": HOOK}}},
            "at '/notifications': additional properties 'slack' not allowed",
        ),
        (
            {"config": {"terminationMessagePath": "termination-log"}},
            "at '/config/terminationMessagePath'",
        ),
    ],
)
def test_bad_values_are_rejected_by_the_schema(
    helm: Any, chart: Any, values: dict[str, Any], expected: str
) -> None:
    """values.schema.json refuses the value with a message naming its path."""
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert expected in str(caught.value)


def test_default_values_satisfy_the_schema(chart: Any) -> None:
    """The chart's own defaults pass its schema."""
    chart.validate_schema({})


# -- values.yaml and values.schema.json stay in step -----------------------------------


def _schema_leaves(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Paths the schema describes down to a leaf (an open object counts as a leaf)."""
    properties = schema.get("properties")
    if not properties:
        return {prefix}
    return {p for k, v in properties.items() for p in _schema_leaves(v, f"{prefix}/{k}")}


def _value_leaves(value: Any, schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Paths of values.yaml, descending only where the schema lists properties."""
    if not isinstance(value, dict) or "properties" not in schema:
        return {prefix}
    properties = schema["properties"]
    return {
        p
        for k, v in value.items()
        for p in _value_leaves(v, properties.get(k, {}), f"{prefix}/{k}")
    }


def _load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load((CHART / "values.schema.json").read_text())
    return schema


def test_schema_objects_are_closed() -> None:
    """Every object in the schema that lists properties allows no others."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path or "/")
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}/{key}")

    walk(schema, "")
    assert open_objects == []


def test_schema_describes_exactly_the_values() -> None:
    """Every value in values.yaml has a schema entry, and every schema entry a value."""
    schema = _load_schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    described = _schema_leaves(schema) - {"/global"}
    assert sorted(described) == sorted(_value_leaves(values, schema))


def test_schema_enums_match_the_settings() -> None:
    """The schema's enums for settings are the Literal choices of Settings."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]["properties"]
    for key in ("logFormat", "logLevel", "onUnknownRevision"):
        choices = Settings.model_fields[camel_to_setting(key)].annotation.__args__  # type: ignore[union-attr]
        assert list(choices) == config[key]["enum"]


def test_schema_webhook_events_match_schemads() -> None:
    """notifications.webhook.events accepts exactly schemad's event names."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    webhook = schema["properties"]["notifications"]["properties"]["webhook"]["properties"]
    assert list(EVENTS) == webhook["events"]["items"]["enum"]


def test_schema_alert_names_match_the_rules() -> None:
    """prometheusRule.disabledAlerts accepts exactly the shipped alerts."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["prometheusRule"]["properties"]["disabledAlerts"]["items"]["enum"]
    rules = yaml.safe_load(RULES.read_text())
    assert [r["alert"] for g in rules["groups"] for r in g["rules"]] == enum


def test_every_value_is_commented() -> None:
    """Each value the schema describes has a comment right above its key."""
    leaves = _schema_leaves(_load_schema())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent]
        stack.append((indent, match.group(2)))
        path = "/" + "/".join(k for _, k in stack)
        if path in leaves and not lines[number - 1].lstrip().startswith("#"):
            uncommented.append(path)
    assert uncommented == []


def test_chart_app_version_is_schemads_version() -> None:
    """Chart.yaml's appVersion (the default image tag) is the package version.

    The version is written once, in schemad/__init__.py, and pyproject.toml
    reads it from there (setuptools' dynamic version).
    """
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "schemad.__version__"}
    assert schemad.__version__ == chart["appVersion"]


# -- monitoring ------------------------------------------------------------------------


def test_monitoring_is_off_by_default(chart: Any) -> None:
    """No ServiceMonitor or PrometheusRule unless asked for."""
    kinds = {o["kind"] for o in render(chart, scenario_values("deployment"))}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


def test_service_monitor_scrapes_the_service_as_job_schemad(chart: Any) -> None:
    """The ServiceMonitor selects the Service, its port, /metrics, and job="schemad"."""
    objects = render(chart, scenario_values("deployment-full"))
    monitor = one(objects, "ServiceMonitor")["spec"]
    service = one(objects, "Service")
    endpoint = monitor["endpoints"][0]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "schemad"} in endpoint["relabelings"]
    assert monitor["namespaceSelector"]["matchNames"] == ["apps"]


def test_prometheus_rule_carries_the_shipped_rules(chart: Any) -> None:
    """With defaults, the PrometheusRule's groups are deploy/prometheus's rules, unchanged."""
    values = {**scenario_values("deployment"), "prometheusRule": {"enabled": True}}
    rule = one(render(chart, values), "PrometheusRule")
    assert yaml.safe_load(RULES.read_text())["groups"] == rule["spec"]["groups"]


def test_chart_rules_file_is_a_copy_of_the_shipped_rules() -> None:
    """helm/schemad/files/schemad-rules.yaml is byte-identical to deploy/prometheus's."""
    assert RULES.read_bytes() == (CHART / "files" / "schemad-rules.yaml").read_bytes(), (
        "copy deploy/prometheus/schemad-rules.yaml to helm/schemad/files/"
    )


def test_prometheus_rule_drops_disabled_alerts_and_adds_labels(chart: Any) -> None:
    """disabledAlerts leaves alerts out; additionalRuleLabels lands on every alert."""
    rule = one(render(chart, scenario_values("deployment-full")), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "SchemadAbsent" not in {r["alert"] for r in alerts}
    assert all(r["labels"]["team"] == "payments" for r in alerts)
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in alerts)


# -- NOTES.txt -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("job", "kubectl -n apps logs job/rel-schemad-upgrade"),
        ("deployment", "port-forward svc/rel-schemad"),
        ("none", "schemad.initContainer"),
    ],
)
def test_notes_tell_the_next_step(chart: Any, scenario: str, expected: str) -> None:
    """NOTES.txt renders for each mode with the command to look at the result."""
    notes = next(
        t
        for p, t in chart.render(scenario_values(scenario), name="rel", namespace="apps").items()
        if p.endswith("NOTES.txt")
    )
    assert expected in notes


# -- named templates in the user's own pods --------------------------------------------


APP_CHART = Path(__file__).parent / "app-chart"


@pytest.fixture(scope="module")
def app_chart(helm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A user's chart with schemad as a dependency, using the named templates."""
    root = tmp_path_factory.mktemp("charts") / "web"
    shutil.copytree(APP_CHART, root)
    shutil.copytree(CHART, root / "charts" / "schemad", ignore=shutil.ignore_patterns("ci"))
    loaded = helm.Chart.load(root)
    yield loaded
    loaded.close()


def _web(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-web")
    )


def test_init_container_template_waits_in_the_users_pod(app_chart: Any) -> None:
    """The user's pod gets `schemad wait` as an init container; the Job migrates."""
    objects = render(app_chart, {})
    for doc in objects:
        validate_object(doc)
    spec = pod_spec(_web(objects))
    init = spec["initContainers"][0]
    assert {"Job", "Deployment"} == {o["kind"] for o in objects}
    assert (init["name"], init["args"]) == ("schemad-wait", ["wait"])
    assert init["image"] == "schemad:0.1.0"  # the dependency's appVersion
    assert setting_env_names(init) <= set(setting_names())
    assert "SCHEMAD_DATABASE_URL" in setting_env_names(init)
    assert_hardened(spec, init)
    assert_downward_api(init)


def test_sidecar_template_runs_the_daemon_in_the_users_pod(app_chart: Any) -> None:
    """The sidecar runs `schemad run` with liveness on /healthz at its own port."""
    objects = render(app_chart, {"sidecar": True, "schemad": {"sidecar": {"readinessProbe": True}}})
    for doc in objects:
        validate_object(doc)
    spec = pod_spec(_web(objects))
    sidecar = next(c for c in spec["containers"] if c["name"] == "schemad")
    assert sidecar["args"] == ["run"]
    assert http_probe(sidecar, "livenessProbe") == ("/healthz", 9464)
    assert http_probe(sidecar, "readinessProbe") == ("/readyz", 9464)
    assert_hardened(spec, sidecar)


def test_sidecar_has_no_readiness_probe_unless_asked(app_chart: Any) -> None:
    """By default the sidecar does not take the app's pod out of service."""
    spec = pod_spec(_web(render(app_chart, {"sidecar": True})))
    sidecar = next(c for c in spec["containers"] if c["name"] == "schemad")
    assert "readinessProbe" not in sidecar


def test_named_templates_fall_back_to_logs_on_error(app_chart: Any) -> None:
    """The init container and the sidecar templates set FallbackToLogsOnError too."""
    spec = pod_spec(_web(render(app_chart, {"sidecar": True})))
    init = spec["initContainers"][0]
    sidecar = next(c for c in spec["containers"] if c["name"] == "schemad")
    policies = (init["terminationMessagePolicy"], sidecar["terminationMessagePolicy"])
    assert policies == ("FallbackToLogsOnError", "FallbackToLogsOnError")


def test_init_container_template_refuses_the_jobs_short_lived_webhook_secret(
    helm: Any, app_chart: Any
) -> None:
    """A webhook URL in the chart's hook Secret cannot reach the user's own pods."""
    values = {"schemad": {"notifications": {"webhook": {"url": HOOK}}}}
    message = render_error(helm, app_chart, values)
    assert "give your pods notifications.webhook.existingSecret" in message


def test_init_container_template_refuses_the_jobs_short_lived_secret(
    helm: Any, app_chart: Any
) -> None:
    """With mode=job the chart's own Secret is deleted after the hook: the template says so."""
    values = {"schemad": {"database": {"existingSecret": "", "url": URL}}}
    message = render_error(helm, app_chart, values)
    assert (
        "use database.existingSecret" in message
        or "give your pods database.existingSecret" in message
    )
