"""The ``schemad`` command: argparse subcommands, errors -> exit codes.

The only module that decides exit codes; ``__main__`` and the console script
call :func:`main` and exit with what it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from schemad import __version__, logs
from schemad.database import Database
from schemad.documents import plan_document, status_document
from schemad.errors import (
    ConfigError,
    DatabaseUnavailableError,
    PlanRejectedError,
    SchemadError,
    ScriptError,
    WaitTimeoutError,
    first_line,
)
from schemad.history import History
from schemad.index import IndexedScripts, script_directory, static_layout
from schemad.index import load as load_index
from schemad.masking import Secrets
from schemad.model import Inspection, LockHolder, Outcome, Plan, PlanKind, RefusalReason, Result
from schemad.notices import (
    Summary,
    drift_summary,
    ended_by_error,
    summary_of_inspection,
    summary_of_result,
    termination_message,
)
from schemad.reconciler import Reconciler
from schemad.settings import (
    Settings,
    load_identity,
    load_settings,
    load_termination_message_path,
    secrets_in_environment,
    unknown_variables,
)
from schemad.webhook import Notifier

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from schemad.revisions import Scripts

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BEHIND = 3
EXIT_DRIFT = 4
EXIT_NOT_ALL_AT_TARGET = 5
EXIT_REFUSED = 65
# Every outcome of a pass, and of an error that ends a command, and its exit code.
EXIT_CODES: dict[str, int] = {
    Outcome.IN_SYNC: EXIT_OK,
    Outcome.APPLIED: EXIT_OK,
    Outcome.AHEAD: EXIT_OK,
    Outcome.INTERRUPTED: EXIT_OK,
    Outcome.REFUSED: EXIT_REFUSED,
    Outcome.SCRIPT_ERROR: 66,
    Outcome.UNAVAILABLE: 69,
    Outcome.FAILED: 70,
    Outcome.LOCK_TIMEOUT: 75,
    WaitTimeoutError.outcome: 75,
    ConfigError.outcome: 78,
    SchemadError.outcome: EXIT_INTERNAL,
}
EXIT_CODES_HELP = """\
exit codes:
  0   ok: at the target, nothing to do, or the requested work is done
  1   internal error (a bug: please report it with the internal_error log line)
  2   bad usage (unknown subcommand or option)
  3   status only: the database is behind (`upgrade` would apply revisions)
  4   drift only: the live schema differs from what its revision should be
  5   fan-out only: some targets are not at their target (failed, refused,
      unavailable, or skipped after a canary failed or the failure budget
      was spent); the message counts them and names the first few
  65  refused: the plan breaks a policy (unknown revision in the database,
      several heads, downgrade not allowed, unknown target)
  66  the migration scripts are missing or broken, or env.py failed before
      any revision ran
  69  the database cannot be reached, its version table not read, or it
      refuses writes
  70  a revision failed while being applied
  75  try again later: the migration lock stayed held (upgrade), or the
      target was not reached in time (wait)
  78  configuration error (a SCHEMAD_* variable is missing or invalid, the
      ini unreadable, URL options the driver refuses)
