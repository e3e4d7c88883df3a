"""What schemad tells operators when a command or a pass ends: the one-line
Kubernetes termination message, and the webhook events.

Pure: plain data in, a string or a JSON-able dict out. Text that may hold a
secret is masked with the ``redact`` the caller passes. Which events a
daemon sends is decided here too (:class:`EventGate`): a problem repeated
pass after pass is sent once, and the first pass back at the target after
it is sent once as ``recovered``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from schemad.model import Inspection, Outcome, Result

TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes keeps at most this much of a container's termination message."""
ELLIPSIS = "…"
SCHEMA_VERSION = 1
EVENTS = ("applied", "failed", "refused", "drift", "unavailable", "lock_timeout", "recovered")
DEFAULT_EVENTS = ("failed", "refused", "drift", "applied")
# Problems a later pass can recover from.
PROBLEMS = frozenset({"failed", "refused", "unavailable", "lock_timeout"})
SEVERITY = {
    "applied": "info",
    "recovered": "info",
    "drift": "warning",
    "unavailable": "warning",
    "lock_timeout": "warning",
    "failed": "error",
    "refused": "error",
}
_EVENT_OF_OUTCOME = {
    Outcome.APPLIED: "applied",
    Outcome.FAILED: "failed",
    Outcome.SCRIPT_ERROR: "failed",
    Outcome.REFUSED: "refused",
    Outcome.UNAVAILABLE: "unavailable",
    Outcome.LOCK_TIMEOUT: "lock_timeout",
}


def _unchanged(text: str) -> str:
    return text


@dataclass(frozen=True)
class Summary:
    """How a command or a pass ended, in the words of its termination message.

    ``current`` and ``target`` are None when they are not known (the
    database could not be read, the target not resolved).
    """

    outcome: str
    detail: str = ""
    current: tuple[str, ...] | None = None
    target_spec: str | None = None
    target: tuple[str, ...] | None = None
    reason: str | None = None


def summary_of_result(result: Result) -> Summary:
    """A reconcile pass (`schemad upgrade`, a daemon pass)."""
    plan = result.plan
    if result.outcome is Outcome.APPLIED:
        detail = f"{len(result.applied)} revision(s)"
    elif result.outcome is Outcome.INTERRUPTED:
        detail = f"stopped by a shutdown after {len(result.applied)} revision(s)"
    elif result.outcome is Outcome.AHEAD and plan is not None:
        detail = plan.message
    else:
        detail = result.error or ""
    return Summary(
        outcome=result.outcome.value,
        detail=detail,
        current=result.heads_after if plan is not None else None,
        target_spec=result.target_spec,
        target=plan.target if plan is not None else None,
        reason=plan.reason.value if plan is not None and plan.reason else None,
    )


def summary_of_inspection(outcome: str, inspection: Inspection) -> Summary:
    """A look at the database (`status`, `plan`, `wait`), named ``outcome``."""
    plan = inspection.plan
    return Summary(
        outcome=outcome,
        detail="" if plan.schema_ready and not plan.has_work else plan.message,
        current=inspection.state.heads,
        target_spec=inspection.target.spec,
        target=plan.target,
        reason=plan.reason.value if plan.reason else None,
    )


def drift_summary(revisions: Sequence[str], differences: Sequence[str]) -> Summary:
    """A drift check (`schemad drift`, the daemon's drift job)."""
    expected = ", ".join(revisions) or "base"
    if not differences:
        return Summary("no_drift", detail=f"the schema matches {expected}")
    detail = f"{len(differences)} object(s) differ from what {expected} should produce: " + (
        "; ".join(differences)
    )
    return Summary("drift", detail=detail)


def ended_by_error(
    known: Summary | None, outcome: str, message: str, *, reason: str | None = None
) -> Summary:
    """A command that ended with an error, keeping what it knew of the database."""
    if known is None:
        return Summary(outcome=outcome, detail=message, reason=reason)
    return replace(known, outcome=outcome, detail=message, reason=reason)


