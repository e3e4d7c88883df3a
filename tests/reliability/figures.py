"""The suite's figures: what each test did, rendered as a short summary.

Tests record rounds, kills, takeover and recovery times and cases with
``figures.add(section, **fields)``; the conftest prints :meth:`Figures.lines`
at the end of the session.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any


def backend_name(url: str) -> str:
    """sqlite, postgresql or mariadb, from a SQLAlchemy URL."""
    name = url.split(":", 1)[0].split("+", 1)[0]
    return "mariadb" if name == "mysql" else name


class Figures:
    """What the suite did, by section, for the end-of-session summary."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, section: str, **fields: Any) -> None:
        self.records[section].append(fields)

    def lines(self) -> list[str]:
        out: list[str] = []
        for section, render in _SECTIONS.items():
            records = self.records.get(section)
            if records:
                out.extend(render(records))
        return out


def _seconds(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}s"
    return (
        f"median {statistics.median(values):.2f}s, min {min(values):.2f}s, max {max(values):.2f}s"
    )


def _by_backend(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["backend"]].append(record)
    return grouped


def _races(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for backend, rows in _by_backend(records).items():
        processes = sum(r["processes"] for r in rows)
        lines.append(
            f"races     {backend:<10} {len(rows)} rounds x {rows[0]['processes']} "
            f"`schemad upgrade` processes, {rows[0]['revisions']} ledger revisions: "
            f"{sum(r['exit_0'] for r in rows)}/{processes} exit 0, "
            f"{sum(r['ledger_once'] for r in rows)}/{sum(r['revisions'] for r in rows)} "
            f"ledger rows exactly once, {sum(r['queued'] for r in rows)} processes found work "
            f"and queued for the lock; round {_seconds([r['seconds'] for r in rows])}"
        )
    return lines


def _daemons(records: list[dict[str, Any]]) -> list[str]:
    return [
        f"daemons   {r['backend']:<10} {r['daemons']} `schemad run` on one database, "
        f"{r['new_revisions']} revision files dropped in: each applied "
        f"{'exactly once' if r['once'] else 'NOT once'}, all ready at {r['head']}; "
        f"file -> all ready {_seconds(r['convergence'])}"
        for r in records
    ]


def _crashes(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        line = (
            f"crashes   {r['backend']:<10} {r['kills']} SIGKILLs (seed {r['seed']}) during a "
            f"{r['revisions']}-revision upgrade, {r['mid_revision']} of them inside a revision; "
        )
        if r.get("refusals") is None:
            line += "after every kill the version table named the last revision present"
        else:
            line += (
                "after every kill all committed revisions were complete and at most the "
                f"interrupted one partly there; {r['refusals']} next runs refused it by name "
                "(65) and were retried as told"
            )
        line += f"; {r['completions']} run(s) completed to head"
        lines.append(line)
    return lines


def _takeovers(records: list[dict[str, Any]]) -> list[str]:
    return [
        f"takeover  {r['backend']:<10} holder SIGKILLed {r['during']}; waiter "
        f"(SCHEMAD_LOCK_WAIT_SECONDS={r['bound']:g}) took the lock {r['seconds']:.2f}s after "
        f"the kill, outcome: {r['outcome']}"
        for r in records
    ]


def _outages(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        if r["mode"] == "latency":
            what = f"converged {r['recovered']:.2f}s after the latency began, with it still on"
        elif r["mode"] == "terminate":
            what = f"converged {r['recovered']:.2f}s after its backends were terminated"
        else:
            what = (
                f"reported unavailable after {r['detected']:.2f}s, "
                f"converged {r['recovered']:.2f}s after traffic resumed"
            )
        lines.append(f"outage    postgresql {r['mode']:<10} {r['phase']:<17} {what}")
    return lines


def _slow_locks(records: list[dict[str, Any]]) -> list[str]:
    return [
        f"slow lock {r['backend']:<10} SCHEMAD_DDL_LOCK_TIMEOUT_SECONDS={r['timeout']:g}: "
        f"migration gave up {r['gave_up']:.2f}s after queueing (exit {r['exit_code']}); "
        f"application query waited {r['app_wait']:.2f}s"
        + (
            f" (without the timeout: still stalled after {r['control_wait']:.2f}s)"
            if r.get("control_wait") is not None
            else ""
        )
        + "; next run after the blocker committed: exit 0"
        for r in records
    ]


def _bad_input(records: list[dict[str, Any]]) -> list[str]:
    by_group: dict[str, int] = defaultdict(int)
    for r in records:
        by_group[r["group"]] += 1
    detail = ", ".join(f"{n} {group}" for group, n in sorted(by_group.items()))
    return [
        f"bad input {len(records)} cases ({detail}): expected exit code or daemon outcome and "
        "message, no traceback, no password in any output, log, /metrics or /status"
    ]


def _silent_peers(records: list[dict[str, Any]]) -> list[str]:
    by_case: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        by_case[(r["backend"], r["command"])].append(r["seconds"])
    return [
        f"silent    {backend:<10} a peer that accepts and never answers: `schemad {command}` "
        f"ended in {_seconds(seconds)} (connect timeout 2s, wait timeout 5s)"
        for (backend, command), seconds in sorted(by_case.items())
    ]


_SECTIONS = {
    "races": _races,
    "daemons": _daemons,
    "crashes": _crashes,
    "takeover": _takeovers,
    "outage": _outages,
    "slow_lock": _slow_locks,
    "bad_input": _bad_input,
    "silent_peer": _silent_peers,
}
