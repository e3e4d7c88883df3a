"""Real-world project shapes: -x arguments, pyproject.toml, several version locations,
branches with depends_on, env.py files that bring their own connection, revisions
that cannot run in a transaction.

Each test builds the shape on disk and runs schemad's own pass on it, as the
CLI does; every guarantee schemad gives its own connection must hold for a
connection env.py opens itself.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import alembic
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from schemad.errors import ConfigError, ScriptError
from schemad.model import Outcome
from support.databases import connection, sibling_database, table_names, version_rows
from support.scripts import make_project, tables_project, write_env, write_revision

from .conftest import MakeApp

GENERIC_ENV = (Path(alembic.__file__).parent / "templates" / "generic" / "env.py").read_text()

# Alembic's cookbook "Rudimental schema-level multi tenancy", with -x tenant=NAME.
TENANT_ENV = """\
from alembic import context
from sqlalchemy import text

config = context.config
tenant = context.get_x_argument(as_dictionary=True).get("tenant")
if tenant is None:
    raise SystemExit("needs -x tenant=NAME")
connection = config.attributes["connection"]
connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{tenant}"'))
connection.execute(text(f'SET search_path TO "{tenant}"'))
connection.commit()
context.configure(connection=connection, version_table_schema=tenant)
with context.begin_transaction():
    context.run_migrations()
"""

# JupyterHub's shape: what config.attributes["connection"] holds is used as an Engine.
ENGINE_EXPECTED_ENV = """\
from alembic import context

config = context.config
connectable = config.attributes.get("connection")
with connectable.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""

# An env.py that reads its own variable instead of sqlalchemy.url.
OTHER_URL_ENV = """\
from alembic import context
from sqlalchemy import create_engine, pool

OTHER_URL = {url!r}
engine = create_engine(OTHER_URL, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

# Alembic's generic template, but calling fileConfig() whatever it is given.
UNCONDITIONAL_FILECONFIG_ENV = GENERIC_ENV.replace(
    "if config.config_file_name is not None:\n    fileConfig(config.config_file_name)",
    "fileConfig(config.config_file_name)",
)


@pytest.mark.postgres
def test_x_arguments_reach_env_py_per_tenant(
    postgres_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """SCHEMAD_X_ARGS reaches context.get_x_argument(): each tenant schema gets its own
    tables and version table, and status reads the tenant's."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, TENANT_ENV)

    first = make_app(postgres_url, project, x_args="tenant=acme").reconciler.reconcile_once()
    second = make_app(postgres_url, project, x_args="tenant=globex").reconciler.reconcile_once()
    status = make_app(postgres_url, project, x_args="tenant=acme").reconciler.inspect()

    with connection(postgres_url) as conn:
        tables = {
            schema: set(sa.inspect(conn).get_table_names(schema=schema))
            for schema in ("acme", "globex")
        }
    expected_tables = {"alembic_version", "schemad_history", "t_r0001", "t_r0002"}
    assert (first.outcome, second.outcome, status.state.heads) == (
        Outcome.APPLIED,
        Outcome.APPLIED,
        ("r0002",),
    )
    assert tables == {"acme": expected_tables, "globex": expected_tables}


