"""Every hint speaks the language of the entry point that shows it: flags and verbs on
the command line (``--on-drift warn``, ``down 0``, ``repair --clear-failed``), arguments
and methods to Python code (``on_drift='warn'``, ``downgrade(0)``,
``repair(clear_failed=True)``)."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from analytiq_migrations import (
    ChecksumDriftError,
    ConfigurationError,
    FailedMigrationError,
    LockBusyError,
    Migrator,
)
from analytiq_migrations.cli import run

#: Python spellings that must never reach command-line output.
PYTHON_SPELLINGS = ("on_drift=", "downgrade(", "upgrade(", "repair(", "lock_wait=",
                    "lock_ttl.", "allow_out_of_order=", "transactions='", "fake=True",
                    "unlock(")

ADD_USERS = '''\
    """Add users"""


    def up(db):
        db.users.insert_one({"_id": 1})


    def down(db):
        db.users.delete_one({"_id": 1})
    '''

HALF_DONE = '''\
    """Copy users, then fail halfway (no transaction)"""

    transactional = False


    def up(db):
        db.copies.insert_one({"_id": 1})
        raise RuntimeError("disk full")
    '''


class Project:
    """A migrations directory and the command line pointed at this test's database."""

    def __init__(self, tmp_path: Path, uri: str, db: Any) -> None:
        self.dir = tmp_path / "migrations"
        self.dir.mkdir()
        self.uri, self.db = uri, db

    def write(self, name: str, text: str) -> None:
        (self.dir / name).write_text(textwrap.dedent(text))

    def cli(self, *args: str, prog: str = "analytiq-migrations") -> tuple[int, str]:
        """Run a command; returns its exit code and everything it printed."""
        out, err = _Buffer(), _Buffer()
        code = run([*args, "--uri", self.uri, "--database", self.db.name, "--migrations",
                    str(self.dir)], prog=prog, stdout=out, stderr=err)  # type: ignore[arg-type]
        return code, out.text + err.text

    def migrator(self, **options: Any) -> Migrator:
        return Migrator(self.db, str(self.dir), **options)


class _Buffer:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def project(tmp_path: Path, mongo_uri: str, db: Any) -> Project:
    return Project(tmp_path, mongo_uri, db)


def no_python(output: str) -> None:
    spoken = [s for s in PYTHON_SPELLINGS if s in output]
    assert not spoken, f"Python spelling {spoken} in command-line output:\n{output}"


def test_drift_hint(project: Project) -> None:
    project.write("0001_add_users.py", ADD_USERS)
    assert project.cli("up")[0] == 0
    project.write("0001_add_users.py", ADD_USERS.replace('{"_id": 1}', '{"_id": 2}', 1))
    project.write("0002_more.py", ADD_USERS.replace("users", "admins"))

    code, output = project.cli("up")
    assert code == 4
    assert "`analytiq-migrations repair --accept-checksums`" in output
    assert "or run with --on-drift warn." in output
    no_python(output)

    with pytest.raises(ChecksumDriftError) as drift:
        project.migrator().upgrade()
    assert "on_drift='warn'" in str(drift.value)
    assert "repair(accept_checksums=True)" in str(drift.value)


def test_target_hints(project: Project) -> None:
    project.write("0001_add_users.py", ADD_USERS)
    project.write("0002_more.py", ADD_USERS.replace("users", "admins"))
    assert project.cli("up", "1")[0] == 0

    code, output = project.cli("down", "2")
    assert code == 2 and "Use `analytiq-migrations up 2` to go forward." in output
    no_python(output)
    assert project.cli("up")[0] == 0
    code, output = project.cli("up", "1")
    assert code == 2 and "Use `analytiq-migrations down 1` to go back." in output
    no_python(output)
    code, output = project.cli("up", "--fake", "1")
    assert code == 2 and "Use `down --fake 1` to record going back." in output
    no_python(output)

    with pytest.raises(ConfigurationError, match=r"Use downgrade\(1\)"):
        project.migrator().upgrade(1)
    with pytest.raises(ConfigurationError, match=r"downgrade\(1, fake=True\)"):
        project.migrator().upgrade(1, fake=True)


def test_half_applied_failure_hints(project: Project) -> None:
    project.write("0001_half_done.py", HALF_DONE)
    assert project.cli("up")[0] == 1

    for command, exit_code in ((["up"], 4), (["status"], 0), (["validate"], 4),
                               (["status", "--check"], 4)):
        code, output = project.cli(*command)
        assert code == exit_code, command
        assert "`analytiq-migrations repair --clear-failed`" in output, command
        no_python(output)

    with pytest.raises(FailedMigrationError) as failed:
        project.migrator().upgrade()
    assert "repair(clear_failed=True)" in str(failed.value)


def test_lock_hints(project: Project, db: Any) -> None:
    project.write("0001_add_users.py", ADD_USERS)
    now = datetime.now(timezone.utc)
    db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "deploy@web-7:4242/feedbeef", "run_id": "feedbeef",
        "host": "web-7", "pid": 4242, "locked_at": now, "heartbeat_at": now,
        "expires_at": now + timedelta(minutes=10)})

    code, output = project.cli("up")
    assert code == 3 and "wait for the lock with --lock-wait SECONDS." in output
    assert "`analytiq-migrations unlock --force`" in output
    no_python(output)
    code, output = project.cli("unlock")
    assert code == 3 and "`analytiq-migrations unlock --force`" in output
    no_python(output)
    # Under another program (the Flask or Django command), hints name that program.
    code, output = project.cli("up", prog="flask migrations")
    assert code == 3 and "`flask migrations unlock --force`" in output

    with pytest.raises(LockBusyError, match="lock_wait=SECONDS"):
        project.migrator().upgrade()
    with pytest.raises(LockBusyError, match=r"unlock\(force=True\)"):
        project.migrator().unlock()


def test_hints_name_the_apps_own_program(project: Project, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    # A Flask app with a command line of its own (`portal migrations ...`, a FlaskGroup
    # console script): hints name what the user typed, not `flask migrations`.
    flask = pytest.importorskip("flask")
    from click.testing import CliRunner
    from flask.cli import FlaskGroup

    from analytiq_migrations.contrib.flask import init_app

    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                 "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_CLIENT"):
        monkeypatch.delenv(name, raising=False)
    project.write("0001_half_done.py", HALF_DONE)

    def create_app() -> Any:
        app = flask.Flask("portal")
        app.config.update(MONGO_URI=project.uri, ANALYTIQ_MIGRATIONS_DATABASE=project.db.name,
                          ANALYTIQ_MIGRATIONS_SOURCE=str(project.dir))
        init_app(app)
        return app

    portal = FlaskGroup(create_app=create_app)
    runner = CliRunner()
    assert runner.invoke(portal, ["migrations", "up"], prog_name="portal").exit_code == 1
    result = runner.invoke(portal, ["migrations", "status"], prog_name="portal")
    assert "`portal migrations repair --clear-failed`" in result.output, result.output
    assert "flask migrations" not in result.output
    no_python(result.output)
