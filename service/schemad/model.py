"""Plain, frozen data passed between the pure core and the edges.

Standard library only: the planner and its tests never need Alembic,
SQLAlchemy or a database to reason about these.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
    """One revision file, reduced to what planning needs."""

    id: str
    parents: tuple[str, ...]
    message: str = ""


@dataclass(frozen=True)
class Graph:
    """The revision graph: every revision, a base-first order, the heads."""

    revisions: Mapping[str, Revision]
    order: tuple[str, ...]
    heads: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """The target revision as configured and as resolved against the graph.

    ``revisions`` is None when the spec cannot be resolved; ``problem`` then
    says why (``unknown_target`` or ``multiple_heads``) and ``detail`` adds
    Alembic's own explanation.
    """

    spec: str
    revisions: tuple[str, ...] | None
    problem: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class DbState:
    """What the version table says: the current head revision(s)."""

    heads: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """The user's choices that decide between acting and refusing."""

    allow_downgrade: bool = False
    ignore_unknown_revisions: bool = False
    block_on_tamper: bool = False


class PlanKind(enum.StrEnum):
    """What a pass would do."""

    IN_SYNC = "in_sync"
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    AHEAD = "ahead"
    REFUSED = "refused"


class RefusalReason(enum.StrEnum):
    """Why the planner refused; a small fixed set (used as a metric label)."""

    UNKNOWN_REVISION = "unknown_revision"
    UNKNOWN_TARGET = "unknown_target"
    MULTIPLE_HEADS = "multiple_heads"
    DOWNGRADE_NOT_ALLOWED = "downgrade_not_allowed"
    DIVERGED = "diverged"
    INCONSISTENT_VERSION_TABLE = "inconsistent_version_table"
    TAMPERED = "tampered"
    INTERRUPTED_REVISION = "interrupted_revision"


@dataclass(frozen=True)
class Step:
    """One revision to apply, in the direction of the plan."""

    revision: str
    message: str = ""


@dataclass(frozen=True)
class Plan:
    """The planner's decision for one database state and one target."""

    kind: PlanKind
    current: tuple[str, ...]
    target: tuple[str, ...]
    steps: tuple[Step, ...] = ()
    reason: RefusalReason | None = None
    message: str = ""
    schema_ready: bool = False
    """True when an app built for the target can run: at target or past it."""

    @property
    def has_work(self) -> bool:
        return self.kind in (PlanKind.UPGRADE, PlanKind.DOWNGRADE)


class Direction(enum.StrEnum):
    """Which way a revision is applied."""

    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"


class HistoryOutcome(enum.StrEnum):
    """What a history row says happened to its revision."""

    STARTED = "started"
    """Written before a revision runs where DDL is not transactional."""
    APPLIED = "applied"
    FAILED = "failed"
    ADOPTED = "adopted"
    """Applied before schemad kept history; its checksum recorded on first sight."""
    NOT_STARTED = "not_started"
    """Marked started, then a graceful stop came first."""


class Outcome(enum.StrEnum):
    """How a reconcile pass ended; a small fixed set (a metric label)."""

    IN_SYNC = "in_sync"
    APPLIED = "applied"
    AHEAD = "ahead"
    REFUSED = "refused"
    LOCK_TIMEOUT = "lock_timeout"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"
    SCRIPT_ERROR = "script_error"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class AppliedStep:
    """A revision that was applied (or reverted) and committed."""

    revision: str
    message: str
    direction: Direction
    duration_seconds: float


@dataclass(frozen=True)
class Tampered:
    """An applied revision whose file no longer matches what was applied."""

    revision: str
    recorded_checksum: str
    current_checksum: str | None


@dataclass(frozen=True)
class NewerRevision:
    """A revision the database has and this image lacks, as history tells."""

    revision: str
    applied_at: str | None
    applied_by: str | None
    image: str | None


@dataclass(frozen=True)
class LockHolder:
    """Who holds the migration lock, as far as the database can tell."""

    description: str
    held_seconds: float | None = None


@dataclass(frozen=True)
class Layout:
    """Where env.py keeps the version table, and how it connects."""

    version_table: str
    version_table_schema: str | None
    own_connection: bool = False
    """env.py migrates on a connection it opens itself (on schemad's database)."""
    databases: int = 1
    """How many databases env.py migrates (more than one: ``multidb``)."""


@dataclass(frozen=True)
class Inspection:
    """What the database and the scripts say now, and the plan that follows."""

    state: DbState
    target: Target
    plan: Plan
    tampered: tuple[Tampered, ...] = ()
    newer: tuple[NewerRevision, ...] = ()


@dataclass(frozen=True)
class Result:
    """Everything one reconcile pass found and did."""

    outcome: Outcome
    run_id: str
    started_at: float
    duration_seconds: float
    target_spec: str
    plan: Plan | None = None
    applied: tuple[AppliedStep, ...] = ()
    heads_before: tuple[str, ...] = ()
    heads_after: tuple[str, ...] = ()
    lock_wait_seconds: float = 0.0
    lock_holder: LockHolder | None = None
    error: str | None = None
    failed_revision: str | None = None
    """The revision that raised, when a revision failed while being applied."""
    tampered: tuple[Tampered, ...] = ()
    newer: tuple[NewerRevision, ...] = ()
    history_write_failures: int = 0

    @property
    def at_target(self) -> bool:
        return self.outcome in (Outcome.IN_SYNC, Outcome.APPLIED)

    @property
    def ready(self) -> bool:
        """An app built for the target can run: at target, or ahead by policy."""
        return self.at_target or self.outcome is Outcome.AHEAD
