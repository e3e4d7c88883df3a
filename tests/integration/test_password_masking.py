"""The database password never reaches a Result's error or a log event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from schemad.cli import exit_code
from schemad.model import Outcome
from support.scripts import tables_project, write_revision

from .conftest import MakeApp

PASSWORD = "Sup3rS3cretPw"


def _with_password(url: str, **changes: Any) -> str:
    return make_url(url).set(password=PASSWORD, **changes).render_as_string(hide_password=False)


def _assert_no_password(result_error: str | None, logs: list[dict[str, Any]]) -> None:
    assert PASSWORD not in (result_error or "")
    assert [entry for entry in logs if PASSWORD in repr(entry)] == []


@pytest.mark.postgres
def test_successful_pass_logs_no_password(
    postgres_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """Applying with a password in the URL logs events that never contain it."""
    tables_project(tmp_path / "migrations", 2)
    app = make_app(_with_password(postgres_url), tmp_path / "migrations")

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert result.outcome == Outcome.APPLIED
    assert "reconcile_finished" in [entry["event"] for entry in logs]
    _assert_no_password(result.error, logs)


@pytest.mark.postgres
def test_revision_error_quoting_the_url_is_masked(
    postgres_url: str, tmp_path: Path, make_app: MakeApp
) -> None:
    """A revision whose exception quotes the full URL is reported with the password masked."""
    project = tmp_path / "migrations"
    tables_project(project, 1)
    write_revision(
        project,
        "r0002",
        "r0001",
        upgrade='raise RuntimeError("cannot reach " + '
        "op.get_bind().engine.url.render_as_string(hide_password=False))",
    )
    app = make_app(_with_password(postgres_url), project)

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.FAILED, 70)
    assert result.error is not None
    assert "cannot reach postgresql+psycopg://postgres:***@" in result.error
    _assert_no_password(result.error, logs)


@pytest.mark.parametrize(
    ("fixture", "changes"),
    [
        pytest.param("postgres_url", {"port": 1}, marks=pytest.mark.postgres, id="pg-refused"),
        pytest.param("mariadb_url", {}, marks=pytest.mark.mariadb, id="mariadb-wrong-password"),
    ],
)
def test_unreachable_database_error_is_masked(
    fixture: str,
    changes: dict[str, Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_app: MakeApp,
) -> None:
    """A connection failure is reported as UNAVAILABLE, exit 69, with the URL's password masked."""
    url = _with_password(str(request.getfixturevalue(fixture)), **changes)
    tables_project(tmp_path / "migrations", 1)
    app = make_app(url, tmp_path / "migrations", connect_timeout_seconds="2")

    with capture_logs() as logs:
        result = app.reconciler.reconcile_once()

    assert (result.outcome, exit_code(result)) == (Outcome.UNAVAILABLE, 69)
    assert result.error is not None
    assert ":***@" in result.error
    _assert_no_password(result.error, logs)
