"""Fan-out's pure core: target rows, shards, canaries and the failure budget."""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from schemad import targets
from schemad.errors import ConfigError
from schemad.targets import Rollout, Target, canaries, parse_rows, select_shard, shard_of

SOURCE = "SCHEMAD_TARGETS_FILE=/etc/targets.yaml"


def test_targets_module_imports_only_the_standard_library() -> None:
    """targets.py stays pure: the standard library and schemad.errors only."""
    tree = ast.parse(Path(targets.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported - {"__future__", "schemad"} <= set(sys.stdlib_module_names)


def test_a_row_becomes_a_target_with_its_other_columns_as_x_arguments() -> None:
    """name, url and version_table_schema have meanings; every other column is -x key=value."""
    rows = [{"name": "acme", "tenant": "acme", "version_table_schema": "acme", "dry": True}]
    assert parse_rows(rows, SOURCE) == (
        Target("acme", version_table_schema="acme", x_args=("tenant=acme", "dry=true")),
    )


def test_url_and_url_file_are_kept_and_the_url_is_not_in_the_repr() -> None:
    """A row's URL is kept as given but never shown by repr()."""
    (target,) = parse_rows([{"name": "a", "url": "postgresql://u:hunter22@h/a"}], SOURCE)
    assert target.url == "postgresql://u:hunter22@h/a"
    assert "hunter22" not in repr(target)


def test_null_columns_are_not_x_arguments() -> None:
    """A NULL column (a query's outer join) gives no -x argument."""
    assert parse_rows([{"name": "a", "tenant": None}], SOURCE)[0].x_args == ()


def test_integer_names_are_accepted_as_text() -> None:
    """`select id as name` works: the name is the id as text."""
    assert parse_rows([{"name": 42}], SOURCE)[0].name == "42"


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ({"name": "a"}, "expected a list of targets"),
        (None, "found nothing"),
        ("a,b", "found a text"),
        (["a"], "target 1: expected a mapping"),
        ([{"tenant": "a"}], "target 1: has no 'name'"),
        ([{"name": ""}], "target 1: has no 'name'"),
        ([{"name": "a b"}], "target 1: has no 'name'"),
        ([{"name": "a"}, {"name": "b", "version_table_schema": "x y"}], "target 2: 'b'"),
        ([{"name": "a", "url": ""}], "url must be a non-empty text"),
        ([{"name": "a", "url": "sqlite:///a", "url_file": "/f"}], "not both"),
        ([{"name": "a", "tags": ["x"]}], "must be a plain value"),
        ([{"name": "a"}, {"name": "b"}, {"name": "a"}], "used more than once: a"),
    ],
)
def test_bad_rows_are_one_config_error_naming_the_source(rows: object, fragment: str) -> None:
    """Bad input raises one ConfigError naming the variable, the row and the problem."""
    with pytest.raises(ConfigError) as caught:
        parse_rows(rows, SOURCE)
    assert fragment in caught.value.message
    assert caught.value.message.startswith(SOURCE)
    assert caught.value.variable == "SCHEMAD_TARGETS_FILE"


def test_a_secret_url_is_never_echoed_in_an_error() -> None:
    """An error about a row with a URL does not show the URL."""
    with pytest.raises(ConfigError) as caught:
        parse_rows([{"name": "a", "url": "mysql://u:hunter22@h/a", "url_file": "/x"}], SOURCE)
    assert "hunter22" not in caught.value.message


NAMES = [f"tenant_{i:03d}" for i in range(300)]


def test_a_name_always_lands_in_the_same_shard() -> None:
    """sha256 rendezvous: the same answer in every process (known values)."""
    assert [shard_of(name, 4) for name in NAMES[:8]] == [shard_of(name, 4) for name in NAMES[:8]]
    assert shard_of("anything", 1) == 0


def test_shards_partition_the_targets() -> None:
    """Every target is in exactly one of the shards, and every shard gets some."""
    listed = [Target(name) for name in NAMES]
    shares = [select_shard(listed, index, 3) for index in range(3)]
    assert sorted(t.name for share in shares for t in share) == sorted(NAMES)
    assert all(len(share) > 50 for share in shares)


