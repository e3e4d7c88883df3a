"""The planner, exhaustively, on hand-built graphs: no files, no database."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from schemad.model import (
    DbState,
    Graph,
    Plan,
    PlanKind,
    Policy,
    RefusalReason,
    Revision,
    Step,
    Target,
)
from schemad.planner import ancestors, make_plan

PACKAGE = Path(__file__).resolve().parents[2] / "service" / "schemad"
PURE_MODULES = (
    "model.py",
    "planner.py",
    "errors.py",
    "audit.py",
    "documents.py",
    "masking.py",
    "notices.py",
    "targets.py",
)
PURE_PACKAGE_IMPORTS = frozenset({"schemad.model", "schemad.errors"})


def graph(*revisions: tuple[str, tuple[str, ...]]) -> Graph:
    """Build a Graph from (id, parents) pairs listed base-first."""
    by_id = {rev: Revision(rev, parents, f"message {rev}") for rev, parents in revisions}
    parents = {parent for _rev, ps in revisions for parent in ps}
    heads = tuple(sorted(rev for rev in by_id if rev not in parents))
    return Graph(by_id, tuple(by_id), heads)


def steps(*revisions: str) -> tuple[Step, ...]:
    return tuple(Step(rev, f"message {rev}") for rev in revisions)


def at(*heads: str) -> DbState:
    return DbState(tuple(heads))


def target(spec: str, *revisions: str) -> Target:
    return Target(spec, tuple(revisions))


# a -> b -> c
LINEAR = graph(("a", ()), ("b", ("a",)), ("c", ("b",)))
# a -> b1, a -> b2: two heads
BRANCHED = graph(("a", ()), ("b1", ("a",)), ("b2", ("a",)))
# a -> b1, a -> b2, (b1, b2) -> m
MERGED = graph(("a", ()), ("b1", ("a",)), ("b2", ("a",)), ("m", ("b1", "b2")))
TWO_HEADS = Target("head", None, "multiple_heads", "b1, b2")
NO_SUCH = Target("zzz", None, "unknown_target", "No such revision or branch 'zzz'")
STRICT = Policy()
DOWNGRADES = Policy(allow_downgrade=True)
IGNORE_UNKNOWN = Policy(ignore_unknown_revisions=True)


def test_empty_database_upgrades_through_every_revision_base_first() -> None:
    """An empty database gets every revision of a linear history, oldest first."""
    plan = make_plan(LINEAR, at(), target("head", "c"), STRICT)
    assert (plan.kind, plan.steps) == (PlanKind.UPGRADE, steps("a", "b", "c"))


def test_upgrade_plan_records_current_and_target() -> None:
    """An upgrade plan says where the database is and where it goes."""
    plan = make_plan(LINEAR, at("a"), target("head", "c"), STRICT)
    assert (plan.current, plan.target) == (("a",), ("c",))


def test_upgrade_is_not_schema_ready() -> None:
    """A database behind the target is not ready for an app built for the target."""
    plan = make_plan(LINEAR, at("a"), target("head", "c"), STRICT)
    assert (plan.schema_ready, plan.has_work) == (False, True)


def test_partial_upgrade_applies_only_what_is_missing() -> None:
    """A database part way along gets only the revisions after its own."""
    plan = make_plan(LINEAR, at("a"), target("head", "c"), STRICT)
    assert plan.steps == steps("b", "c")


def test_pinned_target_stops_at_that_revision() -> None:
    """A target pinned to a middle revision applies nothing past it."""
    plan = make_plan(LINEAR, at(), target("b", "b"), STRICT)
    assert (plan.kind, plan.steps) == (PlanKind.UPGRADE, steps("a", "b"))


def test_upgrade_message_counts_the_steps() -> None:
    """The upgrade message says how many revisions are pending and the target."""
    plan = make_plan(LINEAR, at(), target("head", "c"), STRICT)
    assert plan.message == "3 revision(s) to apply to reach c"


def test_in_sync_when_database_is_at_the_target() -> None:
    """A database at the target needs nothing and is ready."""
    plan = make_plan(LINEAR, at("c"), target("head", "c"), STRICT)
    expected = Plan(
        PlanKind.IN_SYNC,
        ("c",),
        ("c",),
        message="database is at the target c",
        schema_ready=True,
    )
    assert plan == expected


def test_in_sync_has_no_work() -> None:
    """An in-sync plan has no steps and no work."""
    plan = make_plan(LINEAR, at("c"), target("head", "c"), STRICT)
    assert (plan.steps, plan.has_work) == ((), False)


def test_empty_database_with_target_base_is_in_sync() -> None:
    """Target 'base' on an empty database is already reached."""
    plan = make_plan(LINEAR, at(), target("base"), STRICT)
    assert (plan.kind, plan.schema_ready) == (PlanKind.IN_SYNC, True)


def test_in_sync_message_names_base_for_an_empty_target() -> None:
    """The in-sync message for target base says 'base (no revision)'."""
    plan = make_plan(LINEAR, at(), target("base"), STRICT)
    assert plan.message == "database is at the target base (no revision)"


def test_target_base_reverts_everything_when_allowed() -> None:
    """Target 'base' with downgrades allowed reverts every revision, newest first."""
    plan = make_plan(LINEAR, at("c"), target("base"), DOWNGRADES)
    assert (plan.kind, plan.steps) == (PlanKind.DOWNGRADE, steps("c", "b", "a"))


def test_target_base_is_refused_without_downgrades() -> None:
    """Target 'base' on a migrated database is a downgrade, refused by default."""
    plan = make_plan(LINEAR, at("c"), target("base"), STRICT)
    assert plan.reason == RefusalReason.DOWNGRADE_NOT_ALLOWED


def test_downgrade_allowed_reverts_newest_first() -> None:
    """With downgrades allowed, a database past a pinned target is reverted newest first."""
    plan = make_plan(LINEAR, at("c"), target("a", "a"), DOWNGRADES)
    assert (plan.kind, plan.steps) == (PlanKind.DOWNGRADE, steps("c", "b"))


def test_downgrade_allowed_is_not_schema_ready() -> None:
    """A database that must be reverted is not yet ready for the target's app."""
    plan = make_plan(LINEAR, at("c"), target("a", "a"), DOWNGRADES)
    assert (plan.schema_ready, plan.has_work) == (False, True)


