"""The exception tree. Each error names its outcome; ``cli`` alone maps
outcomes to exit codes.

::

    SchemadError                  base; never raised directly        outcome
    ├── ConfigError               settings missing or invalid           config_error
    ├── ScriptError               migration files missing or broken     script_error
    ├── DatabaseUnavailableError  connect, ping or version read failed  unavailable
    │   └── DriftPermissionError  may not create a drift scratch database
    ├── LockTimeoutError          another instance holds the lock       lock_timeout
    ├── WaitTimeoutError          `wait` gave up before the target      wait_timeout
    ├── PlanRejectedError         policy refused the plan               refused
    └── MigrationFailedError      a revision raised while applying      failed

    LockNotNeeded                 not an error: while a pass waited for the lock,
                                  the holder did the work it wanted the lock for

Library exceptions (SQLAlchemy, Alembic, pydantic) are translated into these
at the edges with ``raise ... from``; nothing above the edges sees them.
Messages say what was expected, what was found and what to do, and never
contain a password.
"""

from __future__ import annotations

from typing import ClassVar


class SchemadError(Exception):
    """Base of every error schemad reports to a user."""

    outcome: ClassVar[str] = "internal_error"
    """How a command or pass ends with this error; a pass outcome where one exists."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(SchemadError):
    """A setting is missing or invalid; nothing was touched."""

    outcome = "config_error"

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class ScriptError(SchemadError):
    """The migration scripts cannot be loaded (missing, broken, cyclic)."""

    outcome = "script_error"


class DatabaseUnavailableError(SchemadError):
    """The database could not be reached or its version table not read."""

    outcome = "unavailable"


class DriftPermissionError(DatabaseUnavailableError):
    """The user may not create the scratch database drift checks need."""


class LockTimeoutError(SchemadError):
    """The migration lock stayed held by another instance past the bound."""

    outcome = "lock_timeout"

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class WaitTimeoutError(SchemadError):
    """`schemad wait` timed out before the database reached the target."""

    outcome = "wait_timeout"


class PlanRejectedError(SchemadError):
    """The planner refused to move the database toward the target."""

    outcome = "refused"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MigrationFailedError(SchemadError):
    """A revision raised while it was being applied."""

    outcome = "failed"

    def __init__(
        self,
        message: str,
        *,
        revision: str | None,
        direction: str | None = None,
        duration_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.revision = revision
        self.direction = direction
        self.duration_seconds = duration_seconds


class LockNotNeeded(Exception):
    """While we waited, the lock holder did the work we wanted the lock for."""

    def __init__(self, waited_seconds: float) -> None:
        super().__init__(f"not needed after {waited_seconds:.3f}s")
        self.waited_seconds = waited_seconds


def first_line(exc: BaseException, *, with_type: bool = True) -> str:
    """``Type: first line`` of an error, a driver's own error where there is one.

    SQLAlchemy appends the statement and its parameters to a driver error's
    text; the driver's first line is what a reader needs (and never carries
    bound parameters). Callers mask the result before it leaves the process.
    """
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    text = lines[0].strip() if lines else ""
    name = type(orig).__name__
    if not with_type:
        return text or name
    return f"{name}: {text}" if text else name
