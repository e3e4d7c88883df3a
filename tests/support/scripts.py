"""Build small Alembic projects on disk for tests: linear, branched, broken."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_ENV = ROOT / "migrations" / "env.py"
SHIPPED_MAKO = ROOT / "migrations" / "script.py.mako"


def make_project(path: Path) -> Path:
    """Create a migrations directory using the shipped env.py; return it."""
    versions = path / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED_ENV, path / "env.py")
    shutil.copy(SHIPPED_MAKO, path / "script.py.mako")
    return path


def write_revision(
    project: Path,
    revision: str,
    down: str | Sequence[str] | None,
    *,
    message: str | None = None,
    upgrade: str = "pass",
    downgrade: str = "pass",
    branch_labels: Sequence[str] | None = None,
) -> Path:
    """Write one revision file whose upgrade/downgrade bodies are given as code."""
    down_repr = repr(tuple(down)) if isinstance(down, (list, tuple)) else repr(down)
    labels = repr(tuple(branch_labels)) if branch_labels else "None"
    body = textwrap.dedent(
        f'''\
        """{message or f"revision {revision}"}

        Revision ID: {revision}
        Revises: {down}
        """
        import sqlalchemy as sa
        from alembic import op

        revision = {revision!r}
        down_revision = {down_repr}
        branch_labels = {labels}
        depends_on = None


        def upgrade():
        {textwrap.indent(textwrap.dedent(upgrade), "    ")}


        def downgrade():
        {textwrap.indent(textwrap.dedent(downgrade), "    ")}
        '''
    )
    target = project / "versions" / f"{revision}.py"
    target.write_text(body)
    return target


def ledger_upgrade(revision: str) -> str:
    """An upgrade body that records the revision once in a ledger table."""
    return textwrap.dedent(
        f"""\
        bind = op.get_bind()
        if not sa.inspect(bind).has_table("ledger"):
            op.create_table("ledger", sa.Column("revision", sa.String(64), nullable=False))
        op.execute(sa.text("INSERT INTO ledger (revision) VALUES ('{revision}')"))
        """
    )


def linear_project(path: Path, count: int, *, ledger: bool = False) -> list[str]:
    """A linear history r0001 -> r0002 -> ...; return the ids base-first."""
    make_project(path)
    ids = [f"r{i:04d}" for i in range(1, count + 1)]
    previous = None
    for rev in ids:
        write_revision(
            path,
            rev,
            previous,
            upgrade=ledger_upgrade(rev) if ledger else "pass",
        )
        previous = rev
    return ids
