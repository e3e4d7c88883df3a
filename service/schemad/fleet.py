"""Fan-out: one run over many targets (databases, or tenant schemas).

::

    discover (query or file) -> shard -> survey versions in batch
        -> rollout (canaries, failure budget) -> one ordinary pass per target
        -> FleetResult

Each target's pass is the single-database :class:`~schemad.reconciler.Reconciler`
with its own copy of the settings (URL, ``-x`` arguments, version-table
schema); the reconciler knows nothing of tenants. A target already at its
target costs a version-table read, batched per database (or per MySQL
server): env.py runs only where there is work.

Connections: a pass holds at most ``CONNECTIONS_PER_PASS`` at once (the
lock's session, the migration session, and a read of the version table or
history beside them), so a run uses ``min(SCHEMAD_CONCURRENCY,
SCHEMAD_MAX_CONNECTIONS // 3)`` workers (at least one); the survey's
connections are closed before any worker starts.

This module is imported only when SCHEMAD_TARGETS_QUERY or
SCHEMAD_TARGETS_FILE is set: the single-database path never pays for it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from pydantic import SecretStr
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from schemad import logs
from schemad.database import Database
from schemad.documents import iso
from schemad.errors import (
    ConfigError,
    DatabaseUnavailableError,
    SchemadError,
    ScriptError,
    first_line,
)
from schemad.history import History
from schemad.index import fingerprint_changed
from schemad.masking import Secrets
from schemad.model import DbState, Outcome, Plan, PlanKind, Policy, Result
from schemad.model import Target as Resolved
from schemad.planner import make_plan
from schemad.reconciler import Reconciler
from schemad.settings import (
    PREFIX,
    Settings,
    load_identity,
    parse_url,
    read_text_file,
    read_url_file,
)
from schemad.targets import (
    Rollout,
    State,
    Target,
    canaries,
    describe_names,
    parse_rows,
    select_shard,
)
from schemad.workers import dispatch

if TYPE_CHECKING:
    from schemad.revisions import Scripts

CONNECTIONS_PER_PASS = 3
# A migrations directory changed this recently may still be receiving a file.
SETTLE_NS = 2_000_000_000
TARGETS_FILE_MAX_BYTES = 16 * 1024 * 1024
_STATE_OF_OUTCOME = {
    Outcome.IN_SYNC: State.AT_TARGET,
    Outcome.APPLIED: State.AT_TARGET,
    Outcome.AHEAD: State.AT_TARGET,
    Outcome.REFUSED: State.REFUSED,
    Outcome.UNAVAILABLE: State.UNAVAILABLE,
    Outcome.FAILED: State.FAILED,
    Outcome.SCRIPT_ERROR: State.FAILED,
    Outcome.LOCK_TIMEOUT: State.BEHIND,
    Outcome.INTERRUPTED: State.BEHIND,
}
_STATE_OF_PLAN = {
    PlanKind.IN_SYNC: State.AT_TARGET,
    PlanKind.AHEAD: State.AT_TARGET,
    PlanKind.UPGRADE: State.BEHIND,
    PlanKind.DOWNGRADE: State.BEHIND,
    PlanKind.REFUSED: State.REFUSED,
}


@dataclass(frozen=True)
class Located:
    """A target with its URL resolved (from the row, its file, or the control URL)."""

    target: Target
    url: URL

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def masked_url(self) -> str:
        return self.url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class TargetReport:
    """Where one target stands after a run (or a look)."""

    name: str
    state: State
    current: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    error: str | None = None
    database: str = ""
    """The target's URL, password masked."""
    duration_seconds: float = 0.0
    passed: bool = False
    """A full pass ran (not only the batched version read)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "current": list(self.current),
            "target": list(self.target),
            "pending": list(self.pending),
            "applied": list(self.applied),
            "error": self.error,
            "database": self.database,
        }


@dataclass(frozen=True)
class FleetResult:
    """Every target of one run, in the order they were listed."""

    run_id: str
    reports: tuple[TargetReport, ...]
    started_at: float
    duration_seconds: float
    workers: int = 1

    def counts(self) -> Counter[State]:
        return Counter(report.state for report in self.reports)

    def not_at_target(self) -> list[TargetReport]:
        return [report for report in self.reports if report.state is not State.AT_TARGET]

    @property
    def at_target(self) -> bool:
        return not self.not_at_target()

    def describe_problems(self) -> str:
        """``3 of 10 targets are not at the target (2 failed, 1 skipped): a, b, c``."""
        missing = self.not_at_target()
        if not missing:
            return f"all {len(self.reports)} target(s) at the target"
        counts = Counter(report.state.value for report in missing)
        by_state = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
        names = describe_names([report.name for report in missing])
        return (
            f"{len(missing)} of {len(self.reports)} target(s) are not at the target "
            f"({by_state}): {names}"
        )


@dataclass
class Fleet:
    """The run-wide parts: the settings, the loaded scripts, the secrets seen."""

    settings: Settings
    x_args: Sequence[str] = ()
    load: Callable[[URL | None], Scripts] | None = None
    secrets: Secrets = field(default_factory=Secrets)
    should_stop: Callable[[], bool] = lambda: False
    """A shutdown was requested: start no new target, stop between revisions."""
    _scripts: Scripts | None = None

    def __post_init__(self) -> None:
        self._log = logs.get_logger("schemad.fleet")

    def scripts(self) -> Scripts:
        """The revision scripts, loaded once in this (the parent) process, so
        forked workers share them; a run that finds their files changed loads
        them again (a daemon's next pass).

        Raises:
            ScriptError, ConfigError: the scripts or the project cannot be read.
        """
        if self._scripts is None:
            load = self.load or _load_scripts(self.settings, self.x_args)
            self._scripts = load(None)
        return self._scripts

    def _refresh_scripts(self) -> None:
        """At the start of a run: forget scripts whose files changed since."""
        current = self._scripts
        if current is not None and fingerprint_changed(
            current.fingerprint, loaded_at_ns=current.loaded_at_ns, settle_ns=SETTLE_NS
        ):
            self._scripts = None

    def discover(self) -> tuple[Located, ...]:
        """This shard's targets, with their URLs.

        Raises:
            ConfigError: the query, the file or a row is bad.
            DatabaseUnavailableError: the control database cannot be reached.
        """
        settings = self.settings
        if settings.targets_file is not None:
            rows = read_targets_file(settings.targets_file)
            source = f"{PREFIX}TARGETS_FILE={settings.targets_file}"
        else:
            rows = self._query_rows()
            source = f"{PREFIX}TARGETS_QUERY"
        listed = parse_rows(rows, source)
        mine = select_shard(listed, settings.shard_index or 0, settings.shard_count)
        located = tuple(Located(target, self._url_of(target, source)) for target in mine)
        found = Secrets()
        for entry in located:
            password = entry.url.password
            found = found.merged(Secrets.of_url(password and str(password), entry.url.query))
        self.secrets = self.secrets.merged(found)
        logs.add_secrets(found)
        self._log.info(
            "targets_listed",
            listed=len(listed),
            shard=settings.shard_index or 0,
            shard_count=settings.shard_count,
            targets=len(located),
        )
        return located

    def _query_rows(self) -> list[dict[str, Any]]:
        settings = self.settings
        database = Database(
            settings.url(), connect_timeout_seconds=settings.connect_timeout_seconds
        )
        try:
            with database.connect() as conn:
                try:
                    result = conn.execute(sa.text(settings.targets_query or ""))
                    rows = [dict(row._mapping) for row in result]
                except SQLAlchemyError as exc:
                    raise ConfigError(
                        f"{PREFIX}TARGETS_QUERY failed on {database.masked_url}: "
                        f"{database.describe(exc)}; fix the query (one row per target, with "
                        "a 'name' column) and check the user may run it",
                        variable=f"{PREFIX}TARGETS_QUERY",
                    ) from exc
                conn.rollback()
        finally:
            database.dispose()
        return rows

    def _url_of(self, target: Target, source: str) -> URL:
        variable = f"{source.split('=', 1)[0]} (target '{target.name}')"
        if target.url is not None:
            return parse_url(target.url, f"{variable} url")
        if target.url_file is not None:
            raw = read_url_file(Path(target.url_file), f"{variable} url_file={target.url_file}")
            return parse_url(raw, f"{variable} url_file")
        return self.settings.url()

    def resolved(self) -> Resolved:
        return self.scripts().resolve(self.settings.target_revision)

    def policy(self) -> Policy:
        settings = self.settings
        return Policy(
            allow_downgrade=settings.allow_downgrade,
            ignore_unknown_revisions=settings.on_unknown_revision == "ignore",
            block_on_tamper=settings.on_tamper == "block",
        )

    def upgrade(self, *, clock: Callable[[], float] = time.monotonic) -> FleetResult:
        """One run: every target of this shard at the target, or reported.

        Raises:
            ConfigError: the targets or the project cannot be read.
            DatabaseUnavailableError: the control database cannot be reached
                (only with SCHEMAD_TARGETS_QUERY).
            ScriptError: the migration scripts cannot be loaded.
        """
        run_id, started_at, start = uuid.uuid4().hex[:12], time.time(), clock()
        self._refresh_scripts()
        with structlog.contextvars.bound_contextvars(run_id=run_id):
            located = self.discover()
            looks = self.survey(located)
            work = [
                entry.name for entry in located if looks[entry.name].state is not State.AT_TARGET
            ]
            workers = self.workers(len(work))
            rollout = Rollout(
                work,
                canary=canaries(self.settings.canary, work),
                max_failures=self.settings.max_failures,
            )
            self._log.info(
                "fleet_started",
                targets=len(located),
                needing_work=len(work),
                canaries=list(rollout.canary),
                workers=workers,
            )
            by_name = {entry.name: entry for entry in located}
            passed = dispatch(
                rollout,
                lambda name: self.run_target(by_name[name]),
                ok=lambda report: report.state is not State.FAILED,
                on_error=lambda name, exc: self._crashed(by_name[name], exc),
                workers=workers,
                should_stop=self.should_stop,
            )
            skipped = set(rollout.skipped())
            reports = tuple(
                passed.get(entry.name)
                or (
                    replace(looks[entry.name], state=State.SKIPPED)
                    if entry.name in skipped
                    else looks[entry.name]
                )
                for entry in located
            )
            result = FleetResult(run_id, reports, started_at, clock() - start, workers)
            self._log_finished(result, worker_peak_rss_kib=_worker_peak_rss_kib(workers))
        return result

    def workers(self, needing_work: int) -> int:
        """Worker processes for this run (1: in this process, no fork)."""
        by_connections = max(1, self.settings.max_connections // CONNECTIONS_PER_PASS)
        return max(1, min(self.settings.worker_count(), by_connections, needing_work))

    def survey(self, located: Sequence[Located]) -> dict[str, TargetReport]:
        """Each target's state from its version table, read in batches.

        A target whose version table cannot be located without env.py (it
        shares its database with another target and names no schema) or
        cannot be read is reported behind, so that it gets a full pass.
        """
        heads = read_versions(located, self.settings)
        resolved = self.resolved()
        graph, policy = self.scripts().graph, self.policy()
        looks = {}
        for entry in located:
            found = heads.get(entry.name)
            if found is None or resolved.revisions is None:
                looks[entry.name] = TargetReport(
                    entry.name, State.BEHIND, database=entry.masked_url
                )
                continue
            plan = make_plan(graph, DbState(found), resolved, policy)
            state = _STATE_OF_PLAN[plan.kind]
            looks[entry.name] = _report_of_plan(entry, plan, state)
        return looks

    def run_target(self, entry: Located) -> TargetReport:
        """One ordinary pass for one target (in a worker, or in this process)."""
        with structlog.contextvars.bound_contextvars(target=entry.name):
            reconciler, database = self.reconciler(entry)
            try:
                result = reconciler.reconcile_once()
            except ConfigError as exc:
                message = database.redact(exc.message)
                self._log.error("target_misconfigured", error=message)
                return TargetReport(
                    entry.name,
                    State.FAILED,
                    error=message,
                    database=entry.masked_url,
                    passed=True,
                )
            finally:
                database.dispose()
        return _report_of_result(entry, result)

    def inspect_target(self, entry: Located) -> TargetReport:
        """What a pass would find for one target, changing nothing (``status``)."""
        with structlog.contextvars.bound_contextvars(target=entry.name):
            reconciler, database = self.reconciler(entry)
            try:
                inspection = reconciler.inspect_as_a_pass_would()
            except DatabaseUnavailableError as exc:
                return TargetReport(
                    entry.name, State.UNAVAILABLE, error=exc.message, database=entry.masked_url
                )
            except (ConfigError, ScriptError) as exc:
                message = database.redact(exc.message)
                return TargetReport(
                    entry.name, State.FAILED, error=message, database=entry.masked_url
                )
            finally:
                database.dispose()
        plan = inspection.plan
        report = _report_of_plan(entry, plan, _STATE_OF_PLAN[plan.kind])
        return replace(report, current=inspection.state.heads)

    def look(self) -> tuple[TargetReport, ...]:
        """Every target's state, read-only: the batched read, then an inspection
        (env.py's dry run) of the targets it could not settle."""
        self._refresh_scripts()
        located = self.discover()
        looks = self.survey(located)
        reports = []
        for entry in located:
            report = looks[entry.name]
            if report.state is State.BEHIND and not report.current and not report.pending:
                report = self.inspect_target(entry)
            reports.append(report)
        return tuple(reports)

    def reconciler(self, entry: Located) -> tuple[Reconciler, Database]:
        """The single-database reconciler for one target, on the shared scripts,
        and its database (for the caller to dispose of)."""
        settings = self.target_settings(entry)
        database = Database(
            entry.url,
            version_table=settings.version_table,
            version_table_schema=settings.version_table_schema,
            connect_timeout_seconds=settings.connect_timeout_seconds,
        )
        history = (
            History(
                database,
                table=settings.history_table,
                schema=settings.version_table_schema,
                identity=load_identity(),
            )
            if settings.history_enabled
            else None
        )
        shared = self.scripts()
        x_args = [*self.settings.x_arguments(), *self.x_args, *entry.target.x_args]

        def load() -> Scripts:
            from schemad.revisions import make_config

            config = make_config(
                entry.url,
                alembic_config=settings.alembic_config,
                script_location=settings.script_location,
                x_args=x_args,
            )
            return replace(shared, config=config)

        reconciler = Reconciler(settings, database, load, history=history)
        reconciler.set_hooks(should_stop=self.should_stop)
        return reconciler, database

    def target_settings(self, entry: Located) -> Settings:
        """The settings of one target's pass: its URL, -x arguments and schema."""
        target = entry.target
        update: dict[str, Any] = {
            "database_url": SecretStr(entry.url.render_as_string(hide_password=False)),
            "database_url_file": None,
            "x_args": ",".join([*self.settings.x_arguments(), *target.x_args]) or None,
        }
        if target.version_table_schema is not None:
            update["version_table_schema"] = target.version_table_schema
        return self.settings.model_copy(update=update)

    def _crashed(self, entry: Located, exc: BaseException) -> TargetReport:
        message = self.secrets.redact(f"internal error: {first_line(exc)}")
        self._log.error("target_crashed", target=entry.name, error=message)
        return TargetReport(
            entry.name, State.FAILED, error=message, database=entry.masked_url, passed=True
        )

    def _log_finished(self, result: FleetResult, *, worker_peak_rss_kib: int | None) -> None:
        counts = result.counts()
        fields: dict[str, Any] = {
            "workers": result.workers,
            "worker_peak_rss_kib": worker_peak_rss_kib,
            "targets": len(result.reports),
            "passes": sum(report.passed for report in result.reports),
            "applied": sum(bool(report.applied) for report in result.reports),
            "duration_seconds": round(result.duration_seconds, 4),
            **{state.value: counts.get(state, 0) for state in State},
        }
        if result.at_target:
            self._log.info("fleet_finished", **fields)
        else:
            self._log.error("fleet_finished", detail=result.describe_problems(), **fields)


def _worker_peak_rss_kib(workers: int) -> int | None:
    """The largest peak resident set of a worker process this process has reaped
    (Linux: KiB; a forked worker starts with the pages it shares with us)."""
    if workers <= 1:
        return None
    import resource

    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _report_of_plan(entry: Located, plan: Plan, state: State) -> TargetReport:
    return TargetReport(
        entry.name,
        state,
        current=plan.current,
        target=plan.target,
        pending=tuple(step.revision for step in plan.steps) if plan.has_work else (),
        error=plan.message if state is State.REFUSED else None,
        database=entry.masked_url,
    )


def _report_of_result(entry: Located, result: Result) -> TargetReport:
    state = _STATE_OF_OUTCOME[result.outcome]
    plan = result.plan
    pending: tuple[str, ...] = ()
    if plan is not None and state is not State.AT_TARGET and plan.has_work:
        done = {step.revision for step in result.applied}
        pending = tuple(step.revision for step in plan.steps if step.revision not in done)
    return TargetReport(
        entry.name,
        state,
        current=result.heads_after,
        target=plan.target if plan is not None else (),
        pending=pending,
        applied=tuple(step.revision for step in result.applied),
        error=result.error,
        database=entry.masked_url,
        duration_seconds=result.duration_seconds,
        passed=True,
    )


def _load_scripts(settings: Settings, x_args: Sequence[str]) -> Callable[[URL | None], Scripts]:
    def load(url: URL | None) -> Scripts:
        from schemad.revisions import load_scripts, make_config

        config = make_config(
            url,
            alembic_config=settings.alembic_config,
            script_location=settings.script_location,
            x_args=[*settings.x_arguments(), *x_args],
        )
        return load_scripts(config)

    return load


def read_targets_file(path: Path) -> object:
    """The targets file's content: a YAML or JSON document (JSON by a .json suffix).

    Raises:
        ConfigError: the file cannot be read, is not UTF-8, or does not parse.
    """
    variable = f"{PREFIX}TARGETS_FILE"
    source = f"{variable}={path}"
    text = read_text_file(
        path,
        variable,
        max_bytes=TARGETS_FILE_MAX_BYTES,
        unreadable="mount the targets list there (a ConfigMap) or fix the path",
        too_large=(
            f"the file is over {TARGETS_FILE_MAX_BYTES // 1024 // 1024} MiB; use "
            "SCHEMAD_TARGETS_QUERY for targets listed in a database"
        ),
        not_text="save it as UTF-8",
    )
    return _parse_document(text, path, source)


def _parse_document(text: str, path: Path, source: str) -> object:
    variable = source.split("=", 1)[0]
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                f"{exc.colno}); fix the file (a list of objects with a 'name')",
                variable=variable,
            ) from None
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a dependency; an image may strip it
        raise ConfigError(
            f"{source}: reading YAML needs PyYAML, which is not installed; give the "
            "targets as JSON in a file ending in .json",
            variable=variable,
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(
            f"{source}: not valid YAML ({problem}{where}); fix the file (a list of "
            "mappings with a 'name')",
            variable=variable,
        ) from None


def read_versions(located: Sequence[Located], settings: Settings) -> dict[str, tuple[str, ...]]:
    """Each surveyable target's version-table rows, in as few queries as possible.

    Targets on one PostgreSQL database (told apart by their schemas), or on
    one MySQL/MariaDB server (told apart by database or schema), are read
    with two queries together: which of their version tables exist, then
    one ``UNION ALL`` over those. A SQLite target is one read of its file.
    A target missing from the answer could not be read, or could not be
    located without env.py: it gets a full pass.
    """
    found: dict[str, tuple[str, ...]] = {}
    for group in _groups(located, settings):
        try:
            found.update(group.read(settings))
        except (SchemadError, SQLAlchemyError) as exc:
            logs.get_logger("schemad.fleet").info(
                "versions_unread",
                targets=len(group.schemas),
                error=first_line(exc) if not isinstance(exc, SchemadError) else exc.message,
            )
    return found


@dataclass
class _Group:
    """Targets whose version tables one connection can read together."""

    url: URL
    schemas: dict[str, str | None] = field(default_factory=dict)
    """target name -> the schema (or MySQL database) holding its version table."""

    def read(self, settings: Settings) -> dict[str, tuple[str, ...]]:
        table = settings.version_table
        database = Database(
            self.url,
            version_table=table,
            connect_timeout_seconds=settings.connect_timeout_seconds,
        )
        try:
            found = {
                name: database.read_state().heads
                for name, schema in self.schemas.items()
                if schema is None
            }
            named = {name: schema for name, schema in self.schemas.items() if schema is not None}
            if named:
                found.update(_read_together(database, table, named))
            return found
        finally:
            database.dispose()


def _read_together(
    database: Database, table: str, named: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """Version tables in several schemas (MySQL: databases) of one server: which
    exist, in one query, then all their rows in one ``UNION ALL``."""
    schemas = sorted(set(named.values()))
    with database.connect() as conn, database.exchange(conn):
        existing = set(
            conn.execute(
                sa.text(
                    "SELECT table_schema FROM information_schema.tables "
                    "WHERE table_name = :table AND table_schema IN :schemas"
                ).bindparams(sa.bindparam("schemas", expanding=True)),
                {"table": table, "schemas": schemas},
            ).scalars()
        )
        rows: dict[str, list[str]] = {schema: [] for schema in schemas}
        quote = conn.dialect.identifier_preparer.quote
        selects = [
            f"SELECT {index} AS n, version_num FROM {quote(schema)}.{quote(table)}"
            for index, schema in enumerate(schemas)
            if schema in existing
        ]
        if selects:
            for index, version in conn.execute(sa.text(" UNION ALL ".join(selects))):
                rows[schemas[int(index)]].append(str(version))
        conn.rollback()
    return {name: tuple(sorted(rows[schema])) for name, schema in named.items()}


def _groups(located: Iterable[Located], settings: Settings) -> list[_Group]:
    """Targets grouped by the connection that can read them; targets whose
    version table is not told apart from another's are left out."""
    keyed: dict[tuple[str, str | None], list[Located]] = {}
    for entry in located:
        key = _survey_key(entry, settings)
        keyed.setdefault(key, []).append(entry)
    groups: dict[str, _Group] = {}
    for (connection, schema), entries in keyed.items():
        if len(entries) != 1:
            continue  # several targets on one version table: only env.py can tell them apart
        (entry,) = entries
        group = groups.setdefault(connection, _Group(entry.url))
        group.schemas[entry.name] = schema
    return list(groups.values())


def _survey_key(entry: Located, settings: Settings) -> tuple[str, str | None]:
    schema = entry.target.version_table_schema or settings.version_table_schema
    url = entry.url
    if url.get_backend_name() == "sqlite":
        return entry.url.render_as_string(hide_password=False), None
    if url.get_backend_name() in ("mysql", "mariadb"):
        # A MySQL "schema" is a database: one server answers for all of them.
        server = url.set(database="").render_as_string(hide_password=False)
        return server, schema or url.database
    return url.render_as_string(hide_password=False), schema


def reports_document(reports: Sequence[TargetReport]) -> list[dict[str, Any]]:
    """Reports as JSON-able data (``status --json``, ``plan --json``)."""
    return [report.as_dict() for report in reports]


def states(reports: Iterable[TargetReport]) -> Mapping[State, int]:
    """How many targets are in each state (every state, zeros included)."""
    counts = Counter(report.state for report in reports)
    return {state: counts.get(state, 0) for state in State}


def fleet_status_document(
    last: FleetResult | None, *, state: str | None, limit: int
) -> dict[str, Any]:
    """The targets part of the fan-out daemon's ``/status``: counts by state,
    and at most ``limit`` targets (only those in ``state`` when given)."""
    if last is None:
        return {"targets": None, "last_pass": None}
    chosen = [r for r in last.reports if state is None or r.state.value == state]
    return {
        "targets": {
            "total": len(last.reports),
            "states": {s.value: n for s, n in states(last.reports).items()},
            "items": [report.as_dict() for report in chosen[:limit]],
            "matching": len(chosen),
            "limit": limit,
            "truncated": len(chosen) > limit,
        },
        "last_pass": {
            "run_id": last.run_id,
            "started_at": iso(last.started_at),
            "duration_seconds": round(last.duration_seconds, 4),
            "workers": last.workers,
            "summary": last.describe_problems(),
        },
    }
