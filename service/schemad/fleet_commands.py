"""EDGE: the commands over many targets (SCHEMAD_TARGETS_QUERY / _FILE).

``upgrade``, ``status``, ``plan``, ``wait`` and ``run`` when targets are
listed: each runs the fleet (:mod:`schemad.fleet`) and reports every target,
ending like the single-database commands of :mod:`schemad.cli` (exit codes,
termination message, masked secrets). Imported only when targets are listed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from schemad import logs
from schemad.cli import (
    EXIT_BEHIND,
    EXIT_INTERNAL,
    EXIT_NOT_ALL_AT_TARGET,
    EXIT_OK,
    Ending,
    exit_code,
)
from schemad.errors import ConfigError, SchemadError, WaitTimeoutError, first_line
from schemad.fleet import Fleet, TargetReport
from schemad.notices import Summary, ended_by_error
from schemad.settings import Settings


@dataclass
class FleetCommand:
    """What a fan-out command needs: the fleet, the output, how it ended."""

    fleet: Fleet
    out: TextIO
    ending: Ending


def run_fleet(args: argparse.Namespace, settings: Settings, stdout: TextIO, ending: Ending) -> int:
    """A command over every target (SCHEMAD_TARGETS_QUERY / SCHEMAD_TARGETS_FILE)."""
    log = logs.get_logger("schemad.cli")
    x_args = [*getattr(args, "x_before", []), *getattr(args, "x_after", [])]
    command = FleetCommand(Fleet(settings, x_args, secrets=ending.secrets), stdout, ending)
    try:
        return COMMANDS[args.command](command, args)
    except SchemadError as exc:
        message = command.fleet.secrets.redact(exc.message)
        event = "config_invalid" if isinstance(exc, ConfigError) else "command_failed"
        log.error(event, command=args.command, error=message, exit_code=exit_code(exc))
        reason = getattr(exc, "reason", None)
        ending.summary = ended_by_error(ending.summary, exc.outcome, message, reason=reason)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.exception("internal_error", command=args.command, exit_code=EXIT_INTERNAL)
        detail = f"{first_line(exc)} (a bug: please report it with the internal_error log line)"
        ending.summary = ended_by_error(ending.summary, SchemadError.outcome, detail)
        return EXIT_INTERNAL
    finally:
        ending.secrets = command.fleet.secrets


def cmd_fleet_upgrade(command: FleetCommand, _args: argparse.Namespace) -> int:
    result = command.fleet.upgrade()
    detail = result.describe_problems()
    if result.at_target:
        command.ending.summary = Summary("at_target", detail=detail)
        return EXIT_OK
    command.ending.summary = Summary("not_at_target", detail=detail)
    return EXIT_NOT_ALL_AT_TARGET


def cmd_fleet_status(command: FleetCommand, args: argparse.Namespace) -> int:
    reports = command.fleet.look()
    _print_reports(command.out, reports, as_json=args.json, pending=False)
    code = _fleet_look_exit_code(reports, behind=EXIT_BEHIND)
    command.ending.summary = _fleet_summary(reports, code)
    return code


def cmd_fleet_plan(command: FleetCommand, args: argparse.Namespace) -> int:
    if getattr(args, "sql", False):
        raise ConfigError(
            "`plan --sql` renders one database's SQL; with SCHEMAD_TARGETS_QUERY or "
            "SCHEMAD_TARGETS_FILE set, run it for one target (unset them, set "
            "SCHEMAD_DATABASE_URL and -x for that target)",
            variable="SCHEMAD_TARGETS_QUERY",
        )
    reports = command.fleet.look()
    _print_reports(command.out, reports, as_json=args.json, pending=True)
    code = _fleet_look_exit_code(reports, behind=EXIT_OK)
    command.ending.summary = _fleet_summary(reports, code)
    return code


def cmd_fleet_wait(
    command: FleetCommand,
    args: argparse.Namespace,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll until every target (or ``--target``) is at its target, bounded by
    SCHEMAD_WAIT_TIMEOUT_SECONDS."""
    from schemad.fleet import FleetResult
    from schemad.targets import State

    settings = command.fleet.settings
    log = logs.get_logger("schemad.wait")
    deadline = clock() + settings.wait_timeout_seconds
    while True:
        reports = command.fleet.look()
        if args.target is not None:
            reports = tuple(report for report in reports if report.name == args.target)
            if not reports:
                raise ConfigError(
                    f"--target {args.target}: no such target in this shard's list; "
                    "`schemad status` lists them",
                    variable="SCHEMAD_TARGETS_QUERY",
                )
        look = FleetResult("wait", reports, 0.0, 0.0)
        if all(report.state is State.AT_TARGET for report in reports):
            command.ending.summary = Summary("ready", detail=look.describe_problems())
            log.info("schema_ready", targets=len(reports))
            return EXIT_OK
        command.ending.summary = Summary("not_ready", detail=look.describe_problems())
        if clock() >= deadline:
            raise WaitTimeoutError(
                f"the targets did not reach the target '{settings.target_revision}' within "
                f"{settings.wait_timeout_seconds:g}s (SCHEMAD_WAIT_TIMEOUT_SECONDS); "
                f"last seen: {look.describe_problems()}"
            )
        log.info("schema_pending", detail=look.describe_problems())
        sleep(min(settings.wait_interval_seconds, max(deadline - clock(), 0)))


