"""EDGE: run targets' passes in worker processes, in the order a rollout says.

Alembic's command machinery keeps module-level state, so passes run in
processes, never threads. Workers are forked after the parent has loaded
the revision scripts, so they share the loaded graph (copy on write)
instead of each loading it; the job is handed over through fork, not
pickled (see :func:`dispatch`). Each worker is replaced after
``MAX_TASKS_PER_CHILD`` targets, which keeps its memory flat however many
env.py runs it has made.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from schemad.targets import Rollout

R = TypeVar("R")
MAX_TASKS_PER_CHILD = 50
_PR_SET_PDEATHSIG = 1
# What the forked workers run: set in the parent just before the pool forks
# (fork copies it), never pickled. Only one dispatch runs at a time.
_JOB: Callable[[str], Any] | None = None


def _worker_started(parent: int) -> None:
    """A new worker: it must not keep the daemon's SIGTERM handler (a fork copies
    it, and the pool ends its workers with SIGTERM), and it dies with its parent
    (a killed daemon must not leave workers behind holding its pipes)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)


def _run_in_worker(name: str) -> Any:
    assert _JOB is not None, "a worker without a job: the pool was not forked by dispatch()"
    return _JOB(name)


def dispatch(
    rollout: Rollout,
    job: Callable[[str], R],
    *,
    ok: Callable[[R], bool],
    on_error: Callable[[str, BaseException], R],
    workers: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, R]:
    """Run ``job(name)`` for the targets the rollout starts; return the results.

    With one worker the passes run in this process, one after another (no
    fork). ``ok`` tells the rollout whether a result counts as a failure;
    ``on_error`` turns an exception a worker raised into a result; once
    ``should_stop`` says so (a shutdown) no new target starts.
    """

    def ended(name: str, result: R) -> None:
        rollout.finished(name, ok=ok(result))
        if should_stop():
            rollout.halt()

    if workers <= 1:
        return _in_process(rollout, job, ended=ended, on_error=on_error)
    return _in_pool(rollout, job, ended=ended, on_error=on_error, workers=workers)


def _in_process(
    rollout: Rollout,
    job: Callable[[str], R],
    *,
    ended: Callable[[str, R], None],
    on_error: Callable[[str, BaseException], R],
) -> dict[str, R]:
    results: dict[str, R] = {}
    while (name := rollout.next()) is not None:
        try:
            result = job(name)
        except Exception as exc:
            result = on_error(name, exc)
        results[name] = result
        ended(name, result)
    return results


def _in_pool(
    rollout: Rollout,
    job: Callable[[str], R],
    *,
    ended: Callable[[str, R], None],
    on_error: Callable[[str, BaseException], R],
    workers: int,
) -> dict[str, R]:
    global _JOB
    results: dict[str, R] = {}
    finished: queue.Queue[tuple[str, R]] = queue.Queue()
    _JOB = job
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(
            workers,
            initializer=_worker_started,
            initargs=(os.getpid(),),
            maxtasksperchild=MAX_TASKS_PER_CHILD,
        ) as pool:
            while not rollout.done:
                # Never more started than workers: a queued target would start
                # after the budget is spent.
                while len(rollout.running) < workers and (name := rollout.next()) is not None:
                    _submit(pool, name, finished, on_error)
                name, result = finished.get()
                results[name] = result
                ended(name, result)
    finally:
        _JOB = None
    return results


def _submit(
    pool: Any,
    name: str,
    finished: queue.Queue[tuple[str, R]],
    on_error: Callable[[str, BaseException], R],
) -> None:
    pool.apply_async(
        _run_in_worker,
        (name,),
        callback=lambda result: finished.put((name, result)),
        error_callback=lambda exc: finished.put((name, on_error(name, exc))),
    )
