"""The command line as an operator uses it: every command, option placement, output forms,
exit codes, quiet runs, locks, unreachable servers and credentials that never show.

Most tests call ``main([...])`` in-process (fast); the last ones run the real
``analytiq-migrations`` / ``python -m analytiq_migrations`` processes.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from bson import Binary
from support import child_env, free_port, run_python, wait_for

from analytiq_migrations import Migrator
from analytiq_migrations.cli import main

CREATE_USERS = '''\
"""Create the first users"""


def up(db):
    db.users.insert_many([{"_id": 1, "name": "Ada"}, {"_id": 2, "name": "Alan"}])


def down(db):
    db.users.delete_many({"_id": {"$in": [1, 2]}})
'''

RENAME_NAME = '''\
"""Rename user.name to user.full_name"""


def up(db):
    db.users.update_many({}, {"$rename": {"name": "full_name"}})


def down(db):
    db.users.update_many({}, {"$rename": {"full_name": "name"}})
'''

EMAIL_INDEX = '''\
"""Add a unique email index"""

transactional = False
idempotent = True


def up(db):
    db.users.create_index("email", unique=True, sparse=True, name="email_1")


def down(db):
    db.users.drop_index("email_1")
'''

BACKFILL = '''\
"""Backfill users.active"""

from analytiq_migrations import Migration


class BackfillActive(Migration):
    transactional = False

    def up(self, db):
        self.batch_update("users", {"active": {"$exists": False}}, {"$set": {"active": True}},
                          batch_size=1)
'''

BROKEN = '''\
"""Split addresses"""

transactional = False


def up(db):
    db.users.update_one({"_id": 1}, {"$set": {"half": True}})
    raise RuntimeError("address format not understood")
'''

MIGRATIONS = {
    "0001_create_users.py": CREATE_USERS,
    "0002_rename_name.py": RENAME_NAME,
    "0003_email_index.py": EMAIL_INDEX,
}

SETTING_VARIABLES = ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                     "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_LOCK_WAIT",
                     "ANALYTIQ_MIGRATIONS_SERVER_TIMEOUT", "ANALYTIQ_MIGRATIONS_COLLECTION",
                     "ANALYTIQ_MIGRATIONS_CLIENT")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def both(self) -> str:
        return self.out + self.err


class Cli:
    """Runs ``main(argv)`` in this process and captures what it prints."""

    def __init__(self, capsys: pytest.CaptureFixture[str], db: Any, directory: Path,
                 uri: str) -> None:
        self.capsys = capsys
        self.db = db
        self.dir = directory
        self.uri = uri

    def __call__(self, *args: str) -> Result:
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path


def write_migrations(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str, db: Any,
        capsys: pytest.CaptureFixture[str]) -> Cli:
    """A project directory with three migrations, configured by the environment only."""
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    clear_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_DATABASE", db.name)
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_SOURCE", "migrations")
    return Cli(capsys, db, tmp_path / "migrations", mongo_uri)


def hold_lock(db: Any, *, expires_in: float = 600.0, **extra: Any) -> None:
    """Another process's lease, as the lock collection holds it."""
    now = datetime.now(timezone.utc)
    db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "deploy@web-7:4242/feedbeef", "run_id": "feedbeef",
        "host": "web-7", "pid": 4242, "locked_at": now - timedelta(seconds=5),
        "heartbeat_at": now, "expires_at": now + timedelta(seconds=expires_in), **extra,
    })


def with_credentials(uri: str, user: str, password: str) -> str:
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


# -- reading the state ----------------------------------------------------------------------


def test_status_on_a_fresh_database_lists_everything_pending(cli: Cli) -> None:
    result = cli("status")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"Database '{cli.db.name}' at version 0 (latest 3): 3 pending; lock free"
    assert lines[2].split() == ["VERSION", "DESCRIPTION", "STATUS", "APPLIED", "AT", "(UTC)",
                                "CHECKSUM"]
    assert lines[3].split() == ["1", "Create", "the", "first", "users", "pending", "-", "-"]
    assert "Add a unique email index" in lines[5]
    assert result.err == ""


def test_up_applies_everything_then_status_shows_when_and_checksums(cli: Cli) -> None:
    result = cli("up")
    assert result.code == 0, result.err
    assert f"Applied 3 migrations on '{cli.db.name}': version 0 -> 3" in result.out
    assert list(cli.db.users.find({}, {"_id": 0})) == [{"full_name": "Ada"}, {"full_name": "Alan"}]
    assert "email_1" in cli.db.users.index_information()
    rows = [line.split() for line in cli("status").out.splitlines()[3:6]]
    assert [(r[0], r[-3], r[-1]) for r in rows] == [("1", "applied", "ok"), ("2", "applied", "ok"),
                                                   ("3", "applied", "ok")]
    assert cli("up").out.strip() == f"Nothing to do: '{cli.db.name}' is at version 3."


