"""Build schemad's App the way the CLI does, from SCHEMAD_* variables."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemad.cli import App
from schemad.settings import load_settings

MakeApp = Callable[..., App]


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeApp]:
    """Return ``make(url, project, **settings) -> App``; engines are disposed afterwards.

    ``project`` becomes SCHEMAD_SCRIPT_LOCATION (None: leave it unset).
    ``settings`` are SCHEMAD_* variables without the prefix, e.g.
    ``target_revision="r0002"``. Every other SCHEMAD_* variable is unset.
    """
    built: list[App] = []

    def make(url: str, project: Path | None, **settings: str) -> App:
        for key in list(os.environ):
            if key.upper().startswith("SCHEMAD_"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("SCHEMAD_DATABASE_URL", url)
        if project is not None:
            monkeypatch.setenv("SCHEMAD_SCRIPT_LOCATION", str(project))
        for key, value in settings.items():
            monkeypatch.setenv(f"SCHEMAD_{key.upper()}", value)
        app = App.build(load_settings(), io.StringIO())
        built.append(app)
        return app

    yield make
    for app in built:
        app.database.dispose()
