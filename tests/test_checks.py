"""The test kit's built-in checks, called from a test the way a user's own test would."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from analytiq_migrations import Migration
from analytiq_migrations.checks import (
    MigrationRunner,
    check_downgrade_leaves_no_trace,
    check_idempotent,
    check_unique_versions,
    check_up_down_consistency,
    check_upgrade_from_empty,
    run_checks,
)


class IndexEmail(Migration):
    version = 1
    transactional = False

    def up(self, db: Any) -> None:
        db.users.create_index("email", unique=True)

    def down(self, db: Any) -> None:
        db.users.drop_index("email_1")


class SplitName(Migration):
    """Lossy: its down forgets the last name."""

    version = 2

    def up(self, db: Any) -> None:
        for user in db.users.find({"name": {"$exists": True}}):
            first, _, last = user["name"].partition(" ")
            db.users.update_one({"_id": user["_id"]}, {
                "$set": {"first": first, "last": last}, "$unset": {"name": ""}})

    def down(self, db: Any) -> None:
        for user in db.users.find({"first": {"$exists": True}}):
            db.users.update_one({"_id": user["_id"]}, {
                "$set": {"name": user["first"]}, "$unset": {"first": "", "last": ""}})


class SplitNameFixed(SplitName):
    def down(self, db: Any) -> None:
        for user in db.users.find({"first": {"$exists": True}}):
            db.users.update_one({"_id": user["_id"]}, {
                "$set": {"name": f"{user['first']} {user['last']}".strip()},
                "$unset": {"first": "", "last": ""}})


class AddStatus(Migration):
    version = 3
    idempotent = True

    def up(self, db: Any) -> None:
        db.users.update_many({"status": {"$exists": False}}, {"$set": {"status": "active"}})

    def down(self, db: Any) -> None:
        db.users.update_many({}, {"$unset": {"status": ""}})


class CountLogins(Migration):
    """Declared idempotent, but adds one more each time it runs."""

    version = 3
    idempotent = True

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$inc": {"logins": 1}})

    def down(self, db: Any) -> None:
        db.users.update_many({}, {"$unset": {"logins": ""}})


class Irreversible(Migration):
    version = 3

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"legacy": False}})


class BrokenDown(AddStatus):
    def down(self, db: Any) -> None:
        raise RuntimeError("down is not written yet")


SEED = {2: {"users": [{"name": "Ada Lovelace", "email": "ada@example.com"},
                      {"name": "Grace Hopper", "email": "grace@example.com"}]}}


def runner(db: Any, *migrations: type) -> MigrationRunner:
    return MigrationRunner(db, list(migrations), seed=SEED)


def test_a_lossy_down_fails_naming_the_version_and_the_collection(db: Any) -> None:
    result = check_downgrade_leaves_no_trace(runner(db, IndexEmail, SplitName, AddStatus))
    assert not result.passed
    assert [(f.version, f.collection) for f in result.failures] == [(2, "users")]
    failure = result.failures[0]
    assert failure.message == "v2: collection 'users' differs after up and down"
    assert 'name: "Ada Lovelace" -> "Ada"' in failure.detail
    assert 'name: "Grace Hopper" -> "Grace"' in failure.detail
    explained = result.explain()
    assert explained.startswith("downgrade leaves no trace: FAILED\n  v2: collection 'users'")


def test_fixing_the_down_makes_it_pass(db: Any) -> None:
    result = check_downgrade_leaves_no_trace(runner(db, IndexEmail, SplitNameFixed, AddStatus))
    assert result.passed, result.explain()
    assert result.explain() == "downgrade leaves no trace: passed"


def test_an_irreversible_step_is_noted_not_failed(db: Any) -> None:
    result = check_downgrade_leaves_no_trace(runner(db, IndexEmail, SplitNameFixed, Irreversible))
    assert result.passed
    assert result.notes == ["v3 has no down: not checked"]
    class IrreversibleTwo(Irreversible):
        version = 2

    consistency = check_up_down_consistency(runner(db, IndexEmail, IrreversibleTwo))
    assert consistency.passed
    assert consistency.notes == ["v2 has no down: only its up was run"]


def test_a_down_that_raises_fails_up_down_consistency(db: Any) -> None:
    result = check_up_down_consistency(runner(db, IndexEmail, SplitNameFixed, BrokenDown))
    assert [(f.version, f.message) for f in result.failures] == [(3, "v3: down failed")]
    assert "down is not written yet" in result.failures[0].detail


def test_idempotent_means_the_same_data_after_a_second_run(db: Any) -> None:
    assert check_idempotent(runner(db, IndexEmail, SplitNameFixed, AddStatus)).passed
    result = check_idempotent(runner(db, IndexEmail, SplitNameFixed, CountLogins))
    assert [(f.version, f.collection) for f in result.failures] == [(3, "users")]
    assert "logins: 1 -> 2" in result.failures[0].detail


def test_upgrade_from_empty_names_the_version_that_stops_it(db: Any) -> None:
    assert check_upgrade_from_empty(runner(db, IndexEmail, SplitNameFixed)).passed

    class Fails(Migration):
        version = 2

        def up(self, db: Any) -> None:
            raise ValueError("boom")

    result = check_upgrade_from_empty(runner(db, IndexEmail, Fails))
    assert [f.version for f in result.failures] == [2]
    assert "boom" in result.failures[0].message


def test_duplicate_versions_after_a_merge(tmp_path: Path) -> None:
    for name in ("0001_users.py", "0002_add_plan.py", "0002_add_seats.py"):
        (tmp_path / name).write_text("def up(db):\n    pass\n")
    result = check_unique_versions(tmp_path)
    assert [f.version for f in result.failures] == [2]
    assert "0002_add_plan" in result.failures[0].message
    assert "0002_add_seats" in result.failures[0].message
    (tmp_path / "0002_add_seats.py").rename(tmp_path / "0003_add_seats.py")
    assert check_unique_versions(tmp_path).passed


def test_run_checks_on_the_examples_leaves_the_database_empty(db: Any) -> None:
    seed = {1: {"users": [{"name": "Ada", "email": "ada@example.com"}]}}
    results = run_checks(MigrationRunner(db, "analytiq_migrations.examples", seed=seed))
    assert [(r.name, r.passed) for r in results] == [
        ("unique_versions", True), ("upgrade_from_empty", True),
        ("up_down_consistency", True), ("downgrade_leaves_no_trace", True),
        ("idempotent", True)]
    assert db.list_collection_names() == []


def test_seed_functions_and_data_go_in_before_their_version(db: Any) -> None:
    seen: List[Any] = []

    def seed_three(database: Any) -> None:
        seen.append(sorted(database.users.find_one({}, {"_id": 0})))

    kit = MigrationRunner(db, [IndexEmail, SplitNameFixed, AddStatus],
                          seed={**SEED, 3: seed_three})
    assert check_upgrade_from_empty(kit).passed  # from empty, with each version's seed
    assert seen == [["email", "first", "last"]]  # v2 had run: the data is at version 2
    assert check_idempotent(kit).passed
    assert seen == [["email", "first", "last"]] * 2


# -- every step is checked, whatever failed before it ------------------------------------------


def numbered(version: int, *, up_fails: bool = False, revert: str = "clean",
             idempotent: bool = False) -> type[Migration]:
    """Step ``version`` sets ``v<version>`` on every user; its ``down`` (``revert``) is ``clean``,
    ``raises``, ``lossy`` (drops the users' ``keep`` field too) or ``none``."""

    class Step(Migration):
        def up(self, db: Any) -> None:
            db.users.update_many({}, {"$set": {f"v{version}": True}})
            if up_fails:
                raise RuntimeError(f"up {version} is broken")

        if revert != "none":
            def down(self, db: Any) -> None:
                if revert == "raises":
                    raise RuntimeError(f"down {version} is not written yet")
                unset = {f"v{version}": ""}
                if revert == "lossy":
                    unset["keep"] = ""
                db.users.update_many({}, {"$unset": unset})

    Step.version, Step.idempotent = version, idempotent
    Step.__qualname__ = f"Step{version}"
    return Step


def broken_history() -> List[type[Migration]]:
    """Twelve steps: v3 and v9 downs raise, v5 and v11 downs lose data, v7's up fails."""
    downs = {3: "raises", 9: "raises", 5: "lossy", 11: "lossy", 12: "none"}
    return [numbered(v, up_fails=v == 7, revert=downs.get(v, "clean")) for v in range(1, 13)]


def kit(db: Any) -> MigrationRunner:
    return MigrationRunner(db, broken_history(), seed={1: {"users": [{"keep": 1}]}})


def test_up_down_consistency_names_every_broken_step(db: Any) -> None:
    result = check_up_down_consistency(kit(db))
    assert [(f.version, f.message.split(": ")[1]) for f in result.failures] == [
        (3, "down failed"), (7, "up failed"), (9, "down failed")]
    assert "v7: its up failed; the steps after it ran without its changes" in result.notes
    assert "v12 has no down: only its up was run" in result.notes


def test_downgrade_leaves_no_trace_checks_every_step_from_undamaged_data(db: Any) -> None:
    result = check_downgrade_leaves_no_trace(kit(db))
    # v5's lossy down would show again at every later step if the walk went on from the
    # data it left; restored, only v5 and v11 are named.
    assert [(f.version, f.collection) for f in result.failures] == [(5, "users"), (11, "users")]
    notes = " | ".join(result.notes)
    assert "v3: not checked: its down failed" in notes and "v9: not checked" in notes
    assert "v7: not checked: its up failed" in notes  # its own property only: no failure


def test_idempotent_reports_only_its_own_property(db: Any) -> None:
    history = [*broken_history(), numbered(13, idempotent=True)]
    result = check_idempotent(MigrationRunner(db, history))
    assert result.passed, result.explain()  # v7's failing up is not this check's finding
    assert any(note.startswith("v7: its up failed") for note in result.notes)


def test_upgrade_from_empty_names_every_failing_up(db: Any) -> None:
    history = [numbered(v, up_fails=v in (2, 4)) for v in range(1, 6)]
    result = check_upgrade_from_empty(MigrationRunner(db, history))
    assert [f.version for f in result.failures] == [2, 4]


def test_a_state_that_cannot_be_restored_names_the_steps_left_unchecked(
        db: Any, monkeypatch: Any) -> None:
    runner = kit(db)

    def cannot(state: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(runner, "restore_state", cannot)
    result = check_up_down_consistency(runner)
    assert [f.version for f in result.failures] == [3]
    assert result.notes[-1] == ("v3: could not put the database back after it (OSError: disk "
                                "full); not checked: v4, v5, v6, v7, v8, v9, v10, v11, v12")


def test_restore_state_puts_back_documents_indexes_options_and_records(db: Any) -> None:
    runner = MigrationRunner(db, [IndexEmail, SplitNameFixed])
    runner.migrate_up_to(1)
    db.create_collection("audit", validator={"$jsonSchema": {"required": ["at"]}})
    runner.insert("users", [{"name": "Ada Lovelace", "email": "ada@example.com"}])
    saved, data = runner.save_state(), runner.snapshot()
    runner.migrate_up_to(2)
    db.audit.drop()
    runner.restore_state(saved)
    assert runner.snapshot() == data
    assert runner.current_version() == 1


def test_one_run_of_the_checks_names_every_broken_down_of_a_long_history(db: Any) -> None:
    """26 steps, seed-style and class-style, six broken downs of three kinds (raises, the
    seed's "log and return False", lossy): one pass of the checks names all six."""

    class SeedIrreversible(Migration):
        def __init__(self) -> None:
            super().__init__(version=10, description="Seed-style: down logs and fails")

        def up(self, db: Any) -> bool:
            db.users.update_many({}, {"$set": {"v10": True}})
            return True

        def down(self, db: Any) -> bool:
            return False  # the seed's irreversible idiom

    downs = {4: "raises", 15: "raises", 21: "raises", 8: "lossy", 18: "lossy"}
    history: List[Any] = [numbered(v, revert=downs.get(v, "clean")) for v in range(1, 27)
                          if v != 10]
    history.insert(9, SeedIrreversible())
    results = {r.name: r for r in run_checks(
        MigrationRunner(db, history, seed={1: {"users": [{"keep": 1}]}}))}
    consistency = results["up_down_consistency"]
    assert [f.version for f in consistency.failures] == [4, 10, 15, 21]
    assert [f.version for f in results["downgrade_leaves_no_trace"].failures] == [8, 18]
    assert results["upgrade_from_empty"].passed and results["idempotent"].passed