def test_downgrade_refused_by_default() -> None:
    """A database past a pinned target is refused when downgrades are not allowed."""
    plan = make_plan(LINEAR, at("c"), target("a", "a"), STRICT)
    assert (plan.kind, plan.reason) == (PlanKind.REFUSED, RefusalReason.DOWNGRADE_NOT_ALLOWED)


def test_downgrade_refused_is_schema_ready() -> None:
    """A database past the target still serves the target's app, so it is ready."""
    plan = make_plan(LINEAR, at("c"), target("a", "a"), STRICT)
    assert (plan.schema_ready, plan.has_work) == (True, False)


def test_downgrade_refused_lists_what_would_be_reverted() -> None:
    """The refusal lists the revisions a downgrade would revert and the setting to change."""
    plan = make_plan(LINEAR, at("c"), target("a", "a"), STRICT)
    assert "(c, b)" in plan.message
    assert "SCHEMAD_ALLOW_DOWNGRADE=true" in plan.message


def test_unknown_revision_in_database_is_refused() -> None:
    """A database at a revision the scripts lack is refused."""
    plan = make_plan(LINEAR, at("x9"), target("head", "c"), STRICT)
    assert (plan.kind, plan.reason) == (PlanKind.REFUSED, RefusalReason.UNKNOWN_REVISION)


def test_unknown_revision_refusal_is_not_schema_ready() -> None:
    """An unknown revision is not taken as ready unless the policy says so."""
    plan = make_plan(LINEAR, at("x9"), target("head", "c"), STRICT)
    assert (plan.schema_ready, plan.steps) == (False, ())


