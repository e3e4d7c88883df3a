"""PURE: the targets of a fan-out run, which of them a shard takes, and the
order a rollout starts them in.

Standard library only. Rows come in as plain mappings (from the targets
query or the targets file; reading them is :mod:`schemad.fleet`'s job) and
leave as frozen :class:`Target` values; bad rows raise one
:class:`~schemad.errors.ConfigError` naming the row and what to do.

A rollout (:class:`Rollout`) decides what starts next from what has
finished: canaries first, one at a time and alone; after a canary fails
nothing else starts; after ``max_failures`` failed targets no new target
starts (running ones finish); what never started is skipped.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schemad.errors import ConfigError

# Columns with a meaning of their own; every other column is an -x argument.
NAME, URL, URL_FILE, SCHEMA = "name", "url", "url_file", "version_table_schema"
_RESERVED = frozenset({NAME, URL, URL_FILE, SCHEMA})
NAME_MAX_CHARS = 255
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_X_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# Named in a message when rows are described: enough to find the rest.
FIRST_FEW = 5


@dataclass(frozen=True)
class Target:
    """One database (or tenant schema) a run keeps at the target revision.

    ``url`` and ``url_file`` are None when the target lives on the control
    database (SCHEMAD_DATABASE_URL). ``url`` is a secret: never shown.
    """

    name: str
    url: str | None = field(default=None, repr=False)
    url_file: str | None = None
    version_table_schema: str | None = None
    x_args: tuple[str, ...] = ()


class State(enum.StrEnum):
    """Where one target ended up after a run; a small fixed set (a metric label)."""

    AT_TARGET = "at_target"
    BEHIND = "behind"
    FAILED = "failed"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    SKIPPED = "skipped"
    """Not started: a canary failed or the failure budget was spent."""


def parse_rows(rows: object, source: str) -> tuple[Target, ...]:
    """The targets that ``rows`` (a list of mappings) describe, in their order.

    Args:
        rows: what the targets file holds, or the query's rows as mappings.
        source: the variable and value the rows came from, for messages
            (``SCHEMAD_TARGETS_FILE=/etc/targets.yaml``).

    Raises:
        ConfigError: not a list, a row that is not a mapping, a row without a
            name, a bad value, or a name used twice.
    """
    variable = source.split("=", 1)[0]
    if not isinstance(rows, list):
        raise ConfigError(
            f"{source}: expected a list of targets (each with at least a 'name'), found "
            f"{_kind(rows)}; e.g. [{{name: acme, tenant: acme, version_table_schema: acme}}]",
            variable=variable,
        )
    targets = tuple(_target(row, number, source) for number, row in enumerate(rows, start=1))
    _reject_duplicates(targets, source)
    return targets


def _target(row: object, number: int, source: str) -> Target:
    variable = source.split("=", 1)[0]

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{source}: target {number}: {problem}", variable=variable)

    if not isinstance(row, Mapping):
        raise bad(f"expected a mapping with at least a 'name', found {_kind(row)}")
    name = _name(row.get(NAME))
    if name is None:
        raise bad(
            "has no 'name' (a non-empty text of at most "
            f"{NAME_MAX_CHARS} characters); every target needs a unique name"
        )
    schema = row.get(SCHEMA)
    if schema is not None and not (isinstance(schema, str) and _IDENTIFIER.match(schema)):
        raise bad(f"'{name}': version_table_schema must be an identifier, found {schema!r}")
    url, url_file = row.get(URL), row.get(URL_FILE)
    for key, value in ((URL, url), (URL_FILE, url_file)):
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise bad(f"'{name}': {key} must be a non-empty text (the value is not shown)")
    if url is not None and url_file is not None:
        raise bad(f"'{name}': give url or url_file, not both")
    return Target(
        name=name,
        url=url.strip() if isinstance(url, str) else None,
        url_file=url_file.strip() if isinstance(url_file, str) else None,
        version_table_schema=schema,
        x_args=_x_args(row, name, bad),
    )


def _name(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    if not text or len(text) > NAME_MAX_CHARS or any(ch.isspace() for ch in text):
        return None
    return text


def _x_args(
    row: Mapping[object, object], name: str, bad: Callable[[str], ConfigError]
) -> tuple[str, ...]:
    arguments = []
    for key, value in row.items():
        if key in _RESERVED or value is None:
            continue
        if not isinstance(key, str) or not _X_KEY.match(key):
            raise bad(f"'{name}': column {key!r} cannot be an -x argument name")
        if isinstance(value, (Mapping, list, tuple)):
            raise bad(f"'{name}': column {key!r} must be a plain value, found {_kind(value)}")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        arguments.append(f"{key}={text}")
    return tuple(arguments)


def _reject_duplicates(targets: Sequence[Target], source: str) -> None:
    seen: set[str] = set()
    duplicates = []
    for target in targets:
        if target.name in seen and target.name not in duplicates:
            duplicates.append(target.name)
        seen.add(target.name)
    if duplicates:
        raise ConfigError(
            f"{source}: target names must be unique; used more than once: "
            f"{describe_names(duplicates)}",
            variable=source.split("=", 1)[0],
        )


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, str):
        return "a text"
    return f"a {type(value).__name__}"


def describe_names(names: Sequence[str], few: int = FIRST_FEW) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``."""
    shown = ", ".join(names[:few])
    more = len(names) - few
    return f"{shown} and {more} more" if more > 0 else shown


