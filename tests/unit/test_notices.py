"""The pure side of the lifecycle signals: the termination line, which events
go out, and the event documents against docs/webhook-event.schema.json."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemad.model import (
    AppliedStep,
    DbState,
    Direction,
    Inspection,
    LockHolder,
    Outcome,
    Plan,
    PlanKind,
    RefusalReason,
    Result,
    Step,
    Target,
)
from schemad.notices import (
    EVENTS,
    TERMINATION_MESSAGE_MAX_BYTES,
    EventGate,
    Summary,
    drift_event,
    ended_by_error,
    parse_events,
    pass_event,
    summary_of_inspection,
    summary_of_result,
    termination_message,
)
from support.receiver import event_schema

DATABASE = "postgresql+psycopg://app:***@db:5432/app"
IDENTITY = {"pod": "app-schema-x7k2p", "namespace": "apps", "node": "n1", "image": "reg/app:2"}
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
    failed_revision="r3",
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


# -- which events go out --------------------------------------------------------------------


def test_a_repeated_failure_is_sent_once() -> None:
    """The same failing revision pass after pass is sent the first time only."""
    gate = EventGate(EVENTS)
    sent = [gate.after_pass(FAILED) for _ in range(4)]
    assert sent == [["failed"], [], [], []]


def test_a_failure_of_the_same_revision_with_another_message_is_not_resent() -> None:
    """The failing revision, not the varying text around it, identifies a failure."""
    gate = EventGate(EVENTS)
    again = result(Outcome.FAILED, error="revision r3 failed: another text", failed_revision="r3")
    assert [gate.after_pass(FAILED), gate.after_pass(again)] == [["failed"], []]


def test_a_lock_timeout_with_the_same_holder_is_not_resent() -> None:
    """The seconds the holder held the lock vary; the holder identifies the problem."""
    gate = EventGate(EVENTS)
    sent = [
        gate.after_pass(
            result(
                Outcome.LOCK_TIMEOUT,
                error=f"the migration lock is still held by pod b (for {held}s)",
                lock_holder=LockHolder("pod b", held),
            )
        )
        for held in (180.0, 372.0)
    ]
    assert sent == [["lock_timeout"], []]


def test_a_different_problem_is_sent() -> None:
    """A new problem (another event or error) is sent even while the first one lasts."""
    gate = EventGate(EVENTS)
    sent = [gate.after_pass(FAILED), gate.after_pass(UNAVAILABLE), gate.after_pass(FAILED)]
    assert sent == [["failed"], ["unavailable"], []]


def test_recovery_is_sent_once_after_a_problem() -> None:
    """The first pass at the target after a problem sends recovered; later ones nothing."""
    gate = EventGate(EVENTS)
    sent = [gate.after_pass(r) for r in (FAILED, FAILED, IN_SYNC, IN_SYNC)]
    assert sent == [["failed"], [], ["recovered"], []]


def test_a_recovering_pass_that_applied_sends_applied_then_recovered() -> None:
    """A fix that applies revisions reports both the work and the recovery."""
    gate = EventGate(EVENTS)
    assert [gate.after_pass(FAILED), gate.after_pass(APPLIED)] == [
        ["failed"],
        ["applied", "recovered"],
    ]


def test_the_same_problem_after_a_recovery_is_sent_again() -> None:
    """Recovering forgets what was sent: the next failure is news."""
    gate = EventGate(EVENTS)
    sent = [gate.after_pass(r) for r in (FAILED, IN_SYNC, FAILED)]
    assert sent == [["failed"], ["recovered"], ["failed"]]


def test_no_recovery_without_a_problem_sent() -> None:
    """A problem the receiver did not subscribe to is not followed by recovered."""
    gate = EventGate(["failed", "recovered"])
    sent = [gate.after_pass(r) for r in (UNAVAILABLE, IN_SYNC)]
    assert sent == [[], []]


def test_only_subscribed_events_are_sent() -> None:
    """The default events leave out unavailable, lock_timeout and recovered."""
    gate = EventGate(parse_events("failed,refused,drift,applied"))
    sent = [gate.after_pass(r) for r in (UNAVAILABLE, FAILED, APPLIED, IN_SYNC)]
    assert sent == [[], ["failed"], ["applied"], []]


def test_script_errors_are_sent_as_failed() -> None:
    """Broken migration files are a failure an operator must fix."""
    broken = result(Outcome.SCRIPT_ERROR, plan=None, error="SyntaxError in r3.py")
    assert EventGate(EVENTS).after_pass(broken) == ["failed"]


def test_drift_is_sent_once_per_set_of_differences() -> None:
    """The same drift check after check is sent once; changed or returning drift again."""
    gate = EventGate(EVENTS)
    one, two = ["extra_table t: expected absent, found present"], ["missing_table u: ..."]
    sent = [gate.after_drift(["r3"], d) for d in (one, one, two, [], two)]
    assert sent == [True, False, True, False, True]


def test_events_parse_in_canonical_order() -> None:
    """A comma list is lower-cased, deduplicated and ordered as EVENTS lists them."""
    assert parse_events(" Drift,applied , drift,failed") == ("applied", "failed", "drift")


@pytest.mark.parametrize("text", ["failed,exploded", "", " , "])
def test_bad_event_lists_are_refused(text: str) -> None:
    """An unknown name or an empty list is a ValueError naming the choices."""
    with pytest.raises(ValueError, match="applied,failed,refused,drift"):
        parse_events(text)


# -- event documents --------------------------------------------------------------------------


def documents() -> dict[str, dict[str, Any]]:
    common: dict[str, Any] = {"database": DATABASE, "identity": IDENTITY, "at": 1_790_000_000.5}
    return {
        "applied": pass_event("applied", APPLIED, **common),
        "failed": pass_event("failed", FAILED, **common),
        "refused": pass_event("refused", REFUSED, **common),
        "unavailable": pass_event("unavailable", UNAVAILABLE, **common),
        "lock_timeout": pass_event(
            "lock_timeout", result(Outcome.LOCK_TIMEOUT, error="lock held by pod b"), **common
        ),
        "recovered": pass_event("recovered", IN_SYNC, **common),
        "drift": drift_event(
            ["r3"],
            ["column_type t.x: expected INTEGER, found BIGINT"],
            target_spec="head",
            **common,
        ),
    }


def test_the_shipped_schema_is_a_valid_json_schema() -> None:
    """docs/webhook-event.schema.json is itself valid draft 2020-12."""
    Draft202012Validator.check_schema(event_schema())


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_document_matches_the_shipped_schema(event: str) -> None:
    """Each event's document validates against docs/webhook-event.schema.json."""
    validator = Draft202012Validator(
        event_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [error.message for error in validator.iter_errors(documents()[event])]
    assert errors == []


def test_applied_document_says_what_was_applied() -> None:
    """An applied event carries the revisions, the states and a Slack-ready text."""
    document = documents()["applied"]
    expected = {
        "event": "applied",
        "severity": "info",
        "from_revision": "r1",
        "to_revision": "r3",
        "target_revision": "r3",
        "applied": ["r2", "r3"],
        "reason": "applied",
        "time": "2026-09-21T14:13:20.500Z",
        "text": "[schemad] applied: 2 revision(s), database at r3 (target head) — "
        f"{DATABASE}, pod apps/app-schema-x7k2p",
    }
    actual = {key: document[key] for key in expected}
    actual["applied"] = [step["revision"] for step in document["applied"]]
    assert expected == actual


def test_failed_document_names_the_error_and_severity() -> None:
    """A failed event is an error with the masked message and the outcome as reason."""
    document = documents()["failed"]
    assert (document["severity"], document["reason"], document["error"]) == (
        "error",
        "failed",
        FAILED.error,
    )


def test_recovered_document_text_says_where_the_database_is() -> None:
    """recovered reads as one short line, whatever the recovering pass did."""
    assert documents()["recovered"]["text"] == (
        f"[schemad] recovered: database at r3 (target head) — {DATABASE}, pod apps/app-schema-x7k2p"
    )


def test_event_documents_are_masked() -> None:
    """A secret in an error message is masked in every field of the document."""
    leaky = result(Outcome.FAILED, error="password authentication failed for Pa55w0rd")
    document = pass_event(
        "failed",
        leaky,
        database=DATABASE,
        identity=IDENTITY,
        at=0.0,
        redact=lambda text: text.replace("Pa55w0rd", "***"),
    )
    assert "Pa55w0rd" not in str(document)
