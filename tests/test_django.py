"""Django: the `mongo_migrations` management command in a minimal real project
(``tests/django_project``), through ``call_command`` and through ``manage.py``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from pymongo.client_session import ClientSession
from support import child_env

django = pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parent / "django_project"


#: The app's own client joins the run's transaction through ``ClientSession.bind()``
#: (pymongo 4.17+). Older pymongo puts only the calls on the migration's ``db`` argument in
#: it: writes through the app's data layer then commit on their own (docs/flask.md says so).
needs_bind = pytest.mark.skipif(
    not hasattr(ClientSession, "bind"),
    reason="writes through the app's own client join the transaction with pymongo 4.17+")

CREATE_USERS = '''\
"""Create the first users"""


def up(db):
    db.users.insert_many([{"_id": 1, "name": "Ada"}, {"_id": 2, "name": "Alan"}])


def down(db):
    db.users.delete_many({})
'''


@pytest.fixture(scope="module", autouse=True)
def django_project() -> None:
    """Set the test project up once, as ``manage.py`` would."""
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testsite.settings")
    django.setup()


@pytest.fixture
def migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                 "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "mongo_migrations"
    directory.mkdir()
    (directory / "0001_create_users.py").write_text(CREATE_USERS)
    return directory


@pytest.fixture
def configured(migrations: Path, mongo_uri: str, db: Any) -> Iterator[None]:
    """``settings.ANALYTIQ_MIGRATIONS`` pointing at the test database."""
    from django.test import override_settings

    with override_settings(ANALYTIQ_MIGRATIONS={
        "URI": mongo_uri, "DATABASE": db.name, "SOURCE": str(migrations),
    }):
        yield


def call(*args: str) -> tuple[str, str]:
    """``call_command("mongo_migrations", *args)``; returns (stdout, stderr)."""
    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    call_command("mongo_migrations", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_status_and_up_with_settings_from_django(configured: Any, db: Any) -> None:
    out, _ = call("status")
    assert f"Database '{db.name}' at version 0 (latest 1): 1 pending" in out
    out, _ = call("up")
    assert "Applied 1 migration" in out
    assert db.users.count_documents({}) == 2


def test_a_database_setting_that_disagrees_with_the_uri_is_warned_about(
        migrations: Path, mongo_uri: str, db: Any) -> None:
    from django.test import override_settings

    base, _, query = mongo_uri.partition("?")
    uri = f"{base.rstrip('/')}/other_db" + (f"?{query}" if query else "")
    with override_settings(ANALYTIQ_MIGRATIONS={
            "URI": uri, "DATABASE": db.name, "SOURCE": str(migrations)}):
        out, err = call("status")
    assert f"Database '{db.name}'" in out  # DATABASE wins, as before...
    assert f"settings.ANALYTIQ_MIGRATIONS['DATABASE'] is '{db.name}' but its URI names the " \
        "database 'other_db'" in err  # ...but not silently


def test_options_before_the_command_and_the_command_lines_own_v(configured: Any) -> None:
    out, err = call("--json", "-v", "plan")
    assert [step["version"] for step in json.loads(out)["steps"]] == [1]
    first_log = json.loads(err.splitlines()[0])
    assert first_log["level"] == "debug"
    assert "(settings.ANALYTIQ_MIGRATIONS['DATABASE'])" in first_log["message"]


def test_a_non_zero_exit_is_a_command_error_with_the_code(configured: Any) -> None:
    from django.core.management import CommandError

    with pytest.raises(CommandError) as caught:
        call("status", "--check", "-q")
    assert caught.value.returncode == 6
    call("up", "-q")
    assert call("status", "--check", "-q") == ("", "")


def test_flags_beat_settings_which_beat_the_environment(
        configured: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.conf import settings
    from django.test import override_settings

    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_COLLECTION", "env_records")
    with override_settings(ANALYTIQ_MIGRATIONS={**settings.ANALYTIQ_MIGRATIONS,
                                                "COLLECTION": "django_records"}):
        call("up", "-q")
        call("down", "base", "-q", "--collection", "flag_records")  # nothing there to revert
    assert db.django_records.count_documents({"status": "applied"}) == 1
    assert "env_records" not in db.list_collection_names()


def test_unknown_settings_key_is_a_configuration_error(migrations: Path) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    err = io.StringIO()
    bad = {"URI": "mongodb://localhost/", "LOCKWAIT": 3}
    with override_settings(ANALYTIQ_MIGRATIONS=bad), pytest.raises(CommandError) as caught:
        call_command("mongo_migrations", "status", stdout=io.StringIO(), stderr=err)
    assert caught.value.returncode == 2
    assert "Unknown key(s) in settings.ANALYTIQ_MIGRATIONS: LOCKWAIT" in err.getvalue()
    assert "LOCK_WAIT" in err.getvalue()


def test_manage_py_as_a_real_process(migrations: Path, mongo_uri: str, db: Any) -> None:
    env = child_env({"TESTSITE_MONGO_URI": mongo_uri, "TESTSITE_MONGO_DATABASE": db.name,
                     "TESTSITE_MIGRATIONS": str(migrations)})
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("MONGODB_URI", None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", "mongo_migrations", *args],
                              cwd=PROJECT, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    up = manage("up", "-q", "--settings", "testsite.settings")
    assert (up.returncode, up.stdout, up.stderr) == (0, "", "")
    status = manage("--json", "status", "--check")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["current_version"] == 1


SAVE_WITH_MONGOENGINE = '''\
"""Create the first customer with the project's MongoEngine model"""

