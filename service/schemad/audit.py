"""Pure reasoning over the audit history: tampered files, newer revisions.

Standard library only, like the planner: the history rows and checksums come
in as plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from schemad.model import NewerRevision, Tampered


@dataclass(frozen=True)
class AppliedRecord:
    """The last time the history saw a revision applied, as plain data."""

    revision: str
    parents: tuple[str, ...]
    applied_at: str | None
    applied_by: str | None
    image: str | None


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


def audit_document(
    tampered: Sequence[Tampered], newer: Sequence[NewerRevision]
) -> dict[str, list[dict[str, str | None]]]:
    """Tampered files and newer revisions as JSON-able data."""
    return {
        "tampered": [
            {
                "revision": t.revision,
                "recorded_checksum": t.recorded_checksum,
                "current_checksum": t.current_checksum,
            }
            for t in tampered
        ],
        "newer_than_image": [
            {
                "revision": n.revision,
                "applied_at": n.applied_at,
                "applied_by": n.applied_by,
                "image": n.image,
            }
            for n in newer
        ],
    }
