"""Worker processes: forked, sharing the parent's job, without its signal handlers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from schemad.targets import Rollout
from schemad.workers import dispatch


@pytest.fixture
def handled_sigterm() -> Iterator[None]:
    """A SIGTERM handler in this process, as the daemon installs one."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_workers_run_the_job_in_other_processes_without_the_parents_sigterm_handler(
    handled_sigterm: None,
) -> None:
    """Each target runs in a forked worker whose SIGTERM does what it says (the
    daemon's handler is not inherited), and every target's result comes back."""
    parent = os.getpid()

    def job(name: str) -> tuple[str, bool, bool]:
        default = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        return name, os.getpid() != parent, default

    results = dispatch(
        Rollout(["a", "b", "c"], max_failures=0),
        job,
        ok=lambda _result: True,
        on_error=lambda name, exc: (name, False, False),
        workers=2,
    )
    assert results == {name: (name, True, True) for name in ["a", "b", "c"]}


def test_one_worker_runs_in_process_and_an_exception_becomes_a_result() -> None:
    """workers=1: no fork; a job that raises is turned into a result by on_error."""

    def job(name: str) -> str:
        if name == "b":
            raise RuntimeError("boom")
        return f"{name}:{os.getpid()}"

    results = dispatch(
        Rollout(["a", "b"], max_failures=0),
        job,
        ok=lambda result: not result.startswith("error"),
        on_error=lambda name, exc: f"error {exc}",
        workers=1,
    )
    assert results == {"a": f"a:{os.getpid()}", "b": "error boom"}


def test_a_worker_killed_mid_target_fails_that_target_alone_and_nothing_hangs() -> None:
    """A worker SIGKILLed (as by the OOM killer) ends only its own target, reported with
    the signal; the other targets still run and the dispatch returns."""

    def job(name: str) -> str:
        if name == "b":
            os.kill(os.getpid(), signal.SIGKILL)
        return f"{name} ok"

    rollout = Rollout(["a", "b", "c", "d"], max_failures=0)
    results = dispatch(
        rollout,
        job,
        ok=lambda result: result.endswith(" ok"),
        on_error=lambda name, exc: f"{name} error: {exc}",
        workers=2,
    )
    assert {name: result for name, result in results.items() if name != "b"} == {
        "a": "a ok",
        "c": "c ok",
        "d": "d ok",
    }
    assert results["b"].startswith("b error: the worker process migrating this target was")
    assert "killed by signal 9" in results["b"]


def test_a_job_that_raises_in_a_worker_becomes_a_result() -> None:
    """An exception in a forked worker comes back to on_error with its type and text."""

    def job(name: str) -> str:
        raise ValueError(f"no {name}")

    results = dispatch(
        Rollout(["a", "b"], max_failures=0),
        job,
        ok=lambda _result: False,
        on_error=lambda name, exc: f"{name}: {exc}",
        workers=2,
    )
    assert results == {"a": "a: ValueError: no a", "b": "b: ValueError: no b"}
