"""Webhook delivery against a real HTTP server on loopback: retries, bounds,
no secret in the logs, and what the daemon sends pass after pass."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from schemad.drift import Difference, DriftReport
from schemad.masking import Secrets
from schemad.metrics import Metrics
from schemad.model import AppliedStep, Direction, Outcome, Plan, PlanKind, Result, Step
from schemad.reconciler import Reconciler
from schemad.scheduler import Daemon
from schemad.settings import IdentitySettings, Settings
from schemad.webhook import Notifier, WebhookSender
from support.receiver import TOKEN, Receiver, closed_port, event_schema, receiving

TIMEOUT_SECONDS = 0.5
# Generous for a loaded 2-core machine; waits return as soon as they are met.
WAIT_SECONDS = 20.0
DOCUMENT = {"event": "failed", "text": "[schemad] failed: boom"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(key)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


class Outcomes:
    """Collects the sender's delivery outcomes and lets a test wait for them."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, outcome: str) -> None:
        with self._changed:
            self.seen.append(outcome)
            self._changed.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.seen) >= count, WAIT_SECONDS), self.seen
            return list(self.seen)


def sender(url: str, outcomes: Outcomes, **kwargs: Any) -> WebhookSender:
    """A sender with a short timeout and no backoff pauses, reporting to ``outcomes``."""
    made = WebhookSender(
        url,
        timeout_seconds=kwargs.pop("timeout_seconds", TIMEOUT_SECONDS),
        redact=Secrets.of_webhook(url).redact,
        sleep=kwargs.pop("sleep", lambda _seconds: None),
        **kwargs,
    )
    made.listeners.append(outcomes)
    return made


def test_the_document_is_posted_as_json(receiver: Receiver) -> None:
    """One POST to the URL's path, Content-Type application/json, body the document."""
    outcomes = Outcomes()
    sender(receiver.url, outcomes).send(DOCUMENT)
    [request] = receiver.wait_for(1, WAIT_SECONDS)
    expected = ("POST", f"/services/T000/B000/{TOKEN}", "application/json", DOCUMENT)
    assert expected == (request.method, request.path, request.content_type, request.document)
    assert outcomes.wait_for(1) == ["delivered"]


def test_a_500_is_retried_and_then_delivered() -> None:
    """Two 500 answers, then 200: three attempts, one delivery."""
    outcomes = Outcomes()
    with receiving(statuses=[500, 500]) as receiver:
        sender(receiver.url, outcomes).send(DOCUMENT)
        delivered = outcomes.wait_for(1)
    assert (delivered, len(receiver.requests)) == (["delivered"], 3)


def test_a_4xx_is_not_retried() -> None:
    """A 404 is the receiver's final word: one attempt, failed, logged with the status."""
    outcomes = Outcomes()
    with receiving(statuses=[404]) as receiver, capture_logs() as logged:
        sender(receiver.url, outcomes).send(DOCUMENT)
        failed = outcomes.wait_for(1)
    [event] = [e for e in logged if e["event"] == "webhook_failed"]
    expected = (["failed"], 1, "failed", "HTTP 404", 1)
    actual = (
        failed,
        len(receiver.requests),
        event["webhook_event"],
        event["error"],
        event["attempts"],
    )
    assert expected == actual


def test_a_500_every_time_fails_after_three_attempts() -> None:
    """A receiver that always answers 500 gets exactly three attempts."""
    outcomes = Outcomes()
    with receiving(statuses=[500] * 5) as receiver:
        sender(receiver.url, outcomes).send(DOCUMENT)
        failed = outcomes.wait_for(1)
    assert (failed, len(receiver.requests)) == (["failed"], 3)


def test_a_refusing_receiver_is_retried_with_backoff_then_given_up() -> None:
    """Connection refused: three attempts with the 0.5 s and 1 s pauses between them."""
    outcomes = Outcomes()
    pauses: list[float] = []
    url = f"http://127.0.0.1:{closed_port()}/hook"
    with capture_logs() as logged:
        sender(url, outcomes, sleep=pauses.append).send(DOCUMENT)
        failed = outcomes.wait_for(1)
    [event] = [e for e in logged if e["event"] == "webhook_failed"]
    assert (failed, pauses, event["attempts"], "ConnectionRefusedError" in event["error"]) == (
        ["failed"],
        [0.5, 1.0],
        3,
        True,
    )


