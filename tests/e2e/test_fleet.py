"""Fan-out end to end: the installed ``schemad`` over many targets, as processes.

PostgreSQL tenants are schemas of one database (listed by SCHEMAD_TARGETS_QUERY),
MariaDB tenants are databases, SQLite tenants are files (SCHEMAD_TARGETS_FILE).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from support.daemon import DaemonProcess, daemon_env
from support.databases import ledger_counts, version_rows
from support.processes import SCHEMAD, clean_env, events, json_lines, schemad
from support.tenants import (
    create_schemas,
    schema_ledger,
    schema_versions,
    server_databases,
    tenant_project,
)

pytestmark = pytest.mark.e2e
TENANT_QUERY = (
    "SELECT nspname AS name, nspname AS tenant, nspname AS version_table_schema "
    "FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY nspname"
)
PASSWORD = "Fl33t-Pa55word"


def file_env(
    project: Path, targets: list[dict[str, Any]], tmp_path: Path, **settings: str
) -> dict[str, str]:
    """The environment for a run over ``targets`` written to a JSON targets file."""
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(targets))
    defaults = {
        "database_url": f"sqlite:///{tmp_path / 'control.db'}",
        "script_location": str(project),
        "targets_file": str(path),
        "log_format": "json",
        "connect_timeout_seconds": "3",
    }
    return clean_env(**{**defaults, **settings})


def sqlite_targets(
    tmp_path: Path, names: list[str], **extra: dict[str, str]
) -> list[dict[str, Any]]:
    """One SQLite file per name; ``extra[name]`` adds columns (-x arguments)."""
    return [
        {"name": name, "url": f"sqlite:///{tmp_path / name}.db", **extra.get(name, {})}
        for name in names
    ]


def states(env: dict[str, str]) -> dict[str, str]:
    """Each target's state, as ``schemad status --json`` reports it."""
    done = schemad("status", "--json", env=env)
    return {row["name"]: row["state"] for row in json.loads(done.stdout)}


@pytest.mark.postgres
def test_tenant_schemas_are_migrated_and_a_second_run_only_reads_versions(
    postgres_url: str, tmp_path: Path
) -> None:
    """Every tenant schema the query lists reaches head, each revision once; the
    next run finds them at head by the batched read and runs no pass."""
    tenants = ["tenant_a", "tenant_b", "tenant_c"]
    create_schemas(postgres_url, tenants)
    project = tmp_path / "migrations"
    ids = tenant_project(project, 3)
    env = clean_env(
        database_url=postgres_url,
        script_location=str(project),
        targets_query=TENANT_QUERY,
        log_format="json",
    )
    first = schemad("upgrade", env=env)
    assert first.returncode == 0, first.stderr
    for tenant in tenants:
        assert schema_ledger(postgres_url, tenant) == ids
        assert schema_versions(postgres_url, tenant) == [ids[-1]]
    assert {e["target"] for e in events(first.stderr, "migration_applied")} == set(tenants)
    second = schemad("upgrade", env=env)
    assert second.returncode == 0, second.stderr
    (started,) = events(second.stderr, "fleet_started")
    assert started["needing_work"] == 0
    assert events(second.stderr, "reconcile_finished") == []
    assert states(env) == dict.fromkeys(tenants, "at_target")


