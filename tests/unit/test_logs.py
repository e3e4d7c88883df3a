"""The log pipeline: tracebacks without frame locals, every secret masked after rendering."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from schemad import logs
from schemad.masking import Secrets

PASSWORD = "Log-S3cret!@:/%9"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logs configured as in the daemon, written to a buffer; reset afterwards."""
    out = io.StringIO()
    yield out
    logging.getLogger().handlers = []


def connect(password: str) -> None:
    """Stands for a driver: the password is a local variable of the failing frame."""
    raise ConnectionError(f"cannot connect to db:{quote(password, safe='')}@host")


def failing_call() -> None:
    try:
        connect(PASSWORD)
    except ConnectionError:
        logs.get_logger("schemad.test").exception("job_failed")
        logging.getLogger("apscheduler.executors.default").exception("Job raised an exception")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_traceback_shows_no_locals_and_no_secret(stream: io.StringIO, log_format: str) -> None:
    """Exceptions (ours and a library's) are rendered without locals and masked after rendering."""
    logs.configure(log_format, "info", secrets=Secrets.of([PASSWORD]), stream=stream)
    failing_call()
    text = stream.getvalue()
    found = [form for form in Secrets.of([PASSWORD]).forms if form in text]
    expected = ([], False, True)
    assert expected == (
        found,
        "'password'" in text or '"locals"' in text,
        "ConnectionError" in text,
    )


def test_json_lines_stay_json_when_masked(stream: io.StringIO) -> None:
    """Masking happens before rendering, so every line is still one JSON object."""
    logs.configure("json", "info", secrets=Secrets.of([PASSWORD]), stream=stream)
    logs.get_logger("schemad.test").info("quoted", detail=f"url db:{PASSWORD}@h", items=[PASSWORD])
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["detail"], event["items"]) == ("url db:***@h", ["***"])