"""
_TARGET_REFUSALS = (RefusalReason.UNKNOWN_TARGET, RefusalReason.MULTIPLE_HEADS)
# One-shot commands end by leaving one line where Kubernetes reads a
# container's termination message; `run` and `health` do not.
# The commands that cover every target when SCHEMAD_TARGETS_* lists them
# (schemad.fleet_commands).
FLEET_COMMANDS = frozenset({"run", "upgrade", "status", "plan", "wait"})
TERMINATION_COMMANDS = frozenset({"upgrade", "wait", "status", "plan", "history", "drift"})
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


@dataclass
class App:
    """What every subcommand needs, built once from the settings."""

    settings: Settings
    database: Database
    reconciler: Reconciler
    out: TextIO
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    summary: Summary | None = None
    """How the command ended so far, for its termination message."""

    @classmethod
    def build(
        cls,
        settings: Settings,
        out: TextIO,
        x_args: Sequence[str] = (),
        *,
        use_index: bool = True,
    ) -> App:
        url = settings.url()
        database = Database(
            url,
            version_table=settings.version_table,
            version_table_schema=settings.version_table_schema,
            connect_timeout_seconds=settings.connect_timeout_seconds,
        )
        full_load = _full_loader(settings, url, [*settings.x_arguments(), *x_args])
        indexed = _indexed_loader(settings, full_load) if use_index else None
        identity = load_identity()
        history = (
            History(
                database,
                table=settings.history_table,
                schema=settings.version_table_schema,
                identity=identity,
            )
            if settings.history_enabled
            else None
        )
        reconciler = Reconciler(
            settings,
            database,
            indexed or full_load,
            full_load=full_load if indexed else None,
            history=history,
        )
        notifier = Notifier.build(
            settings, database=database.masked_url, identity=identity, secrets=database.secrets
        )
        return cls(settings, database, reconciler, out, notifier)

    def close(self) -> None:
        """Wait (bounded) for webhook deliveries, then let the database go."""
        self.notifier.close()
        self.database.dispose()


def _full_loader(settings: Settings, url: URL, x_args: Sequence[str]) -> Callable[[], Scripts]:
    """Loads the scripts through Alembic (imported only when called)."""

    def load() -> Scripts:
        from schemad.revisions import load_scripts, make_config

        config = make_config(
            url,
            alembic_config=settings.alembic_config,
            script_location=settings.script_location,
            x_args=x_args,
        )
        return load_scripts(config)

    return load


def _indexed_loader(
    settings: Settings, full_load: Callable[[], Scripts]
) -> Callable[[], Scripts | IndexedScripts] | None:
    """Loads the scripts from the graph index while it is fresh, else through Alembic;
    None when this project cannot have an index schemad can use."""
    directory = script_directory(
        alembic_config=settings.alembic_config, script_location=settings.script_location
    )
    if directory is None:
        return None
    explicit = bool({"version_table", "version_table_schema"} & settings.model_fields_set)

    def load() -> Scripts | IndexedScripts:
        indexed = load_index(
            directory,
            version_table=settings.version_table,
            version_table_schema=settings.version_table_schema,
            explicit=explicit,
        )
        if indexed is None or not indexed.can_resolve(settings.target_revision):
            return full_load()
        return indexed

    return load


@dataclass
class Ending:
    """How a command ended, and where its termination message goes."""

    summary: Summary | None = None
    secrets: Secrets = field(default_factory=Secrets)
    path: Path | None = None
    app: App | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schemad",
        description=(
            "Keep a database's schema at the target Alembic revision, safely. "
            "Configured by SCHEMAD_* environment variables (see the README)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"schemad {__version__}")
    _x_option(parser, "x_before")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(
        commands,
        "upgrade",
        "one pass: lock, apply what is pending, exit 0 at the target (Jobs, init containers)",
    )
    status = _command(
        commands, "status", "current and target revision, pending revisions, lock state"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    plan = _command(commands, "plan", "what upgrade would do, changing nothing")
    output = plan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--sql", action="store_true", help="print the SQL (offline mode)")
    history = _command(
        commands,
        "history",
        "schemad's audit history of applied, reverted, failed and adopted revisions",
    )
    history.add_argument("--json", action="store_true", help="print JSON")
    history.add_argument("--revision", help="only this revision")
    history.add_argument(
        "--since", type=_timestamp, help="only rows finished at or after this ISO 8601 time"
    )
    history.add_argument("--limit", type=_positive, default=50, help="at most N rows (50)")
    drift = _command(
        commands,
        "drift",
        "compare the live schema with what its revision should be (exit 4 on drift)",
    )
    drift.add_argument("--json", action="store_true", help="print JSON")
    _command(
        commands, "run", "daemon: reconcile on a schedule, serve /metrics /healthz /readyz /status"
    )
    commands.add_parser(
        "health",
        help="exit 0 when the local daemon answers /healthz with 200 (container HEALTHCHECK)",
    )
    wait = _command(
        commands,
        "wait",
        "block until the database is at (or past) the target; someone else migrates",
    )
    wait.add_argument(
        "--target", metavar="NAME", help="fan-out: wait for this target only (default: all)"
    )
    _command(
        commands,
        "index",
        "write the graph index into the migrations directory (image build time), so "
        "commands with nothing to do never load Alembic",
    )
    return parser


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name,
        help=help,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _x_option(command, "x_after")
    return command


def _x_option(parser: argparse.ArgumentParser, dest: str) -> None:
    # Before or after the subcommand: `schemad -x a=1 upgrade` as `alembic -x a=1
    # upgrade head`, or `schemad upgrade -x a=1`. Two destinations, because a
    # subcommand's default would overwrite the main parser's value.
    parser.add_argument(
        "-x",
        action="append",
        dest=dest,
        default=[],
        metavar="KEY=VALUE",
        help="an argument for env.py's context.get_x_argument(), as `alembic -x` "
        "(repeatable; added to SCHEMAD_X_ARGS)",
    )


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the ``schemad`` command line; return the process exit code."""
    stdout = out if out is not None else sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or --help
        return int(exc.code or 0)
    ending = Ending()
    try:
        return _run(args, stdout, ending)
    finally:
        if args.command in TERMINATION_COMMANDS:
            write_termination_message(ending)
        if ending.app is not None:
            ending.app.close()