def test_json_on_every_read_command(cli: Cli) -> None:
    before = cli("status", "--json").json()
    assert before["pending"] == [1, 2, 3] and before["current_version"] == 0
    assert cli("up", "2", "--json").json()["end_version"] == 2
    status = cli("--json", "status").json()
    assert set(status) == {"database", "current_version", "head_version", "pending", "healthy",
                           "migrations", "problems", "lock"}
    assert (status["current_version"], status["head_version"], status["pending"]) == (2, 3, [3])
    first = status["migrations"][0]
    assert first["status"] == "applied" and first["checksum_ok"] is True
    applied_at = datetime.fromisoformat(first["applied_at"].replace("Z", "+00:00"))
    assert applied_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - applied_at) < timedelta(minutes=5)
    plan = cli("plan", "--json").json()
    assert [(s["version"], s["direction"]) for s in plan["steps"]] == [(3, "up")]
    history = cli("history", "--json").json()
    assert [(e["version"], e["status"]) for e in history["entries"]] == [(2, "applied"),
                                                                        (1, "applied")]
    assert history["entries"][0]["started_at"].endswith("Z")
    assert cli("validate", "--json").json() == {"database": cli.db.name, "healthy": True,
                                                "problems": []}


HALFWAY = '''\
"""Name the items"""

from analytiq_migrations import Migration


class NameItems(Migration):
    transactional = False

    def up(self, db):
        def name(doc):
            if doc["n"] == 2:
                raise ValueError("item 2 has no number")
            return {"$set": {"name": f"item {doc['n']}"}}

        self.batch_update("items", {}, name, batch_size=1)
'''


def test_json_carries_checkpoints_and_lock_session_ids(cli: Cli) -> None:
    cli("up")
    ids = cli.db.items.insert_many([{"n": n} for n in range(4)]).inserted_ids
    cli.write("0004_name_items.py", HALFWAY)
    assert cli("up", "-q").code == 1
    hold_lock(cli.db, session_ids=[{"id": Binary(uuid.uuid4().bytes, 4)}])
    result = cli("status", "--json")
    assert result.code == 0, result.err
    status = result.json()
    row = status["migrations"][3]
    assert (row["version"], row["status"]) == (4, "failed")
    assert str(ids[1]) in json.dumps(row["progress"])  # the checkpoint: items 0 and 1 done
    uuid.UUID(status["lock"]["session_ids"][0]["id"])  # a UUID, decoded with our codec


def test_plan_shows_what_a_target_would_do_without_doing_it(cli: Cli) -> None:
    result = cli("plan")
    assert result.code == 0
    assert "up from version 0 to 3, 3 steps" in result.out
    assert [step["version"] for step in cli("plan", "+1", "--json").json()["steps"]] == [1]
    assert [step["version"] for step in cli("plan", "2", "--json").json()["steps"]] == [1, 2]
    assert cli.db.migrations.count_documents({}) == 0
    cli("up")
    down = cli("plan", "base", "--json").json()
    assert down["direction"] == "down"
    assert [step["version"] for step in down["steps"]] == [3, 2, 1]
    unknown = cli("plan", "9")
    assert unknown.code == 2
    assert "Unknown target version 9; known versions: 1, 2, 3" in unknown.err


def test_up_and_down_by_target(cli: Cli) -> None:
    assert cli("up", "1").code == 0
    assert cli("up", "+1", "--json").json()["end_version"] == 2
    assert cli("up", "head", "-q").code == 0
    down = cli("down", "-1")
    assert down.code == 0, down.err
    assert f"Reverted 1 migration on '{cli.db.name}': version 3 -> 2" in down.out
    assert "email_1" not in cli.db.users.index_information()
    assert cli("down", "base", "--json").json()["end_version"] == 0
    assert cli.db.users.count_documents({}) == 0
    missing_target = cli("down")
    assert missing_target.code == 2
    assert "the following arguments are required: TARGET" in missing_target.err


def test_history_of_one_version(cli: Cli) -> None:
    cli("up")
    cli("down", "1")
    result = cli("history", "2")
    assert result.code == 0
    rows = [line.split() for line in result.out.splitlines()[1:]]
    assert [(r[1], r[2], r[3]) for r in rows] == [("2", "down", "reverted"),
                                                  ("2", "up", "applied")]
    assert cli("history", "--limit", "1", "--json").json()["entries"][0]["status"] == \
        "rolled_back"


