"""The graph index: with it, a command that has nothing to do never imports Alembic;
without it, or when it is stale, everything works as before.

Each check runs schemad in a fresh interpreter and reports, beside the exit
code and output, whether any Alembic module or revision module was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.processes import SCHEMAD, clean_env
from support.scripts import linear_project, write_env, write_revision

pytestmark = pytest.mark.e2e

PROBE = """
import json, sys
from schemad.cli import main
code = main(sys.argv[1:])
loaded = sorted({m.split(".")[0] for m in sys.modules if m.startswith(("alembic", "r0"))})
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""
TENANT_ENV = """\
from alembic import context

config = context.config
tenant = context.get_x_argument(as_dictionary=True).get("tenant", "public")
context.configure(connection=config.attributes["connection"], version_table_schema=tenant)
with context.begin_transaction():
    context.run_migrations()
"""


def run(env: dict[str, str], *args: str) -> tuple[int, list[str], str, str]:
    """Exit code, the top-level modules of Alembic and revisions imported, stdout, stderr."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["loaded"], done.stdout, done.stderr


def index(env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(SCHEMAD), "index"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def project_env(tmp_path: Path, count: int = 3) -> dict[str, str]:
    linear_project(tmp_path / "migrations", count)
    return clean_env(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        script_location=str(tmp_path / "migrations"),
        log_format="json",
    )


def age(path: Path) -> None:
    """Date the files back, as in an image, so the daemon-style reload check is calm."""
    past = time.time() - 60
    for item in (path, *path.rglob("*")):
        os.utime(item, (past, past))


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("wait",), ("upgrade",)])
def test_nothing_to_do_never_imports_alembic(tmp_path: Path, command: tuple[str, ...]) -> None:
    """With a fresh index and the database at head, status, wait and a no-op upgrade
    decide without Alembic and without any revision module."""
    env = project_env(tmp_path)
    assert run(env, "upgrade")[0] == 0
    index(env)
    code, loaded, _out, _err = run(env, *command)
    assert (code, loaded) == (0, [])


def test_output_is_the_same_with_and_without_the_index(tmp_path: Path) -> None:
    """`status --json` says the same with the index as without it."""
    env = project_env(tmp_path)
    run(env, "upgrade")
    without = run(env, "status", "--json")[2]
    index(env)
    with_index = run(env, "status", "--json")[2]
    assert json.loads(with_index) == json.loads(without)


def test_work_to_do_takes_the_full_path(tmp_path: Path) -> None:
    """With revisions pending, the index leads to Alembic and the upgrade applies them."""
    env = project_env(tmp_path)
    index(env)
    code, loaded, _out, err = run(env, "upgrade")
    finished = [json.loads(line) for line in err.splitlines() if "reconcile_finished" in line]
    assert (code, "alembic" in loaded, finished[-1]["steps_applied"]) == (0, True, 3)


def test_a_stale_index_is_not_trusted(tmp_path: Path) -> None:
    """A revision file added after indexing: the index is ignored and the new revision
    is found (status reports it pending, exit 3)."""
    env = project_env(tmp_path)
    run(env, "upgrade")
    index(env)
    write_revision(tmp_path / "migrations", "r0004", "r0003")
    code, loaded, out, _err = run(env, "status")
    assert (code, "alembic" in loaded, "r0004" in out) == (3, True, True)


def test_an_edited_revision_makes_the_index_stale(tmp_path: Path) -> None:
    """A revision edited in place after indexing is read from disk (its tamper check
    sees the edit), not trusted from the index."""
    env = project_env(tmp_path)
    run(env, "upgrade")
    index(env)
    path = tmp_path / "migrations" / "versions" / "r0002.py"
    path.write_text(path.read_text() + "\n# edited\n")
    code, loaded, out, _err = run(env, "status")
    assert (code, "alembic" in loaded, "tampered: r0002" in out) == (0, True, True)


def test_no_index_works_as_before(tmp_path: Path) -> None:
    """Without an index every command loads the scripts through Alembic, as before."""
    env = project_env(tmp_path)
    run(env, "upgrade")
    code, loaded, _out, _err = run(env, "status")
    assert (code, "alembic" in loaded) == (0, True)


def test_a_computed_version_table_takes_the_full_path(tmp_path: Path) -> None:
    """env.py choosing its version table at run time (from -x) is run every time: the
    index says so, and the look reads the table env.py names."""
    env = project_env(tmp_path)
    write_env(tmp_path / "migrations", TENANT_ENV)
    said = index(env)
    code, loaded, _out, _err = run(env, "status")
    assert ("computes its version table" in said, code, "alembic" in loaded) == (True, 3, True)


def test_the_index_names_what_it_covers(tmp_path: Path) -> None:
    """`schemad index` says how many revisions and which heads it recorded."""
    env = project_env(tmp_path)
    age(tmp_path / "migrations")
    said = index(env)
    document = json.loads((tmp_path / "migrations" / "schemad-index.json").read_text())
    assert ("3 revision(s), head(s) r0003" in said, document["heads"]) == (True, ["r0003"])
