"""The reliability suite's shared pieces: a fork server and the figures.

Every test records what it did (rounds, kills, takeover and recovery times,
cases) in ``figures``; the session ends with a short summary of them in the
terminal, so the numbers can be quoted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from support.forkserver import ForkServer

from .figures import Figures

FIGURES = pytest.StashKey[Figures]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = Figures()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash[FIGURES].lines() if FIGURES in config.stash else []
    if not lines:
        return
    terminalreporter.write_sep("=", "schemad reliability figures")
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> Figures:
    """Where tests record their numbers for the summary."""
    return pytestconfig.stash[FIGURES]


@pytest.fixture(scope="session")
def forkserver() -> Iterator[ForkServer]:
    """One interpreter with schemad imported, forking ``schemad`` runs for the whole session."""
    with ForkServer() as server:
        yield server
