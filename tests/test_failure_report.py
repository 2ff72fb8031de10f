"""A failing run as the operator sees it: where the migration failed (file and line, the
traceback with -v, in the record and in `show`), a line per step as it starts and ends,
and the whole run reported (what was applied or reverted before the failure)."""

from __future__ import annotations

import json
from typing import Any, List

import pytest
from support import ProjectCli, needs_bind

from analytiq_migrations import MigrationFailedError, Migrator, StepEvent
from analytiq_migrations.locate import TRACEBACK_LIMIT

CREATE = '''\
"""Create the users"""


def up(db):
    db.users.insert_many([{"_id": 1, "name": "Ada"}, {"_id": 2, "name": "Alan"}])


def down(db):
    db.users.delete_many({})
'''

TAG = '''\
"""Tag the users"""


def up(db):
    db.users.update_many({}, {"$set": {"tag": "t"}})


def down(db):
    db.users.update_many({}, {"$unset": {"tag": ""}})
'''

# The raise is on line 9, inside a helper the migration calls from line 13.
BACKFILL = '''\
"""Backfill the plan"""


def plan_of(user):
    if "plan" in user:
        return user["plan"]
    # the old documents have no plan; this migration assumed they all did
    uri = "mongodb://admin:hunter2@db.internal/app"
    raise KeyError(f"plan missing for {user['_id']} (source {uri})")


def up(db):
    plans = [plan_of(user) for user in db.users.find()]
    db.users.update_many({}, {"$set": {"plans": plans}})


def down(db):
    db.users.update_many({}, {"$unset": {"plans": ""}})
'''

DEEP = '''\
"""Recurse until it breaks"""


def walk(n):
    if n == 0:
        raise ValueError("the bottom")
    return step(n - 1)


def step(n):
    return walk(n)


def up(db):
    walk(100)
'''

BROKEN_DOWN = '''\
"""Tag the users"""


def up(db):
    db.users.update_many({}, {"$set": {"tag": "t"}})


def down(db):
    raise RuntimeError("cannot untag")
'''


@pytest.fixture
def cli(project_cli: ProjectCli) -> ProjectCli:
    project_cli.write({"0001_create_users.py": CREATE, "0002_tag_users.py": TAG,
                       "0003_backfill_plan.py": BACKFILL})
    return project_cli


# -- where it failed ---------------------------------------------------------------------------


def test_the_error_names_the_file_and_line_of_the_failing_frame(cli: ProjectCli) -> None:
    code, out, err = cli("up")
    assert code == 1
    first = next(line for line in err.splitlines() if "error:" in line)
    assert first.startswith("analytiq-migrations: error: Migration 3 (Backfill the plan) "
                            "failed during 'up': KeyError:")
    assert first.endswith("(0003_backfill_plan.py:9)")  # the raise, in the helper
    assert "hunter2" not in out + err
    assert "Traceback" not in err  # only with -v


def test_verbose_prints_the_migrations_traceback(cli: ProjectCli) -> None:
    code, _, err = cli("-v", "up")
    assert code == 1
    trace = err[err.index("The migration's traceback:"):]
    assert "Traceback (most recent call last):" in trace
    assert 'line 13, in up' in trace and 'line 9, in plan_of' in trace
    assert 'raise KeyError(f"plan missing' in trace
    assert "hunter2" not in err

    # With --json the log lines stay JSON: the traceback is in the error document.
    cli.db.migrations.delete_many({"_id": 3})
    code, out, err = cli("-v", "--json", "up")
    assert code == 1
    assert "Traceback" not in err
    assert "line 9, in plan_of" in json.loads(out)["error"]["traceback"]


def test_the_record_keeps_a_bounded_redacted_traceback_and_show_prints_it(cli: ProjectCli) -> None:
    cli("up")
    error = cli.db.migrations.find_one({"_id": 3})["error"]
    assert error["location"] == "0003_backfill_plan.py:9"
    assert "line 9, in plan_of" in error["traceback"] and "hunter2" not in error["traceback"]
    assert "raise KeyError" not in error["traceback"]  # no source lines: code may hold secrets
    entry = cli.db.migrations_history.find_one({"version": 3, "status": "failed"})
    assert entry["error"]["traceback"] == error["traceback"]

    code, out, _ = cli("show", "3")
    assert code == 0
    assert "  at            0003_backfill_plan.py:9" in out
    assert "    Traceback (most recent call last):" in out
    assert '      File "' + str(cli.dir / "0003_backfill_plan.py") + '", line 9, in plan_of' in out
    assert "    KeyError: 'plan missing for 1 (source mongodb://***@db.internal/app)'" in out

    # A deep stack is cut from the outside: the innermost frames and the error stay.
    cli.write({"0003_backfill_plan.py": DEEP})
    cli.db.migrations.delete_one({"_id": 3})
    code, _, err = cli("up")
    assert code == 1 and "(0003_backfill_plan.py:6)" in err
    stored = cli.db.migrations.find_one({"_id": 3})["error"]["traceback"]
    assert len(stored) <= TRACEBACK_LIMIT + 100
    assert stored.startswith("Traceback (most recent call last; outer frames cut):")
    assert stored.rstrip().endswith("ValueError: the bottom")