def test_unknown_revision_refusal_names_the_revision_and_the_way_out() -> None:
    """The refusal names the unknown revision and SCHEMAD_ON_UNKNOWN_REVISION."""
    plan = make_plan(LINEAR, at("x9"), target("head", "c"), STRICT)
    assert "revision x9," in plan.message
    assert "SCHEMAD_ON_UNKNOWN_REVISION=ignore" in plan.message


def test_unknown_revision_ignored_is_ahead() -> None:
    """With unknown revisions ignored, the database is taken to be ahead and left alone."""
    plan = make_plan(LINEAR, at("x9"), target("head", "c"), IGNORE_UNKNOWN)
    assert (plan.kind, plan.reason, plan.steps) == (PlanKind.AHEAD, None, ())


def test_unknown_revision_ignored_is_schema_ready() -> None:
    """A database ahead of this image is ready for this image's app."""
    plan = make_plan(LINEAR, at("x9"), target("head", "c"), IGNORE_UNKNOWN)
    assert (plan.schema_ready, plan.has_work) == (True, False)


def test_unknown_revision_is_checked_before_the_target() -> None:
    """An unknown database revision is reported even when the target is unknown too."""
    plan = make_plan(LINEAR, at("x9"), NO_SUCH, STRICT)
    assert (plan.reason, plan.target) == (RefusalReason.UNKNOWN_REVISION, ())


def test_one_unknown_row_among_known_ones_is_refused() -> None:
    """One unknown row is enough to refuse, even beside a known one."""
    plan = make_plan(BRANCHED, at("b1", "x9"), target("heads", "b1", "b2"), STRICT)
    assert plan.reason == RefusalReason.UNKNOWN_REVISION


def test_unknown_target_is_refused() -> None:
    """A target the scripts do not contain is refused."""
    plan = make_plan(LINEAR, at("a"), NO_SUCH, STRICT)
    assert (
        plan.kind,
        plan.reason,
        plan.target,
    ) == (PlanKind.REFUSED, RefusalReason.UNKNOWN_TARGET, ())


def test_unknown_target_message_names_the_spec_and_the_setting() -> None:
    """The refusal names the target and SCHEMAD_TARGET_REVISION."""
    plan = make_plan(LINEAR, at("a"), NO_SUCH, STRICT)
    assert "target revision 'zzz' is not in the migrations" in plan.message
    assert "SCHEMAD_TARGET_REVISION" in plan.message


def test_two_heads_with_target_head_is_refused() -> None:
    """Target 'head' on a graph with two heads is refused as multiple_heads."""
    plan = make_plan(BRANCHED, at(), TWO_HEADS, STRICT)
    assert (plan.kind, plan.reason) == (PlanKind.REFUSED, RefusalReason.MULTIPLE_HEADS)


def test_two_heads_refusal_suggests_merge_or_heads() -> None:
    """The multiple-heads refusal lists the heads and suggests a merge or 'heads'."""
    plan = make_plan(BRANCHED, at(), TWO_HEADS, STRICT)
    assert "several heads (b1, b2)" in plan.message
    assert "alembic merge heads" in plan.message
    assert "'heads'" in plan.message


def test_two_heads_refusal_is_not_schema_ready() -> None:
    """An unresolvable target never counts as ready."""
    plan = make_plan(BRANCHED, at("b1"), TWO_HEADS, STRICT)
    assert False is plan.schema_ready


def test_target_heads_upgrades_every_branch() -> None:
    """Target 'heads' on an empty database applies both branches after their common base."""
    plan = make_plan(BRANCHED, at(), target("heads", "b1", "b2"), STRICT)
    assert (plan.kind, plan.steps) == (PlanKind.UPGRADE, steps("a", "b1", "b2"))


def test_target_heads_completes_a_missing_branch() -> None:
    """A database on one branch gets only the other branch for target 'heads'."""
    plan = make_plan(BRANCHED, at("b1"), target("heads", "b1", "b2"), STRICT)
    assert plan.steps == steps("b2")


