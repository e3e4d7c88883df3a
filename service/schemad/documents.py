"""JSON documents: `status --json`, `plan --json` and the daemon's `/status`.

Pure: plain data in, JSON-able dicts out. Messages come in already masked,
or are masked here with the ``redact`` the caller passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from schemad.model import (
    Inspection,
    LockHolder,
    NewerRevision,
    Plan,
    PlanKind,
    Result,
    Tampered,
)


def plan_document(plan: Plan) -> dict[str, Any]:
    """`schemad plan --json`."""
    return {
        "kind": plan.kind.value,
        "current": list(plan.current),
        "target": list(plan.target),
        "steps": [{"revision": s.revision, "message": s.message} for s in plan.steps],
        "reason": plan.reason.value if plan.reason else None,
        "message": plan.message,
        "schema_ready": plan.schema_ready,
    }


def status_document(
    *,
    database: str,
    inspection: Inspection,
    holder: LockHolder | None,
    redact: Callable[[str], str],
) -> dict[str, Any]:
    """`schemad status --json`."""
    plan = inspection.plan
    return {
        "database": database,
        "current": list(inspection.state.heads),
        "target": {"spec": inspection.target.spec, "revisions": list(plan.target)},
        "state": plan.kind.value,
        "in_sync": plan.kind is PlanKind.IN_SYNC,
        "pending": [{"revision": s.revision, "message": s.message} for s in plan.steps]
        if plan.has_work
        else [],
        "reason": plan.reason.value if plan.reason else None,
        "message": redact(plan.message),
        "lock": {
            "held": holder is not None,
            "holder": holder.description if holder else None,
            "held_seconds": holder.held_seconds if holder else None,
        },
        **audit_document(inspection.tampered, inspection.newer),
    }


def result_document(result: Result) -> dict[str, Any]:
    """A pass, as the daemon's `/status` shows it (its messages are masked)."""
    plan = result.plan
    done = {step.revision for step in result.applied}
    return {
        "run_id": result.run_id,
        "outcome": result.outcome.value,
        "ready": result.ready,
        "started_at": iso(result.started_at),
        "duration_seconds": round(result.duration_seconds, 6),
        "current": list(result.heads_after),
        "previous": list(result.heads_before),
        "target": list(plan.target) if plan else [],
        "pending": [s.revision for s in plan.steps if s.revision not in done]
        if plan and not result.ready
        else [],
        "reason": plan.reason.value if plan and plan.reason else None,
        "error": result.error,
        "lock_wait_seconds": round(result.lock_wait_seconds, 6),
        "applied": [
            {
                "revision": step.revision,
                "message": step.message,
                "direction": str(step.direction),
                "duration_seconds": round(step.duration_seconds, 6),
            }
            for step in result.applied
        ],
        **audit_document(result.tampered, result.newer),
    }


def daemon_document(
    *,
    database: str,
    target: str,
    started_at: float,
    stopping: bool,
    pass_running_since: float | None,
    next_pass_at: datetime | None,
    consecutive_failures: int,
    last_success_at: float | None,
    waiting_for: LockHolder | None,
    last: Result | None,
    drift: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The daemon's `/status`: its state and its last pass."""
    return {
        "database": database,
        "target": target,
        "started_at": iso(started_at),
        "stopping": stopping,
        "pass_running_since": iso(pass_running_since),
        "next_pass_at": next_pass_at.isoformat() if next_pass_at else None,
        "consecutive_failures": consecutive_failures,
        "last_success_at": iso(last_success_at),
        "lock": {
            "waiting": waiting_for is not None,
            "holder": waiting_for.description if waiting_for else None,
            "held_seconds": waiting_for.held_seconds if waiting_for else None,
        },
        "last_pass": result_document(last) if last else None,
        "drift": dict(drift) if drift is not None else None,
    }


def audit_document(
    tampered: Sequence[Tampered], newer: Sequence[NewerRevision]
) -> dict[str, list[dict[str, str | None]]]:
    """Tampered files and newer revisions as JSON-able data."""
    return {
        "tampered": [
            {
                "revision": t.revision,
                "recorded_checksum": t.recorded_checksum,
                "current_checksum": t.current_checksum,
            }
            for t in tampered
        ],
        "newer_than_image": [
            {
                "revision": n.revision,
                "applied_at": n.applied_at,
                "applied_by": n.applied_by,
                "image": n.image,
            }
            for n in newer
        ],
    }


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC; None stays None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