def _fleet_look_exit_code(reports: Sequence[TargetReport], *, behind: int) -> int:
    from schemad.targets import State

    states = {report.state for report in reports}
    if states & {State.FAILED, State.UNAVAILABLE, State.REFUSED}:
        return EXIT_NOT_ALL_AT_TARGET
    if states - {State.AT_TARGET}:
        return behind
    return EXIT_OK


def _fleet_summary(reports: Sequence[TargetReport], code: int) -> Summary:
    from schemad.fleet import FleetResult

    detail = FleetResult("look", tuple(reports), 0.0, 0.0).describe_problems()
    return Summary("at_target" if code == EXIT_OK else "not_at_target", detail=detail)


def _print_reports(
    out: TextIO, reports: Sequence[TargetReport], *, as_json: bool, pending: bool
) -> None:
    if as_json:
        from schemad.fleet import reports_document

        out.write(json.dumps(reports_document(reports), indent=2, sort_keys=True) + "\n")
        return
    header = ["NAME", "CURRENT", "TARGET", "STATE", *(["PENDING"] if pending else []), "ERROR"]
    rows = [
        [
            report.name,
            ",".join(report.current) or "base",
            ",".join(report.target) or "-",
            report.state.value,
            *([str(len(report.pending))] if pending else []),
            " ".join((report.error or "").split())[:120],
        ]
        for report in reports
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def cmd_fleet_run(command: FleetCommand, _args: argparse.Namespace) -> int:
    """The daemon over every target: each pass lists them afresh."""
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from schemad.metrics import FleetMetrics, Metrics
    from schemad.scheduler import FleetDaemon
    from schemad.server import HttpServer

    settings = command.fleet.settings
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    control = "-"
    with contextlib.suppress(ConfigError):
        control = settings.masked_url()
    daemon = FleetDaemon(
        settings,
        command.fleet,
        Metrics(registry),
        FleetMetrics(registry, series_limit=settings.target_series_limit),
        database_url=control,
    )
    server = HttpServer(settings.http_host, settings.http_port, registry, daemon)
    daemon.install_signal_handlers()
    server.start()
    log = logs.get_logger("schemad.daemon")
    log.info("http_started", host=settings.http_host, port=server.port)
    daemon.start()
    try:
        clean = daemon.wait_until_stopped()
    finally:
        server.stop()
    if daemon.config_error is not None:
        raise daemon.config_error
    if not clean:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_INTERNAL)
    return EXIT_OK


COMMANDS: dict[str, Callable[[FleetCommand, argparse.Namespace], int]] = {
    "run": cmd_fleet_run,
    "upgrade": cmd_fleet_upgrade,
    "status": cmd_fleet_status,
    "plan": cmd_fleet_plan,
    "wait": cmd_fleet_wait,
}
