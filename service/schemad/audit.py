"""Pure reasoning over the audit history: tampered files, newer revisions.

Standard library only, like the planner: the history rows and checksums come
in as plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from schemad.model import Direction, HistoryOutcome, NewerRevision, Tampered


@dataclass(frozen=True)
class AppliedRecord:
    """The last time the history saw a revision applied, as plain data."""

    revision: str
    parents: tuple[str, ...]
    applied_at: str | None
    applied_by: str | None
    image: str | None


class HistoryFacts(Protocol):
    """What the audit reads of one history row."""

    @property
    def revision(self) -> str: ...
    @property
    def parents(self) -> tuple[str, ...]: ...
    @property
    def direction(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def checksum(self) -> str | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def pod_name(self) -> str | None: ...
    @property
    def hostname(self) -> str | None: ...
    @property
    def image(self) -> str | None: ...


@dataclass(frozen=True)
class HistorySnapshot:
    """What one read of the history says, for one pass."""

    recorded: Mapping[str, str] = field(default_factory=dict)
    """Per revision, the checksum it was last applied or adopted with."""
    last_applied: Mapping[str, AppliedRecord] = field(default_factory=dict)
    """Per revision, the last time it was applied (who, when, parents)."""
    interrupted: frozenset[str] = frozenset()
    """Revisions whose last row says "started": cut off while being applied."""


def summarize(oldest_first: Iterable[HistoryFacts]) -> HistorySnapshot:
    """Reduce history rows, oldest first, to what the audit needs."""
    recorded: dict[str, str] = {}
    applied: dict[str, AppliedRecord] = {}
    last: dict[str, str] = {}
    for row in oldest_first:
        last[row.revision] = row.outcome
        if row.direction == Direction.DOWNGRADE and row.outcome == HistoryOutcome.APPLIED:
            recorded.pop(row.revision, None)
            continue
        if row.direction != Direction.UPGRADE or row.outcome not in (
            HistoryOutcome.APPLIED,
            HistoryOutcome.ADOPTED,
        ):
            continue
        if row.checksum:
            recorded[row.revision] = row.checksum
        if row.outcome == HistoryOutcome.APPLIED:
            applied[row.revision] = AppliedRecord(
                row.revision,
                row.parents,
                row.finished_at.isoformat() if row.finished_at else None,
                row.pod_name or row.hostname,
                row.image,
            )
    interrupted = frozenset(r for r, outcome in last.items() if outcome == HistoryOutcome.STARTED)
    return HistorySnapshot(recorded, applied, interrupted)


def find_tampered(
    applied: Iterable[str],
    recorded: Mapping[str, str],
    current: Mapping[str, str | None],
) -> tuple[Tampered, ...]:
    """Applied revisions whose file checksum differs from the recorded one.

    Revisions without a recorded checksum (applied before schemad kept
    history) are not tampered: they are adopted instead.
    """
    found = []
    for revision in sorted(applied):
        expected = recorded.get(revision)
        if expected is not None and current.get(revision) != expected:
            found.append(Tampered(revision, expected, current.get(revision)))
    return tuple(found)


def to_adopt(
    applied: Iterable[str],
    recorded: Mapping[str, str],
    current: Mapping[str, str | None],
) -> tuple[str, ...]:
    """Applied revisions with a file but no recorded checksum yet."""
    return tuple(sorted(r for r in applied if r not in recorded and current.get(r) is not None))


def newer_revisions(
    heads: Sequence[str],
    known: Mapping[str, object],
    last_applied: Mapping[str, AppliedRecord],
) -> tuple[tuple[NewerRevision, ...], tuple[str, ...]]:
    """Walk back from unknown heads through the history until known ground.

    Returns:
        The revisions newer than this image (newest first), and the known
        revisions where each walk ended (what a downgrade would go back to).
    """
    newer: list[NewerRevision] = []
    landed: list[str] = []
    for head in heads:
        revision: str | None = head
        seen: set[str] = set()
        while revision is not None and revision not in known and revision not in seen:
            seen.add(revision)
            record = last_applied.get(revision)
            if record is None:
                newer.append(NewerRevision(revision, None, None, None))
                revision = None
                break
            newer.append(
                NewerRevision(revision, record.applied_at, record.applied_by, record.image)
            )
            revision = record.parents[0] if record.parents else None
        if revision is not None and revision in known:
            landed.append(revision)
    return tuple(newer), tuple(dict.fromkeys(landed))


def explain_newer(newer: Sequence[NewerRevision], landed: Sequence[str]) -> str:
    """One sentence for the refusal message and `status`."""
    if not newer:
        return ""
    parts = []
    for item in newer:
        if item.applied_at is None:
            parts.append(f"{item.revision} (not in the history)")
            continue
        by = f" by {item.applied_by}" if item.applied_by else ""
        parts.append(f"{item.revision} applied {item.applied_at}{by}")
    text = "history: " + "; ".join(parts)
    images = sorted({item.image for item in newer if item.image})
    if landed:
        target = landed[0]
        with_image = f" with image {images[0]}" if images else " with the newer image"
        text += (
            f". To bring the database back to this image's {target}, run{with_image}: "
            f"SCHEMAD_TARGET_REVISION={target} SCHEMAD_ALLOW_DOWNGRADE=true schemad upgrade "
            f"(or `alembic downgrade {target}` there)"
        )
    return text