def test_target_heads_in_sync_with_both_branches() -> None:
    """A database at both heads is in sync with target 'heads', in any row order."""
    plan = make_plan(BRANCHED, at("b2", "b1"), target("heads", "b1", "b2"), STRICT)
    assert plan.kind == PlanKind.IN_SYNC


def test_branch_target_upgrades_only_that_branch() -> None:
    """A target on one branch applies that branch and not the other."""
    plan = make_plan(BRANCHED, at(), target("b1", "b1"), STRICT)
    assert plan.steps == steps("a", "b1")


def test_diverged_branch_is_refused() -> None:
    """A database on one branch with the target on the other is refused as diverged."""
    plan = make_plan(BRANCHED, at("b1"), target("b2", "b2"), STRICT)
    assert (plan.kind, plan.reason) == (PlanKind.REFUSED, RefusalReason.DIVERGED)


def test_diverged_is_refused_even_with_downgrades_allowed() -> None:
    """Allowing downgrades does not turn a branch switch into a plan."""
    plan = make_plan(BRANCHED, at("b1"), target("b2", "b2"), DOWNGRADES)
    assert plan.reason == RefusalReason.DIVERGED


def test_diverged_message_names_both_sides() -> None:
    """The diverged refusal names the database's branch and the target's."""
    plan = make_plan(BRANCHED, at("b1"), target("b2", "b2"), STRICT)
    assert "database is at b1, which is on another branch" in plan.message
    assert "target 'b2' (b2)" in plan.message


def test_merge_applies_the_merge_revision_over_both_parents() -> None:
    """A database at both parents gets just the merge revision."""
    plan = make_plan(MERGED, at("b1", "b2"), target("head", "m"), STRICT)
    assert (plan.kind, plan.steps) == (PlanKind.UPGRADE, steps("m"))


def test_merge_applies_the_missing_parent_before_the_merge() -> None:
    """A database on one parent gets the other parent, then the merge."""
    plan = make_plan(MERGED, at("b1"), target("head", "m"), STRICT)
    assert plan.steps == steps("b2", "m")


def test_merge_from_empty_applies_everything_in_graph_order() -> None:
    """An empty database gets the whole merged graph, base first, merge last."""
    plan = make_plan(MERGED, at(), target("head", "m"), STRICT)
    assert plan.steps == steps("a", "b1", "b2", "m")


def test_merged_database_is_in_sync_at_the_merge() -> None:
    """A database at the merge revision is in sync with head."""
    plan = make_plan(MERGED, at("m"), target("head", "m"), STRICT)
    assert plan.kind == PlanKind.IN_SYNC


def test_downgrade_below_a_merge_reverts_the_merge_first() -> None:
    """Reverting below a merge to one parent reverts the merge and the other branch."""
    plan = make_plan(MERGED, at("m"), target("b1", "b1"), DOWNGRADES)
    assert (plan.kind, plan.steps) == (PlanKind.DOWNGRADE, steps("m", "b2"))


def test_version_table_row_that_is_an_ancestor_of_another_is_inconsistent() -> None:
    """Rows where one is an ancestor of another are refused as an inconsistent table."""
    plan = make_plan(LINEAR, at("a", "c"), target("head", "c"), STRICT)
    assert (
        plan.kind,
        plan.reason,
    ) == (PlanKind.REFUSED, RefusalReason.INCONSISTENT_VERSION_TABLE)


def test_inconsistent_version_table_names_the_redundant_row() -> None:
    """The refusal names the redundant row and suggests `alembic stamp`."""
    plan = make_plan(LINEAR, at("a", "c"), target("head", "c"), STRICT)
    assert "lists a, c, but a is also an ancestor" in plan.message
    assert "alembic stamp" in plan.message


def test_duplicated_version_table_row_is_inconsistent() -> None:
    """The same revision twice in the version table is refused as inconsistent."""
    plan = make_plan(LINEAR, at("c", "c"), target("head", "c"), STRICT)
    assert plan.reason == RefusalReason.INCONSISTENT_VERSION_TABLE


