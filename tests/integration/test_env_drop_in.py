"""schemad runs any project's own env.py: Alembic's stock one, custom ones, the shipped one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import alembic
import pytest
from sqlalchemy.engine import make_url

from schemad.errors import ConfigError
from schemad.model import Outcome
from support.databases import table_names, version_rows
from support.scripts import ROOT, tables_project, write_env

from .conftest import MakeApp

GENERIC_ENV = Path(alembic.__file__).parent / "templates" / "generic" / "env.py"

OWN_ENGINE_ENV = """\
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def run_migrations_online():
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
"""

OTHER_VERSION_TABLE_ENV = """\
from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, version_table="other_versions")
with context.begin_transaction():
    context.run_migrations()
"""


@pytest.mark.parametrize(
    "env_source",
    [
        pytest.param(GENERIC_ENV.read_text(), id="alembic-generic-template"),
        pytest.param(OWN_ENGINE_ENV, id="own-engine-from-main-option"),
    ],
)
def test_env_py_that_builds_its_own_engine_works(
    env_source: str, db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """An env.py that ignores config.attributes and connects from sqlalchemy.url still migrates."""
    project = tmp_path / "migrations"
    tables_project(project, 3)
    write_env(project, env_source)
    app = make_app(db_url, project)

    result = app.reconciler.reconcile_once()

    assert (
        result.outcome,
        [step.revision for step in result.applied],
    ) == (Outcome.APPLIED, ["r0001", "r0002", "r0003"])
    assert version_rows(db_url) == ["r0003"]
    assert {"t_r0001", "t_r0002", "t_r0003"} <= table_names(db_url)


@pytest.mark.postgres
def test_percent_encoded_password_reaches_env_py_intact(
    postgres_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """A URL-encoded password ('%40', '%25') survives Alembic's '%' interpolation of sqlalchemy.url.

    The server trusts local connections, so any password connects; a mangled
    URL would fail to parse or to interpolate instead.
    """
    url = make_url(postgres_url).set(password="p@ss%word").render_as_string(hide_password=False)
    assert "p%40ss%25word" in url
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, OWN_ENGINE_ENV)
    app = make_app(url, project)

    result = app.reconciler.reconcile_once()

    assert (result.outcome, result.error) == (Outcome.APPLIED, None)
    assert version_rows(postgres_url) == ["r0002"]


def test_env_py_with_another_version_table_is_a_config_error(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """env.py naming a version table other than an explicit SCHEMAD_VERSION_TABLE stops
    the pass before anything is touched: no table, no history, no lock."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, OTHER_VERSION_TABLE_ENV)
    app = make_app(db_url, project, version_table="alembic_version")

    with pytest.raises(ConfigError) as raised:
        app.reconciler.reconcile_once()

    assert raised.value.variable == "SCHEMAD_VERSION_TABLE"
    assert "other_versions" in raised.value.message
    assert "alembic_version" in raised.value.message
    assert set() == table_names(db_url)
    assert app.database.lock_holder() is None


def test_a_version_table_set_only_in_env_py_is_followed_by_every_command(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Without SCHEMAD_VERSION_TABLE, status reads (and upgrade writes) the table env.py names."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, OTHER_VERSION_TABLE_ENV)

    before = make_app(db_url, project).reconciler.inspect()
    result = make_app(db_url, project).reconciler.reconcile_once()
    after = make_app(db_url, project).reconciler.inspect()

    expected = ((), Outcome.APPLIED, ("r0002",), ["r0002"], [])
    assert expected == (
        before.state.heads,
        result.outcome,
        after.state.heads,
        version_rows(db_url, "other_versions"),
        version_rows(db_url),
    )


def test_env_py_and_settings_agreeing_on_a_custom_version_table(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """When env.py and SCHEMAD_VERSION_TABLE name the same table, that table is used."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, OTHER_VERSION_TABLE_ENV)
    app = make_app(db_url, project, version_table="other_versions")

    result = app.reconciler.reconcile_once()

    assert result.outcome == Outcome.APPLIED
    assert (
        version_rows(db_url, "other_versions"),
        "alembic_version" in table_names(db_url),
    ) == (["r0002"], False)


def test_shipped_env_py_leaves_logging_alone(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Through the shipped alembic.ini (which configures logging), a pass keeps our handlers."""
    shutil.copy(ROOT / "alembic.ini", tmp_path / "alembic.ini")
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations", ignore=_pycache)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    app = make_app(db_url, None, alembic_config=str(tmp_path / "alembic.ini"))

    result = app.reconciler.reconcile_once()

    assert (
        result.outcome,
        [step.revision for step in result.applied],
    ) == (Outcome.APPLIED, ["1a2b3c4d5e6f"])
    assert before == (list(root.handlers), root.level)
    assert "users" in table_names(db_url)


def _pycache(_directory: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "__pycache__"}