def _run(args: argparse.Namespace, stdout: TextIO, ending: Ending) -> int:
    log = logs.get_logger("schemad.cli")
    try:
        settings = load_settings()
    except ConfigError as exc:
        ending.secrets = Secrets.of(secrets_in_environment())
        ending.path = load_termination_message_path()
        logs.configure(secrets=ending.secrets)
        log.error("config_invalid", error=exc.message, exit_code=exit_code(exc))
        ending.summary = ended_by_error(None, exc.outcome, exc.message)
        return exit_code(exc)
    ending.secrets, ending.path = _secrets(settings), settings.termination_message_path
    logs.configure(settings.log_format, settings.log_level, secrets=ending.secrets)
    for warning in unknown_variables():
        log.warning("setting_unknown", detail=warning)
    if args.command == "health":
        return cmd_health(settings)
    if args.command == "index":
        try:
            return cmd_index(settings, stdout)
        except SchemadError as exc:
            log.error(
                "command_failed", command="index", error=exc.message, exit_code=exit_code(exc)
            )
            return exit_code(exc)
    if settings.fan_out and args.command in FLEET_COMMANDS:
        from schemad.fleet_commands import run_fleet  # never on the single-database path

        return run_fleet(args, settings, stdout, ending)
    app: App | None = None
    try:
        x_args = [*getattr(args, "x_before", []), *getattr(args, "x_after", [])]
        app = ending.app = App.build(settings, stdout, x_args)
        code = int(COMMANDS[args.command](app, args))
        ending.summary = app.summary
        return code
    except SchemadError as exc:
        message = app.database.redact(exc.message) if app else exc.message
        event = "config_invalid" if isinstance(exc, ConfigError) else "command_failed"
        log.error(event, command=args.command, error=message, exit_code=exit_code(exc))
        known = app.summary if app else None
        reason = getattr(exc, "reason", None)
        ending.summary = ended_by_error(known, exc.outcome, message, reason=reason)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug: the traceback (masked, without local variables) is for the report.
        log.exception("internal_error", command=args.command, exit_code=EXIT_INTERNAL)
        known = app.summary if app else None
        detail = f"{first_line(exc)} (a bug: please report it with the internal_error log line)"
        ending.summary = ended_by_error(known, SchemadError.outcome, detail)
        return EXIT_INTERNAL


def write_termination_message(ending: Ending) -> None:
    """Leave the command's one-line summary where Kubernetes reads it.

    Unset SCHEMAD_TERMINATION_MESSAGE_PATH means /dev/termination-log when it
    is writable; a path that cannot be written is logged, never fatal.
    """
    if ending.summary is None:  # a crash: Kubernetes falls back to the log's tail
        return
    path = ending.path
    if path is None:
        if not os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
            return
        path = DEFAULT_TERMINATION_LOG
    line = termination_message(ending.summary, ending.secrets.redact)
    try:
        path.write_text(line, encoding="utf-8")
    except OSError as exc:
        logs.get_logger("schemad.cli").warning(
            "termination_message_failed", path=str(path), error=exc.strerror or str(exc)
        )