import mongoengine


class Customer(mongoengine.Document):
    name = mongoengine.StringField()
    meta = {"collection": "customers"}


def up(db):
    Customer(name="Ada").save()
'''


def test_a_django_mongoengine_project_migrates_on_its_connection(
        migrations: Path, mongo_uri: str, db: Any) -> None:
    pytest.importorskip("django_mongoengine")
    (migrations / "0002_first_customer.py").write_text(SAVE_WITH_MONGOENGINE)
    env = child_env({"TESTSITE_MONGO_URI": mongo_uri, "TESTSITE_MONGO_DATABASE": db.name,
                     "TESTSITE_MIGRATIONS": str(migrations),
                     "DJANGO_SETTINGS_MODULE": "testsite.settings_mongoengine"})
    env.pop("MONGODB_URI", None)
    up = subprocess.run([sys.executable, "manage.py", "mongo_migrations", "up", "-v"],
                        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120,
                        stdin=subprocess.DEVNULL)
    assert up.returncode == 0, up.stderr
    assert "mongoengine.connection.get_db" in up.stderr  # -v: the client it used
    assert [c["name"] for c in db.customers.find()] == ["Ada"]
    assert db.migrations.count_documents({"status": "applied"}) == 2


# -- the project's own client ---------------------------------------------------------------

#: A migration through the project's data layer that fails after writing.
WRITES_THEN_FAILS = '''\
"""Give every user a plan"""

from testsite.mongo import get_db


def up(db):
    get_db().users.update_many({}, {"$set": {"plan": "free"}})
    get_db().plans.insert_one({"_id": "free"})
    raise RuntimeError("plans not priced yet")
