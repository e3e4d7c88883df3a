"""A crash while an empty database is being created leaves it empty.

The bootstrap of an empty database (PostgreSQL, SQLite) runs every revision
in one transaction: SIGKILL in the middle of it, and the database holds no
revision's table and no version row; the next run creates it whole.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.databases import table_names, version_rows
from support.processes import SCHEMAD, clean_env
from support.scripts import create_table, make_project, write_revision

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REVISIONS = ("r0001", "r0002", "r0003", "r0004", "r0005")
SLOW_REVISION = "r0003"
WAIT_SECONDS = 60.0


def project(path: Path) -> Path:
    """Five revisions, each creating t_<id>; r0003 sleeps after creating its table."""
    make_project(path)
    previous = None
    for revision in REVISIONS:
        body = create_table(f"t_{revision}")
        if revision == SLOW_REVISION:
            body += "import time\ntime.sleep(30)\n"
        write_revision(path, revision, previous, upgrade=body)
        previous = revision
    return path


@pytest.mark.parametrize(
    "fixture",
    [
        pytest.param("sqlite_url", id="sqlite"),
        pytest.param("postgres_url", marks=pytest.mark.postgres, id="postgresql"),
    ],
)
def test_a_killed_bootstrap_leaves_nothing_and_the_next_run_converges(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """SIGKILL inside the third revision of a bootstrap: no table, no version row; the
    next run (the slow revision made quick) applies all five."""
    url = str(request.getfixturevalue(fixture))
    migrations = project(tmp_path / "migrations")
    env = clean_env(database_url=url, script_location=str(migrations), log_format="json")
    process = subprocess.Popen(
        [str(SCHEMAD), "upgrade"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + WAIT_SECONDS
    for line in process.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        if f"-> {SLOW_REVISION}" in str(event.get("event", "")) or time.monotonic() > deadline:
            break
    time.sleep(0.5)  # inside the slow revision, its table created
    process.send_signal(signal.SIGKILL)
    process.wait(WAIT_SECONDS)
    process.stderr.close()
    left = (table_names(url) - {"schemad_history"}, version_rows(url))

    slow = migrations / "versions" / f"{SLOW_REVISION}.py"
    slow.write_text(slow.read_text().replace("time.sleep(30)", "time.sleep(0)"))
    again = subprocess.run(
        [str(SCHEMAD), "upgrade"], env=env, capture_output=True, text=True, timeout=WAIT_SECONDS
    )

    assert left == (set(), [])
    assert (again.returncode, version_rows(url)) == (0, ["r0005"]), again.stderr
    assert {f"t_{r}" for r in REVISIONS} <= table_names(url)
