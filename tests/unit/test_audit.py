"""The pure side of the audit: tampered files, adoption, newer revisions, drift, checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemad.audit import (
    AppliedRecord,
    explain_newer,
    find_tampered,
    newer_revisions,
    to_adopt,
)
from schemad.documents import audit_document
from schemad.drift import Difference, compare
from schemad.model import NewerRevision, Tampered
from schemad.revisions import file_checksum

SOURCE = '"""revision r0001"""\nrevision = "r0001"\n\n\ndef upgrade():\n    pass\n'


# -- find_tampered / to_adopt ---------------------------------------------------


def test_matching_checksums_are_not_tampered() -> None:
    """An applied revision whose file still has the recorded checksum is not reported."""
    assert find_tampered(["r1", "r2"], {"r1": "a", "r2": "b"}, {"r1": "a", "r2": "b"}) == ()


def test_changed_checksum_is_tampered_with_both_checksums() -> None:
    """A file whose checksum differs from the recorded one is reported with both."""
    found = find_tampered(["r1", "r2"], {"r1": "a", "r2": "b"}, {"r1": "a", "r2": "B"})

    assert found == (Tampered("r2", "b", "B"),)


def test_missing_file_of_recorded_revision_is_tampered() -> None:
    """A recorded revision whose file has no checksum any more is reported with None."""
    assert find_tampered(["r1"], {"r1": "a"}, {"r1": None}) == (Tampered("r1", "a", None),)


def test_revision_without_recorded_checksum_is_not_tampered() -> None:
    """A revision applied before schemad kept history is never an alarm."""
    assert find_tampered(["r1", "r2"], {"r1": "a"}, {"r1": "a", "r2": "zzz"}) == ()


def test_only_applied_revisions_are_checked() -> None:
    """A recorded revision that is no longer applied (downgraded) is not checked."""
    assert find_tampered(["r1"], {"r1": "a", "r2": "b"}, {"r1": "a", "r2": "changed"}) == ()


def test_tampered_revisions_come_sorted() -> None:
    """Tampered revisions are reported in a stable order."""
    found = find_tampered(["r3", "r1"], {"r1": "a", "r3": "c"}, {"r1": "x", "r3": "y"})

    assert [t.revision for t in found] == ["r1", "r3"]


def test_unrecorded_applied_revisions_are_adopted() -> None:
    """Applied revisions with a file and no recorded checksum are the ones to adopt."""
    adopt = to_adopt(["r3", "r1", "r2"], {"r1": "a"}, {"r1": "a", "r2": "b", "r3": "c"})

    assert adopt == ("r2", "r3")


def test_revision_without_a_file_is_not_adopted() -> None:
    """Nothing is adopted for an applied revision whose file is missing."""
    assert to_adopt(["r1"], {}, {"r1": None}) == ()


# -- newer_revisions / explain_newer -------------------------------------------


def _record(revision: str, parent: str | None, image: str | None = "app:2.0") -> AppliedRecord:
    parents = (parent,) if parent else ()
    applied_at = f"2026-01-0{revision[-1]}T10:00:00+00:00"
    return AppliedRecord(revision, parents, applied_at, "pod-b", image)


def test_newer_revisions_walk_back_to_known_ground() -> None:
    """From an unknown head, history is followed back to the first revision the image has."""
    known = {"r1": object(), "r2": object()}
    applied = {"r3": _record("r3", "r2"), "r4": _record("r4", "r3")}

    newer, landed = newer_revisions(["r4"], known, applied)

    assert [n.revision for n in newer] == ["r4", "r3"]
    assert newer[0] == NewerRevision("r4", "2026-01-04T10:00:00+00:00", "pod-b", "app:2.0")
    assert landed == ("r2",)


def test_newer_revision_missing_from_history_stops_the_walk() -> None:
    """A head the history never saw is reported without details and leads nowhere."""
    newer, landed = newer_revisions(["f00d"], {"r1": object()}, {})

    assert (newer, landed) == ((NewerRevision("f00d", None, None, None),), ())


def test_explain_newer_names_who_when_and_the_downgrade_command() -> None:
    """The explanation says who applied what and when, and how to go back, with which image."""
    newer, landed = newer_revisions(["r3"], {"r2": object()}, {"r3": _record("r3", "r2")})

    text = explain_newer(newer, landed)

    assert "r3 applied 2026-01-03T10:00:00+00:00 by pod-b" in text
    assert (
        "run with image app:2.0: SCHEMAD_TARGET_REVISION=r2 SCHEMAD_ALLOW_DOWNGRADE=true "
        "schemad upgrade" in text
    )
    assert "alembic downgrade r2" in text


def test_explain_newer_without_image_asks_for_the_newer_image() -> None:
    """Without a recorded image the explanation still gives the command."""
    record = _record("r3", "r2", image=None)
    text = explain_newer(*newer_revisions(["r3"], {"r2": object()}, {"r3": record}))

    assert "run with the newer image: SCHEMAD_TARGET_REVISION=r2" in text


def test_explain_newer_without_history_says_so() -> None:
    """A revision not in the history is named as such, with no downgrade command."""
    text = explain_newer(*newer_revisions(["f00d"], {"r1": object()}, {}))

    assert text == "history: f00d (not in the history)"


def test_explain_nothing_newer_is_empty() -> None:
    """Nothing newer than the image means nothing to explain."""
    assert explain_newer((), ()) == ""


def test_audit_document_lists_tampered_and_newer() -> None:
    """The JSON document carries both checksums and who applied newer revisions."""
    document = audit_document(
        (Tampered("r1", "aaa", None),), (NewerRevision("r3", "2026", "pod-b", "app:2.0"),)
    )

    assert document == {
        "tampered": [{"revision": "r1", "recorded_checksum": "aaa", "current_checksum": None}],
        "newer_than_image": [
            {"revision": "r3", "applied_at": "2026", "applied_by": "pod-b", "image": "app:2.0"}
        ],
    }


# -- drift.compare --------------------------------------------------------------


def _column(kind: str = "INTEGER", nullable: bool = True, default: str | None = None) -> Any:
    return {"type": kind, "nullable": nullable, "default": default}


def _items() -> dict[str, Any]:
    return {
        "columns": {"id": _column(nullable=False), "name": _column("VARCHAR(50)", False)},
        "primary_key": ("id",),
        "index": {"ix_items_name": "(name)"},
        "unique": {},
        "foreign_key": {},
    }


def _orders() -> dict[str, Any]:
    return {
        "columns": {"id": _column(nullable=False), "item_id": _column()},
        "primary_key": ("id",),
        "index": {},
        "unique": {"uq_orders_item": "(item_id)"},
        "foreign_key": {"fk_orders_item": "(item_id) -> items(id)"},
    }


def _schema() -> dict[str, Any]:
    return {"items": _items(), "orders": _orders()}


def test_identical_snapshots_have_no_drift() -> None:
    """Two equal schemas compare equal."""
    assert compare(_schema(), _schema()) == ()


def test_extra_column_is_drift() -> None:
    """A column added by hand is reported as an extra column."""
    live = _schema()
    live["items"]["columns"]["note"] = _column("TEXT")

    assert compare(_schema(), live) == (
        Difference("extra_column", "items.note", "absent", "present"),
    )


def test_missing_column_is_drift() -> None:
    """A column dropped by hand is reported as a missing column."""
    live = _schema()
    del live["orders"]["columns"]["item_id"]

    assert compare(_schema(), live) == (
        Difference("missing_column", "orders.item_id", "present", "absent"),
    )


def test_dropped_index_is_drift() -> None:
    """An index dropped by hand is reported with what was expected."""
    live = _schema()
    live["items"]["index"] = {}

    assert compare(_schema(), live) == (
        Difference("index", "items.ix_items_name", "(name)", "absent"),
    )


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("type", "BIGINT"), ("nullable", False), ("default", "'0'")],
)
def test_changed_column_attribute_is_drift(attribute: str, value: object) -> None:
    """A changed type, nullability or default is reported for that column."""
    live = _schema()
    live["orders"]["columns"]["item_id"][attribute] = value
    expected_value = _column()[attribute]

    assert compare(_schema(), live) == (
        Difference(f"column_{attribute}", "orders.item_id", str(expected_value), str(value)),
    )


def test_extra_and_missing_tables_are_drift() -> None:
    """A table created by hand and one dropped by hand are both reported."""
    live = {"items": _items(), "scratch": _items()}

    assert compare(_schema(), live) == (
        Difference("missing_table", "orders", "present", "absent"),
        Difference("extra_table", "scratch", "absent", "present"),
    )


def test_changed_primary_key_unique_and_foreign_key_are_drift() -> None:
    """Primary key, unique and foreign-key changes are each reported."""
    live = _schema()
    live["orders"]["primary_key"] = ("id", "item_id")
    live["orders"]["unique"] = {}
    live["orders"]["foreign_key"] = {"fk_orders_item": "(item_id) -> other(id)"}

    kinds = [d.kind for d in compare(_schema(), live)]

    assert kinds == ["primary_key", "unique", "foreign_key"]


def test_difference_describes_itself() -> None:
    """A difference reads as kind, object, expected and found."""
    difference = Difference("column_type", "items.qty", "INTEGER", "BIGINT")

    assert difference.describe() == "column_type items.qty: expected INTEGER, found BIGINT"


# -- file_checksum --------------------------------------------------------------


def _checksum(path: Path, text: str | bytes) -> str | None:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return file_checksum(path)


def test_crlf_and_lf_have_the_same_checksum(tmp_path: Path) -> None:
    """Line endings do not count."""
    lf = _checksum(tmp_path / "lf.py", SOURCE)
    crlf = _checksum(tmp_path / "crlf.py", SOURCE.replace("\n", "\r\n"))

    assert lf == crlf


def test_trailing_whitespace_does_not_count(tmp_path: Path) -> None:
    """Spaces and tabs at line ends and blank lines at the end of the file do not count."""
    plain = _checksum(tmp_path / "plain.py", SOURCE)
    padded = _checksum(tmp_path / "padded.py", SOURCE.replace("\n", "  \t\n") + "\n\n\n")

    assert plain == padded


def test_a_real_edit_changes_the_checksum(tmp_path: Path) -> None:
    """Changing code changes the checksum."""
    before = _checksum(tmp_path / "a.py", SOURCE)
    after = _checksum(tmp_path / "b.py", SOURCE.replace("pass", "op.drop_table('users')"))

    assert before != after


def test_indentation_change_is_a_real_edit(tmp_path: Path) -> None:
    """Leading whitespace is code in Python and counts."""
    before = _checksum(tmp_path / "a.py", SOURCE)
    after = _checksum(tmp_path / "b.py", SOURCE.replace("    pass", "        pass"))

    assert before != after


def test_checksum_is_sha256_hex(tmp_path: Path) -> None:
    """The checksum is 64 hex digits, as the history table stores it."""
    value = _checksum(tmp_path / "a.py", SOURCE)

    assert value is not None
    assert (len(value), set(value) <= set("0123456789abcdef")) == (64, True)


def test_missing_file_has_no_checksum(tmp_path: Path) -> None:
    """A file that cannot be read has no checksum, rather than an error."""
    assert file_checksum(tmp_path / "gone.py") is None
