"""structlog configuration, and the bridge that routes stdlib logging
(Alembic, SQLAlchemy, APScheduler) through the same pipeline.

One JSON object per line when not on a terminal (containers), readable
console lines on a terminal. Every event, ours or a library's, goes through
a processor that masks the database password.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.types import EventDict, Processor

from schemad.masking import Secrets

_NO_SECRETS = Secrets()
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Redactor:
    """Mask every form of every secret in an event, nested values included.

    It runs after exceptions are rendered (a driver's error message or a
    rendered traceback can quote the URL) and before the renderer. As the
    final step of the formatter, it masks the rendered line too: a value
    JSON could only render through ``repr`` is covered there.
    """

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    def __call__(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        if not self.secrets:
            return event
        masked: EventDict = self.secrets.redact_deep(dict(event))
        return masked

    def line(self, _logger: Any, _name: str, rendered: Any) -> Any:
        if self.secrets and isinstance(rendered, str):
            return self.secrets.redact(rendered)
        return rendered


# The redactor of the configured pipeline, for add_secrets().
_REDACTORS: list[_Redactor] = []


def configure(
    log_format: str = "auto",
    level: str = "info",
    *,
    secrets: Secrets = _NO_SECRETS,
    stream: IO[str] | None = None,
) -> None:
    """Configure structlog and the stdlib root logger once, from the CLI.

    Exceptions are rendered without local variables (a frame's locals hold
    connection arguments, passwords among them), then masked.
    """
    out = stream if stream is not None else sys.stderr
    as_json = log_format == "json" or (log_format == "auto" and not _is_tty(out))
    shared: list[Processor] = [
        _target_name_first,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    exceptions: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        exceptions = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(out), exception_formatter=structlog.dev.plain_traceback
        )
        exceptions = structlog.processors.format_exc_info
    redactor = _Redactor(secrets)
    _REDACTORS[:] = [redactor]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            redactor,
            renderer,
            redactor.line,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # SQLAlchemy echoes SQL and APScheduler announces every job run at INFO;
    # both are only worth reading when debugging.
    quiet = level != "debug"
    # Alembic 1.20 announces each of its plugins at INFO on import.
    for chatty in ("sqlalchemy.engine", "apscheduler", "alembic.runtime.plugins"):
        logging.getLogger(chatty).setLevel(logging.WARNING if quiet else logging.DEBUG)
    # "skipped: maximum number of running instances reached" (the scheduler's
    # logger) and "run time ... was missed" (the executors') are the intended
    # coalescing of a late pass, not warnings; real job errors stay visible.
    for coalescing in ("apscheduler.scheduler", "apscheduler.executors"):
        logging.getLogger(coalescing).setLevel(logging.ERROR if quiet else logging.DEBUG)


def add_secrets(secrets: Secrets) -> None:
    """Mask these secrets too from now on (fan-out: the targets' URLs, known
    only once the targets are listed)."""
    for redactor in _REDACTORS:
        redactor.secrets = redactor.secrets.merged(secrets)


def _target_name_first(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """In a fan-out pass ``target`` is the target's name (bound around the pass);
    the target revision an event names moves to ``target_revision``."""
    if "target" in event and "target" in structlog.contextvars.get_contextvars():
        event["target_revision"] = event.pop("target")
    return event


@contextmanager
def preserved() -> Iterator[None]:
    """Keep schemad's logging while a project's env.py runs.

    Every Alembic template calls ``fileConfig(config.config_file_name)``,
    which would replace the handlers (Alembic's own lines would no longer be
    JSON) and disable every logger that exists (schemad's own events would
    be lost until it ended). While env.py runs, ``logging.config.fileConfig``
    does nothing; afterwards, whatever env.py changed by other means is put
    back.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = {
        name: logger.disabled
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    file_config = logging.config.fileConfig
    logging.config.fileConfig = _ignored_file_config
    try:
        yield
    finally:
        logging.config.fileConfig = file_config
        root.handlers = handlers
        root.setLevel(level)
        for name, logger in logging.Logger.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.disabled = disabled.get(name, False)


def _ignored_file_config(fname: Any, *_args: Any, **_kwargs: Any) -> None:
    get_logger("schemad.env").debug("env_logging_ignored", config_file=str(fname))


def get_logger(name: str = "schemad") -> Any:
    return structlog.stdlib.get_logger(name)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
