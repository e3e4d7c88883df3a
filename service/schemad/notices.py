"""What schemad tells operators when a command or a pass ends: the one-line
Kubernetes termination message.

Pure: plain data in, a string out. Text that may hold a secret is masked
with the ``redact`` the caller passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from schemad.model import Inspection, Outcome, Result

TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes keeps at most this much of a container's termination message."""
ELLIPSIS = "…"


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
