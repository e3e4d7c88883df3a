"""What ``schemad`` imports before it runs a command (its start-up cost)."""

from __future__ import annotations

import subprocess
import sys

DAEMON_ONLY = ("apscheduler", "prometheus_client")


def test_one_shot_commands_do_not_import_the_daemon() -> None:
    """Importing the CLI loads neither APScheduler nor prometheus_client (only `run` needs them)."""
    code = (
        "import schemad.cli, sys; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DAEMON_ONLY!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_version_is_the_installed_packages() -> None:
    """schemad.__version__ (read by pyproject.toml) is what pip installed."""
    from importlib.metadata import version

    from schemad import __version__

    assert version("schemad") == __version__