# -- problems and their repair --------------------------------------------------------------


def test_edited_applied_migration_is_drift_until_accepted(cli: Cli) -> None:
    cli("up")
    cli.write("0002_rename_name.py", RENAME_NAME.replace('"full_name"}', '"fullname"}', 1))
    assert "CHANGED" in cli("status").out
    validate = cli("validate")
    assert validate.code == 4
    assert "Migration 2 (Rename user.name to user.full_name) was changed after it was applied" \
        in validate.out
    assert "repair --accept-checksums" in validate.out
    assert cli("status", "--check").code == 4
    up = cli("up")
    assert up.code == 4
    drift = next(line for line in up.err.splitlines() if "error:" in line)
    assert drift.endswith("error: Migration 2 (Rename user.name to user.full_name) was changed "
                          "after it was applied (checksum " + drift.split("(checksum ")[1])
    assert drift.count("changed") == 1 and drift.endswith(" Nothing was run.")
    repair = cli("repair", "--accept-checksums")
    assert repair.code == 0
    assert "version 2: checksum" in repair.out
    assert cli("validate").code == 0
    assert cli("repair", "--accept-checksums").out.strip() == \
        f"Nothing to repair in '{cli.db.name}'."


def test_failed_migration_exits_1_then_needs_a_decision(cli: Cli) -> None:
    cli("up")
    cli.write("0004_split_addresses.py", BROKEN)
    failed = cli("up")
    assert failed.code == 1
    assert "Migration 4 (Split addresses) failed during 'up': RuntimeError: address format " \
           "not understood" in failed.err
    assert "repair --clear-failed" in failed.err
    again = cli("up")
    assert again.code == 4
    assert "may be half applied" in again.err
    assert cli("status", "--check").code == 4
    assert cli("repair", "--clear-failed").code == 0
    cli.write("0004_split_addresses.py", BROKEN.replace(
        '    raise RuntimeError("address format not understood")\n', ""))
    assert cli("up").code == 0
    assert cli("status", "--check").code == 0


def test_repair_needs_to_be_told_what_to_fix(cli: Cli) -> None:
    result = cli("repair")
    assert result.code == 2
    assert "--accept-checksums, --clear-failed and/or --accept-missing" in result.err


def test_baseline_adopts_an_existing_database(cli: Cli) -> None:
    cli.db.users.insert_many([{"_id": 1, "full_name": "Ada"}])
    result = cli("baseline", "2")
    assert result.code == 0, result.err
    assert f"Baselined 2 migrations on '{cli.db.name}': version 0 -> 2" in result.out
    statuses = [row["status"] for row in cli("status", "--json").json()["migrations"]]
    assert statuses == ["baselined", "baselined", "pending"]
    assert cli("up").code == 0
    assert cli.db.users.count_documents({}) == 1  # 1 and 2 were not run
    down = cli("baseline", "1")  # e.g. after restoring an older backup
    assert down.code == 0, down.err
    assert f"Marked reverted 2 migrations on '{cli.db.name}': version 3 -> 1" in down.out
    assert "Nothing was run" in down.out
    assert cli.db.users.find_one({"_id": 1}) == {"_id": 1, "full_name": "Ada"}
    assert cli("current").out == "1\n"


def test_current_prints_the_version_alone(cli: Cli) -> None:
    assert (cli("current").out, cli("current", "--json").json()) == \
        ("0\n", {"database": cli.db.name, "current_version": 0})
    cli("up", "2")
    result = cli("current")
    assert (result.code, result.out, result.err) == (0, "2\n", "")


def test_up_and_down_fake_record_without_running(cli: Cli) -> None:
    up = cli("up", "2", "--fake")
    assert up.code == 0, up.err
    assert f"Baselined 2 migrations on '{cli.db.name}': version 0 -> 2" in up.out
    assert "Nothing was run: only the records changed (faked: true)." in up.out
    assert cli.db.users.count_documents({}) == 0
    assert cli("up").code == 0  # 3 for real
    down = cli("down", "--fake", "base", "--json").json()
    assert (down["faked"], [s["version"] for s in down["steps"]]) == (True, [3, 2, 1])
    assert cli.db.users.index_information().get("email_1")  # down() of 3 did not run
    history = cli("history", "3")
    assert "reverted (faked)" in history.out
    assert cli.db.migrations_history.find_one({"version": 1})["faked"] is True