def test_send_does_not_wait_for_the_receiver() -> None:
    """send() returns while a slow receiver still holds the request."""
    outcomes = Outcomes()
    with receiving(delay_seconds=30) as receiver:
        waiting = sender(receiver.url, outcomes, timeout_seconds=10)
        waiting.send(DOCUMENT)
        receiver.wait_for(1, WAIT_SECONDS)
        assert outcomes.seen == []
        waiting.close(timeout_seconds=0)  # the thread stops trying once the receiver is gone


def test_closing_waits_no_longer_than_the_delivery_bound() -> None:
    """A receiver that never answers in time: close() returns within timeout x 3 + backoff."""
    outcomes = Outcomes()
    with receiving(delay_seconds=60) as receiver:
        slow = sender(receiver.url, outcomes, sleep=time.sleep)
        slow.send(DOCUMENT)
        started = time.monotonic()
        finished = slow.close()
        took = time.monotonic() - started
    # The bound is 0.5 x 3 + 0.5 + 1 = 3 s; the 60 s answer is never waited for.
    assert (slow.bound_seconds, finished, took < slow.bound_seconds + 5) == (3.0, False, True)
    assert outcomes.wait_for(1)[0] == "failed"


def test_the_url_never_appears_in_the_logs(receiver: Receiver) -> None:
    """Neither a delivery (debug) nor a failure logs the URL or its token."""
    outcomes = Outcomes()
    refused = f"http://127.0.0.1:{closed_port()}/services/T000/B000/{TOKEN}"
    with capture_logs() as logged:
        sender(receiver.url, outcomes).send(DOCUMENT)
        sender(refused, outcomes).send(DOCUMENT)
        outcomes.wait_for(2)
    text = str(logged)
    assert (sorted(e["event"] for e in logged), TOKEN in text, "127.0.0.1" in text) == (
        ["webhook_delivered", "webhook_failed"],
        False,
        False,
    )


def test_without_a_url_nothing_is_sent(receiver: Receiver) -> None:
    """With SCHEMAD_WEBHOOK_URL unset the notifier is off."""
    settings = Settings(database_url="sqlite:///unused.db")
    notifier = Notifier.build(
        settings, database="sqlite:///unused.db", identity=IdentitySettings(), secrets=Secrets()
    )
    notifier.pass_finished(FAILED)
    notifier.close()
    assert (notifier.enabled, receiver.requests) == (False, [])


# -- the daemon --------------------------------------------------------------------------------


def result(outcome: Outcome, **fields: Any) -> Result:
    defaults: dict[str, Any] = {
        "run_id": "run1",
        "started_at": 1_790_000_000.0,
        "duration_seconds": 0.1,
        "target_spec": "head",
        "plan": Plan(PlanKind.UPGRADE, ("r1",), ("r2",), (Step("r2"),)),
        "heads_before": ("r1",),
        "heads_after": ("r1",),
    }
    return Result(outcome=outcome, **{**defaults, **fields})


FAILED = result(Outcome.FAILED, error="revision r2 failed: boom", failed_revision="r2")
IN_SYNC = result(
    Outcome.IN_SYNC,
    plan=Plan(PlanKind.IN_SYNC, ("r2",), ("r2",), schema_ready=True),
    heads_before=("r2",),
    heads_after=("r2",),
)
APPLIED = result(
    Outcome.APPLIED,
    heads_after=("r2",),
    applied=(AppliedStep("r2", "add index", Direction.UPGRADE, 0.02),),
)


class FakeReconciler:
    """Returns the given results in turn, and the given drift reports."""

    def __init__(self, *results: Result, reports: tuple[DriftReport, ...] = ()) -> None:
        self.results = list(results)
        self.reports = list(reports)

    def set_hooks(self, **_hooks: Any) -> None:
        pass

    def reconcile_once(self) -> Result:
        return self.results.pop(0)

    def check_drift(self) -> DriftReport:
        return self.reports.pop(0)


