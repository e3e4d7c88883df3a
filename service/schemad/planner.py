"""Pure planning: graph + database state + target + policy -> Plan.

No I/O and no third-party imports: every decision between acting and
refusing lives here, so it can be tested exhaustively without a database.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from schemad.model import (
    DbState,
    Graph,
    Plan,
    PlanKind,
    Policy,
    RefusalReason,
    Step,
    Target,
)


def make_plan(
    graph: Graph,
    state: DbState,
    target: Target,
    policy: Policy,
    tampered: Collection[str] = (),
    interrupted: Collection[str] = (),
) -> Plan:
    """Decide what moves the database from ``state`` to ``target``.

    Args:
        graph: every revision the migration scripts contain.
        state: the head revision(s) recorded in the database's version table.
        target: the configured target, resolved against ``graph``.
        policy: whether downgrades, unknown and tampered revisions are acceptable.
        tampered: applied revisions whose files changed since they were applied.
        interrupted: revisions cut off half-way where DDL is not transactional
            (only known under the lock: without it they may be running).

    Returns:
        A plan: in sync, upgrade or downgrade through ordered steps, ahead
        (database past this image, tolerated by policy) or a refusal whose
        message says what to do.
    """
    current = tuple(state.heads)
    unknown = [rev for rev in current if rev not in graph.revisions]
    if unknown:
        return _unknown_revision(current, unknown, target, policy)
    if target.revisions is None:
        return _unresolved_target(current, target)
    wanted = target.revisions
    redundant = _redundant_heads(graph, current)
    if redundant:
        return _inconsistent_version_table(current, wanted, redundant)
    if set(current) == set(wanted):
        return Plan(
            PlanKind.IN_SYNC,
            current,
            wanted,
            message=f"database is at the target {_fmt(wanted)}",
            schema_ready=True,
        )
    have = ancestors(graph, current)
    want = ancestors(graph, wanted)
    if have <= want:
        plan = _upgrade(graph, current, wanted, want - have)
    elif want <= have:
        plan = _downgrade(graph, current, wanted, have - want, policy)
    else:
        return _diverged(current, wanted, target)
    half_applied = [step.revision for step in plan.steps if step.revision in interrupted]
    if half_applied and plan.has_work:
        return _interrupted(plan, half_applied)
    if tampered and policy.block_on_tamper and plan.has_work:
        return _tampered(plan, tampered)
    return plan


def ancestors(graph: Graph, revisions: Iterable[str]) -> frozenset[str]:
    """Return ``revisions`` and every revision they descend from."""
    seen: set[str] = set()
    pending = list(revisions)
    while pending:
        rev = pending.pop()
        if rev in seen:
            continue
        seen.add(rev)
        pending.extend(graph.revisions[rev].parents)
    return frozenset(seen)


def _steps(graph: Graph, revisions: frozenset[str], *, reverse: bool) -> tuple[Step, ...]:
    order = reversed(graph.order) if reverse else iter(graph.order)
    return tuple(Step(rev, graph.revisions[rev].message) for rev in order if rev in revisions)


def _upgrade(
    graph: Graph, current: tuple[str, ...], wanted: tuple[str, ...], todo: frozenset[str]
) -> Plan:
    steps = _steps(graph, todo, reverse=False)
    return Plan(
        PlanKind.UPGRADE,
        current,
        wanted,
        steps,
        message=f"{len(steps)} revision(s) to apply to reach {_fmt(wanted)}",
    )


def _downgrade(
    graph: Graph,
    current: tuple[str, ...],
    wanted: tuple[str, ...],
    todo: frozenset[str],
    policy: Policy,
) -> Plan:
    steps = _steps(graph, todo, reverse=True)
    listed = ", ".join(step.revision for step in steps)
    if not policy.allow_downgrade:
        return Plan(
            PlanKind.REFUSED,
            current,
            wanted,
            steps,
            reason=RefusalReason.DOWNGRADE_NOT_ALLOWED,
            message=(
                f"database is at {_fmt(current)}, past the target {_fmt(wanted)}; "
                f"reaching the target means reverting {len(steps)} revision(s) "
                f"({listed}). Set SCHEMAD_ALLOW_DOWNGRADE=true to allow it, or "
                "set SCHEMAD_TARGET_REVISION to the database's revision"
            ),
            schema_ready=True,
        )
    return Plan(
        PlanKind.DOWNGRADE,
        current,
        wanted,
        steps,
        message=f"{len(steps)} revision(s) to revert to reach {_fmt(wanted)}",
        schema_ready=False,
    )


def _unknown_revision(
    current: tuple[str, ...], unknown: list[str], target: Target, policy: Policy
) -> Plan:
    wanted = target.revisions or ()
    if policy.ignore_unknown_revisions:
        return Plan(
            PlanKind.AHEAD,
            current,
            wanted,
            message=(
                f"database is at {_fmt(tuple(unknown))}, which these migrations do "
                "not contain; it is taken to be ahead of this image and left alone "
                "(SCHEMAD_ON_UNKNOWN_REVISION=ignore)"
            ),
            schema_ready=True,
        )
    return Plan(
        PlanKind.REFUSED,
        current,
        wanted,
        reason=RefusalReason.UNKNOWN_REVISION,
        message=(
            f"database is at revision {_fmt(tuple(unknown))}, which these migrations "
            "do not contain (was a newer image rolled back?); deploy the image that "
            "contains it, downgrade the database with that image, or set "
            "SCHEMAD_ON_UNKNOWN_REVISION=ignore to run this image against it"
        ),
    )


def _unresolved_target(current: tuple[str, ...], target: Target) -> Plan:
    if target.problem == RefusalReason.MULTIPLE_HEADS.value:
        reason = RefusalReason.MULTIPLE_HEADS
        message = (
            f"the migrations have several heads ({target.detail}) and the target is "
            f"'{target.spec}'; merge them with `alembic merge heads`, or set "
            "SCHEMAD_TARGET_REVISION to 'heads' or to one branch as 'label@head'"
        )
    else:
        reason = RefusalReason.UNKNOWN_TARGET
        message = (
            f"target revision '{target.spec}' is not in the migrations"
            f"{': ' + target.detail if target.detail else ''}; set "
            "SCHEMAD_TARGET_REVISION to 'head' or to a revision listed by "
            "`alembic history`"
        )
    return Plan(PlanKind.REFUSED, current, (), reason=reason, message=message)


def _redundant_heads(graph: Graph, current: tuple[str, ...]) -> tuple[str, ...]:
    rows = set(current)
    duplicated = {rev for rev in rows if current.count(rev) > 1}
    covered = {rev for rev in rows if rev in ancestors(graph, rows - {rev})}
    return tuple(sorted(duplicated | covered))


def _inconsistent_version_table(
    current: tuple[str, ...], wanted: tuple[str, ...], redundant: tuple[str, ...]
) -> Plan:
    return Plan(
        PlanKind.REFUSED,
        current,
        wanted,
        reason=RefusalReason.INCONSISTENT_VERSION_TABLE,
        message=(
            f"the version table lists {_fmt(current)}, but {_fmt(redundant)} "
            "is also an ancestor of (or the same as) another row; repair the table "
            "with `alembic stamp <revision>` after checking the schema by hand"
        ),
    )


def _diverged(current: tuple[str, ...], wanted: tuple[str, ...], target: Target) -> Plan:
    return Plan(
        PlanKind.REFUSED,
        current,
        wanted,
        reason=RefusalReason.DIVERGED,
        message=(
            f"database is at {_fmt(current)}, which is on another branch than the "
            f"target '{target.spec}' ({_fmt(wanted)}); set SCHEMAD_TARGET_REVISION "
            "to 'heads' or to a revision that descends from the database's"
        ),
    )


def _interrupted(plan: Plan, revisions: list[str]) -> Plan:
    first = revisions[0]
    return Plan(
        PlanKind.REFUSED,
        plan.current,
        plan.target,
        plan.steps,
        reason=RefusalReason.INTERRUPTED_REVISION,
        message=(
            f"revision {first} was interrupted while being applied, and its statements "
            "commit one by one (MySQL/MariaDB DDL, or SCHEMAD_AUTOCOMMIT_REVISIONS): some "
            "of its changes may be in place although the "
            f"version table still says {_fmt(plan.current)}. Compare the schema with "
            f"{first}'s upgrade(); then either finish it by hand and run `alembic stamp "
            f"{first}`, or undo its partial changes and set "
            f"SCHEMAD_RETRY_INTERRUPTED={first} to apply it again"
        ),
        schema_ready=plan.schema_ready,
    )


def _tampered(plan: Plan, tampered: Collection[str]) -> Plan:
    return Plan(
        PlanKind.REFUSED,
        plan.current,
        plan.target,
        plan.steps,
        reason=RefusalReason.TAMPERED,
        message=(
            f"revision file(s) {', '.join(sorted(tampered))} changed after they were "
            "applied (checksums differ from the history); restore them as they were "
            "applied, or set SCHEMAD_ON_TAMPER=warn to migrate anyway"
        ),
        schema_ready=plan.schema_ready,
    )


def _fmt(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) if revisions else "base (no revision)"
