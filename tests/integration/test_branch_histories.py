"""Branched and merged histories end where Alembic's own `upgrade` would put them."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from schemad.cli import exit_code
from schemad.model import Outcome
from support.databases import sibling_database, table_names, version_rows
from support.scripts import branched_project

from .conftest import MakeApp


def _alembic_upgrade(url: str, project: Path, monkeypatch: pytest.MonkeyPatch, *specs: str) -> None:
    """What a user gets from `alembic upgrade <spec>` with the shipped env.py."""
    monkeypatch.setenv("SCHEMAD_DATABASE_URL", url)
    config = Config()
    config.set_main_option("script_location", str(project))
    for spec in specs:
        command.upgrade(config, spec)


@pytest.mark.parametrize(
    ("merged", "prepared", "specs"),
    [
        pytest.param(False, (), ("heads",), id="two-heads-to-heads"),
        pytest.param(False, (), ("left@head",), id="two-heads-one-branch"),
        pytest.param(False, (), ("right@head", "heads"), id="one-branch-then-heads"),
        pytest.param(True, (), ("head",), id="merged-to-head"),
        pytest.param(True, (), ("b2", "head"), id="merged-after-one-branch"),
        pytest.param(True, ("b1", "c1"), ("head",), id="merged-from-two-branch-heads"),
    ],
)
def test_schemad_matches_alembic_upgrade(
    merged: bool,
    prepared: tuple[str, ...],
    specs: tuple[str, ...],
    db_url: str,
    tmp_path: Path,
    make_app: MakeApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Passes with the same targets leave the same version rows and tables as `alembic upgrade`.

    ``prepared`` revisions are applied with Alembic to both databases first
    (a database with two branch heads recorded, which schemad alone never makes
    from a merged history).
    """
    project = tmp_path / "migrations"
    branched_project(project, merged=merged)
    with sibling_database(db_url) as reference:
        _alembic_upgrade(db_url, project, monkeypatch, *prepared)
        _alembic_upgrade(reference, project, monkeypatch, *prepared, *specs)
        for spec in specs:
            result = make_app(db_url, project, target_revision=spec).reconciler.reconcile_once()
            assert (result.outcome, result.error) == (Outcome.APPLIED, None)
        expected = (version_rows(reference), table_names(reference))

    # schemad also keeps its audit history table; Alembic alone does not.
    assert expected == (version_rows(db_url), table_names(db_url) - {"schemad_history"})
    assert expected[0] != []


def test_two_heads_with_target_head_is_refused(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Two unmerged heads and the target 'head' is a refusal that suggests a merge."""
    branched_project(tmp_path / "migrations", merged=False)

    result = make_app(db_url, tmp_path / "migrations").reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.REFUSED, 65)
    assert result.error is not None
    assert "alembic merge heads" in result.error
    assert version_rows(db_url) == []