def test_inconsistent_version_table_is_not_schema_ready() -> None:
    """An inconsistent version table is never taken as ready."""
    plan = make_plan(LINEAR, at("b", "b"), target("head", "c"), STRICT)
    assert (plan.schema_ready, plan.steps) == (False, ())


def test_ancestor_row_across_a_merge_is_inconsistent() -> None:
    """A parent of a merge listed beside the merge itself is inconsistent."""
    plan = make_plan(MERGED, at("b1", "m"), target("head", "m"), STRICT)
    assert plan.reason == RefusalReason.INCONSISTENT_VERSION_TABLE


def test_two_branch_rows_are_consistent() -> None:
    """Rows on two separate branches are a normal multi-head state."""
    plan = make_plan(BRANCHED, at("b1", "b2"), target("heads", "b1", "b2"), STRICT)
    assert None is plan.reason


def test_ancestors_includes_the_revisions_and_everything_below() -> None:
    """ancestors() returns the given revisions and all they descend from."""
    assert ancestors(MERGED, ["m"]) == frozenset({"a", "b1", "b2", "m"})


def test_ancestors_of_nothing_is_empty() -> None:
    """ancestors() of no revisions is the empty set (the base)."""
    assert ancestors(LINEAR, []) == frozenset()


def test_planning_does_not_mutate_its_inputs() -> None:
    """make_plan leaves the graph and state as they were."""
    state = at("a")
    before = (dict(LINEAR.revisions), LINEAR.order, LINEAR.heads, state.heads)
    make_plan(LINEAR, state, target("head", "c"), STRICT)
    assert before == (dict(LINEAR.revisions), LINEAR.order, LINEAR.heads, state.heads)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.add(f"<relative>.{node.module or ''}")
            elif node.module:
                found.add(node.module)
    return found


def _is_allowed(module: str) -> bool:
    top = module.split(".")[0]
    return module in PURE_PACKAGE_IMPORTS or top in sys.stdlib_module_names or top == "__future__"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_only_the_standard_library(module: str) -> None:
    """The pure core imports nothing but the standard library and other pure modules."""
    imports = _imports(PACKAGE / module)
    assert sorted(name for name in imports if not _is_allowed(name)) == []


def test_tampered_revision_blocks_an_upgrade_when_policy_says_block() -> None:
    """With block_on_tamper, pending work is refused while an applied file changed."""
    plan = make_plan(LINEAR, at("a"), target("head", "c"), Policy(block_on_tamper=True), ["a"])
    assert (plan.kind, plan.reason) == (PlanKind.REFUSED, RefusalReason.TAMPERED)


def test_tampered_revision_only_warns_by_default() -> None:
    """Without block_on_tamper, a tampered file does not stop the upgrade."""
    plan = make_plan(LINEAR, at("a"), target("head", "c"), STRICT, tampered=["a"])
    assert (plan.kind, plan.steps) == (PlanKind.UPGRADE, steps("b", "c"))


def test_interrupted_pending_revision_is_refused_with_recovery_advice() -> None:
    """A revision cut off half-way (non-transactional DDL) is not silently re-run."""
    plan = make_plan(LINEAR, at("a"), target("head", "c"), STRICT, interrupted={"b"})
    expected = (PlanKind.REFUSED, RefusalReason.INTERRUPTED_REVISION, True, True)
    actual = (
        plan.kind,
        plan.reason,
        "alembic stamp b" in plan.message,
        "SCHEMAD_RETRY_INTERRUPTED=b" in plan.message,
    )
    assert actual == expected


def test_interrupted_revision_already_applied_is_ignored() -> None:
    """A "started" mark for a revision the version table already has blocks nothing."""
    plan = make_plan(LINEAR, at("b"), target("head", "c"), STRICT, interrupted={"b"})
    assert (plan.kind, plan.steps) == (PlanKind.UPGRADE, steps("c"))
