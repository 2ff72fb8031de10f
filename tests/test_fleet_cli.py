"""``--databases`` on the command line: one line per tenant as it finishes, a summary, the
fleet's exit codes, ``--json`` keyed by database, shards, canaries and Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest
from children import write_migrations
from support import child_env, make_tenants, wait_for

from analytiq_migrations import Migrator
from analytiq_migrations.cli import main
from analytiq_migrations.runkit import new_run


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line in-process: exit code, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_up_with_one_failing_tenant_and_continue_on_error(
        capsys: pytest.CaptureFixture[str], client: Any, mongo_uri: str,
        fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 4, on_hold=(1,))
    bystander = f"{tenant_prefix}other"
    client[bystander].users.insert_one({"n": -1})
    flags = ["--uri", mongo_uri, "--migrations", str(fleet_project)]
    code, out, _ = cli(capsys, "up", *flags, "--databases", f"{tenant_prefix}t*",
                       "--continue-on-error", "--concurrency", "2")
    assert code == 1
    lines = out.splitlines()
    assert sorted(line.split(":")[0] for line in lines[:4]) == names
    assert f"{names[1]}: FAILED: MigrationFailedError" in out
    assert "up on 4 database(s): 3 at version 2, 1 failed" in out
    assert f"failed: {names[1]}: MigrationFailedError" in out and "tenant on hold" in out
    assert client[bystander].list_collection_names() == ["users"]
    pattern = ["--databases", f"{tenant_prefix}t*"]
    code, out, _ = cli(capsys, "status", *flags, *pattern, "--check")
    assert code == 4 and f"unhealthy: {names[1]}" in out  # its failed attempt needs a look
    code, out, _ = cli(capsys, "validate", *flags, *pattern, "--json")
    assert code == 4 and json.loads(out)["summary"]["unhealthy"] == [names[1]]

    client[names[1]].hold.delete_many({})
    code, out, err = cli(capsys, "up", *flags, "--databases", f"{tenant_prefix}t*", "-v")
    assert code == 0
    assert f"{names[1]}: version 1 -> 2 (2 applied)" in out
    assert f"{names[1]}: Migration 2 (Every user is on the free plan" in err  # its log lines
    assert out.count("nothing to do, at version 2") == 3


def test_status_databases_json_and_check(
        capsys: pytest.CaptureFixture[str], client: Any, mongo_uri: str,
        fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 3)
    Migrator(client, fleet_project, database=names[0]).upgrade()
    flags = ["--uri", mongo_uri, "--migrations", str(fleet_project),
             "--databases", f"{tenant_prefix}*"]
    code, out, _ = cli(capsys, "status", *flags, "--json", "--check")
    assert code == 6
    document = json.loads(out)
    assert sorted(document["databases"]) == names
    first = document["databases"][names[0]]
    assert first["version"] == 2 and first["pending"] == [] and first["healthy"] is True
    assert [m["status"] for m in first["migrations"]] == ["applied", "applied"]
    assert document["databases"][names[1]]["pending"] == [1, 2]
    summary = document["summary"]
    assert summary["pending"] == names[1:] and summary["unhealthy"] == []
    assert summary["at_version"] == {"0": 2, "2": 1} and summary["exit_code"] == 0

    assert cli(capsys, "up", *flags, "-q")[0] == 0
    code, out, _ = cli(capsys, "status", *flags, "--check")
    assert code == 0 and "status on 3 database(s): 3 at version 2" in out
    code, out, _ = cli(capsys, "current", *flags, "--json")
    assert {n: d["current_version"] for n, d in json.loads(out)["databases"].items()} == \
        {n: 2 for n in names}


def test_canary_failure_stops_the_rest_on_the_command_line(
        capsys: pytest.CaptureFixture[str], client: Any, mongo_uri: str,
        fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 5, on_hold=(0,))
    code, out, _ = cli(capsys, "up", "--uri", mongo_uri, "--migrations", str(fleet_project),
                       "--databases", f"{tenant_prefix}*", "--canary", "1",
                       "--continue-on-error", "--json")
    assert code == 1
    summary = json.loads(out)["summary"]
    assert list(summary["failed"]) == [names[0]]
    assert summary["not_started"] == names[1:]
    assert all(Migrator(client, fleet_project, database=n).current_version() == 0
               for n in names[1:])


def test_two_shards_on_two_hosts_cover_the_fleet_once(
        capsys: pytest.CaptureFixture[str], client: Any, mongo_uri: str,
        fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 10)
    seen: List[List[str]] = []
    for shard in ("1/2", "2/2"):
        code, out, _ = cli(capsys, "up", "--uri", mongo_uri, "--migrations",
                           str(fleet_project), "--databases", f"{tenant_prefix}*",
                           "--shard", shard, "--json")
        assert code == 0
        seen.append(sorted(json.loads(out)["databases"]))
    assert sorted(seen[0] + seen[1]) == names and seen[0] and seen[1]


def test_a_module_function_names_the_databases(
        capsys: pytest.CaptureFixture[str], client: Any, mongo_uri: str,
        fleet_project: Path, tenant_prefix: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tenants_of_test.py").write_text(
        f"def names():\n    return ['{tenant_prefix}x', '{tenant_prefix}y']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = cli(capsys, "plan", "--uri", mongo_uri, "--migrations", str(fleet_project),
                       "--databases", "@tenants_of_test:names")
    assert code == 0
    assert f"{tenant_prefix}x: up from 0 to 2: 1, 2" in out


def test_a_busy_tenant_exits_3_and_the_others_reach_head(
        capsys: pytest.CaptureFixture[str], client: Any, mongo_uri: str,
        fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 3)
    holder = Migrator(client, fleet_project, database=names[1])
    with holder.kit.locked(new_run()):
        code, out, _ = cli(capsys, "up", "--uri", mongo_uri, "--migrations",
                           str(fleet_project), "--databases", f"{tenant_prefix}*",
                           "--lock-wait", "1")
    assert code == 3
    assert f"{names[1]}: busy: " in out
    assert "up on 3 database(s): 2 at version 2, 1 busy" in out
    assert f"busy (lock held elsewhere; --lock-wait waits): {names[1]}" in out


@pytest.mark.parametrize("argv, says", [
    (["up", "--canary", "1"], "--canary only work(s) with --databases"),
    (["up", "--fake", "--databases", "t_*"], "--fake does not work with --databases"),
    (["up", "--database", "one", "--databases", "t_*"], "exclude each other"),
    (["up", "--databases", "t_*", "--shard", "0/2"], "I/N"),
    (["up", "--databases", "t_*", "--concurrency", "0"], "at least 1"),
])
def test_fleet_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], mongo_uri: str,
                                   fleet_project: Path, argv: List[str], says: str) -> None:
    code, _, err = cli(capsys, *argv, "--uri", mongo_uri, "--migrations", str(fleet_project))
    assert code == 2 and says in err


SLOW = '''
"""Rebuild each tenant's search index (slowly)"""