def daemon(fake: FakeReconciler, url: str, registry: CollectorRegistry, **values: Any) -> Daemon:
    settings = Settings(
        database_url="sqlite:///unused.db", interval_seconds=3600, webhook_url=url, **values
    )
    notifier = Notifier.build(
        settings,
        database="sqlite:///unused.db",
        identity=IdentitySettings(pod_name="schemad-0", pod_namespace="apps"),
        secrets=Secrets(),
    )
    return Daemon(
        settings,
        cast(Reconciler, fake),
        Metrics(registry),
        database_url="sqlite:///unused.db",
        notifier=notifier,
    )


def test_the_daemon_sends_a_repeated_failure_once_and_the_recovery_once(
    receiver: Receiver,
) -> None:
    """Failed x3, in sync x2: the receiver gets failed once, then recovered once."""
    registry = CollectorRegistry()
    fake = FakeReconciler(FAILED, FAILED, FAILED, IN_SYNC, IN_SYNC)
    subject = daemon(fake, receiver.url, registry, webhook_events="failed,recovered")
    for _ in range(5):
        subject.run_pass()
    subject.notifier.close()
    expected = (["failed", "recovered"], 2.0, 0.0)
    actual = (
        receiver.events(),
        registry.get_sample_value("schemad_webhook_deliveries_total", {"outcome": "delivered"}),
        registry.get_sample_value("schemad_webhook_deliveries_total", {"outcome": "failed"}),
    )
    assert expected == actual


def test_the_daemons_payloads_match_the_shipped_schema(receiver: Receiver) -> None:
    """Every document the daemon posts validates against docs/webhook-event.schema.json."""
    fake = FakeReconciler(
        FAILED,
        APPLIED,
        reports=(DriftReport(("r2",), (Difference("extra_table", "t", "absent", "present"),)),),
    )
    subject = daemon(
        fake, receiver.url, CollectorRegistry(), webhook_events="applied,failed,recovered,drift"
    )
    subject.run_pass()
    subject.run_pass()
    subject.run_drift_check()
    subject.notifier.close()
    requests = receiver.wait_for(4, WAIT_SECONDS)
    validator = Draft202012Validator(
        event_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [e.message for r in requests for e in validator.iter_errors(r.document)]
    expected = (["failed", "applied", "recovered", "drift"], [])
    assert expected == ([r.document["event"] for r in requests], errors)


def test_the_daemon_sends_the_same_drift_once(receiver: Receiver) -> None:
    """Three drift checks finding the same differences send one drift event."""
    same = DriftReport(("r2",), (Difference("extra_table", "t", "absent", "present"),))
    subject = daemon(FakeReconciler(reports=(same, same, same)), receiver.url, CollectorRegistry())
    for _ in range(3):
        subject.run_drift_check()
    subject.notifier.close()
    assert receiver.events() == ["drift"]


def test_failed_deliveries_are_counted() -> None:
    """A receiver that refuses: the daemon's failed counter goes up, the pass is unaffected."""
    registry = CollectorRegistry()
    url = f"http://127.0.0.1:{closed_port()}/hook"
    subject = daemon(FakeReconciler(FAILED), url, registry, webhook_timeout_seconds=TIMEOUT_SECONDS)
    ended = subject.run_pass()
    subject.notifier.close()
    assert (
        ended,
        registry.get_sample_value("schemad_webhook_deliveries_total", {"outcome": "failed"}),
    ) == (FAILED, 1.0)


def test_delivery_outcomes_exist_before_the_first_event() -> None:
    """Both labelled series of schemad_webhook_deliveries_total are created at start."""
    registry = CollectorRegistry()
    Metrics(registry)
    values = [
        registry.get_sample_value("schemad_webhook_deliveries_total", {"outcome": outcome})
        for outcome in ("delivered", "failed")
    ]
    assert values == [0.0, 0.0]