def shard_of(name: str, count: int) -> int:
    """The shard (0 .. count-1) a target belongs to: rendezvous hashing on sha256.

    Stable across processes and Python versions (never ``hash()``); a
    target's shard depends on its name alone, so adding or removing a target
    moves no other, and changing ``count`` moves only about 1/count of them.
    """
    if count <= 1:
        return 0
    return max(range(count), key=lambda shard: _weight(name, shard))


def _weight(name: str, shard: int) -> bytes:
    return hashlib.sha256(f"{shard}\x00{name}".encode()).digest()


def select_shard(targets: Iterable[Target], index: int, count: int) -> tuple[Target, ...]:
    """The targets shard ``index`` of ``count`` takes, in their order."""
    return tuple(target for target in targets if shard_of(target.name, count) == index)


def canaries(spec: str | None, needing_work: Sequence[str]) -> tuple[str, ...]:
    """The targets that go first, alone, among those needing work.

    ``spec`` is a count (the first names in order) or comma-separated names
    (those of them that need work); unset, one canary when several targets
    need work.
    """
    if spec is None:
        return tuple(needing_work[:1]) if len(needing_work) > 1 else ()
    if spec.isdigit():
        return tuple(needing_work[: int(spec)])
    wanted = {name.strip() for name in spec.split(",")}
    return tuple(name for name in needing_work if name in wanted)


@dataclass
class Rollout:
    """Which target starts next, from the outcomes so far (no I/O, no clock).

    The caller asks :meth:`next` while it has a free worker, calls
    :meth:`finished` for each target that ends, and stops when
    :attr:`done`. Canaries run one at a time with nothing beside them.
    """

    names: Sequence[str]
    canary: Sequence[str] = ()
    max_failures: int = 1
    """Failed targets after which no new target starts; 0: unlimited."""
    running: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canary_failed: bool = False
    halted: bool = False
    """A shutdown: nothing new starts."""

    def __post_init__(self) -> None:
        canary = [name for name in self.canary if name in self.names]
        rest = [name for name in self.names if name not in canary]
        self._queue = canary + rest
        self._canary = frozenset(canary)

    @property
    def stopped(self) -> bool:
        """No new target may start: a canary failed, or the budget is spent."""
        spent = self.max_failures > 0 and len(self.failed) >= self.max_failures
        return self.canary_failed or spent or self.halted

    @property
    def done(self) -> bool:
        """Nothing runs and nothing more will start."""
        return not self.running and (self.stopped or len(self.started) == len(self._queue))

    def next(self) -> str | None:
        """The target to start now, or None: wait for a running one, or done."""
        if self.stopped or len(self.started) == len(self._queue):
            return None
        candidate = self._queue[len(self.started)]
        canary_running = bool(self.running & self._canary)
        if canary_running or (candidate in self._canary and self.running):
            return None
        self.started.append(candidate)
        self.running.add(candidate)
        return candidate

    def finished(self, name: str, *, ok: bool) -> None:
        """Record how a started target ended (``ok``: not a failure)."""
        self.running.discard(name)
        if ok:
            return
        self.failed.append(name)
        if name in self._canary:
            self.canary_failed = True

    def halt(self) -> None:
        """Start nothing more (a shutdown); running targets finish."""
        self.halted = True

    def skipped(self) -> tuple[str, ...]:
        """The targets that never started."""
        return tuple(self._queue[len(self.started) :])