def test_show_one_version(cli: Cli) -> None:
    cli("up")
    cli.write("0004_split_addresses.py", BROKEN)
    assert cli("up").code == 1
    result = cli("show", "4")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"Version 4 in '{cli.db.name}': Split addresses"
    assert "  status        failed" in lines
    assert "  file          migrations/0004_split_addresses.py" in lines
    assert any(line.startswith("  last error") and "RuntimeError: address format not "
               "understood" in line for line in lines)
    assert "History (newest first):" in lines
    data = cli("show", "2", "--json").json()
    assert (data["status"], data["checksum_ok"], data["record"]["status"]) == \
        ("applied", True, "applied")
    assert [e["status"] for e in data["history"]] == ["applied"]
    cli.write("0002_rename_name.py", RENAME_NAME.replace('"full_name"}', '"fullname"}', 1))
    assert "CHANGED since it was applied" in cli("show", "2").out
    unknown = cli("show", "9")
    assert unknown.code == 2
    assert "Version 9 is neither in the code nor in the database" in unknown.err


# -- the gate ------------------------------------------------------------------------------


def test_status_check_for_deploy_gates(cli: Cli) -> None:
    pending = cli("status", "--check")
    assert pending.code == 6
    quiet = cli("status", "--check", "-q")
    assert (quiet.code, quiet.out) == (6, "")
    assert quiet.err.strip() == f"'{cli.db.name}' has pending migrations: 1, 2, 3"
    cli("up")
    ready = cli("status", "--check", "-q")
    assert (ready.code, ready.out, ready.err) == (0, "", "")
    cli.db.migrations.update_one({"_id": 3}, {"$set": {"checksum": "0" * 64}})
    unhealthy = cli("status", "--check", "-q")
    assert unhealthy.code == 4
    assert "was changed after it was applied" in unhealthy.err


# -- the lock ------------------------------------------------------------------------------


def test_busy_lock_exits_3_and_unlock_needs_force(cli: Cli) -> None:
    hold_lock(cli.db)
    busy = cli("up")
    assert busy.code == 3
    assert "The migration lock is held by deploy@web-7:4242/feedbeef (host web-7, pid 4242)" \
        in busy.err
    assert "--lock-wait" in busy.err
    assert cli("up", "--lock-wait", "0.3").code == 3
    assert "locked by deploy@web-7:4242/feedbeef" in cli("status").out
    assert cli("status", "--json").json()["lock"]["host"] == "web-7"
    refused = cli("unlock")
    assert refused.code == 3
    assert "unlock --force" in refused.err
    forced = cli("unlock", "--force")
    assert (forced.code, forced.out.strip()) == (0, "Removed the migration lock.")
    assert cli("unlock").out.strip() == "The migration lock was not held."
    assert cli("up", "-q").code == 0


def test_unlock_removes_an_expired_lease_without_force(cli: Cli) -> None:
    hold_lock(cli.db, expires_in=-60)
    assert "expired lock of deploy@web-7" in cli("status").out
    assert cli("unlock").out.strip() == "Removed the migration lock."


# -- options and output ---------------------------------------------------------------------


def test_options_go_before_or_after_the_command(cli: Cli) -> None:
    before = cli("--json", "--collection", "other_records", "plan", "2")
    after = cli("plan", "2", "--collection", "other_records", "--json")
    assert before.code == after.code == 0
    assert before.json() == after.json()
    assert cli("--collection", "other_records", "up", "1", "-q").code == 0
    assert cli.db.other_records.count_documents({}) == 1
    assert cli.db.migrations.count_documents({}) == 0
    mixed = cli("--database", "ignored_db", "status", "--database", cli.db.name, "--json")
    assert mixed.json()["database"] == cli.db.name


def test_quiet_prints_nothing_on_success(cli: Cli) -> None:
    for args in (["up", "-q"], ["-q", "status"], ["history", "-q"], ["-q", "validate"],
                 ["down", "base", "-q"], ["-q", "unlock"]):
        result = cli(*args)
        assert (result.code, result.out, result.err) == (0, "", ""), args
    failed = cli("-q", "up", "7")
    assert failed.code == 2 and failed.out == ""
    assert "Unknown target version 7" in failed.err


