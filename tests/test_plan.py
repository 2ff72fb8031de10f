"""Pure planning rules (no server): targets, unfinished attempts, rows and problems."""

from __future__ import annotations

from typing import Any

import pytest

from analytiq_migrations import (
    ConfigurationError,
    FailedMigrationError,
    InterruptedMigrationError,
    Migration,
    MigrationRecord,
)
from analytiq_migrations.plan import (
    find_problems,
    plan_downgrade,
    plan_upgrade,
    resolve_target,
    status_rows,
)
from analytiq_migrations.records import ErrorInfo


def make(version: int, *, transactional: Any = None, idempotent: bool = False) -> Migration:
    class M(Migration):
        def up(self, db: Any) -> None: ...

        def down(self, db: Any) -> None: ...

    m = M(version=version, description=f"m{version}", transactional=transactional,
          idempotent=idempotent)
    return m


MIGRATIONS = [make(1), make(2), make(4), make(7)]


def applied(version: int, **fields: Any) -> MigrationRecord:
    migration = next(m for m in MIGRATIONS if m.version == version)
    return MigrationRecord(version=version, status="applied", checksum=migration.checksum,
                           description=f"m{version}", **fields)


def never(_: Migration) -> bool:
    return False


@pytest.mark.parametrize(
    ("target", "current", "expected"),
    [
        (None, 0, 7), ("head", 2, 7), ("base", 4, 0), ("4", 0, 4), (2, 7, 2),
        ("+1", 0, 1), ("+2", 1, 4), ("+2", 2, 7), ("-1", 4, 2), ("-2", 4, 1), ("-3", 4, 0),
        ("-1", 1, 0),
    ],
)
def test_targets(target: Any, current: int, expected: int) -> None:
    assert resolve_target(target, MIGRATIONS, current, default_head=True) == expected


@pytest.mark.parametrize("target", ["+5", "-3x", "latest", "-5"])
def test_bad_targets(target: str) -> None:
    with pytest.raises(ConfigurationError):
        resolve_target(target, MIGRATIONS, 2, default_head=True)


def test_downgrade_needs_a_target() -> None:
    with pytest.raises(ConfigurationError, match="target version is needed"):
        resolve_target(None, MIGRATIONS, 2, default_head=False)


def test_upgrade_plan_skips_applied_and_stops_at_target() -> None:
    records = {1: applied(1), 2: applied(2)}
    plan = plan_upgrade(MIGRATIONS, records, 4, never)
    assert plan.versions == [4]
    assert (plan.current_version, plan.target_version) == (2, 4)


def test_unknown_target_lists_known_versions() -> None:
    with pytest.raises(ConfigurationError, match="known versions: 1, 2, 4, 7"):
        plan_upgrade(MIGRATIONS, {}, 3, never)


def interrupted(version: int, **fields: Any) -> MigrationRecord:
    return MigrationRecord(version=version, status="running", description=f"m{version}",
                           run_id="dead", host="pod-7", pid=42, **fields)


def test_interrupted_non_transactional_is_refused_with_the_way_out() -> None:
    with pytest.raises(InterruptedMigrationError) as info:
        plan_upgrade(MIGRATIONS, {1: interrupted(1)}, 7, never)
    assert "pod-7" in str(info.value) and "repair --clear-failed" in str(info.value)


def test_interrupted_transactional_idempotent_or_checkpointed_are_rerun() -> None:
    idem = [make(1, idempotent=True)]
    assert plan_upgrade(idem, {1: interrupted(1)}, 1, never).steps[0].note == \
        "re-run after interruption"
    assert plan_upgrade(MIGRATIONS, {1: interrupted(1, transactional=True)}, 1, never).versions \
        == [1]
    resumed = plan_upgrade(MIGRATIONS, {1: interrupted(1, progress={"batch_update": []})}, 1,
                           never)
    assert resumed.steps[0].note == "resume from checkpoint"


def test_failed_non_transactional_is_refused() -> None:
    record = MigrationRecord(version=2, status="failed", description="m2",
                             error=ErrorInfo(type="ValueError", message="boom"))
    with pytest.raises(FailedMigrationError, match="boom"):
        plan_upgrade(MIGRATIONS, {1: applied(1), 2: record}, 7, never)


def test_downgrade_plan_is_newest_first_and_reverts_baselined() -> None:
    records = {1: applied(1), 2: applied(2),
               4: MigrationRecord(version=4, status="baselined", description="m4")}
    plan = plan_downgrade(MIGRATIONS, records, 1, never)
    assert plan.versions == [4, 2] and {s.direction for s in plan} == {"down"}


def test_status_rows_merge_code_and_database() -> None:
    records = {1: applied(1), 3: MigrationRecord(version=3, status="applied", description="old"),
               4: interrupted(4)}
    rows = status_rows(MIGRATIONS, records, live_run_id=None)
    assert [(r.version, r.status) for r in rows] == [
        (1, "applied"), (2, "pending"), (3, "missing"), (4, "interrupted"), (7, "pending")]
    assert [r.status for r in status_rows(MIGRATIONS, records, live_run_id="dead")][3] == \
        "running"


def test_problems_distinguish_a_live_run_from_a_dead_one() -> None:
    records = {1: applied(1), 2: interrupted(2)}
    assert [p.kind for p in find_problems(MIGRATIONS, records)] == ["interrupted"]
    assert [p.kind for p in find_problems(MIGRATIONS, records, live_run_id="dead")] == [
        "running"]


def test_rows_and_lock_info_dump_to_json_with_bson_values() -> None:
    import json
    import uuid

    from bson import Binary, ObjectId

    from analytiq_migrations.records import LockInfo

    oid = ObjectId()
    row = status_rows(MIGRATIONS, {1: interrupted(1, progress={"batch_update": [
        {"last_id": oid}]})})[0]
    assert json.loads(row.model_dump_json())["progress"] == {
        "batch_update": [{"last_id": {"$oid": str(oid)}}]}
    assert row.model_dump()["progress"]["batch_update"][0]["last_id"] == oid  # python mode: BSON
    # Subtype 4 (a standard UUID), spelled so that pymongo 3.10 (no from_uuid) has it too.
    lock = LockInfo(holder="h", session_ids=[{"id": Binary(uuid.uuid4().bytes, 4)}])
    assert "$binary" in json.dumps(lock.model_dump(mode="json"))
