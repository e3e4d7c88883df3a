"""Tables: one per case as it finishes, then every target of issue 6 with
whether this run met it. Times are medians; ratios between tools run in the
same rounds are medians of the per-round ratios (see Results.ratio).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

from bench.cases import APPLY_TOOLS, NOOP_TOOLS, Results
from bench.roundtrips import KINDS as ROUND_TRIP_KINDS
from bench.roundtrips import TOOLS as ROUND_TRIP_TOOLS

MIB = "MiB"
APPLY_GOALS = {"postgresql": 1.3, "sqlite": 1.3, "mariadb": 1.5}
NOOP_PROCESS_GOAL = 0.5
DAEMON_NOOP_GOAL_MS = 2.0
REPLICAS_GOAL_SECONDS = 1.0
IDLE_RSS_GOAL_MIB = 60.0
# Issue 15 (performance, second round).
APPLY_VS_ALEMBIC_GOALS = {"postgresql": 0.7, "sqlite": 0.7, "mariadb": 0.9}
BOOTSTRAP_VS_FLOOR_GOAL = 1.2
WAIT_PROCESS_GOAL = 0.4


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [
                str(first).ljust(widths[0]),
                *(str(c).rjust(w) for c, w in zip(rest, widths[1:], strict=True)),
            ]
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None or bottom == 0 else top / bottom


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def machine() -> str:
    """Where the figures come from (for the README)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("alembic", "sqlalchemy", "psycopg", "pymysql")
    )
    return (
        f"{platform.node()}: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
        f"{_cpu_model()}; Python {platform.python_version()}; {versions}; "
        f"{_server('psql')}; {_server('mariadb')}; load average {load}"
    )