def _race(env_of: Callable[[dict[str, str]], dict[str, str]]) -> list[str]:
    """Two `schemad upgrade` started together, one over every target, the other over
    shard 0 of 2; their outputs, after both exit 0."""
    racers = [
        subprocess.Popen(
            [str(SCHEMAD), "upgrade"],
            env=env_of(shard),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in ({"shard_count": "1"}, {"shard_count": "2", "shard_index": "0"})
    ]
    outputs = [racer.communicate(timeout=120)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    return outputs


@pytest.mark.postgres
@pytest.mark.slow
def test_racing_runs_with_different_shards_apply_each_revision_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two upgrades race over the same tenants (one takes all, the other shard 0 of 2):
    every tenant ends at head with each revision's ledger row written exactly once."""
    tenants = [f"tenant_{i}" for i in range(6)]
    create_schemas(postgres_url, tenants)
    project = tmp_path / "migrations"
    ids = tenant_project(project, 3)
    base = {
        "database_url": postgres_url,
        "script_location": str(project),
        "targets_query": TENANT_QUERY,
        "log_format": "json",
        "canary": "0",
        "concurrency": "2",
    }
    _race(lambda shard: clean_env(**base, **shard))
    for tenant in tenants:
        assert schema_ledger(postgres_url, tenant) == ids, tenant
        assert schema_versions(postgres_url, tenant) == [ids[-1]]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_racing_runs_over_databases_and_files_apply_each_revision_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same race over a targets file of MariaDB databases or SQLite files: every
    target at head, each revision's ledger row written exactly once."""
    project = tmp_path / "migrations"
    ids = tenant_project(project, 3)
    with ExitStack() as stack:
        if backend == "mariadb":
            admin = str(request.getfixturevalue("mariadb_url"))
            urls = stack.enter_context(server_databases(admin, 4))
        else:
            admin = f"sqlite:///{tmp_path / 'control.db'}"
            urls = [f"sqlite:///{tmp_path / f't{i}'}.db" for i in range(4)]
        targets = [{"name": f"t{i}", "url": url} for i, url in enumerate(urls)]
        _race(
            lambda shard: file_env(
                project,
                targets,
                tmp_path,
                database_url=admin,
                canary="0",
                concurrency="2",
                **shard,
            )
        )
        assert [ledger_counts(url) for url in urls] == [dict.fromkeys(ids, 1)] * 4
        assert [version_rows(url) for url in urls] == [[ids[-1]]] * 4


def test_a_poisoned_tenant_fails_alone_and_the_run_exits_5(tmp_path: Path) -> None:
    """A revision that fails for one tenant leaves it failed; the others reach head;
    the exit code is 5 and the message names the failed target."""
    project = tmp_path / "migrations"
    ids = tenant_project(project, 2)
    names = ["t1", "t2", "t3", "t4"]
    targets = sqlite_targets(tmp_path, names, t3={"poison": "1"})
    env = file_env(project, targets, tmp_path, canary="0", max_failures="0")
    done = schemad("upgrade", env=env)
    assert done.returncode == 5, done.stderr
    (finished,) = events(done.stderr, "fleet_finished")
    assert finished["detail"] == "1 of 4 target(s) are not at the target (1 failed): t3"
    for name in ["t1", "t2", "t4"]:
        assert version_rows(f"sqlite:///{tmp_path / name}.db") == [ids[-1]]
    # SQLite bootstraps an empty database in one transaction: the failure leaves it empty.
    assert version_rows(f"sqlite:///{tmp_path / 't3'}.db") == []
    assert states(env) == {"t1": "at_target", "t2": "at_target", "t3": "behind", "t4": "at_target"}


def test_a_failed_canary_stops_the_rollout_before_any_other_target(tmp_path: Path) -> None:
    """The canary goes first and alone; when it fails no other target is migrated
    and they are reported skipped."""
    project = tmp_path / "migrations"
    tenant_project(project, 2)
    names = ["t1", "t2", "t3"]
    targets = sqlite_targets(tmp_path, names, t2={"poison": "1"})
    env = file_env(project, targets, tmp_path, canary="t2", max_failures="0")
    done = schemad("upgrade", env=env)
    assert done.returncode == 5, done.stderr
    (finished,) = events(done.stderr, "fleet_finished")
    assert (finished["failed"], finished["skipped"]) == (1, 2)
    assert {e["target"] for e in events(done.stderr, "reconcile_finished")} == {"t2"}
    for name in ["t1", "t3"]:
        assert ledger_counts(f"sqlite:///{tmp_path / name}.db") == {}
        assert version_rows(f"sqlite:///{tmp_path / name}.db") == []


def test_the_failure_budget_stops_new_targets(tmp_path: Path) -> None:
    """MAX_FAILURES=2 with four poisoned tenants: at most 2 + (workers - 1) fail,
    the rest are skipped, and healthy ones that ran reached head."""
    project = tmp_path / "migrations"
    tenant_project(project, 2)
    names = [f"t{i}" for i in range(8)]
    poisoned = {name: {"poison": "1"} for name in ["t1", "t2", "t4", "t6"]}
    env = file_env(
        project,
        sqlite_targets(tmp_path, names, **poisoned),
        tmp_path,
        canary="0",
        max_failures="2",
        concurrency="2",
    )
    done = schemad("upgrade", env=env)
    assert done.returncode == 5, done.stderr
    (finished,) = events(done.stderr, "fleet_finished")
    assert 2 <= finished["failed"] <= 3
    assert finished["skipped"] >= 8 - 4 - 1
    ran = {e["target"]: e["outcome"] for e in events(done.stderr, "reconcile_finished")}
    assert all(ran[name] == "failed" for name in ran if name in poisoned)
    assert all(ran[name] == "applied" for name in ran if name not in poisoned)


def test_an_unreachable_target_is_unavailable_and_holds_no_one_back(tmp_path: Path) -> None:
    """A target on a closed port is reported unavailable (its password masked
    everywhere); the other targets still reach head."""
    project = tmp_path / "migrations"
    ids = tenant_project(project, 2)
    down = {"name": "down", "url": f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app"}
    targets = [down, *sqlite_targets(tmp_path, ["t1", "t2"])]
    env = file_env(project, targets, tmp_path)
    done = schemad("upgrade", env=env)
    assert done.returncode == 5, done.stderr
    for name in ["t1", "t2"]:
        assert version_rows(f"sqlite:///{tmp_path / name}.db") == [ids[-1]]
    status = schemad("status", "--json", env=env)
    assert status.returncode == 5
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["down"]["state"] == "unavailable"
    assert rows["down"]["database"] == "postgresql+psycopg://app:***@127.0.0.1:1/app"
    table = schemad("status", env=env)
    for text in (
        done.stdout,
        done.stderr,
        status.stdout,
        status.stderr,
        table.stdout,
        table.stderr,
    ):
        assert PASSWORD not in text


@pytest.mark.mariadb
def test_mariadb_databases_are_migrated_and_read_in_one_batch(
    mariadb_url: str, tmp_path: Path
) -> None:
    """Three MariaDB databases reach head; the next run reads all three version
    tables at once (no pass) and status reports them at the target."""
    project = tmp_path / "migrations"
    ids = tenant_project(project, 2)
    with server_databases(mariadb_url, 3) as urls:
        targets = [{"name": f"db{i}", "url": url} for i, url in enumerate(urls)]
        env = file_env(project, targets, tmp_path, database_url=mariadb_url)
        first = schemad("upgrade", env=env)
        assert first.returncode == 0, first.stderr
        assert [version_rows(url) for url in urls] == [[ids[-1]]] * 3
        second = schemad("upgrade", env=env)
        (started,) = events(second.stderr, "fleet_started")
        assert started["needing_work"] == 0
        assert states(env) == {"db0": "at_target", "db1": "at_target", "db2": "at_target"}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read the file"),
        (b'{"name": "a"}', "expected a list of targets"),
        (b'[{"tenant": "a"}]', "target 1: has no 'name'"),
        (b'[{"name": "a"}, {"name": "a"}]', "used more than once: a"),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_a_bad_targets_file_is_exit_78_without_a_traceback(
    tmp_path: Path, content: bytes | None, fragment: str
) -> None:
    """A missing or malformed targets file ends every command with one clear line, exit 78."""
    project = tmp_path / "migrations"
    tenant_project(project, 1)
    env = file_env(project, [], tmp_path)
    path = Path(env["SCHEMAD_TARGETS_FILE"])
    path.unlink()
    if content is not None:
        path.write_bytes(content)
    for command in ("upgrade", "status"):
        done = schemad(command, env=env)
        assert done.returncode == 78, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = [e for e in json_lines(done.stderr) if e.get("event") == "config_invalid"]
        assert fragment in line["error"]


@pytest.mark.postgres
def test_a_failing_targets_query_is_exit_78(postgres_url: str, tmp_path: Path) -> None:
    """A query the database rejects is a configuration error naming the variable."""
    project = tmp_path / "migrations"
    tenant_project(project, 1)
    env = clean_env(
        database_url=postgres_url,
        script_location=str(project),
        targets_query="SELECT nope FROM nowhere",
        log_format="json",
    )
    done = schemad("upgrade", env=env)
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = events(done.stderr, "config_invalid")
    assert "SCHEMAD_TARGETS_QUERY failed" in line["error"]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons started by a test, killed afterwards whatever happened."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.mark.postgres
@pytest.mark.slow
def test_the_daemon_migrates_a_tenant_that_appears_on_its_next_pass(
    postgres_url: str, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """`schemad run` lists the targets at every pass: a schema created while it
    runs is migrated on the next pass; /status, /readyz and the metrics say so."""
    create_schemas(postgres_url, ["tenant_a", "tenant_b"])
    project = tmp_path / "migrations"
    ids = tenant_project(project, 2)
    env = daemon_env(postgres_url, project, targets_query=TENANT_QUERY)
    daemon = DaemonProcess(env)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_for_status("/readyz", 200, timeout=30)
    assert daemon.metric("schemad_targets", state="at_target") == 2
    create_schemas(postgres_url, ["tenant_c"])
    daemon.wait_until(
        lambda: daemon.metric("schemad_targets", state="at_target") == 3,
        timeout=30,
        message="three tenants at the target",
    )
    assert schema_ledger(postgres_url, "tenant_c") == ids
    status = daemon.status()
    assert status["targets"]["total"] == 3
    assert status["targets"]["states"]["at_target"] == 3
    page = daemon.get("/status?limit=1").json()["targets"]
    assert (len(page["items"]), page["truncated"]) == (1, True)
    assert daemon.get("/status?state=failed").json()["targets"]["items"] == []
    assert daemon.get("/status?limit=0").status_code == 400
    assert daemon.metric("schemad_target_not_at_target", target="tenant_c", state="behind") is None
    daemon.send_signal()
    assert daemon.wait_exit(timeout=20) == 0


def test_the_daemon_reports_a_failing_tenant_in_metrics_and_status(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    """A poisoned tenant: /readyz is 503, schemad_target_not_at_target names it,
    /status?state=failed lists it, and no password reaches any of them."""
    project = tmp_path / "migrations"
    tenant_project(project, 2)
    targets = sqlite_targets(tmp_path, ["t1", "t2"], t2={"poison": "1"})
    down = {"name": "down", "url": f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:1/app"}
    path = tmp_path / "targets.json"
    path.write_text(json.dumps([*targets, down]))
    env = daemon_env(
        f"sqlite:///{tmp_path / 'control.db'}",
        project,
        targets_file=str(path),
        canary="0",
        max_failures="0",
    )
    daemon = DaemonProcess(env)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_until(
        lambda: daemon.metric("schemad_target_not_at_target", target="t2", state="failed"),
        timeout=30,
        message="t2 reported failed",
    )
    assert daemon.metric("schemad_target_not_at_target", target="down", state="unavailable") == 1
    assert daemon.metric("schemad_targets", state="at_target") == 1
    assert daemon.get("/readyz").status_code == 503
    failed = daemon.get("/status?state=failed").json()["targets"]["items"]
    assert [item["name"] for item in failed] == ["t2"]
    assert "poisoned" in failed[0]["error"]
    texts = [daemon.scrape(), daemon.get("/status").text, daemon.output()]
    assert all(PASSWORD not in text for text in texts)
    daemon.send_signal()
    assert daemon.wait_exit(timeout=20) == 0


def test_status_plan_and_wait_over_the_targets(tmp_path: Path) -> None:
    """Before the upgrade: status exits 3 (behind) and plan lists the pending
    revisions; wait gives up with 75; after it, status exits 0 and wait (all, or
    one --target) returns at once."""
    project = tmp_path / "migrations"
    ids = tenant_project(project, 2)
    env = file_env(project, sqlite_targets(tmp_path, ["t1", "t2"]), tmp_path)
    env["SCHEMAD_WAIT_TIMEOUT_SECONDS"] = "1"
    env["SCHEMAD_WAIT_INTERVAL_SECONDS"] = "0.2"
    before = schemad("status", env=env)
    assert before.returncode == 3, before.stderr
    assert before.stdout.splitlines()[0].split() == ["NAME", "CURRENT", "TARGET", "STATE", "ERROR"]
    plan = schemad("plan", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    assert [(row["name"], row["pending"]) for row in json.loads(plan.stdout)] == [
        ("t1", ids),
        ("t2", ids),
    ]
    assert schemad("wait", env=env).returncode == 75
    assert schemad("upgrade", env=env).returncode == 0
    assert schemad("status", env=env).returncode == 0
    assert schemad("wait", env=env).returncode == 0
    assert schemad("wait", "--target", "t2", env=env).returncode == 0
    unknown = schemad("wait", "--target", "nope", env=env)
    assert unknown.returncode == 78
    assert "--target nope: no such target" in unknown.stderr


@pytest.mark.postgres
def test_a_password_in_a_target_url_never_leaves_the_process(
    postgres_url: str, tmp_path: Path
) -> None:
    """Tenants reached through a URL with a password (trust auth ignores it): the
    password is in no log line (workers' included), no output and no status."""
    from sqlalchemy.engine import make_url

    create_schemas(postgres_url, ["tenant_a", "tenant_b", "tenant_c"])
    project = tmp_path / "migrations"
    tenant_project(project, 2)
    secret_url = make_url(postgres_url).set(password=PASSWORD).render_as_string(False)
    targets = [
        {"name": name, "url": secret_url, "tenant": name, "version_table_schema": name}
        for name in ["tenant_a", "tenant_b", "tenant_c"]
    ]
    env = file_env(project, targets, tmp_path, concurrency="2", canary="0")
    done = schemad("upgrade", env=env)
    assert done.returncode == 0, done.stderr
    status = schemad("status", "--json", env=env)
    table = schemad("status", env=env)
    assert {row["state"] for row in json.loads(status.stdout)} == {"at_target"}
    for text in (done.stdout, done.stderr, status.stdout, status.stderr, table.stdout):
        assert PASSWORD not in text
    assert "***" in json.loads(status.stdout)[0]["database"]
