"""``Fleet``: one migration set on many tenant databases. Each database keeps its own
records, history and lock; a failing tenant is isolated; canaries go first; shards split
the fleet between hosts; a rerun touches only the databases not at the target."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from pymongo import MongoClient
from support import CommandRecorder, make_tenants

from analytiq_migrations import (
    ConfigurationError,
    Fleet,
    LockBusyError,
    Migration,
    MigrationError,
    Migrator,
    RunReport,
)
from analytiq_migrations.fleet import DatabaseStatus, in_shard, parse_shard
from analytiq_migrations.runkit import new_run


def test_a_failing_tenant_is_isolated_and_a_rerun_touches_only_it(
        client: Any, mongo_uri: str, fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 5, on_hold=(2,))
    bystander = f"{tenant_prefix}other"
    client[bystander].users.insert_one({"n": -1})
    fleet = Fleet(client, fleet_project, f"{tenant_prefix}t*", concurrency=3,
                  continue_on_error=True)

    report = fleet.upgrade()

    bad = names[2]
    assert sorted(report) == names
    assert isinstance(report[bad], MigrationError) and "tenant on hold" in str(report[bad])
    assert set(report.failed) == {bad} and report.exit_code == 1
    for name in names:
        at = Migrator(client, fleet_project, database=name).current_version()
        assert at == (1 if name == bad else 2)
    assert client[bystander].list_collection_names() == ["users"]  # never touched
    assert report.summary()["at_version"] == {"2": 4}

    client[bad].hold.delete_many({})
    recorder = CommandRecorder()
    with MongoClient(mongo_uri, event_listeners=[recorder]) as watched:
        again = Fleet(watched, fleet_project, f"{tenant_prefix}t*",
                      continue_on_error=True).upgrade()
    assert again.exit_code == 0 and not again.failed
    assert {version: n for version, n in again.at_version.items()} == {2: 5}
    writes = {c.database for c in recorder.commands
              if c.name in ("insert", "update", "delete", "findAndModify")}
    assert writes == {bad}
    assert again[bad].steps[0].version == 2
    assert all(not again[n].steps for n in names if n != bad)


def test_without_continue_on_error_no_new_database_starts_after_a_failure(
        client: Any, fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 6, on_hold=(0,))
    report = Fleet(client, fleet_project, names, concurrency=1).upgrade()
    assert list(report) == [names[0]]
    assert report.not_started == names[1:]
    assert report.exit_code == 1
    for name in names[1:]:
        assert Migrator(client, fleet_project, database=name).current_version() == 0


def test_a_failing_canary_stops_the_rest(client: Any, fleet_project: Path,
                                         tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 6, on_hold=(1,))
    report = Fleet(client, fleet_project, f"{tenant_prefix}*", canary=2, concurrency=4,
                   continue_on_error=True).upgrade()
    assert sorted(report) == names[:2]
    assert set(report.failed) == {names[1]}
    assert report.not_started == names[2:]
    assert report.summary()["not_started"] == names[2:]


def test_healthy_canaries_let_the_rest_run(client: Any, fleet_project: Path,
                                           tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 4)
    seen: List[str] = []
    report = Fleet(client, fleet_project, f"{tenant_prefix}*", canary=2).upgrade(
        on_result=lambda name, outcome: seen.append(name))
    assert set(seen[:2]) == set(names[:2]) and sorted(seen) == names
    assert report.exit_code == 0 and report.at_version == {2: 4}


def test_two_shards_cover_the_fleet_exactly_once(client: Any, fleet_project: Path,
                                                 tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 12)
    first = Fleet(client, fleet_project, f"{tenant_prefix}*", shard=(1, 2)).upgrade()
    second = Fleet(client, fleet_project, f"{tenant_prefix}*", shard=(2, 2)).upgrade()
    assert sorted([*first, *second]) == names
    assert not set(first) & set(second) and first and second
    for report in (first, second):
        assert all(r.steps for r in report.values())  # each shard did its own databases
    assert all(in_shard(n, (1, 2)) != in_shard(n, (2, 2)) for n in names)


def test_a_list_and_a_callable_name_databases_that_do_not_exist_yet(
        client: Any, fleet_project: Path, tenant_prefix: str) -> None:
    new = [f"{tenant_prefix}new{n}" for n in range(2)]
    assert Fleet(client, fleet_project, new).upgrade().at_version == {2: 2}
    statuses = Fleet(client, fleet_project, lambda: iter(new)).status()
    assert all(isinstance(s, DatabaseStatus) and s.current_version == 2 and not s.pending
               for s in statuses.values())
    assert Fleet(client, fleet_project, ",".join(new)).downgrade(0).at_version == {0: 2}


def test_a_glob_never_takes_the_servers_own_databases(client: Any,
                                                       fleet_project: Path) -> None:
    assert not {"admin", "local", "config"} & set(Fleet(client, fleet_project, "*").names())


def test_status_lists_each_tenants_pending_migrations(client: Any, fleet_project: Path,
                                                      tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 3)
    Migrator(client, fleet_project, database=names[0]).upgrade()
    Migrator(client, fleet_project, database=names[1]).upgrade(1)
    status: Dict[str, Any] = dict(Fleet(client, fleet_project, f"{tenant_prefix}*").status())
    assert {n: s.pending for n, s in status.items()} == {
        names[0]: [], names[1]: [2], names[2]: [1, 2]}
    assert all(s.healthy and s.head_version == 2 for s in status.values())


def test_a_busy_tenant_is_retried_within_lock_wait_then_reported_busy(
        client: Any, fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 3)
    holder = Migrator(client, fleet_project, database=names[0])
    with holder.kit.locked(new_run()):
        report = Fleet(client, fleet_project, names, lock_wait=1.5).upgrade()
        assert isinstance(report[names[0]], LockBusyError)
        assert report.busy == [names[0]] and report.exit_code == 3
        assert report.at_version == {2: 2}  # the others did not wait for it

    held = threading.Event()

    def hold_for_a_second() -> None:
        with holder.kit.locked(new_run()):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=hold_for_a_second)
    thread.start()
    assert held.wait(10)
    report = Fleet(client, fleet_project, names, lock_wait=10).upgrade()
    thread.join()
    assert report.exit_code == 0 and isinstance(report[names[0]], RunReport)
    assert report[names[0]].end_version == 2


def test_bad_fleet_settings_are_refused_up_front(client: Any, fleet_project: Path) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        Fleet(client, fleet_project, "t_*", concurrency=0)
    with pytest.raises(ConfigurationError, match="unknown option"):
        Fleet(client, fleet_project, "t_*", databse="x")
    with pytest.raises(ConfigurationError, match="lock_wait"):
        Fleet(client, fleet_project, "t_*", lock_wait=-1)
    with pytest.raises(ConfigurationError, match="I/N"):
        parse_shard("3/2")
    with pytest.raises(ConfigurationError, match="Bad database name"):
        Fleet(client, fleet_project, ["ok", 3]).status()


class SlowUnlessOnHold(Migration):
    """Fails at once on a tenant on hold; takes a moment everywhere else."""

    version = 1
    description = "Slow first step"

    def up(self, db: Any) -> None:
        if db.hold.find_one():
            raise RuntimeError("tenant on hold")
        time.sleep(1.5)  # long enough for the other tenant's failure to land meanwhile
        db.users.update_many({}, {"$set": {"first": True}})


class Second(Migration):
    version = 2
    description = "Second step"

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"second": True}})


def test_after_a_failure_running_tenants_finish_their_step_and_stop(
        client: Any, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 4, on_hold=(0,))
    report = Fleet(client, [SlowUnlessOnHold(), Second()], names, concurrency=2).upgrade()
    assert set(report.failed) == {names[0]}
    assert report.stopped == [names[1]]
    assert report[names[1]].end_version == 1  # its step finished; the next never began
    assert client[names[1]].users.count_documents({"first": True, "second": None}) == 1
    assert report.not_started == names[2:]


def test_ctrl_c_in_python_winds_down_and_carries_the_report(
        client: Any, fleet_project: Path, tenant_prefix: str) -> None:
    names = make_tenants(client, tenant_prefix, 6)

    def ctrl_c(name: str, outcome: Any) -> None:
        raise KeyboardInterrupt  # arrives in the calling thread, as Ctrl-C does

    with pytest.raises(KeyboardInterrupt) as caught:
        Fleet(client, fleet_project, names, concurrency=2).upgrade(on_result=ctrl_c)
    report = caught.value.fleet_report  # type: ignore[attr-defined]
    assert report.interrupted == "SIGINT" and report.exit_code == 130
    assert report.not_started and len(report) + len(report.not_started) == len(names)
    for name in report.not_started:
        assert Migrator(client, fleet_project, database=name).current_version() == 0
    for name in names:
        assert client[name].migration_lock.find_one() is None
