"""The pytest plugin: its fixtures in this suite (whose conftest overrides ``mongo_uri``
and ``mongo_server``), and a user's project run by pytest in a child process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from pymongo import MongoClient

from analytiq_migrations import pytest_plugin
from analytiq_migrations.checks import MigrationRunner
from analytiq_migrations.snapshot import take_snapshot
from analytiq_migrations.testing import client_options

MIGRATIONS = {
    "0001_index_email.py": '''
        """Index users by email."""
        transactional = False

        def up(db):
            db.users.create_index("email", unique=True)

        def down(db):
            db.users.drop_index("email_1")
    ''',
    "0002_split_name.py": '''
        """Split users.name into first and last."""

        def up(db):
            for user in db.users.find({"name": {"$exists": True}}):
                first, _, last = user["name"].partition(" ")
                db.users.update_one({"_id": user["_id"]},
                                    {"$set": {"first": first, "last": last},
                                     "$unset": {"name": ""}})

        def down(db):
            for user in db.users.find({"first": {"$exists": True}}):
                db.users.update_one({"_id": user["_id"]},
                                    {"$set": {"name": user["first"]},
                                     "$unset": {"first": "", "last": ""}})
    ''',
    "0003_add_status.py": '''
        """Every user gets a status."""
        idempotent = True

        def up(db):
            db.users.update_many({"status": {"$exists": False}}, {"$set": {"status": "active"}})

        def down(db):
            db.users.update_many({}, {"$unset": {"status": ""}})
    ''',
}

FIXED_DOWN = '''
        def down(db):
            for user in db.users.find({"first": {"$exists": True}}):
                db.users.update_one({"_id": user["_id"]},
                                    {"$set": {"name": f"{user['first']} {user['last']}"},
                                     "$unset": {"first": "", "last": ""}})
'''

CONFTEST = '''
    import pytest

    @pytest.fixture
    def migration_seed():
        return {2: {"users": [{"name": "Ada Lovelace", "email": "ada@example.com"}]}}
'''

USER_TEST = '''
    def test_split_name_keeps_both_parts(migration_runner):
        migration_runner.migrate_up_to(1)
        migration_runner.insert("users", [{"name": "Alan Turing", "email": "alan@example.com"}])
        migration_runner.migrate_up_one()
        user = migration_runner.db.users.find_one({}, {"_id": 0})
        assert user == {"email": "alan@example.com", "first": "Alan", "last": "Turing"}
'''


def write_project(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: three migrations (v2's down is lossy), a seed, one own test."""
    files = {f"migrations/{name}": text for name, text in MIGRATIONS.items()}
    files["pyproject.toml"] = '[tool.analytiq_migrations]\nsource = "migrations"\n'
    files["tests/conftest.py"] = CONFTEST
    files["tests/test_users.py"] = USER_TEST
    return write_project(tmp_path / "project", files)


def run_pytest(project: Path, *args: str, env: Optional[Dict[str, str]] = None
               ) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    child_env.pop("MONGODB_URI", None)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=str(project), env=child_env, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------
# a user's project, run by pytest
# --------------------------------------------------------------------------------------


