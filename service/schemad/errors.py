"""The exception tree; every error a user can cause maps to one exit code.

::

    SchemadError                  base; never raised directly
    ├── ConfigError               settings missing or invalid           exit 78
    ├── ScriptError               migration files missing or broken     exit 66
    ├── DatabaseUnavailableError  connect, ping or version read failed  exit 69
    ├── LockTimeoutError          another instance holds the lock       exit 75
    ├── WaitTimeoutError          `wait` gave up before the target      exit 75
    ├── PlanRejectedError         policy refused the plan               exit 65
    └── MigrationFailedError      a revision raised while applying      exit 70

Library exceptions (SQLAlchemy, Alembic, pydantic) are translated into these
at the edges with ``raise ... from``; nothing above the edges sees them.
Messages say what was expected, what was found and what to do, and never
contain a password.
"""

from __future__ import annotations


class SchemadError(Exception):
    """Base of every error schemad reports to a user."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(SchemadError):
    """A setting is missing or invalid; nothing was touched."""

    exit_code = 78

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class ScriptError(SchemadError):
    """The migration scripts cannot be loaded (missing, broken, cyclic)."""

    exit_code = 66


class DatabaseUnavailableError(SchemadError):
    """The database could not be reached or its version table not read."""

    exit_code = 69


class LockTimeoutError(SchemadError):
    """The migration lock stayed held by another instance past the bound."""

    exit_code = 75

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class WaitTimeoutError(SchemadError):
    """`schemad wait` timed out before the database reached the target."""

    exit_code = 75


class PlanRejectedError(SchemadError):
    """The planner refused to move the database toward the target."""

    exit_code = 65

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MigrationFailedError(SchemadError):
    """A revision raised while it was being applied."""

    exit_code = 70

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
