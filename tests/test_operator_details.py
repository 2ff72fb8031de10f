"""The smaller things an operator reads: a dry run stores nothing (not even an empty lock
collection), repairs are in the history, a revert reads "reverted", one time format
everywhere."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

from support import ProjectCli, needs_bind

CREATE = '''\
"""Create the users"""


def up(db):
    db.users.insert_one({"_id": 1, "name": "Ada"})


def down(db):
    db.users.delete_many({})
'''

RENAME = '''\
"""Rename user.name"""


def up(db):
    db.users.update_many({}, {"$rename": {"name": "full_name"}})


def down(db):
    db.users.update_many({}, {"$rename": {"full_name": "name"}})
'''

BROKEN = '''\
"""Split the names"""

transactional = False


def up(db):
    db.users.update_one({"_id": 1}, {"$set": {"half": True}})
    raise RuntimeError("no")
'''

#: Any date-and-time-looking text in an output.
_ANY_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?(\.\d+)?[^\s\"',).]*")
#: The one form: ``2024-05-01T12:00:03Z`` (text) or with milliseconds (JSON).
_ONE_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")


@needs_bind
def test_a_dry_run_on_a_database_never_migrated_leaves_nothing(project_cli: ProjectCli) -> None:
    project_cli.write({"0001_create_users.py": CREATE})
    code, out, _ = project_cli("up", "--dry-run")
    assert code == 0 and "rehearsed" in out
    assert project_cli.db.list_collection_names() == []

    # Where the lock collection already exists, it stays (another run may be using it).
    assert project_cli("up")[0] == 0
    project_cli.write({"0002_rename.py": RENAME})
    assert project_cli("up", "--dry-run")[0] == 0
    assert "migration_lock" in project_cli.db.list_collection_names()


def test_repairs_appear_in_the_history(project_cli: ProjectCli) -> None:
    project_cli.write({"0001_create_users.py": CREATE, "0002_split.py": BROKEN})
    assert project_cli("up")[0] == 1
    project_cli.write({"0001_create_users.py": CREATE.replace('"Ada"', '"Ada L."')})
    assert project_cli("repair", "--accept-checksums", "--clear-failed")[0] == 0

    code, out, _ = project_cli("history")
    assert code == 0
    rows = [line.split(None, 6) for line in out.splitlines()[1:]]
    repairs = [r for r in rows if r[3] == "repair"]
    assert sorted((r[1], r[4]) for r in repairs) == [("1", "accept_checksum"),
                                                     ("2", "clear_failed")]
    assert "failed 'up' attempt cleared" in out and " accepted" in out
    assert rows[-1][3] == "applied"  # oldest last: the repairs came after the attempts

    data = json.loads(project_cli("history", "--json")[1])
    assert sorted(r["action"] for r in data["repairs"]) == ["accept_checksum", "clear_failed"]
    one = json.loads(project_cli("history", "1", "--json")[1])
    assert [r["action"] for r in one["repairs"]] == ["accept_checksum"]
    newest = project_cli("history", "--limit", "2")[1].splitlines()
    assert len(newest) == 3 and all(" repair " in line for line in newest[1:])


def test_a_successful_down_reads_reverted(project_cli: ProjectCli) -> None:
    project_cli.write({"0001_create_users.py": CREATE, "0002_rename.py": RENAME})
    project_cli("up")
    code, out, _ = project_cli("down", "base")
    assert code == 0
    assert "rolled_back" not in out
    assert [line.split()[-3] for line in out.splitlines()[3:]] == ["reverted", "reverted"]
    for args in (["history"], ["show", "2"]):
        text = project_cli(*args)[1]
        assert "rolled_back" not in text and "reverted" in text, args
    # The stored status is the contract's, and JSON says it as stored.
    assert project_cli.db.migrations.find_one({"_id": 2})["status"] == "rolled_back"
    shown = json.loads(project_cli("show", "2", "--json")[1])
    assert shown["record"]["status"] == "rolled_back"
    assert shown["history"][0]["status"] == "rolled_back"


def test_times_come_in_one_format_everywhere(project_cli: ProjectCli) -> None:
    project_cli.write({"0001_create_users.py": CREATE, "0002_rename.py": RENAME})
    outputs = [project_cli("-v", "up"), project_cli("--json", "-v", "down", "1"),
               project_cli("status"), project_cli("--json", "status"), project_cli("history"),
               project_cli("--json", "history"), project_cli("show", "1"),
               project_cli("--json", "show", "1")]
    now = datetime.now(timezone.utc)
    project_cli.db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "deploy@web-7:4242/feedbeef", "run_id": "feedbeef",
        "host": "web-7", "pid": 4242, "locked_at": now, "heartbeat_at": now,
        "expires_at": now + timedelta(minutes=10)})
    outputs += [project_cli("status"), project_cli("up")]  # the holder and its lease times
    seen = [match.group(0) for _, out, err in outputs for match in _ANY_TIME.finditer(out + err)]
    assert len(seen) > 20
    assert [t for t in seen if not _ONE_FORM.fullmatch(t)] == []
    json_times = [t for _, out, _ in outputs if out.startswith("{")
                  for t in _ONE_FORM.findall(out)]
    assert json_times  # (findall returns the groups: the milliseconds, always there)
    assert all(len(t) == 4 for t in json_times)