def test_usage_errors_exit_2(cli: Cli) -> None:
    for args, message in [
        ([], "the following arguments are required: COMMAND"),
        (["migrate"], "invalid choice: 'migrate'"),
        (["up", "--lock-wait", "soon"], "--lock-wait must be a number of seconds"),
        (["up", "--transactions", "sometimes"], "invalid choice: 'sometimes'"),
        (["history", "two"], "'two' is not a version"),
        (["-v", "status", "-q"], "-v and -q contradict each other"),
        (["up", "sideways"], "'sideways' is not a target"),
        (["status", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ]:
        result = cli(*args)
        assert result.code == 2, args
        assert message in result.err, (args, result.err)


def test_help_and_version_exit_0(cli: Cli) -> None:
    assert cli("--version").out.strip().startswith("analytiq-migrations ")
    helped = cli("up", "--help")
    assert helped.code == 0
    assert "--lock-wait SECONDS" in helped.out and "exit codes:" in helped.out


def test_missing_settings_exit_2_naming_every_way(cli: Cli,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clear_settings(monkeypatch)
    result = cli("status")
    assert result.code == 2
    assert "Missing settings: MongoDB URI, database name, migrations" in result.err
    for way in ("--uri", "MONGODB_URI", "[tool.analytiq_migrations]", "--database",
                "ANALYTIQ_MIGRATIONS_DATABASE", "URI's path", "ANALYTIQ_MIGRATIONS_SOURCE"):
        assert way in result.err
    uri_path = cli("status", "--uri", f"mongodb://127.0.0.1:{free_port()}/app")
    assert "Missing setting: migrations" in uri_path.err and "database" not in uri_path.err


def test_database_from_the_uri_path(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANALYTIQ_MIGRATIONS_DATABASE")
    scheme_host, query = cli.uri.split("?", 1) if "?" in cli.uri else (cli.uri, "")
    uri = f"{scheme_host.rstrip('/')}/{cli.db.name}" + (f"?{query}" if query else "")
    result = cli("up", "1", "--uri", uri, "--json")
    assert result.code == 0, result.err
    assert cli.db.migrations.count_documents({"status": "applied"}) == 1


def test_errors_with_json_are_a_document_too(cli: Cli) -> None:
    hold_lock(cli.db)
    result = cli("up", "--json")
    assert result.code == 3
    error = result.json()["error"]
    assert error["type"] == "LockBusyError" and error["exit_code"] == 3
    assert "deploy@web-7" in error["message"] and "--lock-wait" in error["hint"]
    assert "LockBusyError" not in result.err and "deploy@web-7" in result.err


def test_verbose_logs_settings_and_each_step(cli: Cli) -> None:
    result = cli("-v", "up", "1")
    assert result.code == 0
    assert "DEBUG settings:" in result.err
    assert "database = " + cli.db.name + " (environment variable ANALYTIQ_MIGRATIONS_DATABASE)" \
        in result.err
    assert "INFO Migration 1 (Create the first users): up" in result.err
    logged = [json.loads(line) for line in cli("up", "-v", "--json").err.splitlines()]
    assert {entry["logger"] for entry in logged} == {"analytiq_migrations"}
    assert any("Migration 2" in entry["message"] for entry in logged)


def test_long_batch_update_reports_progress_unless_quiet(cli: Cli) -> None:
    cli("up")
    cli.write("0004_backfill_active.py", BACKFILL)
    result = cli("up")
    assert result.code == 0, result.err
    assert "migration 4 users: done: 2 documents, 2 changed" in result.err
    cli.db.migrations.delete_one({"_id": 4})
    cli.db.users.update_many({}, {"$unset": {"active": ""}})
    quiet = cli("up", "-q")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
    assert cli.db.users.count_documents({"active": True}) == 2


# -- the application's own client --------------------------------------------------------------

APP_DB_MODULE = '''\
"""The application's data layer: one client for the whole process."""

import atexit
import os

from pymongo import MongoClient

client = MongoClient(os.environ["APP_MONGO_URI"])
database = client[os.environ["APP_DATABASE"]]
calls = []


def get_db():
    calls.append("get_db")
    return database


def not_a_client():
    return "mongodb://somewhere"


def broken():
    raise RuntimeError("settings not loaded")


if os.environ.get("APP_ATEXIT_FILE"):
    atexit.register(lambda: open(os.environ["APP_ATEXIT_FILE"], "w").write("ran"))
'''


@pytest.fixture
def app_module(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module ``appdb_<hex>`` in the project directory holding the app's own client;
    the URI the CLI would use is gone, so only that client can reach the server."""
    name = f"appdb_{uuid.uuid4().hex[:8]}"
    (cli.dir.parent / f"{name}.py").write_text(APP_DB_MODULE)
    monkeypatch.setenv("APP_MONGO_URI", cli.uri)
    monkeypatch.setenv("APP_DATABASE", cli.db.name)
    monkeypatch.delenv("MONGODB_URI")
    monkeypatch.delenv("ANALYTIQ_MIGRATIONS_DATABASE")
    yield name
    loaded = sys.modules.pop(name, None)
    if loaded is not None:
        loaded.client.close()


def test_client_names_the_apps_own_database_or_factory(cli: Cli, app_module: str) -> None:
    up = cli("up", "2", "--client", f"{app_module}:database")
    assert up.code == 0, up.err
    assert f"Applied 2 migrations on '{cli.db.name}'" in up.out
    module = sys.modules[app_module]
    assert module.client.admin.command("ping")["ok"] == 1  # theirs: still open after the run
    status = cli("status", "--json", "--client", f"{app_module}.get_db")  # dotted path too
    assert status.code == 0, status.err
    assert status.json()["current_version"] == 2
    assert module.calls == ["get_db"]


def test_client_from_the_environment_and_shown_by_verbose(
        cli: Cli, app_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_CLIENT", f"{app_module}:client")
    result = cli("-v", "up", "--database", cli.db.name)
    assert result.code == 0, result.err
    assert cli.db.migrations.count_documents({"status": "applied"}) == 3
    assert f"client = {app_module}:client (environment variable ANALYTIQ_MIGRATIONS_CLIENT)" \
        in result.err
    assert "client: MongoClient on 127.0.0.1:" in result.err


def test_a_uri_flag_beats_a_client_from_the_environment(
        cli: Cli, app_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_CLIENT", f"{app_module}:client")
    result = cli("status", "--json", "--uri", cli.uri, "--database", cli.db.name)
    assert result.code == 0, result.err
    assert app_module not in sys.modules  # not even imported


@pytest.mark.parametrize("ref, message", [
    ("appdb", "must look like MODULE:ATTR, not 'appdb'"),
    ("no_such_module_xyz:client", "Cannot import module 'no_such_module_xyz' named by --client"),
    ("{app}:clinet", "Module '{app}' has no attribute 'clinet' (--client '{app}:clinet')"),
    ("{app}:calls", "'{app}:calls' (--client) is a list, not a MongoClient or a Database"),
    ("{app}:not_a_client", "What '{app}:not_a_client' (--client) returned is a str, not a "
     "MongoClient or a Database"),
    ("{app}:broken", "Calling '{app}:broken' (--client) failed: RuntimeError: settings not "
     "loaded"),
])
def test_a_bad_client_exits_2_naming_it(cli: Cli, app_module: str, ref: str,
                                        message: str) -> None:
    result = cli("status", "--client", ref.format(app=app_module))
    assert result.code == 2, result.both
    assert message.format(app=app_module) in result.err
    assert "internal error" not in result.err and "Traceback" not in result.err


def test_a_user_client_as_a_real_process_runs_its_exit_handlers(
        tmp_path: Path, mongo_uri: str, db: Any) -> None:
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    (tmp_path / "appdb.py").write_text(APP_DB_MODULE)
    marker = tmp_path / "atexit-ran"
    env = {"ANALYTIQ_MIGRATIONS_CLIENT": "appdb:get_db", "ANALYTIQ_MIGRATIONS_SOURCE":
           "migrations", "APP_MONGO_URI": mongo_uri, "APP_DATABASE": db.name,
           "APP_ATEXIT_FILE": str(marker)}
    result = run_cli(["up"], cwd=tmp_path, env=env, module=False)
    assert result.code == 0, result.err
    assert "Applied 3 migrations" in result.out
    assert marker.read_text() == "ran"  # a normal exit: the app's atexit handler ran


def cli_module() -> Any:
    import analytiq_migrations.cli

    return analytiq_migrations.cli


# -- the server and credentials ---------------------------------------------------------------


def test_unreachable_server_exits_5_quickly_and_says_where(cli: Cli) -> None:
    port = free_port()
    uri = f"mongodb://deployer:Sup3r-Secret@127.0.0.1:{port}/app"
    result = cli("status", "--uri", uri, "--server-timeout", "0.2")
    assert result.code == 5
    # nothing listens: said at once (test_first_contact.py), not after the timeout
    assert f"Cannot reach MongoDB at 127.0.0.1:{port}: 127.0.0.1:{port}: connection refused" \
        in result.err
    assert "Sup3r-Secret" not in result.both


def test_passwords_never_appear_in_any_output(cli: Cli, client: Any) -> None:
    if "@" in cli.uri:
        pytest.skip("MONGODB_URI already carries credentials")
    user, password = f"cli_{uuid.uuid4().hex[:8]}", "Pa55-w0rd-in-the-uri"
    cli.db.command("createUser", user, pwd=password,
                   roles=[{"role": "dbOwner", "db": cli.db.name}])
    try:
        separator = "&" if "?" in cli.uri else "?"
        uri = with_credentials(cli.uri, user, password) + f"{separator}authSource={cli.db.name}"
        cli.write("0004_split_addresses.py", BROKEN.replace(
            "address format not understood", f"cannot reach {uri}"))
        outputs = [
            cli("--uri", uri, "-v", "up"),
            cli("--uri", uri, "status", "--json", "-v"),
            cli("--uri", uri, "history"),
            cli("--uri", uri, "validate", "--json"),
            cli("--uri", with_credentials(cli.uri, user, "wrong-" + password), "status"),
        ]
        assert [r.code for r in outputs] == [1, 0, 0, 4, 2]
        assert "Authentication failed on" in outputs[-1].err
        assert "cannot reach mongodb://***@" in outputs[0].err
        for result in outputs:
            assert password not in result.both
        stored = json.dumps(list(cli.db.migrations_history.find({}, {"_id": 0})), default=str)
        assert password not in stored
    finally:
        cli.db.command("dropUser", user)


# -- real processes ---------------------------------------------------------------------------


def console_script() -> str:
    """The installed ``analytiq-migrations`` script (next to this Python), else on PATH."""
    beside = Path(sys.executable).with_name("analytiq-migrations")
    found = str(beside) if beside.exists() else shutil.which("analytiq-migrations")
    if not found:
        pytest.skip("the analytiq-migrations console script is not installed")
    return found


def run_cli(args: list[str], *, cwd: Path, env: Optional[dict[str, str]] = None,
            module: bool = True) -> Result:
    """``python -m analytiq_migrations ARGS`` (or the console script) in a fresh process."""
    environ = child_env(env)
    for name in SETTING_VARIABLES:  # only what the test gives: not the suite's MONGODB_URI
        if name not in (env or {}):
            environ.pop(name, None)
    argv = [sys.executable, "-m", "analytiq_migrations"] if module else [console_script()]
    proc = subprocess.run(argv + args, cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_every_command_as_a_real_process_configured_by_the_environment(
        tmp_path: Path, mongo_uri: str, db: Any) -> None:
    env = {"MONGODB_URI": mongo_uri, "ANALYTIQ_MIGRATIONS_DATABASE": db.name,
           "ANALYTIQ_MIGRATIONS_SOURCE": "migrations"}

    def run(*args: str, module: bool = True) -> Result:
        return run_cli(list(args), cwd=tmp_path, env=env, module=module)

    new = run("new", "create", "users")
    assert new.code == 0, new.err
    assert new.out.strip().endswith("0001_create_users.py")
    write_migrations(tmp_path / "migrations", MIGRATIONS)  # replace the template with code
    assert "up from version 0 to 3, 3 steps" in run("plan").out
    up = run("up", module=False)
    assert up.code == 0, up.err
    assert "Applied 3 migrations" in up.out
    status = run("status", "--json").json()
    assert (status["current_version"], status["pending"], status["healthy"]) == (3, [], True)
    assert len(run("history", "--json").json()["entries"]) == 3
    assert run("validate").code == 0
    assert run("down", "-1").code == 0
    assert run("baseline", "3").code == 0
    assert db.migrations.find_one({"_id": 3})["status"] == "baselined"
    assert run("repair", "--clear-failed").out.strip() == f"Nothing to repair in '{db.name}'."
    assert run("unlock").out.strip() == "The migration lock was not held."


def test_a_run_of_library_code_only_exits_at_once_with_its_output_and_code(
        tmp_path: Path, mongo_uri: str, db: Any) -> None:
    # Such runs end with os._exit (no interpreter teardown): nothing may be lost.
    env = {"MONGODB_URI": mongo_uri, "ANALYTIQ_MIGRATIONS_DATABASE": db.name,
           "ANALYTIQ_MIGRATIONS_SOURCE": "migrations"}
    write_migrations(tmp_path / "migrations", MIGRATIONS)
    assert run_cli(["up", "-q"], cwd=tmp_path, env=env, module=False).code == 0
    noop = run_cli(["up"], cwd=tmp_path, env=env, module=False)
    assert (noop.code, noop.out.strip()) == (0, f"Nothing to do: '{db.name}' is at version 3.")
    status = run_cli(["status", "--json"], cwd=tmp_path, env=env, module=False)
    assert status.code == 0 and status.json()["current_version"] == 3
    db.migrations.update_one({"_id": 2}, {"$set": {"checksum": "0" * 64}})
    drift = run_cli(["validate"], cwd=tmp_path, env=env)
    assert drift.code == 4 and "was changed after it was applied" in drift.out + drift.err


def test_every_exit_code_as_a_real_process_configured_by_pyproject(
        tmp_path: Path, mongo_uri: str, db: Any) -> None:
    write_migrations(tmp_path / "db_migrations", MIGRATIONS)
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'shop'\n\n[tool.analytiq_migrations]\n"
        f"uri = {json.dumps(mongo_uri)}\ndatabase = {json.dumps(db.name)}\n"
        'migrations = "db_migrations"\nlock_wait = 0\n')

    def run(*args: str) -> Result:
        return run_cli(list(args), cwd=tmp_path)

    quiet = run("up", "-q")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")            # 0, and silent
    assert run("up", "--lock-wait").code == 2                            # 2: usage
    (tmp_path / "db_migrations" / "0004_split_addresses.py").write_text(BROKEN)
    assert run("up").code == 1                                           # 1: failed
    assert run("validate").code == 4                                     # 4: needs a decision
    hold_lock(db)
    busy = run("repair", "--clear-failed")
    assert busy.code == 3, busy.err                                      # 3: lock busy
    db.migration_lock.delete_many({})
    assert run("repair", "--clear-failed").code == 0
    (tmp_path / "db_migrations" / "0004_split_addresses.py").unlink()
    (tmp_path / "db_migrations" / "0004_fixed.py").write_text('def up(db):\n    pass\n')
    assert run("status", "--check").code == 6                            # 6: pending
    port = free_port()
    unreachable = run_python(
        """
        import sys
        from analytiq_migrations.cli import main
        code = main()
        print("frameworks:", sorted(m for m in ("flask", "django", "click") if m in sys.modules))
        sys.exit(code)
        """,
        env={"ANALYTIQ_MIGRATIONS_SERVER_TIMEOUT": "0.3",
             "MONGODB_URI": f"mongodb://ops:Hidden-Pa55@127.0.0.1:{port}/shop"},
        cwd=tmp_path, args=["up", "--uri", f"mongodb://ops:Hidden-Pa55@127.0.0.1:{port}/shop"],
    )
    assert unreachable.returncode == 5, unreachable.stderr                # 5: unreachable
    assert "frameworks: []" in unreachable.stdout
    assert "Hidden-Pa55" not in unreachable.stdout + unreachable.stderr


SLOW = '''\
"""Rebuild the search index"""

import time

transactional = False


def up(db):
    db.progress.insert_one({"_id": "started"})
    time.sleep(120)
'''


def test_sigterm_releases_the_lock_and_leaves_an_interrupted_record(
        tmp_path: Path, mongo_uri: str, db: Any) -> None:
    write_migrations(tmp_path / "migrations", {**MIGRATIONS, "0004_rebuild.py": SLOW})
    env = child_env({"MONGODB_URI": mongo_uri, "ANALYTIQ_MIGRATIONS_DATABASE": db.name,
                     "ANALYTIQ_MIGRATIONS_SOURCE": "migrations"})
    proc = subprocess.Popen([sys.executable, "-m", "analytiq_migrations", "up"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: db.progress.find_one({"_id": "started"}), timeout=60,
                 message="the slow migration never started")
        assert db.migration_lock.find_one({"_id": "migration_lock"}) is not None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143
    assert "terminated (SIGTERM). Any lock this run held was released" in err
    assert db.migration_lock.find_one({"_id": "migration_lock"}) is None
    rows = Migrator(db, str(tmp_path / "migrations")).status()
    assert [(row.version, row.status) for row in rows] == [
        (1, "applied"), (2, "applied"), (3, "applied"), (4, "interrupted")]


def test_sigterm_during_up_json_still_prints_the_json_of_what_was_done(
        tmp_path: Path, mongo_uri: str, db: Any) -> None:
    write_migrations(tmp_path / "migrations", {**MIGRATIONS, "0004_rebuild.py": SLOW})
    env = child_env({"MONGODB_URI": mongo_uri, "ANALYTIQ_MIGRATIONS_DATABASE": db.name,
                     "ANALYTIQ_MIGRATIONS_SOURCE": "migrations"})
    proc = subprocess.Popen([sys.executable, "-m", "analytiq_migrations", "up", "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: db.progress.find_one({"_id": "started"}), timeout=60,
                 message="the slow migration never started")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143
    report = json.loads(out)
    assert report["interrupted"]["signal"] == "SIGTERM"
    assert report["interrupted"]["exit_code"] == 143
    assert "lock this run held was released" in report["interrupted"]["message"]
    assert report["direction"] == "up"
    assert [(s["version"], s["status"]) for s in report["steps"]] == [
        (1, "applied"), (2, "applied"), (3, "applied")]
    assert report["end_version"] == 3
