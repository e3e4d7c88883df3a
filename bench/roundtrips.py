"""Statements and transaction round trips per revision: schemad against Alembic.

Counts are exact where timings are noisy. One tool applies every revision of
a linear history to a fresh database inside this process, with SQLAlchemy
events counting what reaches the driver: statements (each ``execute``, a
batch of several statements in one ``execute`` counting once), commits,
rollbacks and savepoints. Each count is divided by the number of revisions.

    python -m bench.roundtrips BACKEND TOOL URL PROJECT COUNT   (prints one JSON object)

Tools: ``alembic`` (``command.upgrade``: Alembic's default, one transaction
for all revisions where DDL is transactional), ``schemad`` (one transaction
per revision, on a database that already has a revision, as every upgrade
after the first), ``schemad_bootstrap`` (an empty database, one transaction).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

TOOLS = ("alembic", "schemad", "schemad_bootstrap")
KINDS = ("statements", "commit", "rollback", "savepoint")


def count(backend: str, tool: str, url: str, project: Path, revisions: int) -> dict[str, float]:
    """Per-revision counts of ``tool`` applying the ``revisions`` of ``project``."""
    from alembic import command
    from alembic.config import Config

    logging.disable(logging.CRITICAL)
    config = Config()
    config.set_main_option("script_location", str(project))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    applied = revisions
    if tool == "schemad":
        command.upgrade(config, "r0001")  # not an empty database: no bootstrap
        applied -= 1
    counts: Counter[str] = Counter()
    _listen(counts)
    if tool == "alembic":
        command.upgrade(config, "head")
    else:
        os.environ.update(
            SCHEMAD_DATABASE_URL=url,
            SCHEMAD_SCRIPT_LOCATION=str(project),
            SCHEMAD_HISTORY_ENABLED="true",
            SCHEMAD_LOG_LEVEL="error",
        )
        from schemad import logs
        from schemad.cli import App
        from schemad.settings import load_settings

        logs.configure("json", "error", stream=sys.stderr)
        result = App.build(load_settings(), io.StringIO()).reconciler.reconcile_once()
        if not result.at_target:
            raise SystemExit(f"schemad did not reach the head: {result.error}")
    return {kind: round(counts[kind] / applied, 2) for kind in KINDS}


def _listen(counts: Counter[str]) -> None:
    def executed(*_args: object) -> None:
        counts["statements"] += 1

    sa.event.listen(sa.Engine, "before_cursor_execute", executed)
    for kind in ("commit", "rollback", "savepoint"):

        def seen(*_args: object, _kind: str = kind) -> None:
            counts[_kind] += 1

        sa.event.listen(sa.Engine, kind, seen)


if __name__ == "__main__":
    backend, tool, url, project, revisions = sys.argv[1:6]
    print(json.dumps(count(backend, tool, url, Path(project), int(revisions))))
