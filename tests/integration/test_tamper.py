"""Tamper detection and the "newer than this image" explanation, on real databases.

A revision file edited after it was applied is reported (warn) or blocks upgrades
(block); whitespace and line endings do not count. A database at a revision the image
lacks is explained from the history in the refusal, in `status --json` and in the
daemon's /status.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from schemad import cli
from schemad.cli import App, exit_code
from schemad.metrics import Metrics
from schemad.model import Outcome, RefusalReason, Tampered
from schemad.revisions import file_checksum
from schemad.scheduler import Daemon
from schemad.server import HttpServer
from support.databases import version_rows
from support.scripts import create_table, drop_table, tables_project, write_revision

from .conftest import MakeApp

NEWER_POD = "shop-migrate-2b7d"
NEWER_IMAGE = "registry.example/shop-migrations:2.0.0"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Two revisions, each creating table t_<id>."""
    location = tmp_path / "migrations"
    tables_project(location, 2)
    return location


def _add_third(project: Path) -> None:
    write_revision(
        project, "r0003", "r0002", upgrade=create_table("t_r0003"), downgrade=drop_table("t_r0003")
    )


def _file(project: Path, revision: str) -> Path:
    return project / "versions" / f"{revision}.py"


def _edit(project: Path, revision: str) -> tuple[str | None, str | None]:
    """Really change a revision's code; return its checksum before and after."""
    path = _file(project, revision)
    before = file_checksum(path)
    path.write_text(path.read_text().replace('op.create_table("t_', 'op.create_table("edited_t_'))
    return before, file_checksum(path)


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def _status(app: App, *, as_json: bool) -> tuple[int, str]:
    app.out = io.StringIO()
    code = cli.cmd_status(app, argparse.Namespace(json=as_json))
    assert isinstance(app.out, io.StringIO)
    return code, app.out.getvalue()


# -- tampered revision files --------------------------------------------------------


def test_edited_revision_warns_and_upgrade_proceeds(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """In warn mode an edited applied revision is logged with both checksums; upgrades go on."""
    make_app(db_url, project).reconciler.reconcile_once()
    before, after = _edit(project, "r0001")
    _add_third(project)
    assert before is not None

    with capture_logs() as logs:
        result = make_app(db_url, project).reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.APPLIED, 0)
    assert [s.revision for s in result.applied] == ["r0003"]
    assert result.tampered == (Tampered("r0001", before, after),)
    # Once per loading of the scripts: files this fresh are reloaded under the lock.
    warnings = {
        (e["revision"], e["recorded_checksum"], e["current_checksum"], e["blocks_upgrades"])
        for e in _events(logs, "revision_tampered")
    }
    assert warnings == {("r0001", before, after, False)}
    assert version_rows(db_url) == ["r0003"]


def test_edited_revision_sets_the_metric(sqlite_url: str, project: Path, make_app: MakeApp) -> None:
    """schemad_tampered_revisions counts the edited applied revisions."""
    make_app(sqlite_url, project).reconciler.reconcile_once()
    _edit(project, "r0001")
    _edit(project, "r0002")
    metrics = Metrics(CollectorRegistry())

    metrics.observe(make_app(sqlite_url, project).reconciler.reconcile_once(), finished_at=1.0)

    assert metrics.registry.get_sample_value("schemad_tampered_revisions") == 2.0


def test_status_shows_the_edited_revision(db_url: str, project: Path, make_app: MakeApp) -> None:
    """`status` (human and --json) names the edited revision and both checksums."""
    make_app(db_url, project).reconciler.reconcile_once()
    before, after = _edit(project, "r0002")
    assert (before, after) != (None, None)
    app = make_app(db_url, project)

    code, text = _status(app, as_json=False)
    json_code, document = _status(app, as_json=True)

    assert (code, json_code) == (0, 0)
    assert f"tampered: r0002 was applied with checksum {str(before)[:12]}" in text
    assert json.loads(document)["tampered"] == [
        {"revision": "r0002", "recorded_checksum": before, "current_checksum": after}
    ]


def test_block_mode_refuses_upgrades(db_url: str, project: Path, make_app: MakeApp) -> None:
    """With SCHEMAD_ON_TAMPER=block an edited revision refuses the upgrade with exit 65."""
    make_app(db_url, project).reconciler.reconcile_once()
    _edit(project, "r0001")
    _add_third(project)

    with capture_logs() as logs:
        result = make_app(db_url, project, on_tamper="block").reconciler.reconcile_once()

    assert (result.outcome, exit_code(result), result.applied) == (Outcome.REFUSED, 65, ())
    assert result.plan is not None
    assert result.plan.reason == RefusalReason.TAMPERED
    assert result.error is not None
    assert "r0001" in result.error
    assert "SCHEMAD_ON_TAMPER=warn" in result.error
    assert _events(logs, "revision_tampered")[0]["blocks_upgrades"] is True
    assert version_rows(db_url) == ["r0002"]


def test_block_mode_with_nothing_to_do_stays_in_sync(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """Block mode blocks upgrades only: a database at the target stays in sync, still reported."""
    make_app(sqlite_url, project).reconciler.reconcile_once()
    _edit(project, "r0001")

    result = make_app(sqlite_url, project, on_tamper="block").reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.IN_SYNC, 0)
    assert [t.revision for t in result.tampered] == ["r0001"]