def test_a_class_listed_in_code_is_located_in_its_module(db: Any) -> None:
    from analytiq_migrations import Migration

    class Fails(Migration):
        version = 1

        def up(self, db: Any) -> None:
            raise RuntimeError("no")

    with pytest.raises(MigrationFailedError) as info:
        Migrator(db, [Fails]).upgrade()
    line = Fails.up.__code__.co_firstlineno + 1
    assert info.value.location == f"test_failure_report.py:{line}"
    assert str(info.value).splitlines()[0].endswith(f"(test_failure_report.py:{line})")


# -- a line per step ---------------------------------------------------------------------------


def test_each_step_says_when_it_starts_and_how_it_ended(cli: ProjectCli) -> None:
    code, _, err = cli("up", "2")
    assert code == 0
    lines = err.splitlines()
    assert lines[0] == "[1/2] migration 1 up: Create the users (in a transaction)"
    assert lines[1].startswith("[1/2] migration 1 up: applied in ") and lines[1].endswith("ms")
    assert lines[2] == "[2/2] migration 2 up: Tag the users (in a transaction)"
    assert lines[3].startswith("[2/2] migration 2 up: applied in ")

    code, _, err = cli("down", "base")
    assert code == 0
    assert [line.split(" in ")[0] for line in err.splitlines()] == [
        "[1/2] migration 2 down: Tag the users (in a transaction)",
        "[1/2] migration 2 down: reverted",
        "[2/2] migration 1 down: Create the users (in a transaction)",
        "[2/2] migration 1 down: reverted"]

    code, _, err = cli("up")
    assert code == 1
    assert "[3/3] migration 3 up: Backfill the plan (in a transaction)\n" \
           "[3/3] migration 3 up: FAILED after " in err


@needs_bind
def test_a_dry_run_streams_its_steps_too(cli: ProjectCli) -> None:
    code, out, err = cli("up", "2", "--dry-run")
    assert code == 0 and "nothing was stored" in out
    assert [line.split(" in ")[0] for line in err.splitlines()] == [
        "[1/2] migration 1 up: Create the users (in a transaction)",
        "[1/2] migration 1 up: rehearsed",
        "[2/2] migration 2 up: Tag the users (in a transaction)",
        "[2/2] migration 2 up: rehearsed"]


def test_quiet_and_json_runs_print_no_step_lines(cli: ProjectCli) -> None:
    code, out, err = cli("-q", "up", "2")
    assert (code, out, err) == (0, "", "")
    code, out, err = cli("--json", "down", "base")
    assert code == 0 and "migration" not in err
    assert [s["version"] for s in json.loads(out)["steps"]] == [2, 1]


def test_the_step_hook_hears_each_start_and_end_and_a_broken_one_is_ignored(db: Any) -> None:
    from analytiq_migrations import Migration

    class One(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.things.insert_one({})

    class Two(Migration):
        version = 2

        def up(self, db: Any) -> bool:
            return False

    events: List[StepEvent] = []
    with pytest.raises(MigrationFailedError):
        Migrator(db, [One, Two], on_step=events.append).upgrade()
    assert [(e.version, e.status, e.index, e.total) for e in events] == [
        (1, "started", 1, 2), (1, "applied", 1, 2), (2, "started", 2, 2), (2, "failed", 2, 2)]
    assert events[-1].error is not None and "returned False" in events[-1].error.message

    def broken(event: StepEvent) -> None:
        raise BrokenPipeError("stderr went away")

    db.migrations.delete_many({})
    Migrator(db, [One], on_step=broken).upgrade()
    assert db.migrations.find_one({"_id": 1})["status"] == "applied"


# -- the whole run -----------------------------------------------------------------------------


def test_a_failed_up_lists_what_it_applied_before_the_failure(cli: ProjectCli) -> None:
    code, out, err = cli("up")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == (f"Applied 2 migrations on '{cli.db.name}' before migration 3 failed: "
                        "version 0 -> 2")
    rows = [line.split() for line in lines[3:]]
    assert [(r[0], r[-3]) for r in rows] == [("1", "applied"), ("2", "applied"), ("3", "FAILED")]
    assert "error: Migration 3" in err

    cli.db.migrations.delete_many({"_id": {"$ne": 0}})
    cli.db.users.delete_many({})
    code, out, _ = cli("--json", "up")
    assert code == 1
    data = json.loads(out)
    assert [(s["version"], s["status"]) for s in data["steps"]] == [
        (1, "applied"), (2, "applied"), (3, "failed")]
    assert (data["start_version"], data["end_version"]) == (0, 2)
    assert data["error"]["version"] == 3 and data["error"]["exit_code"] == 1
    assert data["error"]["location"] == "0003_backfill_plan.py:9"
    assert data["steps"][2]["error"]["location"] == "0003_backfill_plan.py:9"


def test_a_failed_down_lists_what_it_reverted(cli: ProjectCli) -> None:
    cli.write({"0003_backfill_plan.py": TAG.replace("tag", "mark"),
               "0002_tag_users.py": BROKEN_DOWN})
    assert cli("up")[0] == 0
    code, out, err = cli("down", "base")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == (f"Reverted 1 migration on '{cli.db.name}' before migration 2 failed: "
                        "version 3 -> 2")
    assert [(r.split()[0], r.split()[-3]) for r in lines[3:]] == [("3", "reverted"),
                                                                   ("2", "FAILED")]
    assert "(0002_tag_users.py:9)" in err


def test_a_driver_error_that_stops_the_run_still_reports_what_it_did(
        db: Any, client: Any) -> None:
    from analytiq_migrations import Migration, MigrationError

    class One(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.things.insert_one({"_id": 1})

    class BreaksTheServer(Migration):
        version = 2
        transactional = False

        def up(self, db: Any) -> None:
            # From here on the server refuses every update: the failure cannot be recorded.
            db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                     "data": {"failCommands": ["update"], "errorCode": 2}})
            raise RuntimeError("and then the disk filled up")

    try:
        with pytest.raises(MigrationError) as info:
            Migrator(db, [One, BreaksTheServer]).upgrade()
    finally:
        client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert "MongoDB error" in str(info.value)
    report = info.value.report
    assert report is not None
    assert [(s.version, s.status) for s in report.steps] == [(1, "applied"), (2, "failed")]
    assert report.steps[1].error is not None and \
        report.steps[1].error.type == "OperationFailure"


