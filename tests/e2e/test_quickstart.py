"""Alembic's own quick start, unchanged, in a copy of this repository's layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from support.databases import columns, table_names, version_rows
from support.processes import alembic, clean_env, schemad
from support.scripts import ROOT

pytestmark = pytest.mark.e2e
SHIPPED_HEAD = "1a2b3c4d5e6f"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """alembic.ini and migrations/ copied as a user's checkout would have them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "alembic.ini", repo / "alembic.ini")
    shutil.copytree(
        ROOT / "migrations", repo / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    return repo


def _alembic_ok(repo: Path, env: dict[str, str], *args: str) -> str:
    done = alembic(*args, env=env, cwd=repo)
    assert (done.returncode, done.stderr.count("Traceback")) == (0, 0), done.stderr
    return done.stdout


def _assert_users_table(url: str) -> None:
    found = columns(url, "users")
    decimal = found["chosen_decimal"]["type"]
    assert list(found) == ["id", "name", "chosen_decimal", "dob"]
    assert (isinstance(decimal, sa.Numeric), decimal.precision, decimal.scale) == (True, 16, 8)
    assert isinstance(found["dob"]["type"], sa.DateTime)
    assert (found["name"]["nullable"], found["dob"]["nullable"]) == (False, False)


def test_alembic_quick_start(db_url: str, repository: Path) -> None:
    """current, upgrade, downgrade -1, upgrade, downgrade base, upgrade, revision -m all work."""
    env = clean_env(database_url=db_url)

    assert _alembic_ok(repository, env, "current").strip() == ""

    _alembic_ok(repository, env, "upgrade", "head")
    _assert_users_table(db_url)
    assert version_rows(db_url) == [SHIPPED_HEAD]

    _alembic_ok(repository, env, "downgrade", "-1")
    assert ("users" in table_names(db_url), version_rows(db_url)) == (False, [])

    _alembic_ok(repository, env, "upgrade", "head")
    assert ("users" in table_names(db_url), version_rows(db_url)) == (True, [SHIPPED_HEAD])

    _alembic_ok(repository, env, "downgrade", "base")
    assert ("users" in table_names(db_url), version_rows(db_url)) == (False, [])

    _alembic_ok(repository, env, "upgrade", "head")
    _assert_users_table(db_url)
    assert SHIPPED_HEAD in _alembic_ok(repository, env, "current")

    _alembic_ok(repository, env, "revision", "-m", "add email")
    created = [
        path
        for path in (repository / "migrations" / "versions").glob("*.py")
        if SHIPPED_HEAD not in path.name
    ]
    assert [path.name.endswith("_add_email.py") for path in created] == [True]
    scripts = ScriptDirectory.from_config(Config(str(repository / "alembic.ini")))
    new_head = scripts.get_revision("head")
    assert new_head is not None
    assert (new_head.down_revision, new_head.doc) == (SHIPPED_HEAD, "add email")

    status = schemad("status", "--json", env=env, cwd=repository)
    document = json.loads(status.stdout)
    assert (status.returncode, len(document["pending"])) == (3, 1), status.stderr
    assert document["pending"][0]["revision"] == new_head.revision
