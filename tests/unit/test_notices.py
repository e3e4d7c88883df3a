"""The pure side of the lifecycle signals: the termination line."""

from __future__ import annotations

from typing import Any

import pytest

from schemad.model import (
    AppliedStep,
    DbState,
    Direction,
    Inspection,
    Outcome,
    Plan,
    PlanKind,
    RefusalReason,
    Result,
    Step,
    Target,
)
from schemad.notices import (
    TERMINATION_MESSAGE_MAX_BYTES,
    Summary,
    ended_by_error,
    summary_of_inspection,
    summary_of_result,
    termination_message,
)

DATABASE = "postgresql+psycopg://app:***@db:5432/app"
BEHIND = Plan(PlanKind.UPGRADE, ("r1",), ("r3",), (Step("r2"), Step("r3")))
AT_TARGET = Plan(PlanKind.IN_SYNC, ("r3",), ("r3",), schema_ready=True)
UNKNOWN = Plan(
    PlanKind.REFUSED,
    ("feedface",),
    (),
    reason=RefusalReason.UNKNOWN_REVISION,
    message="database is at revision feedface, which these migrations do not contain",
)


def result(outcome: Outcome, **fields: Any) -> Result:
    defaults: dict[str, Any] = {
        "run_id": "1ee82bd949a5",
        "started_at": 1_790_000_000.0,
        "duration_seconds": 0.25,
        "target_spec": "head",
        "plan": BEHIND,
        "heads_before": ("r1",),
        "heads_after": ("r1",),
    }
    return Result(outcome=outcome, **{**defaults, **fields})


APPLIED = result(
    Outcome.APPLIED,
    heads_after=("r3",),
    applied=(
        AppliedStep("r2", "add users", Direction.UPGRADE, 0.012),
        AppliedStep("r3", "add index", Direction.UPGRADE, 0.034),
    ),
)
FAILED = result(
    Outcome.FAILED,
    heads_after=("r2",),
    error="revision r3 (add index) failed: LockNotAvailable: lock timeout; fix it",
)
IN_SYNC = result(Outcome.IN_SYNC, plan=AT_TARGET, heads_before=("r3",), heads_after=("r3",))
UNAVAILABLE = result(
    Outcome.UNAVAILABLE,
    plan=None,
    heads_before=(),
    heads_after=(),
    error=f"cannot connect to {DATABASE}: Connection refused",
)
REFUSED = result(
    Outcome.REFUSED,
    plan=UNKNOWN,
    heads_before=("feedface",),
    heads_after=("feedface",),
    error=UNKNOWN.message,
)


# -- the termination line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ended", "expected"),
    [
        (IN_SYNC, "in_sync: database at r3 (target head)"),
        (APPLIED, "applied: 2 revision(s), database at r3 (target head)"),
        (
            FAILED,
            "failed: revision r3 (add index) failed: LockNotAvailable: lock timeout; fix it; "
            "database left at r2 (target head: r3)",
        ),
        (
            REFUSED,
            "refused (unknown_revision): database is at revision feedface, which these "
            "migrations do not contain; database at feedface (target head)",
        ),
        (
            UNAVAILABLE,
            f"unavailable: cannot connect to {DATABASE}: Connection refused; target head",
        ),
    ],
    ids=lambda value: value.outcome.value if isinstance(value, Result) else "",
)
def test_termination_line_of_a_pass(ended: Result, expected: str) -> None:
    """A pass's line holds its outcome, reason, error, current and target revision."""
    assert expected == termination_message(summary_of_result(ended))


def test_termination_line_of_an_error_keeps_what_was_known() -> None:
    """A command ended by an error keeps the last state it saw (`wait` timing out)."""
    inspection = Inspection(DbState(("r1",)), Target("head", ("r3",)), BEHIND)
    known = summary_of_inspection("upgrade", inspection)
    summary = ended_by_error(known, "wait_timeout", "did not reach the target within 5s")
    expected = "wait_timeout: did not reach the target within 5s; database at r1 (target head: r3)"
    assert expected == termination_message(summary)


@pytest.mark.parametrize("length", [4000, 4093, 4094, 4095, 4096, 4097, 5000, 100_000])
@pytest.mark.parametrize("character", ["a", "é", "€", "😀"])
def test_termination_line_never_exceeds_4096_bytes(length: int, character: str) -> None:
    """However long the message, the line is at most 4096 bytes of valid UTF-8."""
    line = termination_message(Summary("failed", detail=character * length))
    encoded = line.encode("utf-8")
    assert (len(encoded) <= TERMINATION_MESSAGE_MAX_BYTES, encoded.decode("utf-8")) == (
        True,
        line,
    )


def test_a_cut_termination_line_ends_with_an_ellipsis() -> None:
    """A line that had to be cut says so with a trailing ellipsis."""
    line = termination_message(Summary("failed", detail="x" * 5000))
    assert (line[:12], line[-1], len(line.encode())) == ("failed: xxxx", "…", 4096)


def test_termination_line_is_one_line() -> None:
    """Newlines in a message (a traceback's tail, a SQL statement) become spaces."""
    line = termination_message(Summary("failed", detail="first\n  second\r\nthird"))
    assert line == "failed: first second third"


def test_termination_line_is_masked_before_it_is_cut() -> None:
    """A secret straddling the 4096-byte cut is masked, never left half-visible."""
    secret = "Pa55-w0rd-S3cret"
    detail = "x" * 4070 + secret

    def redact(text: str) -> str:
        return text.replace(secret, "***")

    line = termination_message(Summary("failed", detail=detail), redact)
    assert (secret[:8] in line, line.endswith("***")) == (False, True)