def exit_code(ended: Result | SchemadError) -> int:
    """The exit code of a pass's result, or of the error that ended a command."""
    return EXIT_CODES[ended.outcome]


def cmd_upgrade(app: App, _args: argparse.Namespace) -> int:
    result = app.reconciler.reconcile_once()
    app.summary = summary_of_result(result)
    app.notifier.pass_finished(result)
    return exit_code(result)


def cmd_status(app: App, args: argparse.Namespace) -> int:
    inspection = app.reconciler.inspect_as_a_pass_would()
    app.summary = summary_of_inspection(inspection.plan.kind.value, inspection)
    holder = app.database.lock_holder()
    if args.json:
        _print_json(
            app.out,
            status_document(
                database=app.database.masked_url,
                inspection=inspection,
                holder=holder,
                redact=app.database.redact,
            ),
        )
    else:
        _print_status(app, inspection, holder)
    return _status_exit_code(inspection.plan)


def cmd_plan(app: App, args: argparse.Namespace) -> int:
    inspection = app.reconciler.inspect_as_a_pass_would()
    app.summary = summary_of_inspection(inspection.plan.kind.value, inspection)
    plan = inspection.plan
    if args.sql:
        if plan.kind is PlanKind.REFUSED:
            raise PlanRejectedError(plan.message, reason=_reason(plan))
        from schemad.applier import render_sql  # Alembic's offline mode

        render_sql(
            app.reconciler.full_scripts(),
            plan,
            app.settings.target_revision,
            app.out,
            database=app.database,
            version_table=app.database.version_table,
            version_table_schema=app.database.version_table_schema,
        )
    elif args.json:
        _print_json(app.out, plan_document(plan))
    else:
        _print_plan(app.out, plan)
    return EXIT_REFUSED if plan.kind is PlanKind.REFUSED else EXIT_OK


def cmd_wait(
    app: App,
    _args: argparse.Namespace,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    hard_deadline: bool = True,
) -> int:
    """Poll until the schema is ready; never outlive SCHEMAD_WAIT_TIMEOUT_SECONDS.

    Each look is bounded by the connect timeout, but a look that starts just
    before the deadline could still end after it: with ``hard_deadline`` an
    alarm ends the wait at the deadline whatever it is doing.
    """
    settings = app.settings
    log = logs.get_logger("schemad.wait")
    deadline = clock() + settings.wait_timeout_seconds
    seen = ["nothing read yet"]

    def timed_out() -> WaitTimeoutError:
        return WaitTimeoutError(
            f"the database did not reach the target '{settings.target_revision}' "
            f"within {settings.wait_timeout_seconds:g}s "
            f"(SCHEMAD_WAIT_TIMEOUT_SECONDS); last seen: {app.database.redact(seen[-1])}"
        )

    with _alarm(settings.wait_timeout_seconds, timed_out) if hard_deadline else nullcontext():
        while True:
            try:
                inspection = app.reconciler.inspect()
                plan = inspection.plan
                app.summary = summary_of_inspection(plan.kind.value, inspection)
                if plan.schema_ready:
                    app.summary = summary_of_inspection("ready", inspection)
                    log.info("schema_ready", current=list(plan.current), target=list(plan.target))
                    return EXIT_OK
                if plan.reason in _TARGET_REFUSALS:
                    raise PlanRejectedError(plan.message, reason=_reason(plan))
                seen.append(plan.message)
            except DatabaseUnavailableError as exc:
                seen.append(exc.message)
            if clock() >= deadline:
                raise timed_out()
            log.info("schema_pending", detail=app.database.redact(seen[-1]))
            sleep(min(settings.wait_interval_seconds, max(deadline - clock(), 0)))