def termination_message(summary: Summary, redact: Callable[[str], str] = _unchanged) -> str:
    """The one line a one-shot command leaves in its termination-message file.

    ``outcome (reason): detail; database at <current> (target <spec>)``,
    masked, on one line, and at most 4096 bytes of UTF-8.
    """
    return fit(one_line(redact(_describe(summary))), TERMINATION_MESSAGE_MAX_BYTES)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def fit(text: str, limit_bytes: int) -> str:
    """``text`` cut to at most ``limit_bytes`` of UTF-8, ending in an ellipsis when cut."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return text
    room = limit_bytes - len(ELLIPSIS.encode("utf-8"))
    # A character cut in half at the end is dropped, never half-written.
    return encoded[:room].decode("utf-8", "ignore") + ELLIPSIS


def _describe(summary: Summary) -> str:
    head = summary.outcome
    if summary.reason and summary.reason != summary.outcome:
        head = f"{head} ({summary.reason})"
    state = _state(summary)
    separator = ", " if summary.outcome == Outcome.APPLIED else "; "
    body = separator.join(part for part in (summary.detail, state) if part)
    return f"{head}: {body}" if body else head


def _state(summary: Summary) -> str:
    target = _target(summary)
    if summary.current is not None:
        left = " left" if summary.outcome == Outcome.FAILED else ""
        at = ",".join(summary.current) or "base"
        return f"database{left} at {at} (target {target})" if target else f"database{left} at {at}"
    return f"target {target}" if target else ""


def _target(summary: Summary) -> str:
    spec, resolved = summary.target_spec, summary.target
    if spec is None:
        return ""
    if not resolved or resolved == (spec,) or resolved == summary.current:
        return spec
    return f"{spec}: {','.join(resolved)}"


# -- webhook events -----------------------------------------------------------------------


def event_of(outcome: Outcome) -> str | None:
    """The event a pass with this outcome sends, if any (script errors are ``failed``)."""
    return _EVENT_OF_OUTCOME.get(outcome)


def parse_events(text: str) -> tuple[str, ...]:
    """Event names from a comma list, in the canonical order.

    Raises:
        ValueError: a name is not one of :data:`EVENTS`, or the list is empty.
    """
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(EVENTS))
    if unknown:
        raise ValueError(
            f"unknown event(s) {', '.join(unknown)}; expected some of {','.join(EVENTS)}"
        )
    if not names:
        raise ValueError(f"expected a comma list of events out of {','.join(EVENTS)}")
    return tuple(name for name in EVENTS if name in names)


class EventGate:
    """Decides which events go out, given what went out before.

    A problem (same event, same reason, same failing revision or error text)
    is sent once until a pass reaches the target again; that pass then sends
    ``recovered``, once. Drift is sent once per distinct set of differences.
    """

    def __init__(self, wanted: Iterable[str]) -> None:
        self.wanted = frozenset(wanted)
        self._problems: set[tuple[str, str, str]] = set()
        self._drift: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def after_pass(self, result: Result) -> list[str]:
        """The events to send for this pass, in order."""
        event = event_of(result.outcome)
        if result.ready:
            sent = [event] if event == "applied" and event in self.wanted else []
            if self._problems:
                self._problems.clear()
                if "recovered" in self.wanted:
                    sent.append("recovered")
            return sent
        if event is None or event not in self.wanted:
            return []
        key = (event, reason_of(result), _identifying(result))
        if key in self._problems:
            return []
        self._problems.add(key)
        return [event]

    def after_drift(self, revisions: Sequence[str], differences: Sequence[str]) -> bool:
        """Whether this drift check sends ``drift``."""
        if not differences:
            self._drift = None
            return False
        key = (tuple(revisions), tuple(differences))
        if key == self._drift:
            return False
        self._drift = key
        return "drift" in self.wanted


def _identifying(result: Result) -> str:
    """What tells one problem from another: the failing revision, or the lock's
    holder (whose message counts the seconds held), else the error text."""
    if result.failed_revision:
        return result.failed_revision
    if result.outcome is Outcome.LOCK_TIMEOUT and result.lock_holder is not None:
        return result.lock_holder.description
    return result.error or ""


def reason_of(result: Result) -> str:
    """Why a pass ended as it did: its refusal reason, else its outcome."""
    plan = result.plan
    if plan is not None and plan.reason is not None:
        return plan.reason.value
    return result.outcome.value


def pass_event(
    event: str,
    result: Result,
    *,
    database: str,
    identity: Mapping[str, str | None],
    at: float,
    redact: Callable[[str], str] = _unchanged,
) -> dict[str, Any]:
    """The webhook document for an event a pass sends."""
    plan = result.plan
    summary = summary_of_result(result)
    if event == "recovered":
        summary = replace(summary, outcome=event, detail="", reason=None)
    elif event != summary.outcome:
        summary = replace(summary, outcome=event, reason=summary.reason or summary.outcome)
    return _document(
        event,
        summary,
        database=database,
        identity=identity,
        at=at,
        redact=redact,
        run_id=result.run_id,
        from_revision=_joined(result.heads_before),
        to_revision=_joined(result.heads_after),
        target_revision=_joined(plan.target) if plan is not None else None,
        applied=[
            {
                "revision": step.revision,
                "message": step.message,
                "direction": str(step.direction),
                "duration_seconds": round(step.duration_seconds, 6),
            }
            for step in result.applied
        ],
        error=result.error,
        reason=reason_of(result),
    )


def drift_event(
    revisions: Sequence[str],
    differences: Sequence[str],
    *,
    target_spec: str,
    database: str,
    identity: Mapping[str, str | None],
    at: float,
    redact: Callable[[str], str] = _unchanged,
) -> dict[str, Any]:
    """The webhook document for a drift check that found differences."""
    summary = replace(drift_summary(revisions, differences), target_spec=target_spec)
    return _document(
        "drift",
        summary,
        database=database,
        identity=identity,
        at=at,
        redact=redact,
        run_id=None,
        from_revision=_joined(revisions),
        to_revision=_joined(revisions),
        target_revision=None,
        applied=[],
        error=None,
        reason="drift",
        differences=list(differences),
    )


def _document(
    event: str,
    summary: Summary,
    *,
    database: str,
    identity: Mapping[str, str | None],
    at: float,
    redact: Callable[[str], str],
    run_id: str | None,
    from_revision: str | None,
    to_revision: str | None,
    target_revision: str | None,
    applied: list[dict[str, Any]],
    error: str | None,
    reason: str,
    differences: list[str] | None = None,
) -> dict[str, Any]:
    where = database
    if identity.get("pod"):
        where += f", pod {identity.get('namespace') or '-'}/{identity['pod']}"
    line = _describe(summary)
    return {
        "schema_version": SCHEMA_VERSION,
        "event": event,
        "target": None,
        "database": database,
        "from_revision": from_revision,
        "to_revision": to_revision,
        "target_revision": target_revision,
        "applied": applied,
        "error": redact(error) if error is not None else None,
        "reason": reason,
        "differences": [redact(d) for d in differences or []],
        "severity": SEVERITY[event],
        "identity": {key: identity.get(key) for key in IDENTITY_KEYS},
        "time": iso_utc(at),
        "run_id": run_id,
        "text": fit(one_line(redact(f"[schemad] {line} — {where}")), TERMINATION_MESSAGE_MAX_BYTES),
    }


IDENTITY_KEYS = ("pod", "namespace", "node", "image", "chart", "app_version")


def iso_utc(timestamp: float) -> str:
    """A Unix time as ISO 8601 in UTC with milliseconds, e.g. 2026-11-24T06:12:49.751Z."""
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _joined(revisions: Sequence[str]) -> str | None:
    return ",".join(revisions) or None