def test_env_py_that_needs_an_x_argument_is_a_script_error(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Without the -x argument env.py exits: a script error naming its message, nothing touched."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    write_env(project, TENANT_ENV)
    app = make_app(sqlite_url, project)

    result = app.reconciler.reconcile_once()

    assert (result.outcome, "needs -x tenant=NAME" in (result.error or "")) == (
        Outcome.SCRIPT_ERROR,
        True,
    )
    assert table_names(sqlite_url) == set()


def _pyproject(tmp_path: Path, *, recursive: bool) -> Path:
    """A pyproject.toml project (no alembic.ini) whose revisions live in two
    version locations, one of them nested (found only recursively)."""
    project = make_project(tmp_path / "migrations")
    core, nested = tmp_path / "versions_core", tmp_path / "versions_extra" / "2026" / "11"
    for directory in (core, nested):
        directory.mkdir(parents=True)
    table = 'op.create_table("{0}", sa.Column("id", sa.Integer, primary_key=True))'
    for revision, down, name, where in (
        ("r0001", None, "a", core),
        ("r0002", "r0001", "b", core),
        ("r0003", "r0002", "c", nested),
    ):
        written = write_revision(project, revision, down, upgrade=table.format(name))
        written.rename(where / written.name)
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "app"

            [tool.alembic]
            script_location = "migrations"
            version_locations = ["versions_core", "%(here)s/versions_extra"]
            recursive_version_locations = {str(recursive).lower()}
            """
        )
    )
    return tmp_path / "pyproject.toml"


def test_pyproject_with_several_version_locations_applies_every_revision(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """[tool.alembic] with relative and %(here)s version locations, read recursively:
    all three revisions apply, from any working directory."""
    toml = _pyproject(tmp_path, recursive=True)
    app = make_app(db_url, None, alembic_config=str(toml))

    result = app.reconciler.reconcile_once()

    assert (result.outcome, [s.revision for s in result.applied]) == (
        Outcome.APPLIED,
        ["r0001", "r0002", "r0003"],
    )
    assert {"a", "b", "c"} <= table_names(db_url)


def test_pyproject_without_recursion_sees_what_alembic_sees(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Without recursive_version_locations the nested revision is not there for Alembic
    either: head is r0002, the same head `alembic heads` gives."""
    toml = _pyproject(tmp_path, recursive=False)
    app = make_app(sqlite_url, None, alembic_config=str(toml))
    assert app.reconciler.scripts().graph.heads == ("r0002",)


def test_ini_beside_pyproject_uses_both(sqlite_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """An alembic.ini without script_location beside a pyproject.toml that has it
    (Alembic's pyproject template) is read together with it."""
    toml = _pyproject(tmp_path, recursive=True)
    ini = toml.with_name("alembic.ini")
    ini.write_text("[alembic]\nsqlalchemy.url = sqlite:///unused.db\n")

    result = make_app(sqlite_url, None, alembic_config=str(ini)).reconciler.reconcile_once()

    assert (result.outcome, len(result.applied)) == (Outcome.APPLIED, 3)


def test_branches_with_depends_on_reach_every_head(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Two labelled branches, one depending on the other's revision: target heads applies
    both in dependency order."""
    project = make_project(tmp_path / "migrations")
    table = 'op.create_table("{0}", sa.Column("id", sa.Integer, primary_key=True))'
    write_revision(project, "base1", None, upgrade=table.format("base1"))
    write_revision(project, "auth1", None, branch_labels=["auth"], upgrade=table.format("auth1"))
    write_revision(project, "shop1", "base1", branch_labels=["shop"], upgrade=table.format("shop1"))
    path = project / "versions" / "shop1.py"
    path.write_text(path.read_text().replace("depends_on = None", "depends_on = 'auth1'"))
    app = make_app(db_url, project, target_revision="heads")

    result = app.reconciler.reconcile_once()

    order = [step.revision for step in result.applied]
    heads = app.reconciler.scripts().resolve("heads").revisions or ()
    assert (result.outcome, sorted(order), sorted(version_rows(db_url))) == (
        Outcome.APPLIED,
        ["auth1", "base1", "shop1"],
        sorted(heads),
    )
    assert order.index("auth1") < order.index("shop1")


def test_include_schemas_env_py_migrates(db_url: str, tmp_path: Path, make_app: MakeApp) -> None:
    """An env.py configuring include_schemas (autogenerate's option) runs unchanged."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    env_py = project / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "context.configure(connection=connection, target_metadata=target_metadata)",
            "context.configure(connection=connection, target_metadata=target_metadata, "
            "include_schemas=True)",
        )
    )
    assert make_app(db_url, project).reconciler.reconcile_once().outcome is Outcome.APPLIED


def test_an_own_engine_env_py_keeps_one_transaction_per_revision_on_sqlite(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """With Alembic's generic env.py (its own engine), a failing revision leaves
    nothing of itself behind on SQLite, as with schemad's own connection."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    write_revision(
        project,
        "r0002",
        "r0001",
        upgrade='op.create_table("half", sa.Column("id", sa.Integer))\nraise RuntimeError("boom")',
    )
    write_env(project, GENERIC_ENV)
    app = make_app(sqlite_url, project, bootstrap_in_one_transaction="false")

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert (result.outcome, version_rows(sqlite_url)) == (Outcome.FAILED, ["r0001"])
    assert "half" not in table_names(sqlite_url)
    assert [e["event"] for e in logs if e["event"] == "env_connection_adopted"] == [
        "env_connection_adopted"
    ]


@pytest.mark.postgres
def test_an_own_engine_env_py_gets_the_statement_timeout(
    postgres_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """SCHEMAD_STATEMENT_TIMEOUT_SECONDS cuts a slow statement on env.py's own connection."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    write_revision(project, "r0002", "r0001", upgrade='op.execute("SELECT pg_sleep(5)")')
    write_env(project, GENERIC_ENV)
    app = make_app(
        postgres_url,
        project,
        statement_timeout_seconds="1",
        bootstrap_in_one_transaction="false",
    )

    result = app.reconciler.reconcile_once()

    assert (result.outcome, version_rows(postgres_url)) == (Outcome.FAILED, ["r0001"])
    assert "SCHEMAD_STATEMENT_TIMEOUT_SECONDS" in (result.error or "")


def test_env_py_with_its_own_url_to_another_database_is_refused_untouched(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """env.py connecting to a database other than SCHEMAD_DATABASE_URL is refused before
    anything is applied anywhere; drift refuses it too."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    with sibling_database(db_url) as other:
        write_env(project, OTHER_URL_ENV.format(url=other))
        app = make_app(db_url, project)

        with pytest.raises(ConfigError) as refused:
            app.reconciler.reconcile_once()
        with pytest.raises(ConfigError):
            make_app(db_url, project).reconciler.check_drift()

        other_tables = table_names(other)
    assert "migrates a database other than" in refused.value.message
    assert (table_names(db_url) - {"schemad_history"}, other_tables) == (set(), set())


def test_env_py_using_the_connection_as_an_engine_works(
    db_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """`with config.attributes['connection'].connect() as connection:` gets schemad's connection."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, ENGINE_EXPECTED_ENV)
    result = make_app(db_url, project).reconciler.reconcile_once()
    assert (result.outcome, version_rows(db_url)) == (Outcome.APPLIED, ["r0002"])


def test_unconditional_fileconfig_with_only_a_script_location_works(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """fileConfig(config.config_file_name) with no alembic.ini finds a file, and
    schemad's own events still reach the log during the run."""
    project = tmp_path / "migrations"
    tables_project(project, 2)
    write_env(project, UNCONDITIONAL_FILECONFIG_ENV)

    with capture_logs() as logs:
        result = make_app(sqlite_url, project).reconciler.reconcile_once()

    applied = [e["revision"] for e in logs if e["event"] == "migration_applied"]
    assert (result.outcome, applied) == (Outcome.APPLIED, ["r0001", "r0002"])


@pytest.mark.postgres
def test_a_revision_that_cannot_run_in_a_transaction_names_the_setting(
    postgres_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """CREATE INDEX CONCURRENTLY fails inside a transaction with advice naming
    SCHEMAD_AUTOCOMMIT_REVISIONS; listed there, it applies."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    write_revision(
        project,
        "r0002",
        "r0001",
        upgrade='op.execute("CREATE INDEX CONCURRENTLY ix_t ON t_r0001 (id)")',
        downgrade='op.execute("DROP INDEX CONCURRENTLY ix_t")',
    )

    refused = make_app(postgres_url, project).reconciler.reconcile_once()
    listed = make_app(postgres_url, project, autocommit_revisions="r0002")
    applied = listed.reconciler.reconcile_once()

    with connection(postgres_url) as conn:
        indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("t_r0001")}
    assert (refused.outcome, "SCHEMAD_AUTOCOMMIT_REVISIONS" in (refused.error or "")) == (
        Outcome.FAILED,
        True,
    )
    assert (applied.outcome, version_rows(postgres_url), "ix_t" in indexes) == (
        Outcome.APPLIED,
        ["r0002"],
        True,
    )


def test_an_autocommit_revision_unknown_to_the_scripts_is_a_config_error(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """SCHEMAD_AUTOCOMMIT_REVISIONS naming no revision stops before anything runs."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    app = make_app(sqlite_url, project, autocommit_revisions="nosuch")
    with pytest.raises(ConfigError) as raised:
        app.reconciler.reconcile_once()
    assert raised.value.variable == "SCHEMAD_AUTOCOMMIT_REVISIONS"


def test_env_py_syntax_error_is_found_by_status(
    sqlite_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """A read-only look reports a broken env.py as a script error too."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    (project / "env.py").write_text("def broken(:\n")
    with pytest.raises(ScriptError):
        make_app(sqlite_url, project).reconciler.inspect()
