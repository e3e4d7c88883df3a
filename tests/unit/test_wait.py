"""`schemad wait` polling, with an injected clock and sleep: no real waiting."""

from __future__ import annotations

import argparse
import io
import os
from typing import Any, cast

import pytest

from schemad.cli import App, cmd_wait
from schemad.database import Database
from schemad.errors import DatabaseUnavailableError, PlanRejectedError, WaitTimeoutError
from schemad.model import DbState, Inspection, Plan, PlanKind, RefusalReason, Step, Target
from schemad.reconciler import Reconciler
from schemad.settings import Settings

PASSWORD = "Wait-S3cret-1"
BEHIND = Plan(PlanKind.UPGRADE, ("r1",), ("r2",), (Step("r2"),), message="1 revision(s) to apply")
READY = Plan(PlanKind.IN_SYNC, ("r2",), ("r2",), schema_ready=True)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)


class FakeClock:
    """Time that moves only when the command sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Looks:
    """Answers inspect() with the given plans (or errors) in turn; the last repeats."""

    def __init__(self, *items: Plan | Exception) -> None:
        self.items = list(items)

    def inspect(self, **_kwargs: Any) -> Inspection:
        item = self.items.pop(0) if len(self.items) > 1 else self.items[0]
        if isinstance(item, Exception):
            raise item
        return Inspection(DbState(item.current), Target("head", item.target), item)


class Redacting:
    def redact(self, text: str) -> str:
        return text.replace(PASSWORD, "***")


def wait(looks: Looks, clock: FakeClock, **settings: Any) -> int:
    values: dict[str, Any] = {
        "database_url": "sqlite:///unused.db",
        "wait_timeout_seconds": 10,
        "wait_interval_seconds": 3,
        **settings,
    }
    app = App(
        Settings(**values),
        cast(Database, Redacting()),
        cast(Reconciler, looks),
        io.StringIO(),
    )
    return cmd_wait(app, argparse.Namespace(), clock=clock, sleep=clock.sleep, hard_deadline=False)


def test_wait_returns_once_the_schema_is_ready() -> None:
    """Polls every SCHEMAD_WAIT_INTERVAL_SECONDS until the plan is ready, then exits 0."""
    clock = FakeClock()
    code = wait(Looks(BEHIND, BEHIND, READY), clock)
    assert (code, clock.sleeps) == (0, [3, 3])


def test_wait_keeps_waiting_through_an_outage() -> None:
    """An unreachable database is one more reason to wait, not a failure."""
    clock = FakeClock()
    code = wait(Looks(DatabaseUnavailableError("down"), READY), clock)
    assert (code, clock.sleeps) == (0, [3])


def test_wait_times_out_with_the_last_masked_reason() -> None:
    """Past SCHEMAD_WAIT_TIMEOUT_SECONDS it stops with the last thing it saw, masked."""
    clock = FakeClock()
    with pytest.raises(WaitTimeoutError) as caught:
        wait(Looks(DatabaseUnavailableError(f"cannot connect: pw {PASSWORD}")), clock)
    message = caught.value.message
    assert ("within 10s" in message, "pw ***" in message, PASSWORD in message) == (
        True,
        True,
        False,
    )


def test_wait_never_sleeps_past_its_deadline() -> None:
    """The last sleep is cut to the time left, so the timeout is kept to the second."""
    clock = FakeClock()
    with pytest.raises(WaitTimeoutError):
        wait(Looks(BEHIND), clock)
    assert (clock.sleeps, clock.now) == ([3, 3, 3, 1], 10)


def test_wait_fails_at_once_on_a_target_that_cannot_be_reached() -> None:
    """An unknown target is not something another migrator can fix: no waiting."""
    refused = Plan(
        PlanKind.REFUSED, ("r1",), (), reason=RefusalReason.UNKNOWN_TARGET, message="no such"
    )
    clock = FakeClock()
    with pytest.raises(PlanRejectedError):
        wait(Looks(refused), clock)
    assert clock.sleeps == []
