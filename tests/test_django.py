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
from support import child_env

django = pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parent / "django_project"

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