def test_adding_a_target_moves_no_other() -> None:
    """A new name goes to one shard; every other keeps its shard."""
    before = {name: shard_of(name, 5) for name in NAMES}
    after = {name: shard_of(name, 5) for name in [*NAMES, "tenant_new"]}
    assert before == {name: after[name] for name in NAMES}


def test_one_more_shard_moves_only_a_share_of_the_targets() -> None:
    """Going from 4 to 5 shards moves about a fifth of the targets, only to the new shard."""
    moved = [name for name in NAMES if shard_of(name, 4) != shard_of(name, 5)]
    assert all(shard_of(name, 5) == 4 for name in moved)
    assert len(moved) < len(NAMES) / 3


def test_canaries_by_count_by_names_and_by_default() -> None:
    """A count takes the first names; names take those needing work; unset: one of several."""
    work = ["a", "b", "c"]
    assert canaries("2", work) == ("a", "b")
    assert canaries("c,zz", work) == ("c",)
    assert canaries(None, work) == ("a",)
    assert canaries(None, ["a"]) == ()
    assert canaries("0", work) == ()


def simulate(
    rollout: Rollout, outcomes: Mapping[str, bool], workers: int
) -> tuple[list[list[str]], tuple[str, ...]]:
    """Drive a rollout with fake outcomes: each round starts what it may, then the
    oldest running target finishes. Returns what ran beside what, and the skipped."""
    rounds: list[list[str]] = []
    order: list[str] = []
    while not rollout.done:
        while len(rollout.running) < workers and (name := rollout.next()) is not None:
            order.append(name)
        rounds.append(sorted(rollout.running))
        oldest = next(name for name in order if name in rollout.running)
        rollout.finished(oldest, ok=outcomes.get(oldest, True))
    return rounds, rollout.skipped()


def test_canaries_run_first_and_alone() -> None:
    """Nothing runs beside a canary, however many workers there are."""
    rounds, skipped = simulate(Rollout(["a", "b", "c", "d"], canary=["c"]), {}, workers=3)
    assert rounds[0] == ["c"]
    assert rounds[1] == ["a", "b", "d"]
    assert skipped == ()


def test_a_failed_canary_stops_the_rollout() -> None:
    """After a canary fails nothing else starts: the rest is skipped."""
    rollout = Rollout(["a", "b", "c"], canary=["a"], max_failures=0)
    rounds, skipped = simulate(rollout, {"a": False}, workers=2)
    assert rounds == [["a"]]
    assert skipped == ("b", "c")


def test_the_failure_budget_stops_new_starts_but_lets_running_ones_finish() -> None:
    """MAX_FAILURES=2: after the second failure nothing new starts; started ones finish.

    Two workers: t3 was already running when t2 failed, so it finishes (and fails too).
    """
    names = [f"t{i}" for i in range(10)]
    poisoned = {name: False for name in ["t1", "t2", "t3", "t4"]}
    rollout = Rollout(names, max_failures=2)
    _rounds, skipped = simulate(rollout, poisoned, workers=2)
    assert rollout.failed == ["t1", "t2", "t3"]
    assert skipped == ("t4", "t5", "t6", "t7", "t8", "t9")
    assert rollout.started == ["t0", "t1", "t2", "t3"]


def test_one_failure_does_not_stop_others_before_the_budget_is_spent() -> None:
    """With a budget of 3, two failures leave every other target to run."""
    rollout = Rollout(["a", "b", "c", "d"], max_failures=3)
    _rounds, skipped = simulate(rollout, {"a": False, "c": False}, workers=1)
    assert skipped == ()
    assert rollout.started == ["a", "b", "c", "d"]


def test_unlimited_budget_runs_everything() -> None:
    """MAX_FAILURES=0 never stops a rollout (but a failed canary does)."""
    rollout = Rollout(["a", "b", "c"], max_failures=0)
    _rounds, skipped = simulate(rollout, {"a": False, "b": False, "c": False}, workers=2)
    assert skipped == ()
