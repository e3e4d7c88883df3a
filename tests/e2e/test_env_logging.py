"""An env.py that calls fileConfig() whatever happens leaves schemad's logs as they are."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import alembic
import pytest

from support.processes import SCHEMAD, clean_env
from support.scripts import ROOT, tables_project, write_env

pytestmark = pytest.mark.e2e

GENERIC_ENV = (Path(alembic.__file__).parent / "templates" / "generic" / "env.py").read_text()
UNCONDITIONAL = GENERIC_ENV.replace(
    "if config.config_file_name is not None:\n    fileConfig(config.config_file_name)",
    "fileConfig(config.config_file_name)",
)


def test_alembic_lines_stay_structured_under_an_unconditional_fileconfig(tmp_path: Path) -> None:
    """Every line is one JSON object: Alembic's own "Running upgrade" lines and schemad's
    events alike, although env.py loaded the ini's plain-text logging config."""
    assert UNCONDITIONAL != GENERIC_ENV
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, UNCONDITIONAL)
    ini = tmp_path / "alembic.ini"
    shutil.copy(ROOT / "alembic.ini", ini)
    env = clean_env(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        alembic_config=str(ini),
        script_location=str(project),
        log_format="json",
    )
    done = subprocess.run(
        [str(SCHEMAD), "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    alembic_lines = [e for e in events if str(e.get("logger", "")).startswith("alembic")]
    expected = (0, len(lines), True, ["r0001", "r0002"])
    assert expected == (
        done.returncode,
        len(events),
        any("Running upgrade" in str(e["event"]) for e in alembic_lines),
        [e["revision"] for e in events if e["event"] == "migration_applied"],
    ), done.stderr
