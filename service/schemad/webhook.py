"""Webhooks: each event's JSON document POSTed to SCHEMAD_WEBHOOK_URL, off the
path of migrations.

A :class:`Notifier` turns passes and drift checks into events (which ones,
:class:`~schemad.notices.EventGate` decides) and hands their documents to a
:class:`WebhookSender`, whose one background thread posts them in order. A
delivery never blocks or fails a pass: each attempt is bounded by
SCHEMAD_WEBHOOK_TIMEOUT_SECONDS, an attempt that met a connection error, a
timeout or a 5xx answer is retried after a short backoff (three attempts in
all), a 4xx answer is not. One-shot commands wait for their event at exit at
most ``timeout x 3 + 1.5`` seconds. The URL is a secret: it is never logged.
"""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemad import __version__, logs
from schemad.masking import Secrets
from schemad.model import Result
from schemad.notices import EventGate, drift_event, pass_event
from schemad.settings import IdentitySettings, Settings

ATTEMPTS = 3
BACKOFF_SECONDS = (0.5, 1.0)
QUEUE_SIZE = 64
MAX_ANSWER_BYTES = 64 * 1024
DELIVERED, FAILED = "delivered", "failed"

Post = Callable[[str, bytes, float], int]
Listener = Callable[[str], None]


def post_json(url: str, body: bytes, timeout_seconds: float) -> int:
    """POST ``body`` as JSON and return the HTTP status; redirects are not followed.

    Raises:
        OSError: the connection failed, timed out, or the answer was not HTTP.
    """
    # Imported here: one-shot commands without a webhook do not pay for
    # urllib.request, http.client and ssl at start.
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"schemad/{__version__}"},
    )
    try:
        with _opener().open(request, timeout=timeout_seconds) as answer:
            answer.read(MAX_ANSWER_BYTES)
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc


@functools.cache
def _opener() -> Any:
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        """A redirect is an answer (a failed delivery), not a new place to POST to."""

        def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirects)


