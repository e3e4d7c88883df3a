"""Alembic projects for the benchmarks: N trivial revisions, linear or branched.

Every revision creates one small table ``t_<id>`` (its downgrade drops it).
Two shapes:

- ``linear``: r0001 -> r0002 -> ... -> rNNNN;
- ``branched``: r0001, then diamonds of three: a left and a right child of
  the previous revision, and a merge of the two (the last diamond may be cut
  short, leaving two heads merged by one last revision).

The project is what ``alembic init`` gives a user, trimmed: an ``alembic.ini``
(written per database by :func:`write_alembic_ini`, with the generic
template's logging sections), the generic ``env.py`` plus the cookbook's
"connection sharing" branch (a connection in ``config.attributes`` is used
as is, which is how schemad hands over its own), and revision files as the
generic ``script.py.mako`` renders them. Plain ``alembic`` therefore pays
for nothing schemad-specific (the shipped ``migrations/env.py`` imports
schemad's settings, i.e. pydantic, to find the URL).
"""

from __future__ import annotations

import compileall
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config

SHAPES = ("linear", "branched")

ENV_PY = '''\
"""Alembic's generic env.py, plus the cookbook's connection-sharing branch."""

from logging.config import fileConfig

from sqlalchemy import engine_from_config, pool

from alembic import context

config = context.config

# schemad routes Alembic's logging itself and says so through this attribute.
if config.config_file_name is not None and not config.attributes.get("schemad"):
    fileConfig(config.config_file_name)

target_metadata = None


def run_migrations_offline() -> None:
    # Offline mode renders the bench's raw-SQL floor: BEGIN/COMMIT around each
    # revision even where Alembic would leave them out (SQLite, MySQL), so the
    # floor commits exactly as often as schemad does.
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transactional_ddl=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

REVISION_PY = '''\
"""create table t_{revision}

Revision ID: {revision}
Revises: {revises}
Create Date: 2026-01-01 00:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = {revision!r}
down_revision: Union[str, Sequence[str], None] = {down!r}
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "t_{revision}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("t_{revision}")
'''

ALEMBIC_INI = """\
[alembic]
script_location = {script_location}
path_separator = os
sqlalchemy.url = {url}

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""


@dataclass(frozen=True)
class History:
    """A generated project: where it is, its revisions base-first, its head."""

    shape: str
    count: int
    path: Path
    revisions: tuple[str, ...]
    head: str

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(f"t_{rev}" for rev in self.revisions)


def layout(shape: str, count: int) -> list[tuple[str, str | tuple[str, ...] | None]]:
    """(revision, down_revision) pairs base-first; exactly one head."""
    if count < 1:
        raise ValueError("a history needs at least one revision")
    ids = [f"r{i:04d}" for i in range(1, count + 1)]
    if shape == "linear":
        return [(rev, ids[i - 1] if i else None) for i, rev in enumerate(ids)]
    if shape != "branched":
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    pairs: list[tuple[str, str | tuple[str, ...] | None]] = [(ids[0], None)]
    tip, i = ids[0], 1
    while i < count:
        left = ids[i]
        pairs.append((left, tip))
        if i + 1 == count:
            break
        right = ids[i + 1]
        pairs.append((right, tip))
        if i + 2 == count:
            # No id left for a merge: chain the last one so there is one head.
            pairs[-1] = (right, left)
            break
        merge = ids[i + 2]
        pairs.append((merge, (left, right)))
        tip, i = merge, i + 3
    return pairs


def write_project(path: Path, shape: str, count: int) -> History:
    """Write env.py, script.py.mako and ``count`` revision files under ``path``.

    The revision files are byte-compiled straight away, as in an image built
    with ``python -m compileall``, so no tool pays for compiling them, and the
    directories are dated a minute back.
    """
    versions = path / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (path / "env.py").write_text(ENV_PY)
    (path / "script.py.mako").write_text("")
    pairs = layout(shape, count)
    for revision, down in pairs:
        revises = ", ".join(down) if isinstance(down, tuple) else down
        (versions / f"{revision}_create_table.py").write_text(
            REVISION_PY.format(revision=revision, revises=revises, down=down)
        )
    compileall.compile_dir(str(path), quiet=1, workers=1)
    # As in an image built earlier: older than schemad's settle window, which
    # would otherwise make it reload a directory it sees being written.
    past = time.time() - 60
    for directory in (path, versions, versions / "__pycache__", path / "__pycache__"):
        if directory.exists():
            os.utime(directory, (past, past))
    revisions = tuple(rev for rev, _ in pairs)
    return History(shape, count, path, revisions, revisions[-1])


def write_alembic_ini(path: Path, history: History, url: str) -> Path:
    """An alembic.ini like ``alembic init`` writes, pointing at ``url``."""
    path.write_text(ALEMBIC_INI.format(script_location=history.path, url=url.replace("%", "%%")))
    return path


def render_floor(history: History, url: str) -> tuple[str, str]:
    """The SQL Alembic would run for ``url``'s dialect (offline mode, base to
    head), as two scripts: one transaction per revision (what schemad does),
    and everything in one transaction.
    """
    config = Config()
    config.set_main_option("script_location", str(history.path))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.output_buffer = buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    per_revision = buffer.getvalue()
    lines = [line for line in per_revision.splitlines() if line not in ("BEGIN;", "COMMIT;")]
    return per_revision, "\n".join(["BEGIN;", *lines, "COMMIT;", ""])