def test_the_checks_catch_a_lossy_down_until_it_is_fixed(project: Path, mongo_uri: str) -> None:
    done = run_pytest(project, "--analytiq-migrations", "--mongo-uri", mongo_uri, "-rf")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 5 passed" in done.stdout
    assert ("FAILED tests/conftest.py::analytiq_migrations::downgrade_leaves_no_trace"
            in done.stdout)
    assert "v2: collection 'users' differs after up and down" in done.stdout
    assert 'name: "Ada Lovelace" -> "Ada"' in done.stdout

    split = project / "migrations" / "0002_split_name.py"
    text = split.read_text()
    split.write_text(text[: text.index("def down")] + textwrap.dedent(FIXED_DOWN).lstrip())
    done = run_pytest(project, "--analytiq-migrations", "--mongo-uri", mongo_uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


def test_the_fixtures_leave_no_database_behind(project: Path, mongo_uri: str) -> None:
    client: Any = MongoClient(mongo_uri, **client_options(mongo_uri))
    try:
        before = set(client.list_database_names())
        done = run_pytest(project, env={"MONGODB_URI": mongo_uri})
        after = set(client.list_database_names())
    finally:
        client.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout  # the user's own test; no check without the flag
    assert after == before


def test_without_a_uri_the_plugin_starts_its_own_server(project: Path) -> None:
    pytest.importorskip("secantus", reason="the plugin's own server is SecantusDB")
    done = run_pytest(project, "--analytiq-migrations", "-k", "upgrade_from_empty or users")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_a_project_without_conftest_still_gets_the_checks(tmp_path: Path,
                                                          mongo_uri: str) -> None:
    files = {f"migrations/{name}": text for name, text in MIGRATIONS.items()}
    files["pytest.ini"] = "[pytest]\nanalytiq_migrations_source = migrations\n"
    project = write_project(tmp_path / "bare", files)
    done = run_pytest(project, "--analytiq-migrations", "--mongo-uri", mongo_uri, "-rA")
    # No seed: the lossy down has nothing to lose, so every check passes.
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED analytiq_migrations::downgrade_leaves_no_trace" in done.stdout


def test_no_migrations_configured_says_how_to(tmp_path: Path, mongo_uri: str) -> None:
    project = write_project(tmp_path / "empty", {"tests/test_x.py": USER_TEST})
    done = run_pytest(project, "--mongo-uri", mongo_uri)
    assert done.returncode == 1
    assert "migrations_source: no migrations configured: set analytiq_migrations_source" \
        in done.stdout


# --------------------------------------------------------------------------------------
# the fixtures in this suite
# --------------------------------------------------------------------------------------


@pytest.fixture
def migrations_source(tmp_path: Path) -> str:
    files = {name: text for name, text in MIGRATIONS.items()}
    return str(write_project(tmp_path / "migrations", files))


def test_migration_runner_steps_one_at_a_time(migration_runner: MigrationRunner) -> None:
    users = [{"name": "Ada Lovelace", "email": "ada@example.com"}]
    migration_runner.insert("users", users)
    assert users == [{"name": "Ada Lovelace", "email": "ada@example.com"}]  # not given _ids
    assert migration_runner.migrate_up_one().versions == [1]
    assert migration_runner.migrate_up_to(3).versions == [2, 3]
    assert migration_runner.current_version() == 3
    at_head = migration_runner.snapshot()
    assert sorted(at_head.collections) == ["users"]  # the library's own are left out
    assert [{k: v for k, v in d.items() if k != "_id"} for d in at_head["users"].documents] == [
        {"email": "ada@example.com", "first": "Ada", "last": "Lovelace", "status": "active"}]
    assert migration_runner.migrate_down_one().versions == [3]
    assert migration_runner.migrate_down_to(0).versions == [2, 1]
    assert migration_runner.current_version() == 0


def test_mongo_db_is_a_fresh_database(mongo_db: Any, mongo_uri: str, db: Any) -> None:
    assert mongo_db.list_collection_names() == []
    assert mongo_db.name != db.name
    assert mongo_db.client.address == db.client.address  # this suite's server


def test_snapshots_compare_data_indexes_and_validators(mongo_db: Any) -> None:
    mongo_db.users.insert_one({"_id": 1, "name": "Ada", "email": "ada@example.com"})
    before = take_snapshot(mongo_db)
    mongo_db.users.update_one({"_id": 1}, {"$rename": {"name": "full_name"}})
    mongo_db.users.update_one({"_id": 1}, {"$rename": {"full_name": "name"}})
    assert take_snapshot(mongo_db) == before  # field order is not a difference

    mongo_db.users.update_one({"_id": 1}, {"$set": {"name": 1.0}})
    mongo_db.users.create_index("email")
    mongo_db.create_collection("orders", validator={"$jsonSchema": {"required": ["total"]}})
    after = take_snapshot(mongo_db)
    assert after != before
    assert before.differing_collections(after) == ["orders", "users"]
    assert before.diff(after).splitlines() == [
        "collection 'orders': only after (0 documents, 1 index)",
        "collection 'users':",
        "  document _id 1 changed:",
        '    name: "Ada" -> 1.0',
        "  index 'email_1' only after: {\"key\": {\"email\": 1}}",
    ]


def test_a_failed_snapshot_assertion_shows_the_diff(mongo_db: Any) -> None:
    before = take_snapshot(mongo_db)
    mongo_db.users.insert_one({"_id": 7})
    lines = pytest_plugin.pytest_assertrepr_compare("==", before, take_snapshot(mongo_db))
    assert lines == ["snapshots differ:", "collection 'users': only after (1 document, 1 index)"]


def test_without_the_server_extra_mongo_server_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "secantus" else real_find_spec(name, *a))
    with pytest.raises(pytest.fail.Exception) as failed:
        pytest_plugin._start_server()
    assert str(failed.value) == (
        "mongo_server: no MongoDB server given and the embedded one is not installed: pip "
        "install 'analytiq_migrations[server]' (Python 3.10+), or pass --mongo-uri URI (or "
        "set MONGODB_URI)")


# --------------------------------------------------------------------------------------
# a host suite that does not use the plugin: installing the library never breaks it
# --------------------------------------------------------------------------------------

HOST_TEST = '''
    def test_the_app_still_works():
        assert 1 + 1 == 2
'''


def test_a_host_suite_runs_with_the_plugin_and_without_it(tmp_path: Path) -> None:
    host = write_project(tmp_path / "host", {"tests/test_app.py": HOST_TEST})
    done = run_pytest(host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout

    # Switched off for a suite that wants nothing of it (docs/testing-your-migrations.md).
    off = run_pytest(host, "-p", "no:analytiq_migrations")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "1 passed" in off.stdout
    refused = run_pytest(host, "-p", "no:analytiq_migrations", "--analytiq-migrations")
    assert refused.returncode != 0
    assert "--analytiq-migrations" in refused.stderr  # an unknown option once it is off
