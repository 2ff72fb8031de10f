"""Start-up upgrades beyond `flask run` and WSGI servers: a serve command of the app's own
(it calls `upgrade(app)`), Flask-Script's `manage.py` (only its server upgrades), an INFO
line whichever way it goes, and a failure that the workers starting after it do not repeat."""
# ruff: noqa: F811 (the fixtures of test_flask, imported by name)

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
from support import child_env, free_port, wait_for
from test_flask import (  # noqa: F401
    SETTING_VARIABLES,
    ShopApp,
    pymongo_shop,
    shop_factory,
)

flask = pytest.importorskip("flask")

from analytiq_migrations import MigrationFailedError, Migrator  # noqa: E402

SERVE_COMMANDS = '''

from analytiq_migrations.contrib.flask import upgrade


def add_commands(app):
    @app.cli.command("serve")
    def serve():
        """The app's own server command: upgrade first, then serve."""
        upgrade(app)

    @app.cli.command("cleanup")
    def cleanup():
        """A maintenance command."""
'''

FAILS = '''"""Add the plans, but fail"""


def up(db):
    db.attempts.insert_one({})
    raise RuntimeError("plans table not ready")
'''


def applied(db: Any) -> list[int]:
    return sorted(d["_id"] for d in db.migrations.find({"status": "applied"}))


def start_up_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and "UPGRADE_ON_START" in r.getMessage()]


def test_a_serve_command_of_the_apps_own_upgrades_through_upgrade_app(
        pymongo_shop: ShopApp, db: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from click.testing import CliRunner
    from flask.cli import FlaskGroup

    module = pymongo_shop.module
    exec(SERVE_COMMANDS, module.__dict__)  # the serve commands join the app's module
    monkeypatch.setenv("SHOP_UPGRADE_ON_START", "true")

    def create_app() -> Any:
        app = module.create_app()
        module.add_commands(app)
        return app

    group = FlaskGroup(create_app=create_app)
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(group, ["cleanup"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert applied(db) == []  # a maintenance command never upgrades...
    lines = start_up_lines(caplog)
    assert len(lines) == 1 and "not upgrading" in lines[0], lines  # ...and says so
    assert "contrib.flask.upgrade(app)" in lines[0]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(group, ["serve"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert applied(db) == [1]  # the serve command upgraded, as documented
    assert any("database '" in r.getMessage() and "at version 1 (was 0)" in r.getMessage()
               for r in caplog.records)


def test_a_wsgi_start_says_it_upgrades(pymongo_shop: ShopApp, db: Any,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        pymongo_shop.create(UPGRADE_ON_START="true")
    assert start_up_lines(caplog) == ["analytiq_migrations: UPGRADE_ON_START: upgrading "
                                      "before serving"]
    assert applied(db) == [1]


MANAGE = '''\
import logging
import sys

from flask_script import Manager

from {module} import create_app

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
manager = Manager(create_app)


@manager.command
def hello():
    """A maintenance command."""
    print("hello")


if __name__ == "__main__":
    manager.run()
'''


def test_flask_script_upgrades_for_its_server_only(pymongo_shop: ShopApp, db: Any) -> None:
    pytest.importorskip("flask_script")
    shop = pymongo_shop
    (shop.directory / "manage.py").write_text(MANAGE.format(module=shop.name))
    env = child_env({**shop.env, "SHOP_UPGRADE_ON_START": "true"})
    env["PYTHONPATH"] = f"{shop.directory}:{env['PYTHONPATH']}"
    for name in SETTING_VARIABLES:
        env.pop(name, None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=shop.directory,
                              env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    hello = manage("hello")
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.strip() == "hello"
    assert "UPGRADE_ON_START: not upgrading for `manage.py hello`" in hello.stderr
    assert applied(db) == []

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "-p", str(port)], cwd=shop.directory,
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: applied(db) or (server.poll() is not None and
                                         pytest.fail(server.stderr.read())),
                 timeout=60, message="runserver did not upgrade")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert applied(db) == [1]


def test_a_failure_is_not_repeated_by_the_next_start(pymongo_shop: ShopApp, db: Any) -> None:
    pymongo_shop.write("0002_plans.py", FAILS)
    for _ in range(3):  # three workers starting one after another
        with pytest.raises(MigrationFailedError) as failed:
            pymongo_shop.create(UPGRADE_ON_START="true")
    assert db.attempts.count_documents({}) <= 1  # rolled back, or written once
    assert db.migrations_history.count_documents({"version": 2}) == 1
    assert "already failed" in failed.value.message
    assert "plans table not ready" in failed.value.message
    assert "flask migrations up" in str(failed.value.hint)

    # By hand, the same code runs again (and fails again): nothing is hidden.
    with pytest.raises(MigrationFailedError, match="plans table not ready"):
        Migrator(db, str(pymongo_shop.migrations)).upgrade()
    assert db.migrations_history.count_documents({"version": 2}) == 2

    # After a repair, the next start tries it again.
    Migrator(db, str(pymongo_shop.migrations)).repair(clear_failed=True)
    with pytest.raises(MigrationFailedError) as again:
        pymongo_shop.create(UPGRADE_ON_START="true")
    assert "already failed" not in again.value.message
    assert db.migrations_history.count_documents({"version": 2}) == 3

    # A changed file is tried at the next start.
    pymongo_shop.write("0002_plans.py", FAILS.replace('raise RuntimeError("plans table '
                                                      'not ready")', "pass"))
    pymongo_shop.create(UPGRADE_ON_START="true")
    assert applied(db) == [1, 2]