def code_version() -> str:
    """The commit, and a digest of service/schemad as it is on disk now (the
    package is installed editable and may change under a long run).
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted((root / "service" / "schemad").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"commit {commit or '?'}, service/schemad sha256 {digest.hexdigest()[:12]}"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _server(client: str) -> str:
    query = "SHOW server_version" if client == "psql" else "SELECT VERSION()"
    argv = (
        ["psql", "-X", "-Atq", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", query]
        if client == "psql"
        else ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-u", "root", "-N", "-e", query]
    )
    try:
        found = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return f"{client}: not available"
    name = "PostgreSQL" if client == "psql" else "MariaDB"
    return f"{name} {found.stdout.strip().split()[0] if found.stdout.strip() else '?'}"


def apply_table(results: Results, backend: str, shapes: Sequence[str], sizes: Sequence[int]) -> str:
    rows = []
    for shape in shapes:
        for count in sizes:
            m = {t: results.median("apply", backend, shape, count, t) for t in APPLY_TOOLS}
            rss = {
                t: results.median("apply", backend, shape, count, f"{t}_rss") for t in APPLY_TOOLS
            }
            rounds = len(results.samples.get(("apply", backend, shape, count, "schemad"), []))
            paired = partial(results.ratio, "apply", backend, shape, count)
            if not any(m.values()):
                continue  # not run (the quick run skips some)
            rows.append(
                [
                    shape,
                    str(count),
                    str(rounds),
                    num(m["floor"]),
                    num(m["floor_1tx"]),
                    num(m["alembic"]),
                    num(m["schemad"]),
                    num(m["schemad_per_revision"]),
                    times(paired("alembic", "floor")),
                    times(paired("schemad", "floor")),
                    times(paired("schemad", "alembic")),
                    times(paired("schemad_per_revision", "alembic")),
                    num(rss["alembic"], 1),
                    num(rss["schemad"], 1),
                ]
            )
    headers = [
        "shape", "N", "runs", "floor s", "floor-1tx s", "alembic s", "schemad s",
        "per-rev s", "alembic/floor", "schemad/floor", "schemad/alembic", "per-rev/alembic",
        f"alembic {MIB}", f"schemad {MIB}",
    ]  # fmt: skip
    return (
        f"apply all from empty, {backend} (medians; schemad = bootstrap in one transaction "
        "where DDL is transactional, per-rev = SCHEMAD_BOOTSTRAP_IN_ONE_TRANSACTION=false; "
        "peak RSS per process)\n"
    ) + table(headers, rows)


def noop_table(results: Results, backends: Sequence[str], count: int) -> str:
    rows = []
    for backend in backends:
        m = {t: results.median("noop", backend, "linear", count, t) for t in NOOP_TOOLS}
        rss = {t: results.median("noop", backend, "linear", count, f"{t}_rss") for t in NOOP_TOOLS}
        paired = partial(results.ratio, "noop", backend, "linear", count)
        rows.append(
            [
                backend,
                str(count),
                num(_ms(m["select_1"]), 1),
                num(_ms(m["alembic"]), 1),
                num(_ms(m["schemad"]), 1),
                num(_ms(m["schemad_index"]), 1),
                num(_ms(m["wait_index"]), 1),
                times(paired("schemad", "alembic")),
                times(paired("schemad_index", "alembic")),
                times(paired("wait_index", "alembic")),
                num(rss["alembic"], 1),
                num(rss["schemad"], 1),
                num(rss["schemad_index"], 1),
            ]
        )
    headers = [
        "backend", "N", "SELECT 1 ms", "alembic ms", "schemad ms", "+index ms", "wait+index ms",
        "schemad/alembic", "+index/alembic", "wait+index/alembic", f"alembic {MIB}",
        f"schemad {MIB}", f"+index {MIB}",
    ]  # fmt: skip
    return (
        "no-op as a whole process, already at head (medians; +index: with `schemad index` "
        "built, no Alembic imported)\n" + table(headers, rows)
    )


def round_trip_table(results: Results, backends: Sequence[str], count: int) -> str:
    rows = []
    for backend in backends:
        for tool in ROUND_TRIP_TOOLS:
            values = [
                results.median("roundtrips", backend, "linear", count, f"{tool}:{kind}")
                for kind in ROUND_TRIP_KINDS
            ]
            if any(v is not None for v in values):
                rows.append([backend, tool, *(num(v, 2) for v in values)])
    return (
        f"per revision, applying {count} revisions in one process (exact counts; a batch of "
        "statements in one execute counts once)\n"
        + table(["backend", "tool", *ROUND_TRIP_KINDS], rows)
    )


def daemon_noop_table(results: Results, backends: Sequence[str], count: int) -> str:
    rows = []
    for backend in backends:
        m = {
            t: results.median("daemon_noop", backend, "linear", count, t)
            for t in ("floor", "alembic", "schemad")
        }
        rows.append(
            [
                backend,
                str(count),
                num(m["floor"]),
                num(m["alembic"], 2),
                num(m["schemad"]),
                times(ratio(m["schemad"], m["floor"])),
                times(ratio(m["alembic"], m["schemad"])),
            ]
        )
    headers = [
        "backend",
        "N",
        "floor ms",
        "alembic ms",
        "schemad ms",
        "schemad/floor",
        "alembic/schemad",
    ]
    return (
        "no-op pass inside one process (bench/noop_pass.py: floor = get_current_revision() on an "
        "open connection;\nalembic = command.upgrade repeated; schemad = reconcile_once repeated)\n"
        + table(headers, rows)
    )


def replicas_table(results: Results, backends: Sequence[str], count: int, replicas: int) -> str:
    rows = []
    for backend in backends:
        key = ("replicas", backend, "linear", count)
        single, last = results.median(*key, "single"), results.median(*key, "last")
        failed = results.samples.get((*key, "failed"), [])
        rows.append(
            [
                backend,
                str(count),
                num(single),
                num(results.median(*key, "first")),
                num(last),
                num(None if single is None or last is None else last - single),
                f"{int(sum(failed))} of {len(failed) * replicas}",
                num(results.median(*key, "rss_max"), 1),
            ]
        )
    headers = [
        "backend", "N", "single s", f"{replicas}: first exit s", f"{replicas}: last exit s",
        "last - single s", "non-zero exits", f"max RSS {MIB}",
    ]  # fmt: skip
    return (
        f"{replicas} schemad upgrade replicas started at once on an empty database (medians)\n"
        + table(headers, rows)
    )


def daemon_rss_table(results: Results, backends: Sequence[str], count: int) -> str:
    rows = []
    for backend in backends:
        key = ("daemon_rss", backend, "linear", count)
        rows.append(
            [
                backend,
                str(count),
                num(results.median(*key, "at_head_rss"), 1),
                num(results.median(*key, "at_head_hwm"), 1),
                num(results.median(*key, "applied_rss"), 1),
                num(results.median(*key, "applied_hwm"), 1),
            ]
        )
    headers = [
        "backend", "N", f"at head: RSS {MIB}", f"peak {MIB}",
        f"applied all: RSS {MIB}", f"peak {MIB}",
    ]  # fmt: skip
    return (
        "`schemad run` idle after its first pass (/proc/<pid>/status VmRSS, VmHWM; "
        "started at head, or on an empty database)\n" + table(headers, rows)
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run


def targets(
    results: Results,
    backends: Sequence[str],
    shapes: Sequence[str],
    sizes: Mapping[str, int],
    replicas: int,
) -> list[Target]:
    """Every target of issue 6, judged on this run's medians; ``sizes`` gives
    the N each case ran at (apply, noop, daemon, replicas, rss).
    """
    return [
        *_second_round_targets(results, backends, sizes["apply"], sizes["noop"]),
        *_apply_targets(results, backends, shapes, sizes["apply"]),
        *_noop_targets(results, backends, sizes["noop"]),
        *_daemon_targets(results, backends, sizes["daemon"]),
        *_replica_targets(results, backends, sizes["replicas"], replicas),
        *_idle_rss_targets(results, backends, sizes["rss"]),
        *_peak_rss_targets(results, backends, shapes, sizes["apply"]),
    ]


def _second_round_targets(
    results: Results, backends: Sequence[str], apply_count: int, noop_count: int
) -> list[Target]:
    """Issue 15's targets, at 1,000 linear revisions in the full run."""
    found = []
    for backend in backends:
        apply = partial(results.ratio, "apply", backend, "linear", apply_count)
        noop = partial(results.ratio, "noop", backend, "linear", noop_count)
        goal = APPLY_VS_ALEMBIC_GOALS[backend]
        checks = [
            (f"[15] apply {apply_count} from empty, {backend}: schemad / alembic",
             apply("schemad", "alembic"), goal),
            (f"[15] no-op process {noop_count}, {backend}: schemad+index / alembic",
             noop("schemad_index", "alembic"), NOOP_PROCESS_GOAL),
            (f"[15] wait when satisfied {noop_count}, {backend}: wait+index / alembic",
             noop("wait_index", "alembic"), WAIT_PROCESS_GOAL),
        ]  # fmt: skip
        if backend != "mariadb":
            checks.append(
                (f"[15] bootstrap {apply_count}, {backend}: schemad / raw floor",
                 apply("schemad", "floor"), BOOTSTRAP_VS_FLOOR_GOAL)
            )  # fmt: skip
        found.extend(
            Target(name, times(value), f"<= {limit}x", _met(value, limit))
            for name, value, limit in checks
        )
    return found