class WebhookSender:
    """Posts documents from a queue on one background thread, with retries."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float,
        redact: Callable[[str], str],
        post: Post = post_json,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = ATTEMPTS,
        backoff_seconds: Sequence[float] = BACKOFF_SECONDS,
    ) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.attempts = attempts
        self.backoff_seconds = tuple(backoff_seconds)
        self.listeners: list[Listener] = []
        self._redact = redact
        self._post = post
        self._sleep = sleep
        self._log = logs.get_logger("schemad.webhook")
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._changed = threading.Condition()
        self._pending: list[str] = []
        self._thread: threading.Thread | None = None
        self._abandoned = threading.Event()

    @property
    def bound_seconds(self) -> float:
        """The longest one event's delivery may take: every attempt and backoff."""
        return self.timeout_seconds * self.attempts + sum(self.backoff_seconds[: self.attempts - 1])

    def send(self, document: dict[str, Any]) -> None:
        """Queue ``document`` for delivery; never blocks."""
        event = str(document.get("event"))
        with self._changed:
            try:
                self._queue.put_nowait(document)
            except queue.Full:
                self._failed(event, "the delivery queue is full (the receiver is too slow)", 0)
                return
            self._pending.append(event)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="schemad-webhook", daemon=True
                )
                self._thread.start()

    def close(self, timeout_seconds: float | None = None) -> bool:
        """Wait for the queue to empty, at most ``timeout_seconds`` (default: the
        delivery bound); events still queued then are reported as failed.

        Returns:
            True when every queued event was dealt with in time.
        """
        wait = self.bound_seconds if timeout_seconds is None else timeout_seconds
        with self._changed:
            self._changed.wait_for(lambda: not self._pending, wait)
            left = list(self._pending)
        if left:
            # Reported here; the thread stops trying instead of reporting them again.
            self._abandoned.set()
        for event in left:
            self._failed(event, f"not delivered within {wait:g}s at exit", 0)
        return not left

    def _run(self) -> None:
        while True:
            document = self._queue.get()
            try:
                self._deliver(document)
            finally:
                with self._changed:
                    self._pending.remove(str(document.get("event")))
                    self._changed.notify_all()

    def _deliver(self, document: dict[str, Any]) -> None:
        event = str(document.get("event"))
        body = json.dumps(document).encode("utf-8")
        attempt, error = 0, ""
        for attempt in range(1, self.attempts + 1):
            if self._abandoned.is_set():
                return
            retry, error = self._attempt(body)
            if self._abandoned.is_set():
                return
            if not error:
                self._log.debug("webhook_delivered", webhook_event=event, attempts=attempt)
                self._tell(DELIVERED)
                return
            if not retry or attempt == self.attempts:
                break
            self._sleep(self.backoff_seconds[min(attempt, len(self.backoff_seconds)) - 1])
        self._failed(event, error, attempt)

    def _attempt(self, body: bytes) -> tuple[bool, str]:
        """(retry?, error) of one POST; no error when it was delivered."""
        try:
            status = self._post(self.url, body, self.timeout_seconds)
        except OSError as exc:  # refused, reset, unreachable, timed out
            return True, _describe(exc)
        except Exception as exc:  # a bug must not stop the thread: report it, do not retry
            return False, _describe(exc)
        if 200 <= status < 300:
            return False, ""
        return status >= 500, f"HTTP {status}"

    def _failed(self, event: str, error: str, attempts: int) -> None:
        self._log.warning(
            "webhook_failed", webhook_event=event, error=self._redact(error), attempts=attempts
        )
        self._tell(FAILED)

    def _tell(self, outcome: str) -> None:
        for listener in self.listeners:
            listener(outcome)


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket's error
    cause = reason if isinstance(reason, BaseException) else exc
    text = str(cause).strip() or str(reason or "")
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class Notifier:
    """Turns passes and drift checks into webhook events for a sender.

    Without a sender (no SCHEMAD_WEBHOOK_URL) it does nothing.
    """

    def __init__(
        self,
        sender: WebhookSender | None,
        *,
        events: Sequence[str] = (),
        database: str = "",
        identity: Mapping[str, str | None] | None = None,
        target_spec: str = "head",
        redact: Callable[[str], str] = lambda text: text,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sender = sender
        self.gate = EventGate(events)
        self._database = database
        self._identity = dict(identity or {})
        self._target_spec = target_spec
        self._redact = redact
        self._clock = clock
        self._lock = threading.Lock()
        self._log = logs.get_logger("schemad.webhook")

    @classmethod
    def build(
        cls, settings: Settings, *, database: str, identity: IdentitySettings, secrets: Secrets
    ) -> Notifier:
        """The notifier the settings ask for.

        Raises:
            ConfigError: SCHEMAD_WEBHOOK_URL_FILE cannot be read or holds no URL.
        """
        url = settings.webhook()
        if url is None:
            return cls(None)
        redact = (secrets | Secrets.of_webhook(url)).redact
        sender = WebhookSender(url, timeout_seconds=settings.webhook_timeout_seconds, redact=redact)
        return cls(
            sender,
            events=settings.webhook_event_names,
            database=database,
            identity=identity_document(identity),
            target_spec=settings.target_revision,
            redact=redact,
        )

    @property
    def enabled(self) -> bool:
        return self.sender is not None

    def observe(self, listener: Listener) -> None:
        """Call ``listener("delivered" | "failed")`` after each event's delivery."""
        if self.sender is not None:
            self.sender.listeners.append(listener)

    def pass_finished(self, result: Result) -> None:
        """Send the events this pass calls for (never blocks)."""
        if self.sender is None:
            return
        with self._lock:
            events = self.gate.after_pass(result)
        for event in events:
            self.sender.send(
                pass_event(
                    event,
                    result,
                    database=self._database,
                    identity=self._identity,
                    at=self._clock(),
                    redact=self._redact,
                )
            )

    def drift_checked(self, revisions: Sequence[str], differences: Sequence[str]) -> None:
        """Send ``drift`` when this check found differences not sent before."""
        if self.sender is None:
            return
        with self._lock:
            send = self.gate.after_drift(revisions, differences)
        if send:
            self.sender.send(
                drift_event(
                    revisions,
                    differences,
                    target_spec=self._target_spec,
                    database=self._database,
                    identity=self._identity,
                    at=self._clock(),
                    redact=self._redact,
                )
            )

    def close(self) -> None:
        """Wait, within the delivery bound, for queued events; give up on the rest."""
        if self.sender is not None:
            self.sender.close()


def identity_document(identity: IdentitySettings) -> dict[str, str | None]:
    """The deployment identity, as an event's ``identity`` names it."""
    return {
        "pod": identity.pod_name,
        "namespace": identity.pod_namespace,
        "node": identity.node_name,
        "image": identity.container_image,
        "chart": identity.helm_chart,
        "app_version": identity.app_version,
    }