'''


@pytest.fixture
def project_client(migrations: Path, mongo_uri: str, db: Any,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``CLIENT`` naming the project's ``get_db``; no URI anywhere in the settings."""
    import testsite.mongo
    from django.test import override_settings

    monkeypatch.setenv("TESTSITE_APP_URI", mongo_uri)
    monkeypatch.setenv("TESTSITE_APP_DATABASE", db.name)
    with override_settings(ANALYTIQ_MIGRATIONS={
        "CLIENT": "testsite.mongo.get_db", "SOURCE": str(migrations),
    }):
        yield
    if testsite.mongo._client is not None:
        testsite.mongo._client.close()
        testsite.mongo._client = None


def test_client_setting_names_the_projects_database(project_client: Any, db: Any) -> None:
    out, _ = call("status")
    assert f"Database '{db.name}' at version 0 (latest 1): 1 pending" in out
    out, err = call("up", "-v")
    assert "Applied 1 migration" in out
    assert "client = testsite.mongo.get_db (settings.ANALYTIQ_MIGRATIONS['CLIENT'])" in err
    assert db.users.count_documents({}) == 2
    out, _ = call("down", "base")
    assert "Reverted 1 migration" in out
    assert db.users.count_documents({}) == 0


@needs_bind
def test_writes_through_the_projects_client_roll_back(project_client: Any, db: Any,
                                                      migrations: Path) -> None:
    from django.core.management import CommandError

    call("up", "-q")
    (migrations / "0002_plans.py").write_text(WRITES_THEN_FAILS)
    with pytest.raises(CommandError) as caught:
        call("up")
    assert caught.value.returncode == 1
    assert db.users.count_documents({"plan": {"$exists": True}}) == 0
    assert "plans" not in db.list_collection_names()


def test_fake_up_and_down(project_client: Any, db: Any) -> None:
    out, _ = call("up", "--fake")
    assert "Baselined 1 migration" in out and "Nothing was run" in out
    assert db.users.count_documents({}) == 0
    assert db.migrations.find_one({"_id": 1})["faked"] is True
    call("up", "-q", "--fake")  # nothing left to record
    out, _ = call("down", "--fake", "base")
    assert "Marked reverted 1 migration" in out
    assert db.migrations.find_one({"_id": 1})["status"] == "rolled_back"


def test_a_bad_client_path_exits_2_naming_it(migrations: Path) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    err = io.StringIO()
    with override_settings(ANALYTIQ_MIGRATIONS={"CLIENT": "testsite.mongo.get_dbb",
                                                "SOURCE": str(migrations)}), \
            pytest.raises(CommandError) as caught:
        call_command("mongo_migrations", "status", stdout=io.StringIO(), stderr=err)
    assert caught.value.returncode == 2
    assert "Module 'testsite.mongo' has no attribute 'get_dbb' " \
        "(settings.ANALYTIQ_MIGRATIONS['CLIENT'] 'testsite.mongo.get_dbb')" in err.getvalue()


#: A migration through MongoEngine documents that fails after saving one.
MONGOENGINE_SAVES_THEN_FAILS = '''\
"""Seed the first customer"""

import mongoengine


class Customer(mongoengine.Document):
    name = mongoengine.StringField()
    meta = {"collection": "customers"}


def up(db):
    Customer(name="Grace").save()
    raise RuntimeError("no address for Grace")
'''


def test_mongoengine_connection_as_the_client(migrations: Path, mongo_uri: str,
                                              db: Any) -> None:
    mongoengine = pytest.importorskip("mongoengine")
    from django.test import override_settings

    # What a project's AppConfig.ready() (or django-mongoengine's) has done by now.
    mongoengine.connect(db=db.name, host=mongo_uri, uuidRepresentation="standard")
    try:
        with override_settings(ANALYTIQ_MIGRATIONS={
            "CLIENT": "mongoengine.connection.get_db", "SOURCE": str(migrations),
        }):
            out, err = call("up", "-v")
        assert "Applied 1 migration" in out
        assert f"client: database '{db.name}' on 127.0.0.1:" in err
        assert db.users.count_documents({}) == 2
    finally:
        mongoengine.disconnect_all()


@needs_bind
def test_mongoengine_saves_roll_back_with_the_migration(migrations: Path, mongo_uri: str,
                                                        db: Any) -> None:
    mongoengine = pytest.importorskip("mongoengine")
    from django.core.management import CommandError
    from django.test import override_settings

    (migrations / "0002_customers.py").write_text(MONGOENGINE_SAVES_THEN_FAILS)
    mongoengine.connect(db=db.name, host=mongo_uri, uuidRepresentation="standard")
    try:
        with override_settings(ANALYTIQ_MIGRATIONS={
            "CLIENT": "mongoengine.connection.get_db", "SOURCE": str(migrations),
        }), pytest.raises(CommandError) as caught:
            call("up")
        assert caught.value.returncode == 1
        assert db.customers.count_documents({}) == 0  # the save was in the transaction
        assert db.migrations.find_one({"_id": 2})["status"] == "failed"
    finally:
        mongoengine.disconnect_all()


def test_unset_environment_breaks_only_the_migrations_command(migrations: Path) -> None:
    # settings.py reads os.environ.get(...): other manage.py commands keep working.
    env = child_env()
    for name in ("DJANGO_SETTINGS_MODULE", "MONGODB_URI", "TESTSITE_MONGO_URI",
                 "TESTSITE_MONGO_CLIENT", "TESTSITE_MONGO_DATABASE", "TESTSITE_MIGRATIONS"):
        env.pop(name, None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    assert manage("check").returncode == 0
    status = manage("mongo_migrations", "status")
    assert status.returncode == 2
    assert "Missing settings: MongoDB URI" in status.stderr
    assert "settings.ANALYTIQ_MIGRATIONS['URI']" in status.stderr
    assert "Traceback" not in status.stderr
