"""EDGE: run targets' passes in worker processes, in the order a rollout says.

Alembic's command machinery keeps module-level state, so passes run in
processes, never threads. Each target's pass runs in a process forked
after the parent has loaded the revision scripts, so it shares the loaded
graph (copy on write) instead of loading it; the job is handed over through
fork, not pickled (see :func:`dispatch`), and the result comes back through
a pipe. The process exits after its target, so memory stays flat however
many targets a run has, and one that dies takes only its own target down.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar, cast

from schemad.targets import Rollout

R = TypeVar("R")
_PR_SET_PDEATHSIG = 1
# What the forked workers run: set in the parent just before it forks them
# (fork copies it), never pickled. Only one dispatch runs at a time.
_JOB: Callable[[str], Any] | None = None


def _worker_started(parent: int) -> None:
    """A new worker: it must not keep the daemon's SIGTERM handler (a fork copies
    it; SIGTERM ends a worker), and it dies with its parent (a killed daemon
    must not leave workers behind holding its pipes)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)


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
    return _in_children(rollout, job, ended=ended, on_error=on_error, workers=workers)


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


def _in_children(
    rollout: Rollout,
    job: Callable[[str], R],
    *,
    ended: Callable[[str, R], None],
    on_error: Callable[[str, BaseException], R],
    workers: int,
) -> dict[str, R]:
    """One forked process per target, at most ``workers`` at once.

    A process per target rather than a pool: a worker that dies (the OOM
    killer, a SIGKILL, a crash in a driver) ends only its own target, which
    is reported failed, and nothing waits for a result that cannot come (a
    pool loses the task of a killed worker and waits for it forever).
    Memory stays flat: each process exits after its target.
    """
    global _JOB
    results: dict[str, R] = {}
    context = multiprocessing.get_context("fork")
    running: dict[Connection, tuple[str, BaseProcess]] = {}
    _JOB = job
    try:
        while not rollout.done:
            # Never more started than workers: a queued target would start
            # after the budget is spent.
            while len(running) < workers and (name := rollout.next()) is not None:
                reader, writer = context.Pipe(duplex=False)
                child: BaseProcess = context.Process(
                    target=_child, args=(name, writer, os.getpid()), name=f"schemad-{name}"
                )
                child.start()
                writer.close()  # the child's copy is the only writer: EOF when it ends
                running[reader] = (name, child)
            if not running:
                break
            for ready in wait(list(running)):
                pipe = cast(Connection, ready)
                name, process = running.pop(pipe)
                result = _collect(name, pipe, process, on_error)
                results[name] = result
                ended(name, result)
    finally:
        _JOB = None
        for pipe, (_name, process) in running.items():
            process.kill()  # only when the parent itself is failing
            process.join()
            pipe.close()
    return results


def _child(name: str, writer: Connection, parent: int) -> None:
    _worker_started(parent)
    try:
        assert _JOB is not None, "a child without a job: it was not forked by dispatch()"
        outcome: tuple[bool, Any] = (True, _JOB(name))
    except Exception as exc:  # turned into a result by the parent's on_error
        outcome = (False, RuntimeError(f"{type(exc).__name__}: {exc}"))
    writer.send(outcome)
    writer.close()


def _collect(
    name: str,
    reader: Connection,
    child: BaseProcess,
    on_error: Callable[[str, BaseException], R],
) -> R:
    try:
        ok, value = reader.recv()
    except EOFError:
        # The process ended without a result: killed, or it crashed.
        child.join()
        return on_error(name, WorkerDied(child.exitcode))
    finally:
        reader.close()
    child.join()
    return cast(R, value) if ok else on_error(name, value)


class WorkerDied(Exception):
    """The process running a target's pass ended without reporting its result."""

    def __init__(self, exitcode: int | None) -> None:
        how = (
            f"was killed by signal {-exitcode}"
            if exitcode is not None and exitcode < 0
            else f"exited with code {exitcode}"
        )
        super().__init__(
            f"the worker process migrating this target {how} before reporting (out of "
            "memory?); its revision may have been cut off: the next run re-plans from "
            "the database"
        )