@contextmanager
def _alarm(seconds: float, error: Callable[[], SchemadError]) -> Iterator[None]:
    """Raise ``error()`` in the main thread ``seconds`` from now, wherever it is.

    Outside the main thread (tests that call commands from a worker) there
    is no alarm: the connect timeouts still bound each look.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(_signum: int, _frame: object) -> None:
        raise error()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cmd_run(app: App, _args: argparse.Namespace) -> int:
    # The daemon's parts (APScheduler, prometheus_client, the HTTP server) are
    # imported here so that one-shot commands, init containers above all, do
    # not pay for them.
    from prometheus_client import CollectorRegistry, disable_created_metrics

    from schemad.metrics import Metrics
    from schemad.scheduler import Daemon
    from schemad.server import HttpServer

    settings = app.settings
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    daemon = Daemon(
        settings,
        app.reconciler,
        Metrics(registry),
        database_url=app.database.masked_url,
        notifier=app.notifier,
    )
    server = HttpServer(settings.http_host, settings.http_port, registry, daemon)
    daemon.install_signal_handlers()
    server.start()
    logs.get_logger("schemad.daemon").info(
        "http_started", host=settings.http_host, port=server.port
    )
    daemon.start()
    try:
        clean = daemon.wait_until_stopped()
    finally:
        server.stop()
    if daemon.config_error is not None:
        error = daemon.config_error
        code = exit_code(error)
        logs.get_logger("schemad.daemon").error(
            "config_invalid", error=error.message, exit_code=code
        )
        return code
    if not clean:
        # The pass's thread is still inside a revision and the interpreter would
        # wait for it at exit, past the grace period: leave now. The database
        # drops the session and rolls the revision back where DDL is transactional.
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_INTERNAL)
    return EXIT_OK


def cmd_index(settings: Settings, out: TextIO) -> int:
    """Write the graph index; needs the migrations, not the database.

    Raises:
        ScriptError: the scripts cannot be loaded, or the index not written.
        ConfigError: the project's configuration cannot be read.
    """
    from schemad.revisions import build_index, load_scripts, make_config

    config = make_config(
        None,
        alembic_config=settings.alembic_config,
        script_location=settings.script_location,
        x_args=settings.x_arguments(),
    )
    scripts = load_scripts(config)
    try:
        path = build_index(scripts)
    except OSError as exc:
        raise ScriptError(
            f"cannot write the index into {scripts.directory.dir}: {exc.strerror or exc}; run "
            "`schemad index` where the migrations directory is writable (the image build)"
        ) from exc
    fast = static_layout(Path(scripts.directory.env_py_location)) is not None
    out.write(
        f"{path}: {len(scripts.graph.revisions)} revision(s), head(s) "
        f"{', '.join(scripts.graph.heads)}; "
        + (
            "env.py names its version table plainly: commands with nothing to do will "
            "not load Alembic\n"
            if fast
            else "env.py computes its version table (e.g. from -x): commands still run "
            "env.py first\n"
        )
    )
    return EXIT_OK


def cmd_health(settings: Settings) -> int:
    import urllib.error
    import urllib.request

    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    url = f"http://{host}:{settings.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return EXIT_OK if response.status == 200 else EXIT_INTERNAL
    except (urllib.error.URLError, OSError) as exc:
        logs.get_logger("schemad.cli").error("health_failed", url=url, error=str(exc))
        return EXIT_INTERNAL


def cmd_history(app: App, args: argparse.Namespace) -> int:
    history = app.reconciler.history
    if history is None:
        raise ConfigError(
            "the history is turned off (SCHEMAD_HISTORY_ENABLED=false); turn it on to "
            "record and show applied revisions",
            variable="SCHEMAD_HISTORY_ENABLED",
        )
    rows = history.rows(revision=args.revision, since=args.since, limit=args.limit)
    app.summary = Summary("ok", detail=f"{len(rows)} history row(s) in {history.name}")
    if args.json:
        app.out.write(json.dumps([row.as_dict() for row in rows], indent=2) + "\n")
        return EXIT_OK
    if not rows:
        app.out.write(f"no history in {history.name}\n")
        return EXIT_OK
    for row in rows:
        stamp = row.finished_at or row.started_at
        when = stamp.isoformat(timespec="seconds") if stamp else "-"
        took = f"{row.duration_seconds:.3f}s" if row.duration_seconds is not None else "-"
        who = row.pod_name or row.hostname or "-"
        image = f" {row.image}" if row.image else ""
        line = (
            f"{when}  {row.direction:<9} {row.outcome:<8} {row.revision:<14} {took:>9}  "
            f"{who}{image}"
        )
        if row.error:
            line += f"\n    error: {row.error}"
        app.out.write(line + "\n")
    return EXIT_OK


def cmd_drift(app: App, args: argparse.Namespace) -> int:
    report = app.reconciler.check_drift()
    differences = [difference.describe() for difference in report.differences]
    app.summary = drift_summary(report.revisions, differences)
    app.notifier.drift_checked(report.revisions, differences)
    if args.json:
        _print_json(app.out, report.as_dict())
    elif not report.drifted:
        app.out.write(f"no drift: the schema matches {', '.join(report.revisions) or 'base'}\n")
    else:
        app.out.write(
            f"drift: {len(report.differences)} object(s) differ from what "
            f"{', '.join(report.revisions) or 'base'} should produce\n"
        )
        for difference in report.differences:
            app.out.write(f"  {difference.describe()}\n")
    return EXIT_DRIFT if report.drifted else EXIT_OK


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-11-24T09:00:00Z, got {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


COMMANDS: dict[str, Callable[[App, argparse.Namespace], int]] = {
    "history": cmd_history,
    "drift": cmd_drift,
    "run": cmd_run,
    "upgrade": cmd_upgrade,
    "status": cmd_status,
    "plan": cmd_plan,
    "wait": cmd_wait,
}


def _status_exit_code(plan: Plan) -> int:
    if plan.kind in (PlanKind.IN_SYNC, PlanKind.AHEAD):
        return EXIT_OK
    if plan.kind is PlanKind.REFUSED:
        return EXIT_REFUSED
    return EXIT_BEHIND


def _reason(plan: Plan) -> str:
    return plan.reason.value if plan.reason else "refused"


def _print_status(app: App, inspection: Inspection, holder: LockHolder | None) -> None:
    plan = inspection.plan
    revisions = app.reconciler.scripts().graph.revisions
    lines = [
        f"database: {app.database.masked_url}",
        f"current:  {_describe(inspection.state.heads, revisions)}",
        f"target:   {inspection.target.spec} -> {_describe(plan.target, revisions)}",
        f"state:    {plan.kind.value}: {app.database.redact(plan.message)}",
    ]
    if plan.has_work:
        lines.append("pending:")
        lines.extend(f"  {step.revision}  {step.message}" for step in plan.steps)
    if holder is None:
        lines.append("lock:     free")
    else:
        held = f" for {holder.held_seconds:.0f}s" if holder.held_seconds is not None else ""
        lines.append(f"lock:     held by {holder.description}{held}")
    for item in inspection.tampered:
        lines.append(
            f"tampered: {item.revision} was applied with checksum "
            f"{item.recorded_checksum[:12]}, its file now has "
            f"{(item.current_checksum or 'none')[:12]}"
        )
    app.out.write("\n".join(lines) + "\n")


def _print_plan(out: TextIO, plan: Plan) -> None:
    out.write(f"{plan.kind.value}: {plan.message}\n")
    arrow = "->" if plan.kind is not PlanKind.DOWNGRADE else "<-"
    for step in plan.steps if plan.has_work else ():
        out.write(f"  {arrow} {step.revision}  {step.message}\n")


def _describe(heads: Sequence[str], revisions: Any) -> str:
    if not heads:
        return "base (no revision)"
    parts = []
    for rev in heads:
        known = revisions.get(rev)
        parts.append(f"{rev} ({known.message})" if known else f"{rev} (not in these migrations)")
    return ", ".join(parts)


def _print_json(out: TextIO, document: dict[str, Any]) -> None:
    out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _secrets(settings: Settings) -> Secrets:
    # What cannot be parsed is still masked as the environment holds it.
    secrets = Secrets.of(secrets_in_environment())
    with contextlib.suppress(ConfigError):
        url = settings.url()
        secrets |= Secrets.of_url(url.password and str(url.password), url.query)
    with contextlib.suppress(ConfigError):
        secrets |= Secrets.of_webhook(settings.webhook())
    return secrets
