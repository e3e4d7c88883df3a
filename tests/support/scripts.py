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
    header = textwrap.dedent(
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
        '''
    )
    # Indent the bodies after dedenting the header: interpolating a multi-line
    # body into the dedented template would break its indentation.
    body = (
        f"{header}\n\n"
        f"def upgrade():\n{_function_body(upgrade)}\n\n"
        f"def downgrade():\n{_function_body(downgrade)}"
    )
    target = project / "versions" / f"{revision}.py"
    target.write_text(body)
    return target


def _function_body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", "    ")


def ledger_upgrade(revision: str, delay_seconds: float = 0.0) -> str:
    """An upgrade body that records the revision once in a ledger table.

    ``delay_seconds`` makes the revision take that long, as real ones do.
    """
    pause = f"import time\ntime.sleep({delay_seconds!r})\n" if delay_seconds else ""
    return pause + textwrap.dedent(
        f"""\
        bind = op.get_bind()
        if not sa.inspect(bind).has_table("ledger"):
            op.create_table("ledger", sa.Column("revision", sa.String(64), nullable=False))
        op.execute(sa.text("INSERT INTO ledger (revision) VALUES ('{revision}')"))
        """
    )


def linear_project(
    path: Path, count: int, *, ledger: bool = False, delay_seconds: float = 0.0
) -> list[str]:
    """A linear history r0001 -> r0002 -> ...; return the ids base-first."""
    make_project(path)
    ids = [f"r{i:04d}" for i in range(1, count + 1)]
    previous = None
    for rev in ids:
        write_revision(
            path,
            rev,
            previous,
            upgrade=ledger_upgrade(rev, delay_seconds) if ledger else "pass",
        )
        previous = rev
    return ids


def create_table(table: str) -> str:
    """An upgrade body that creates an empty table ``table``."""
    return f'op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))\n'


def drop_table(table: str) -> str:
    """A downgrade body that drops ``table``."""
    return f'op.drop_table("{table}")\n'


def tables_project(path: Path, count: int) -> list[str]:
    """A linear history where revision rNNNN creates table t_rNNNN (its downgrade drops it)."""
    make_project(path)
    ids = [f"r{i:04d}" for i in range(1, count + 1)]
    previous = None
    for rev in ids:
        write_revision(
            path, rev, previous, upgrade=create_table(f"t_{rev}"), downgrade=drop_table(f"t_{rev}")
        )
        previous = rev
    return ids


def branched_project(path: Path, *, merged: bool) -> list[str]:
    """a0 -> (b1 -> b2 labelled 'left') and (c1 labelled 'right'), optionally merged.

    With ``merged``, m1 merges b2 and c1 and d1 follows it. Every revision
    creates table t_<id>. Returns the ids.
    """
    make_project(path)
    layout: list[tuple[str, str | tuple[str, ...] | None, tuple[str, ...] | None]] = [
        ("a0", None, None),
        ("b1", "a0", ("left",)),
        ("b2", "b1", None),
        ("c1", "a0", ("right",)),
    ]
    if merged:
        layout += [("m1", ("b2", "c1"), None), ("d1", "m1", None)]
    for rev, down, labels in layout:
        write_revision(
            path,
            rev,
            down,
            upgrade=create_table(f"t_{rev}"),
            downgrade=drop_table(f"t_{rev}"),
            branch_labels=labels,
        )
    return [rev for rev, _, _ in layout]


def write_env(project: Path, source: str) -> Path:
    """Replace the project's env.py with ``source``."""
    target = project / "env.py"
    target.write_text(textwrap.dedent(source))
    return target
