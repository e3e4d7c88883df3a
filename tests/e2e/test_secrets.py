"""No form of the password reaches any channel: CLI output, logs, history rows,
`schemad history`, the daemon's /status and /metrics.

The password holds ``!@:/%``, so it appears in text in several forms: raw
(a driver's own error), as SQLAlchemy renders it in a URL (``!`` is ``%21``),
URL-quoted, form-quoted, and with ``%`` doubled (an ini value). Each
failing revision below puts the URL into an error the way real code does:
by quoting Alembic's ``sqlalchemy.url`` option, or by a database error that
echoes the URL it was handed as a value.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from support.daemon import running_daemon
from support.databases import connection, mariadb_user
from support.processes import SCHEMAD, clean_env
from support.scripts import linear_project, write_revision
from support.secrets import secret_forms

pytestmark = pytest.mark.e2e

PASSWORD = "Zq9-Secr3t!pw@:/%x"
SECRET_FORMS = secret_forms(PASSWORD)
QUOTES_THE_OPTION = (
    "from alembic import context\n"
    'raise RuntimeError(context.config.get_main_option("sqlalchemy.url"))'
)
ECHO_BY_DATABASE = {
    "postgresql": (
        "url = op.get_bind().engine.url.render_as_string(hide_password=False)\n"
        'op.get_bind().execute(sa.text("SELECT CAST(:url AS integer)"), {"url": url})'
    ),
    "mariadb": (
        "url = op.get_bind().engine.url.render_as_string(hide_password=False)\n"
        "op.get_bind().execute(\n"
        '    sa.text("SIGNAL SQLSTATE \'45000\' SET MESSAGE_TEXT = :url"), {"url": url[:120]}\n'
        ")"
    ),
}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(backend, URL whose user has the password) on a fresh database."""
    if request.param == "postgresql":
        url = make_url(str(request.getfixturevalue("postgres_url")))
        # Trust authentication ignores the password: it is still in every URL.
        yield "postgresql", url.set(password=PASSWORD).render_as_string(hide_password=False)
        return
    with mariadb_user(str(request.getfixturevalue("mariadb_url")), PASSWORD) as url:
        yield "mariadb", url


def leaks(*texts: str) -> list[str]:
    """The forms of the password found in any of ``texts``."""
    return [form for form in SECRET_FORMS if any(form in text for text in texts)]


def schemad(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCHEMAD), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("how", ["quotes-the-option", "database-echoes-it"])
def test_a_failing_revision_that_carries_the_url_leaks_it_nowhere(
    database: tuple[str, str], tmp_path: Path, how: str
) -> None:
    """Every channel masks every form of the password after a revision fails with the URL."""
    backend, url = database
    project = tmp_path / "migrations"
    linear_project(project, 1)
    body = QUOTES_THE_OPTION if how == "quotes-the-option" else ECHO_BY_DATABASE[backend]
    write_revision(project, "r0002", "r0001", message="Leak the URL", upgrade=body)
    env = clean_env(
        database_url=url, script_location=str(project), log_format="json", history_enabled="true"
    )

    upgrade = schemad(env, "upgrade")
    history_text = schemad(env, "history")
    history_json = schemad(env, "history", "--json")
    with connection(url) as conn:
        errors = [
            str(row)
            for row in conn.execute(sa.text("SELECT error FROM schemad_history")).scalars()
            if row
        ]
    with running_daemon(
        clean_env(
            database_url=url,
            script_location=str(project),
            log_format="json",
            http_host="127.0.0.1",
            http_port="0",
            interval_seconds="3600",
        )
    ) as daemon:
        daemon.wait_for_event("reconcile_finished", timeout=60)

        # The pass is logged just before the daemon stores it for /status.
        def finished_pass() -> str:
            text = daemon.get("/status").text
            return text if '"last_pass": {' in text else ""

        status = daemon.wait_until(
            finished_pass, timeout=10, message="/status with the finished pass"
        )
        metrics = daemon.scrape()
        daemon_output = daemon.output()

    assert (upgrade.returncode, len(errors) >= 1) == (70, True), upgrade.stderr
    assert "Leak the URL" in history_text.stdout
    assert '"outcome": "failed"' in status
    assert (
        leaks(
            upgrade.stdout + upgrade.stderr,
            history_text.stdout + history_text.stderr,
            history_json.stdout + history_json.stderr,
            *errors,
            status,
            metrics,
            daemon_output,
        )
        == []
    )
