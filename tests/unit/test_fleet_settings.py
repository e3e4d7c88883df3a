"""Fan-out settings and the targets file: defaults, validation, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemad.errors import ConfigError
from schemad.fleet import CONNECTIONS_PER_PASS, Fleet, read_targets_file
from schemad.settings import Settings, load_settings
from schemad.targets import parse_rows


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("SCHEMAD_") or key == "JOB_COMPLETION_INDEX":
            monkeypatch.delenv(key)


def loaded(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_fan_out_defaults() -> None:
    """Unset, a run is the one database: no fan-out, one shard, budget 1, 10 connections."""
    settings = load_settings()
    assert not settings.fan_out
    expected = (0, 1, 1, 10, 100, None)
    actual = (
        settings.shard_index,
        settings.shard_count,
        settings.max_failures,
        settings.max_connections,
        settings.target_series_limit,
        settings.canary,
    )
    assert expected == actual
    assert settings.worker_count() == (os.cpu_count() or 1)


def test_shard_index_comes_from_the_indexed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Indexed Job's JOB_COMPLETION_INDEX is the shard index unless one is set."""
    assert loaded(monkeypatch, JOB_COMPLETION_INDEX="2", SCHEMAD_SHARD_COUNT="3").shard_index == 2
    settings = loaded(monkeypatch, SCHEMAD_SHARD_INDEX="1")
    assert settings.shard_index == 1


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SCHEMAD_SHARD_INDEX": "3", "SCHEMAD_SHARD_COUNT": "3"}, "must be from 0 to 2"),
        ({"JOB_COMPLETION_INDEX": "1"}, "must be from 0 to 0"),
        ({"SCHEMAD_SHARD_COUNT": "0"}, "SCHEMAD_SHARD_COUNT='0'"),
        ({"SCHEMAD_SHARD_INDEX": "-1"}, "SCHEMAD_SHARD_INDEX='-1'"),
        ({"SCHEMAD_CONCURRENCY": "0"}, "SCHEMAD_CONCURRENCY='0'"),
        ({"SCHEMAD_MAX_FAILURES": "-1"}, "SCHEMAD_MAX_FAILURES='-1'"),
        ({"SCHEMAD_MAX_CONNECTIONS": "0"}, "SCHEMAD_MAX_CONNECTIONS='0'"),
        ({"SCHEMAD_CANARY": "a,,b"}, "a count (e.g. 2) or target names"),
        ({"SCHEMAD_TARGETS_QUERY": "select 1", "SCHEMAD_TARGETS_FILE": "/t.yaml"}, "not both"),
    ],
)
def test_bad_fan_out_settings_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    """Each bad value stops the command with one line naming the variable."""
    with pytest.raises(ConfigError) as caught:
        loaded(monkeypatch, **env)
    assert fragment in caught.value.message


def test_workers_are_bounded_by_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers: min(concurrency, max_connections // 3, targets needing work), at least 1."""
    settings = loaded(monkeypatch, SCHEMAD_CONCURRENCY="8", SCHEMAD_MAX_CONNECTIONS="10")
    fleet = Fleet(settings)
    assert CONNECTIONS_PER_PASS == 3
    assert (fleet.workers(100), fleet.workers(2), fleet.workers(0)) == (3, 2, 1)
    tight = Fleet(loaded(monkeypatch, SCHEMAD_MAX_CONNECTIONS="2"))
    assert tight.workers(100) == 1


def test_yaml_and_json_files_give_the_same_targets(tmp_path: Path) -> None:
    """A YAML list and a JSON list of the same rows are the same targets."""
    yaml_file = tmp_path / "targets.yaml"
    yaml_file.write_text("- name: acme\n  tenant: acme\n  version_table_schema: acme\n")
    json_file = tmp_path / "targets.json"
    json_file.write_text('[{"name": "acme", "tenant": "acme", "version_table_schema": "acme"}]')
    source = "SCHEMAD_TARGETS_FILE=x"
    assert parse_rows(read_targets_file(yaml_file), source) == parse_rows(
        read_targets_file(json_file), source
    )


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.yaml", None, "cannot read the file"),
        ("latin1.yaml", "- name: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        ("broken.yaml", b"- name: [a\n", "not valid YAML"),
        ("broken.json", b"[{", "not valid JSON"),
    ],
)
def test_unreadable_targets_files_are_config_errors(
    tmp_path: Path, name: str, content: bytes | None, fragment: str
) -> None:
    """A missing, non-UTF-8 or unparsable file is one ConfigError naming the file."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        read_targets_file(path)
    assert fragment in caught.value.message
    assert f"SCHEMAD_TARGETS_FILE={path}" in caught.value.message


def test_tenants_in_one_database_have_their_own_lock() -> None:
    """The lock name (and PostgreSQL's advisory key) includes the version table's
    schema, so tenant schemas of one database never wait for each other."""
    from sqlalchemy.engine import make_url

    from schemad.database import Database
    from schemad.locks import PostgresLock

    url = make_url("postgresql+psycopg://app@db.example/app")
    a = Database(url, version_table_schema="tenant_a")
    b = Database(url, version_table_schema="tenant_b")
    try:
        assert a.lock_name() != b.lock_name()
        assert PostgresLock(a).key != PostgresLock(b).key
    finally:
        a.dispose()
        b.dispose()


def test_cli_routes_exactly_the_fan_out_commands() -> None:
    """cli.py names the fan-out commands without importing them (the single-database
    path never loads fleet code); the names match the commands fleet_commands.py has."""
    from schemad import cli, fleet_commands

    assert set(fleet_commands.COMMANDS) == cli.FLEET_COMMANDS
