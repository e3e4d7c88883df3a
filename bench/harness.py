"""``python -m bench``: every case, every tool in turn, then the targets table.

    python -m bench            # full: N = 10, 100, 1000 (several minutes)
    python -m bench --quick    # smoke: every case once, N <= 100 (about a minute)
    make bench [QUICK=1]

Exit status: 0 when every tool succeeded, 1 when one failed (a non-zero exit,
or a database not at head afterwards), 2 for bad usage. Timing never fails
the run: these machines are noisy, so the figures are for reading.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import cases, report
from bench.databases import BACKENDS, available
from bench.histories import SHAPES

CASES = ("apply", "noop", "roundtrips", "daemon", "replicas", "rss")


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    sizes: tuple[int, ...]
    backends: tuple[str, ...]
    shapes: tuple[str, ...]
    cases: tuple[str, ...]
    quick: bool
    replicas: int
    rounds: int | None

    def size(self, case: str) -> int:
        """The N a case runs at: the largest (apply: every one), but the
        quick run starts replicas and daemons on the smallest.
        """
        if self.quick and case in ("replicas", "rss"):
            return min(self.sizes)
        return max(self.sizes)

    def apply_shapes(self, count: int) -> tuple[str, ...]:
        """The quick run applies the branched shape at the smallest N only."""
        if self.quick and count > min(self.sizes):
            return tuple(s for s in self.shapes if s == "linear") or self.shapes[:1]
        return self.shapes

    def apply_tools(self) -> tuple[str, ...]:
        """The quick run leaves out the one-transaction floor (information only)."""
        if self.quick:
            return tuple(t for t in cases.APPLY_TOOLS if t != "floor_1tx")
        return cases.APPLY_TOOLS

    def apply_rounds(self, count: int) -> int:
        if self.rounds is not None:
            return self.rounds
        if self.quick:
            return 1
        return 3 if count >= 1000 else 5

    def noop_rounds(self) -> int:
        return self.rounds or (1 if self.quick else 7)

    def daemon_repeat(self) -> int:
        return 10 if self.quick else 50

    def replica_rounds(self) -> int:
        return self.rounds or (1 if self.quick else 3)


def parse(argv: Sequence[str] | None) -> tuple[Plan, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark schemad against `alembic upgrade head` and the raw-SQL floor.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N=10 and 100 (branched at 10, replicas and daemons at 10), one round",
    )
    parser.add_argument("--sizes", type=_ints, help="comma-separated N (default 10,100,1000)")
    parser.add_argument(
        "--backends", type=_names(BACKENDS), default=BACKENDS, help=f"of {','.join(BACKENDS)}"
    )
    parser.add_argument(
        "--shapes", type=_names(SHAPES), default=SHAPES, help=f"of {','.join(SHAPES)}"
    )
    parser.add_argument("--cases", type=_names(CASES), default=CASES, help=f"of {','.join(CASES)}")
    parser.add_argument("--rounds", type=int, help="rounds per case (default depends on N)")
    parser.add_argument("--replicas", type=int, default=8, help="processes started at once")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args(argv)
    sizes = args.sizes or ((10, 100) if args.quick else (10, 100, 1000))
    plan = Plan(
        sizes, args.backends, args.shapes, args.cases, args.quick, args.replicas, args.rounds
    )
    return plan, args.json


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 10,100: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers")
    return values


def _names(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse_names(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = sorted(set(names) - set(allowed))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(allowed)}")
        return names

    return parse_names


def main(argv: Sequence[str] | None = None) -> int:
    plan, json_path = parse(argv)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    backends = []
    for backend in plan.backends:
        reason = available(backend)
        if reason is None:
            backends.append(backend)
        else:
            print(f"skipping {backend}: {reason}", flush=True)
    code = report.code_version()
    print(f"machine: {report.machine()}\ncode: {code}\n", flush=True)
    results = cases.Results()
    with tempfile.TemporaryDirectory(prefix="schemad-bench-") as tmp:
        bench = cases.Bench(Path(tmp), results)
        _run_cases(bench, plan, tuple(backends), progress)
    sizes = {case: plan.size(case) for case in CASES}
    found = report.targets(results, backends, plan.shapes, sizes, plan.replicas)
    label = " (quick run: smoke, not figures)" if plan.quick else ""
    print(f"targets (issue 15 marked [15], then issue 6){label}")
    print(report.targets_table(found))
    print(f"\nload average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if report.code_version() != code:
        print(
            f"WARNING: service/schemad changed during this run ({code} -> "
            f"{report.code_version()}): the figures mix two versions of the code"
        )
    if json_path is not None:
        json_path.write_text(results.to_json())
    if results.failures:
        print(f"\n{len(results.failures)} tool run(s) failed:", file=sys.stderr)
        for failure in results.failures:
            print(f"- {failure}", file=sys.stderr)
        return 1
    progress("done")
    return 0


def _run_cases(
    bench: cases.Bench, plan: Plan, backends: tuple[str, ...], progress: Callable[[str], None]
) -> None:
    results = bench.results
    if "apply" in plan.cases:
        for backend in backends:
            for shape in plan.shapes:
                for count in plan.sizes:
                    if shape not in plan.apply_shapes(count):
                        continue
                    progress(f"apply {backend} {shape} N={count}")
                    cases.apply_all(
                        bench, backend, shape, count, plan.apply_rounds(count), plan.apply_tools()
                    )
            _show(report.apply_table(results, backend, plan.shapes, plan.sizes))
    if "noop" in plan.cases:
        count = plan.size("noop")
        for backend in backends:
            progress(f"no-op process {backend} N={count}")
            cases.noop_process(bench, backend, count, plan.noop_rounds())
        _show(report.noop_table(results, backends, count))
    if "roundtrips" in plan.cases:
        count = min(plan.sizes)
        for backend in backends:
            progress(f"round trips per revision {backend} N={count}")
            cases.round_trips(bench, backend, count)
        _show(report.round_trip_table(results, backends, count))
    if "daemon" in plan.cases:
        count = plan.size("daemon")
        for backend in backends:
            progress(f"daemon no-op pass {backend} N={count}")
            cases.daemon_noop(bench, backend, count, plan.daemon_repeat())
        _show(report.daemon_noop_table(results, backends, count))
    if "replicas" in plan.cases:
        count = plan.size("replicas")
        for backend in backends:
            progress(f"{plan.replicas} replicas {backend} N={count}")
            cases.replicas(bench, backend, count, plan.replica_rounds(), plan.replicas)
        _show(report.replicas_table(results, backends, count, plan.replicas))
    if "rss" in plan.cases:
        count = plan.size("rss")
        for backend in backends:
            progress(f"daemon idle RSS {backend} N={count}")
            cases.daemon_rss(bench, backend, count, settle_seconds=0.5 if plan.quick else 2.0)
        _show(report.daemon_rss_table(results, backends, count))


def _show(text: str) -> None:
    print(text + "\n", flush=True)