def test_whitespace_and_line_endings_are_not_tampering(
    db_url: str, project: Path, make_app: MakeApp
) -> None:
    """CRLF line endings and trailing blanks in an applied revision are not an edit."""
    make_app(db_url, project).reconciler.reconcile_once()
    path = _file(project, "r0001")
    path.write_bytes(path.read_text().replace("\n", "   \r\n").encode() + b"\r\n\r\n")
    _add_third(project)

    with capture_logs() as logs:
        result = make_app(db_url, project, on_tamper="block").reconciler.reconcile_once()

    assert (result.outcome, result.tampered) == (Outcome.APPLIED, ())
    assert _events(logs, "revision_tampered") == []


def test_adopted_revision_edited_later_is_tampered(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """A revision adopted on first sight is checked against its adopted checksum afterwards."""
    make_app(sqlite_url, project, history_enabled="false").reconciler.reconcile_once()
    make_app(sqlite_url, project).reconciler.reconcile_once()
    _edit(project, "r0002")

    result = make_app(sqlite_url, project).reconciler.reconcile_once()

    assert [t.revision for t in result.tampered] == ["r0002"]


def test_revision_edited_while_reverted_is_not_tampered(
    sqlite_url: str, project: Path, make_app: MakeApp
) -> None:
    """Editing a revision after downgrading past it, then re-applying, is a fresh application."""
    make_app(sqlite_url, project).reconciler.reconcile_once()
    make_app(
        sqlite_url, project, target_revision="r0001", allow_downgrade="true"
    ).reconciler.reconcile_once()
    _, after = _edit(project, "r0002")

    with capture_logs() as logs:
        result = make_app(sqlite_url, project).reconciler.reconcile_once()

    assert (result.outcome, result.tampered) == (Outcome.APPLIED, ())
    assert _events(logs, "revision_tampered") == []
    history = make_app(sqlite_url, project).reconciler.history
    assert history is not None
    assert history.rows(limit=1)[0].checksum == after


# -- a database at a revision this image lacks --------------------------------------


@pytest.fixture
def rolled_back(
    db_url: str, tmp_path: Path, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """r0003 applied by a newer image (pod and image recorded); return the older image's
    migrations, which stop at r0002."""
    newer = tmp_path / "newer"
    tables_project(newer, 2)
    older = tmp_path / "older"
    shutil.copytree(newer, older)
    _add_third(newer)
    monkeypatch.setenv("POD_NAME", NEWER_POD)
    monkeypatch.setenv("CONTAINER_IMAGE", NEWER_IMAGE)
    assert make_app(db_url, newer).reconciler.reconcile_once().outcome == Outcome.APPLIED
    monkeypatch.setenv("POD_NAME", "shop-migrate-old")
    monkeypatch.setenv("CONTAINER_IMAGE", "registry.example/shop-migrations:1.0.0")
    return older


DOWNGRADE = "SCHEMAD_TARGET_REVISION=r0002 SCHEMAD_ALLOW_DOWNGRADE=true schemad upgrade"


def test_refusal_says_who_applied_the_newer_revision(
    db_url: str, rolled_back: Path, make_app: MakeApp
) -> None:
    """The refusal names the newer revision, who applied it with which image, and the way back."""
    result = make_app(db_url, rolled_back).reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.REFUSED, 65)
    assert result.plan is not None
    assert result.plan.reason == RefusalReason.UNKNOWN_REVISION
    assert result.error is not None
    assert "r0003 applied 20" in result.error
    assert f"by {NEWER_POD}" in result.error
    assert f"with image {NEWER_IMAGE}: {DOWNGRADE}" in result.error
    assert [(n.revision, n.applied_by, n.image) for n in result.newer] == [
        ("r0003", NEWER_POD, NEWER_IMAGE)
    ]


def test_ahead_by_policy_still_explains(db_url: str, rolled_back: Path, make_app: MakeApp) -> None:
    """With unknown revisions ignored the pass is 'ahead' and still says who applied them."""
    result = make_app(db_url, rolled_back, on_unknown_revision="ignore").reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.AHEAD, 0)
    assert result.plan is not None
    assert DOWNGRADE in result.plan.message
    assert [n.revision for n in result.newer] == ["r0003"]


def test_status_json_lists_newer_than_image(
    db_url: str, rolled_back: Path, make_app: MakeApp
) -> None:
    """`status --json` carries newer_than_image and the downgrade command in its message."""
    code, text = _status(make_app(db_url, rolled_back), as_json=True)

    document = json.loads(text)
    assert code == 65
    [newer] = document["newer_than_image"]
    assert (newer["revision"], newer["applied_by"], newer["image"]) == (
        "r0003",
        NEWER_POD,
        NEWER_IMAGE,
    )
    assert newer["applied_at"]
    assert DOWNGRADE in document["message"]


@pytest.fixture
def serve() -> Iterator[list[HttpServer]]:
    """HTTP servers started by a test, stopped afterwards."""
    servers: list[HttpServer] = []
    yield servers
    for server in servers:
        server.stop()


def test_daemon_status_lists_newer_than_image(
    db_url: str, rolled_back: Path, make_app: MakeApp, serve: list[HttpServer]
) -> None:
    """The daemon's /status carries who applied the newer revision and the downgrade command."""
    app = make_app(db_url, rolled_back)
    registry = CollectorRegistry()
    daemon = Daemon(app.settings, app.reconciler, Metrics(registry), database_url="masked")
    server = HttpServer("127.0.0.1", 0, registry, daemon)
    serve.append(server)
    server.start()

    daemon.run_pass()
    last = httpx.get(f"http://127.0.0.1:{server.port}/status", timeout=5).json()["last_pass"]

    assert (last["outcome"], last["reason"]) == ("refused", "unknown_revision")
    assert [(n["revision"], n["applied_by"], n["image"]) for n in last["newer_than_image"]] == [
        ("r0003", NEWER_POD, NEWER_IMAGE)
    ]
    assert DOWNGRADE in last["error"]