def _met(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def _apply_targets(
    results: Results, backends: Sequence[str], shapes: Sequence[str], count: int
) -> list[Target]:
    found = []
    for backend in backends:
        for shape in shapes:
            value = results.ratio("apply", backend, shape, count, "schemad", "floor")
            goal = APPLY_GOALS[backend]
            found.append(
                Target(
                    f"apply {count}, {backend}, {shape}: schemad / raw floor",
                    times(value),
                    f"<= {goal}x",
                    _met(value, goal),
                )
            )
    return found


def _noop_targets(results: Results, backends: Sequence[str], count: int) -> list[Target]:
    found = []
    for backend in backends:
        value = results.ratio("noop", backend, "linear", count, "schemad", "alembic")
        found.append(
            Target(
                f"no-op process {count}, {backend}: schemad upgrade / alembic upgrade head",
                times(value),
                f"<= {NOOP_PROCESS_GOAL}x",
                _met(value, NOOP_PROCESS_GOAL),
            )
        )
    return found


def _daemon_targets(results: Results, backends: Sequence[str], count: int) -> list[Target]:
    found = []
    for backend in backends:
        value = results.median("daemon_noop", backend, "linear", count, "schemad")
        found.append(
            Target(
                f"daemon no-op pass {count}, {backend}",
                "-" if value is None else f"{value:.3f} ms",
                f"<= {DAEMON_NOOP_GOAL_MS:g} ms",
                _met(value, DAEMON_NOOP_GOAL_MS),
            )
        )
    return found


def _replica_targets(
    results: Results, backends: Sequence[str], count: int, replicas: int
) -> list[Target]:
    found = []
    for backend in backends:
        key = ("replicas", backend, "linear", count)
        single, last = results.median(*key, "single"), results.median(*key, "last")
        failed = results.samples.get((*key, "failed"), [])
        delta = None if single is None or last is None else last - single
        met = None if delta is None else (delta <= REPLICAS_GOAL_SECONDS and not any(failed))
        measured = "-" if delta is None else f"+{delta:.2f} s, {int(sum(failed))} non-zero"
        found.append(
            Target(
                f"{replicas} replicas {count}, {backend}: last exit - single",
                measured,
                f"all exit 0, <= +{REPLICAS_GOAL_SECONDS:g} s",
                met,
            )
        )
    return found


def _idle_rss_targets(results: Results, backends: Sequence[str], count: int) -> list[Target]:
    found = []
    for backend in backends:
        key = ("daemon_rss", backend, "linear", count)
        for state, label in (("at_head", "started at head"), ("applied", "after applying all")):
            value = results.median(*key, f"{state}_rss")
            found.append(
                Target(
                    f"idle daemon RSS, {backend}, {label} ({count})",
                    "-" if value is None else f"{value:.1f} {MIB}",
                    f"<= {IDLE_RSS_GOAL_MIB:g} {MIB}",
                    _met(value, IDLE_RSS_GOAL_MIB),
                )
            )
    return found


def _peak_rss_targets(
    results: Results, backends: Sequence[str], shapes: Sequence[str], count: int
) -> list[Target]:
    found = []
    for backend in backends:
        for shape in shapes:
            ours = results.median("apply", backend, shape, count, "schemad_rss")
            theirs = results.median("apply", backend, shape, count, "alembic_rss")
            found.append(
                Target(
                    f"peak RSS applying {count}, {backend}, {shape}: schemad vs alembic",
                    "-" if ours is None or theirs is None else f"{ours:.1f} vs {theirs:.1f} {MIB}",
                    "schemad <= alembic",
                    None if ours is None or theirs is None else ours <= theirs,
                )
            )
    return found


def targets_table(found: Sequence[Target]) -> str:
    rows = [
        [t.name, t.measured, t.goal, "-" if t.met is None else ("met" if t.met else "MISSED")]
        for t in found
    ]
    return table(["target", "measured", "goal", "result"], rows)
