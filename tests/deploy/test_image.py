"""The image, built for real and run (opt-in: SCHEMAD_TEST_IMAGE=1).

No registry is reachable here, so the base image is a Debian bookworm root
made with debootstrap (python3 3.11, like python:3.11-slim-bookworm), given the
host's CA bundle so pip can reach PyPI through this network, and passed to
the Dockerfile's PYTHON_IMAGE build argument. Needs root and Debian's buildah,
podman, runc and debootstrap; the first run takes a few minutes (debootstrap),
later runs reuse the base image (about 30 s).

    SCHEMAD_TEST_IMAGE=1 .venv/bin/pytest tests/deploy/test_image.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import ROOT

if os.environ.get("SCHEMAD_TEST_IMAGE") != "1":
    pytest.skip(
        "building the image is opt-in: SCHEMAD_TEST_IMAGE=1 (needs root, buildah, podman, "
        "runc, debootstrap)",
        allow_module_level=True,
    )

BASE = "localhost/schemad-test-base:bookworm"
IMAGE = "localhost/schemad:test"
DERIVED = "localhost/schemad-derived:test"
PODMAN = [
    "podman",
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
]
# As Kubernetes runs it with the chart's securityContext: read-only root, /tmp writable.
RUN = [
    "run",
    "--rm",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]
SQLITE = "SCHEMAD_DATABASE_URL=sqlite:////tmp/app.db"
# A user's own history, unrelated to the shipped demo: if the demo revision
# were left in the image next to it, the graph would have two heads.
USER_REVISION = '''\
"""Create the orders table.

Revision ID: 0a0b0c0d0e0f
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0a0b0c0d0e0f"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("orders")
'''


def sh(args: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text; never raises on its exit status."""
    return subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=timeout, **kwargs
    )


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run podman with the runtime flags this machine needs."""
    return sh([*PODMAN, *args], timeout=timeout)


def _ensure_base(tmp: Path) -> None:
    if podman("image", "exists", BASE).returncode == 0:
        return
    rootfs = tmp / "rootfs"
    result = sh(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
    (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        [*PODMAN, "import", "-", BASE], stdin=tar.stdout, capture_output=True, check=False
    )
    tar.wait()
    assert imported.returncode == 0, imported.stderr


def _build(context: Path, tag: str, *args: str) -> None:
    result = sh(
        ["buildah", "bud", "--isolation", "chroot", "--pull=never", *args, "-t", tag, str(context)],
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """schemad's image, built from the repository's Dockerfile."""
    for command in ("buildah", "podman", "runc", "debootstrap"):
        if shutil.which(command) is None:
            pytest.fail(
                f"{command} is not installed: apt-get install buildah podman runc debootstrap"
            )
    _ensure_base(tmp_path_factory.mktemp("base"))
    _build(ROOT, IMAGE, "--build-arg", f"PYTHON_IMAGE={BASE}")
    return IMAGE


@pytest.fixture
def container_name() -> Iterator[str]:
    """A unique container name, removed afterwards."""
    name = f"schemad-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", name)


def test_image_reports_its_version(image: str) -> None:
    """`schemad --version` runs in the image (the entrypoint is schemad)."""
    result = podman(*RUN, image, "--version")
    assert (result.returncode, result.stdout.strip()) == (0, "schemad 0.1.0")


def test_image_runs_as_uid_10001(image: str) -> None:
    """The image's user is the numeric non-root one the chart expects."""
    result = podman(*RUN, "--entrypoint", "id", image, "-u")
    assert result.stdout.strip() == "10001"


def test_upgrade_works_on_a_read_only_root(image: str) -> None:
    """`schemad upgrade` migrates a database with only /tmp writable, and exits 0."""
    result = podman(*RUN, "-e", SQLITE, image, "upgrade")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"outcome": "applied"' in result.stdout + result.stderr


def test_missing_configuration_exits_78(image: str) -> None:
    """Without SCHEMAD_DATABASE_URL the container exits with the config error code."""
    assert podman(*RUN, image, "upgrade").returncode == 78


def test_migrations_are_precompiled(image: str) -> None:
    """The shipped revisions have bytecode (the read-only container cannot write it)."""
    result = podman(*RUN, "--entrypoint", "ls", image, "/app/migrations/versions/__pycache__")
    assert ".cpython-311.pyc" in result.stdout


def test_daemon_is_healthy_and_stops_cleanly_on_sigterm(image: str, container_name: str) -> None:
    """`schemad health` passes; `podman stop` (SIGTERM) ends the daemon with 0 at once."""
    started = podman("run", "-d", *RUN[2:], "--name", container_name, "-e", SQLITE, image)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while podman("exec", container_name, "schemad", "health").returncode != 0:
        assert time.monotonic() < deadline, podman("logs", container_name).stderr
        time.sleep(0.5)
    began = time.monotonic()
    podman("stop", "--time", "20", container_name)
    stopped_after = time.monotonic() - began
    state = json.loads(podman("inspect", container_name).stdout)[0]["State"]
    assert state["ExitCode"] == 0
    assert stopped_after < 10  # SIGTERM handled, not the 20 s SIGKILL


def test_users_build_from_it_with_their_own_migrations(image: str, tmp_path: Path) -> None:
    """docs/kubernetes.md's Dockerfile replaces the demo history; upgrade reaches the new head."""
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    dockerfile = re.search(
        r"```dockerfile\n(# Dockerfile of your migrations image\n.*?)```", doc, re.S
    )
    assert dockerfile, "docs/kubernetes.md lost its Dockerfile example"
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        shutil.copy(ROOT / "migrations" / name, tmp_path / "migrations" / name)
    (tmp_path / "migrations/versions/2026_11_25_0a0b0c0d0e0f_orders.py").write_text(USER_REVISION)
    (tmp_path / "Dockerfile").write_text(
        dockerfile.group(1).replace("FROM schemad:0.1.0", f"FROM {image}")
    )
    _build(tmp_path, DERIVED)
    script = "schemad upgrade >/dev/null 2>&1 && schemad status --json"
    result = podman(*RUN, "-e", SQLITE, "--entrypoint", "sh", DERIVED, "-c", script)
    owner = podman(*RUN, "--entrypoint", "stat", DERIVED, "-c", "%u", "/app/migrations/env.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["current"] == ["0a0b0c0d0e0f"]
    assert owner.stdout.strip() == "0"  # root-owned: UID 10001 cannot change its migrations