import time

transactional = False
idempotent = True


def up(db):
    db.progress.insert_one({"started": True})
    for _ in range(1200):
        time.sleep(0.1)
'''


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_mid_fleet_starts_no_new_database_and_still_prints_the_summary(
        tmp_path: Path, client: Any, mongo_uri: str, tenant_prefix: str,
        stop: signal.Signals, code: int) -> None:
    names = make_tenants(client, tenant_prefix, 5)
    source = write_migrations(tmp_path / "migrations", {"0001_rebuild.py": SLOW})
    env = child_env({"MONGODB_URI": mongo_uri})
    proc = subprocess.Popen(
        [sys.executable, "-m", "analytiq_migrations", "up", "--migrations", str(source),
         "--databases", f"{tenant_prefix}*", "--concurrency", "2", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum(client[n].progress.count_documents({}) for n in names) == 2,
                 timeout=60, message="two tenants never started")
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    document = json.loads(out)
    summary = document["summary"]
    assert summary["interrupted"] == stop.name
    started = [n for n in names if client[n].progress.count_documents({})]
    assert sorted(summary["failed"]) == started
    assert all("interrupted" in why for why in summary["failed"].values())
    assert summary["not_started"] == [n for n in names if n not in started]
    for name in names:  # every lock released; the cut-short ones say so in status
        assert client[name].migration_lock.find_one() is None
        rows = Migrator(client, source, database=name).status()
        assert rows[0].status == ("interrupted" if name in started else "pending")