# -- a long history, end to end ----------------------------------------------------------------


def _module_style(version: int) -> str:
    return (f'"""Set field f{version}"""\n\n\ndef up(db):\n'
            f'    db.docs.update_many({{}}, {{"$set": {{"f{version}": {version}}}}})\n\n\n'
            f'def down(db):\n    db.docs.update_many({{}}, {{"$unset": {{"f{version}": ""}}}})\n')


def _seed_style(version: int, *, irreversible: bool = False) -> str:
    down = ('        log.error("cannot be reverted")\n        return False\n' if irreversible
            else f'        db.docs.update_many({{}}, {{"$unset": {{"s{version}": ""}}}})\n'
                 '        return True\n')
    return ("import logging\n\nfrom analytiq_migrations import Migration\n\n"
            "log = logging.getLogger(__name__)\n\n\n"
            f"class Seed{version}(Migration):\n    def __init__(self):\n"
            f'        super().__init__("Seed-style {version}")\n\n'
            "    def up(self, db) -> bool:\n"
            f'        db.docs.update_many({{}}, {{"$set": {{"s{version}": True}}}})\n'
            "        return True\n\n"
            f"    def down(self, db) -> bool:\n{down}")


def test_a_long_history_reports_every_step_and_stops_where_it_says(
        project_cli: ProjectCli) -> None:
    files = {f"{v:04d}_step_{v}.py": (_seed_style(v, irreversible=v == 9) if v % 3 == 0
                                      else _module_style(v)) for v in range(1, 27)}
    files["0021_step_21.py"] = files["0021_step_21.py"].replace(
        "        return True\n\n    def down", "        raise ValueError('bad data')\n\n"
        "    def down", 1)
    project_cli.write(files)
    project_cli.db.docs.insert_one({"_id": 1})

    code, out, err = project_cli("up")
    assert code == 1
    assert len([line for line in err.splitlines() if line.startswith("[")]) == 2 * 21
    assert out.splitlines()[0].startswith("Applied 20 migrations on ")
    assert "before migration 21 failed: version 0 -> 20" in out.splitlines()[0]
    assert "ValueError: bad data (0021_step_21.py:14)" in err

    project_cli.write({"0021_step_21.py": _seed_style(21)})
    project_cli.db.migrations.delete_one({"_id": 21})
    code, out, _ = project_cli("up")
    assert code == 0 and out.splitlines()[0].endswith("version 20 -> 26")

    code, out, err = project_cli("down", "base")
    assert code == 1
    assert out.splitlines()[0].endswith("before migration 9 failed: version 26 -> 9")
    reverted = [line.split()[0] for line in out.splitlines()[3:] if "reverted" in line]
    assert reverted == [str(v) for v in range(26, 9, -1)]
    assert 'down() returned False: it logged "cannot be reverted" (ERROR at ' \
           "0009_step_9.py:17)" in err
    assert "`analytiq-migrations down --fake 8`" in err

    assert project_cli("down", "--fake", "8")[0] == 0
    code, out, _ = project_cli("down", "base")
    assert code == 0 and out.splitlines()[0].endswith("version 8 -> 0")
    assert project_cli.db.docs.find_one({"_id": 1}) == {"_id": 1, "s9": True}
