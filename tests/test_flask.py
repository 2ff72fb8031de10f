"""Flask: `init_app(app)` gives `flask migrations <command>` on the app's own client and
settings, and can upgrade before the app serves. Run through Flask's CLI runner and real
`flask` processes against a real server, with Flask-PyMongo and MongoEngine apps."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from support import child_env, free_port, wait_for

flask = pytest.importorskip("flask")
FLASK_MAJOR = int(importlib.metadata.version("flask").split(".")[0])

from analytiq_migrations import ConfigurationError, LockBusyError  # noqa: E402
from analytiq_migrations.contrib.flask import init_app  # noqa: E402

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

REMEMBER_APP = '''\
"""Record which app ran this"""

from flask import current_app


def up(db):
    db.settings.insert_one({"_id": "installed_by", "app": current_app.name})
'''


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str, db: Any) -> Any:
    """A Flask app configured the Flask-PyMongo way (``MONGO_URI``), with two migrations."""
    clear_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_create_users.py").write_text(CREATE_USERS)
    (migrations / "0002_remember_app.py").write_text(REMEMBER_APP)
    application = flask.Flask("shop")
    application.config.update(
        MONGO_URI=mongo_uri,
        ANALYTIQ_MIGRATIONS_DATABASE=db.name,
        ANALYTIQ_MIGRATIONS_SOURCE=str(migrations),
    )
    return application


SETTING_VARIABLES = ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                     "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_LOCK_WAIT",
                     "ANALYTIQ_MIGRATIONS_CLIENT")


def clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def invoke(app: Any, *args: str, group: str = "migrations") -> Any:
    try:  # click before 8.2 mixes stderr into the output unless asked not to
        runner = app.test_cli_runner(mix_stderr=False)
    except TypeError:
        runner = app.test_cli_runner()
    return runner.invoke(args=[group, *args])


def hold_lock(db: Any) -> None:
    """Another process's live lease."""
    now = datetime.now(timezone.utc)
    db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "worker@web-2:77/cafe", "run_id": "cafe",
        "host": "web-2", "pid": 77, "locked_at": now, "heartbeat_at": now,
        "expires_at": now + timedelta(minutes=10),
    })


def test_the_group_has_every_command_of_the_command_line(app: Any) -> None:
    init_app(app)
    result = invoke(app, "--help")
    assert result.exit_code == 0
    for verb in ("status", "current", "show", "plan", "up", "down", "history", "validate",
                 "repair", "baseline", "unlock", "new"):
        assert f"  {verb} " in result.output
    assert "_forward" not in result.output
    assert "--lock-wait SECONDS" in invoke(app, "up", "--help").output


def test_status_and_up_from_app_config(app: Any, db: Any) -> None:
    init_app(app)
    status = invoke(app, "status")
    assert status.exit_code == 0, status.output
    assert f"Database '{db.name}' at version 0 (latest 2): 2 pending" in status.output
    up = invoke(app, "up")
    assert up.exit_code == 0, up.output
    assert "Applied 2 migrations" in up.output
    assert db.users.count_documents({}) == 2
    assert db.settings.find_one({"_id": "installed_by"}) == {"_id": "installed_by", "app": "shop"}


def test_options_before_the_command_and_exit_codes(app: Any) -> None:
    init_app(app)
    pending = invoke(app, "--json", "status", "--check")
    assert pending.exit_code == 6
    assert json.loads(pending.stdout)["pending"] == [1, 2]
    assert invoke(app, "-q", "up").exit_code == 0
    ready = invoke(app, "status", "--check", "-q")
    assert (ready.exit_code, ready.output) == (0, "")
    assert invoke(app, "down").exit_code == 2


def test_flags_beat_init_app_options_which_beat_app_config(app: Any, db: Any,
                                                          mongo_uri: str) -> None:
    app.config["ANALYTIQ_MIGRATIONS_DATABASE"] = "not_this_one"
    app.config["MONGO_URI"] = f"mongodb://127.0.0.1:{free_port()}/"  # the fallback only
    app.config["ANALYTIQ_MIGRATIONS_URI"] = mongo_uri
    init_app(app, database=db.name)
    assert json.loads(invoke(app, "status", "--json").stdout)["database"] == db.name
    flagged = f"flask_flag_{uuid.uuid4().hex[:8]}"  # only read: nothing gets created
    other = invoke(app, "status", "--json", "--database", flagged)
    assert json.loads(other.stdout)["database"] == flagged


def test_missing_settings_name_the_app_config_keys(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clear_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    bare = flask.Flask("bare")
    init_app(bare)
    result = invoke(bare, "status")
    assert result.exit_code == 2
    assert "app.config['ANALYTIQ_MIGRATIONS_URI'] (or MONGO_URI)" in result.stderr
    assert "app.config['ANALYTIQ_MIGRATIONS_SOURCE']" in result.stderr


def test_unknown_init_app_option_is_refused(app: Any) -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        init_app(app, lockwait=3)


def test_upgrade_on_start_applies_pending_migrations(app: Any, db: Any) -> None:
    app.config["ANALYTIQ_MIGRATIONS_UPGRADE_ON_START"] = True
    init_app(app)
    assert sorted(r["_id"] for r in db.migrations.find({"status": "applied"})) == [1, 2]
    second = flask.Flask("shop")
    second.config.update(app.config)
    init_app(second)  # another worker starting: nothing left to do
    assert db.migrations_history.count_documents({}) == 2


def test_upgrade_on_start_waits_for_a_busy_lock(app: Any, db: Any) -> None:
    hold_lock(db)
    release = threading.Timer(0.5, lambda: db.migration_lock.delete_many({}))
    release.start()
    try:
        init_app(app, upgrade_on_start=True)
    finally:
        release.cancel()
    assert db.migrations.count_documents({"status": "applied"}) == 2


def test_upgrade_on_start_gives_up_after_its_lock_wait(app: Any, db: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    hold_lock(db)
    app.config.update(ANALYTIQ_MIGRATIONS_UPGRADE_ON_START="true",
                      ANALYTIQ_MIGRATIONS_LOCK_WAIT=0.3)
    with caplog.at_level(logging.ERROR), \
            pytest.raises(LockBusyError, match="worker@web-2:77/cafe"):
        init_app(app)  # refuses to start (the default)
    assert db.migrations.count_documents({}) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "the start-up upgrade failed; not starting" in errors[0].getMessage()
    assert "worker@web-2:77/cafe" in errors[0].getMessage()


def test_a_failed_start_up_upgrade_can_start_degraded(app: Any, db: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    hold_lock(db)
    app.config.update(ANALYTIQ_MIGRATIONS_UPGRADE_ON_START=True,
                      ANALYTIQ_MIGRATIONS_LOCK_WAIT=0,
                      ANALYTIQ_MIGRATIONS_ON_START_FAILURE="degraded")
    with caplog.at_level(logging.ERROR):
        init_app(app)
    state = app.extensions["analytiq_migrations"]
    assert isinstance(state.start_error, LockBusyError)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "starting anyway" in errors[0].getMessage()
    with pytest.raises(ConfigurationError, match="refuse, degraded, not 'maybe'"):
        init_app(flask.Flask("x"), upgrade_on_start=True, on_start_failure="maybe")


# -- the app's own client ---------------------------------------------------------------------


def uri_with_database(uri: str, name: str) -> str:
    """``mongodb://host:port/NAME?query`` from ``mongodb://host:port/?query``."""
    base, _, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")


def test_init_app_takes_the_apps_client_database_or_factory(
        app: Any, db: Any, mongo_uri: str) -> None:
    del app.config["MONGO_URI"]  # nothing but the client we hand over
    own: MongoClient[Any] = MongoClient(mongo_uri)
    try:
        init_app(app, client=own, database=db.name)
        assert invoke(app, "up", "1").exit_code == 0
        assert own.admin.command("ping")["ok"] == 1  # still open: it is the app's

        other = flask.Flask("shop")
        other.config.update(app.config)
        init_app(other, client=own[db.name])
        assert json.loads(invoke(other, "current", "--json").stdout)["current_version"] == 1

        seen: list[str] = []

        def factory() -> Any:
            seen.append(flask.current_app.name)  # called lazily, inside the app context
            return own[db.name]

        third = flask.Flask("shop")
        third.config.update(app.config)
        init_app(third, client=factory)
        assert seen == []
        result = invoke(third, "up")
        assert result.exit_code == 0, result.output
        assert seen == ["shop"]
        assert db.settings.find_one({"_id": "installed_by"})["app"] == "shop"
    finally:
        own.close()


def test_a_bad_client_is_a_configuration_error(app: Any) -> None:
    init_app(app, client=lambda: "mongodb://not-a-client")
    result = invoke(app, "status")
    assert result.exit_code == 2
    assert "What init_app(client=...) returned is a str, not a MongoClient or a Database" \
        in result.stderr


FLASK_PYMONGO_APP = """\
import os

from flask import Flask, jsonify
from flask_pymongo import PyMongo

from analytiq_migrations.contrib.flask import init_app

mongo = PyMongo()


def create_app():
    app = Flask(__name__)
    app.config["ANALYTIQ_MIGRATIONS_SOURCE"] = os.environ["SHOP_MIGRATIONS"]
    for key in ("UPGRADE_ON_START", "ON_START_FAILURE", "GROUP", "URI"):
        if os.environ.get("SHOP_" + key):
            app.config["ANALYTIQ_MIGRATIONS_" + key] = os.environ["SHOP_" + key]
    mongo.init_app(app, uri=os.environ["SHOP_MONGO_URI"])  # no MONGO_URI in the config
    init_app(app)

    @app.route("/")
    def index():
        return jsonify(sorted(d["_id"] for d in mongo.db.migrations.find({"status": "applied"})))

    return app
"""

MONGOENGINE_APP = """\
import os

import mongoengine
from flask import Flask

from analytiq_migrations.contrib.flask import init_app


class User(mongoengine.Document):
    name = mongoengine.StringField(required=True)
    meta = {"collection": "users"}


def create_app():
    mongoengine.connect(db=os.environ["SHOP_DATABASE"], host=os.environ["SHOP_SERVER_URI"],
                        uuidRepresentation="standard")
    app = Flask(__name__)
    app.config["ANALYTIQ_MIGRATIONS_SOURCE"] = os.environ["SHOP_MIGRATIONS"]
    init_app(app)
    return app
"""

ADD_PLANS = """\
\"\"\"Add the plans\"\"\"


def up(db):
    db.plans.insert_one({"_id": "free"})


def down(db):
    db.plans.delete_many({})
"""

#: A migration through the app's Flask-PyMongo object that fails after writing.
PYMONGO_WRITES_THEN_FAILS = """\
\"\"\"Give every user a plan, through the app's data layer\"\"\"

from {module} import mongo


def up(db):
    mongo.db.users.update_many({}, {"$set": {"plan": "free"}})
    mongo.db.plans.insert_one({"_id": "free"})
    raise RuntimeError("plans table not ready")
"""

MONGOENGINE_WRITES = """\
\"\"\"Create the admin user with the app's model\"\"\"

from {module} import User


def up(db):
    User(name="admin").save()
    User(name="ops").save()
    {fail}


def down(db):
    User.objects(name__in=["admin", "ops"]).delete()
"""


class ShopApp:
    """A Flask app module (``shop_<hex>.py``) in a project directory, as in a real project:
    importable in this process (``create_app()``) and runnable by ``flask --app``."""

    def __init__(self, directory: Path, source: str, env: dict[str, str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = f"shop_{uuid.uuid4().hex[:8]}"
        self.directory = directory
        self.migrations = directory / "migrations"
        self.migrations.mkdir(exist_ok=True)
        (directory / f"{self.name}.py").write_text(source)
        self.env = {**env, "SHOP_MIGRATIONS": str(self.migrations)}
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.syspath_prepend(str(directory))
        self.monkeypatch = monkeypatch

    def write(self, name: str, text: str, fail: str = "pass") -> None:
        (self.migrations / name).write_text(
            text.replace("{module}", self.name).replace("{fail}", fail))

    @property
    def module(self) -> Any:
        return importlib.import_module(self.name)

    def create(self, **config: Any) -> Any:
        for key, value in config.items():
            self.monkeypatch.setenv(f"SHOP_{key}", str(value))
        return self.module.create_app()

    def flask(self, *args: str, **config: Any) -> subprocess.CompletedProcess[str]:
        """``python -m flask --app shop_x ARGS`` in a fresh process."""
        env = child_env({**self.env, **{f"SHOP_{k}": str(v) for k, v in config.items()}})
        env["PYTHONPATH"] = f"{self.directory}:{env['PYTHONPATH']}"
        env["FLASK_APP"] = self.name  # not --app: Flask before 2.2 has no such option
        for name in SETTING_VARIABLES:
            env.pop(name, None)
        return subprocess.run([sys.executable, "-m", "flask", *args],
                              cwd=self.directory, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        module = sys.modules.pop(self.name, None)
        if module is not None and getattr(module, "mongo", None) is not None and \
                module.mongo.cx is not None:
            module.mongo.cx.close()


@pytest.fixture
def shop_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[[str, dict[str, str]], ShopApp]]:
    clear_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    made: list[ShopApp] = []

    def make(source: str, env: dict[str, str]) -> ShopApp:
        made.append(ShopApp(tmp_path, source, env, monkeypatch))
        return made[-1]

    yield make
    for shop in made:
        shop.close()


@pytest.fixture
def pymongo_shop(shop_factory: Callable[[str, dict[str, str]], ShopApp], mongo_uri: str,
                 db: Any) -> ShopApp:
    """A Flask-PyMongo app configured with ``PyMongo(app, uri=...)`` only."""
    pytest.importorskip("flask_pymongo")
    shop = shop_factory(FLASK_PYMONGO_APP,
                        {"SHOP_MONGO_URI": uri_with_database(mongo_uri, db.name)})
    shop.write("0001_create_users.py", CREATE_USERS)
    return shop


@pytest.fixture
def mongoengine_shop(shop_factory: Callable[[str, dict[str, str]], ShopApp], mongo_uri: str,
                     db: Any) -> Iterator[ShopApp]:
    """A Flask app whose data layer is MongoEngine (connected by ``mongoengine.connect``)."""
    mongoengine = pytest.importorskip("mongoengine")
    shop = shop_factory(MONGOENGINE_APP, {"SHOP_DATABASE": db.name,
                                          "SHOP_SERVER_URI": mongo_uri})
    yield shop
    mongoengine.disconnect_all()


def test_flask_pymongo_app_without_a_uri_in_config(pymongo_shop: ShopApp, db: Any) -> None:
    app = pymongo_shop.create()
    assert "MONGO_URI" not in app.config
    up = invoke(app, "up")
    assert up.exit_code == 0, up.output
    assert db.users.count_documents({}) == 2
    verbose = invoke(app, "-v", "status")
    assert f"the app's Flask-PyMongo client ({pymongo_shop.name}.mongo)" in verbose.stderr
    assert f"client: database '{db.name}' on 127.0.0.1:" in verbose.stderr
    assert invoke(app, "down", "base").exit_code == 0
    assert db.users.count_documents({}) == 0



def test_two_flask_pymongo_clients_are_ambiguous(pymongo_shop: ShopApp) -> None:
    source = (pymongo_shop.directory / f"{pymongo_shop.name}.py").read_text()
    (pymongo_shop.directory / f"{pymongo_shop.name}.py").write_text(source.replace(
        "    init_app(app)\n",
        "    app.reports = PyMongo(app, uri=os.environ['SHOP_MONGO_URI'])\n    init_app(app)\n"))
    app = pymongo_shop.create()
    try:
        result = invoke(app, "status")
        assert result.exit_code == 2
        assert f"The app has 2 Flask-PyMongo clients (app.reports, {pymongo_shop.name}.mongo)" \
            in result.stderr
        assert "init_app(app, client=mongo.cx)" in result.stderr
    finally:
        app.reports.cx.close()

@needs_bind
def test_flask_pymongo_writes_roll_back_with_the_migration(pymongo_shop: ShopApp,
                                                           db: Any) -> None:
    app = pymongo_shop.create()
    assert invoke(app, "up").exit_code == 0
    pymongo_shop.write("0002_plans.py", PYMONGO_WRITES_THEN_FAILS)
    failed = invoke(app, "up")
    assert failed.exit_code == 1
    assert "RuntimeError: plans table not ready" in failed.stderr
    assert "The transaction was rolled back" in failed.stderr
    assert db.users.count_documents({"plan": {"$exists": True}}) == 0
    assert db.plans.count_documents({}) == 0
    assert db.migrations.find_one({"_id": 2})["status"] == "failed"


@needs_bind
def test_another_client_inside_a_transaction_is_named(pymongo_shop: ShopApp, db: Any,
                                                      mongo_uri: str) -> None:
    # The hook told to use a URI of its own: the app's Flask-PyMongo client is another one.
    app = pymongo_shop.create(URI=uri_with_database(mongo_uri, db.name))
    assert invoke(app, "up").exit_code == 0
    pymongo_shop.write("0002_plans.py", PYMONGO_WRITES_THEN_FAILS)
    result = invoke(app, "up")
    assert result.exit_code == 1
    message = result.stderr
    assert "Migration 2 (Give every user a plan, through the app's data layer) used another " \
        "MongoClient (MongoClient at 127.0.0.1:" in message
    assert "made by Flask-PyMongo" in message
    assert "init_app(app, client=...)" in message and "transactional = False" in message
    assert "<PLACEHOLDER>" not in message
    assert db.users.count_documents({"plan": {"$exists": True}}) == 0


def test_mongoengine_app_uses_its_default_connection(mongoengine_shop: ShopApp,
                                                     db: Any) -> None:
    mongoengine_shop.write("0001_admin.py", MONGOENGINE_WRITES)
    app = mongoengine_shop.create()
    verbose = invoke(app, "up", "-v")
    assert verbose.exit_code == 0, verbose.output
    assert f"MongoEngine's default connection (database '{db.name}')" in verbose.stderr
    assert sorted(d["name"] for d in db.users.find()) == ["admin", "ops"]
    assert invoke(app, "down", "base").exit_code == 0
    assert db.users.count_documents({}) == 0


@needs_bind
def test_mongoengine_saves_roll_back_with_the_migration(mongoengine_shop: ShopApp,
                                                        db: Any) -> None:
    mongoengine_shop.write("0001_admin.py", MONGOENGINE_WRITES,
                           fail='raise RuntimeError("no email for admin")')
    app = mongoengine_shop.create()
    failed = invoke(app, "up")
    assert failed.exit_code == 1
    assert "RuntimeError: no email for admin" in failed.stderr
    assert db.users.count_documents({}) == 0
    assert db.migrations.find_one({"_id": 1})["status"] == "failed"


def test_the_group_name_is_configurable(pymongo_shop: ShopApp) -> None:
    app = pymongo_shop.create(GROUP="mongo")
    assert invoke(app, "current", group="mongo").stdout == "0\n"
    assert "migrations" not in app.cli.commands


# -- start-up upgrades as real processes -----------------------------------------------------


def test_upgrade_on_start_never_runs_for_other_flask_commands(pymongo_shop: ShopApp,
                                                              db: Any) -> None:
    shop = pymongo_shop
    shop.write("0002_add_plans.py", ADD_PLANS)
    up = shop.flask("migrations", "up", UPGRADE_ON_START="true")
    assert up.returncode == 0, up.stderr
    down = shop.flask("migrations", "down", "-1", UPGRADE_ON_START="true")
    assert down.returncode == 0, down.stderr
    status = shop.flask("migrations", "status", "--json", UPGRADE_ON_START="true")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == [2]
    for command in (["routes"], ["shell"]):  # `flask shell` reads EOF from stdin and ends
        assert shop.flask(*command, UPGRADE_ON_START="true").returncode == 0
    assert db.migrations.find_one({"_id": 2})["status"] == "rolled_back"


def test_a_failing_start_up_upgrade_leaves_other_commands_alone(pymongo_shop: ShopApp,
                                                                db: Any) -> None:
    shop = pymongo_shop
    shop.write("0002_plans.py", PYMONGO_WRITES_THEN_FAILS)
    failed = shop.flask("migrations", "up", UPGRADE_ON_START="true")
    assert failed.returncode == 1
    for args in (["routes"], ["migrations", "status"], ["migrations", "repair",
                                                        "--clear-failed"]):
        result = shop.flask(*args, UPGRADE_ON_START="true")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    served = shop.flask("run", "--port", str(free_port()), UPGRADE_ON_START="true")
    assert served.returncode == 1  # refuses to serve a database its code does not match
    assert "Traceback" not in served.stderr
    logged, shown = served.stderr.split("Error: Start-up upgrade failed: ", 1)
    assert shown.startswith("Migration 2 (Give every user a plan")
    if hasattr(ClientSession, "bind"):
        assert shown.rstrip().endswith("Fix the migration and run again.")
    else:  # mongo.db's writes committed on their own and are named (docs/compatibility.md)
        assert "writes it sent outside the transaction were kept" in shown
    assert logged.count("the start-up upgrade failed; not starting") == 1
    assert db.migrations.find_one({"_id": 2})["status"] == "failed"


def test_flask_run_upgrades_before_the_first_request(pymongo_shop: ShopApp, db: Any) -> None:
    shop = pymongo_shop
    port = free_port()
    env = child_env({**shop.env, "SHOP_UPGRADE_ON_START": "true"})
    env["PYTHONPATH"] = f"{shop.directory}:{env['PYTHONPATH']}"
    env["FLASK_APP"] = shop.name
    server = subprocess.Popen(
        [sys.executable, "-m", "flask", "run", "--port", str(port),
         "--no-reload"], cwd=shop.directory, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def answer() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    return json.loads(page.read())
            except OSError:
                if server.poll() is not None:
                    raise AssertionError(server.stderr.read() if server.stderr else "") \
                        from None
                return None

        assert wait_for(answer, timeout=60, message="flask run did not answer") == [1]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("reload, in_server_process, upgrades", [
    ("--no-reload", False, True),
    ("--reload", False, False),  # the reloader's watcher: it never serves
    ("--reload", True, True),    # the process the reloader starts to serve
], ids=["no-reloader", "reloader-watcher", "reloader-server"])
def test_flask_run_upgrades_in_the_serving_process(
        pymongo_shop: ShopApp, db: Any, monkeypatch: pytest.MonkeyPatch, reload: str,
        in_server_process: bool, upgrades: bool) -> None:
    import flask.cli as flask_cli
    import werkzeug.serving
    from click.testing import CliRunner
    from flask.cli import FlaskGroup

    lazy = FLASK_MAJOR < 2 and reload == "--reload"  # Flask 1.x loads it in a thread
    if lazy and not in_server_process:
        pytest.skip("Flask 1.x loads the app in the reloader's watcher too, in a thread outside "
                    "any command: the development server's watcher upgrades as well")
    served: list[bool] = []

    def serve(*args: Any, **kwargs: Any) -> None:
        served.append(kwargs["use_reloader"])

    # Flask 2+ imports run_simple into flask.cli; Flask 1.1 imports it when `run` runs.
    monkeypatch.setattr(flask_cli, "run_simple", serve, raising=False)
    monkeypatch.setattr(werkzeug.serving, "run_simple", serve)
    if in_server_process:
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
    else:
        monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    monkeypatch.setenv("SHOP_UPGRADE_ON_START", "true")
    group = FlaskGroup(create_app=pymongo_shop.module.create_app)
    result = CliRunner().invoke(group, ["run", reload], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert served == [reload == "--reload"]
    if lazy:
        wait_for(lambda: db.migrations.count_documents({"status": "applied"}), timeout=30)
    assert db.migrations.count_documents({"status": "applied"}) == (1 if upgrades else 0)


def test_a_wsgi_server_importing_the_app_upgrades_it(pymongo_shop: ShopApp, db: Any) -> None:
    # What gunicorn, uWSGI or waitress do: import the module, call the factory.
    app = pymongo_shop.create(UPGRADE_ON_START="true")
    assert app.extensions["analytiq_migrations"].start_report.versions == [1]
    assert app.test_client().get("/").get_json() == [1]



# -- the examples of docs/flask.md, as written -----------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "flask.md"


def docs_files(doc: Path, directory: Path) -> list[str]:
    """Write every ``# file: PATH`` code block of ``doc`` under ``directory``."""
    written = []
    for block in doc.read_text().split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        first, _, rest = code.partition("\n")
        if first.startswith("# file: "):
            path = directory / first[len("# file: "):].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rest)
            written.append(str(path.relative_to(directory)))
    return written


def run_flask(directory: Path, app: str, *args: str, **env: str
              ) -> subprocess.CompletedProcess[str]:
    environ = child_env(env)
    environ["PYTHONPATH"] = f"{directory}:{environ['PYTHONPATH']}"
    environ["FLASK_APP"] = app
    for name in SETTING_VARIABLES:
        environ.pop(name, None)
    return subprocess.run([sys.executable, "-m", "flask", *args], cwd=directory,
                          env=environ, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_the_docs_examples_run(tmp_path: Path, mongo_uri: str, client: Any) -> None:
    pytest.importorskip("flask_pymongo")
    pytest.importorskip("mongoengine")
    assert docs_files(DOCS, tmp_path) == [
        "shop/__init__.py", "shop/mongo_migrations/0001_plans.py",
        "blog/__init__.py", "blog/mongo_migrations/0001_admin.py"]
    names = {app: f"docs_{app}_{uuid.uuid4().hex[:8]}" for app in ("shop", "blog")}
    try:
        shop_db = client[names["shop"]]
        shop_db.users.insert_many([{"_id": 1}, {"_id": 2}])
        shop_env = {"SHOP_MONGO_URI": uri_with_database(mongo_uri, names["shop"])}
        up = run_flask(tmp_path, "shop", "migrations", "up", **shop_env)
        assert up.returncode == 0, up.stderr
        assert shop_db.users.count_documents({"plan": "free"}) == 2
        verbose = run_flask(tmp_path, "shop", "migrations", "-v", "status", **shop_env)
        assert "the app's Flask-PyMongo client (shop.mongo)" in verbose.stderr
        assert run_flask(tmp_path, "shop", "migrations", "down", "base", **shop_env
                         ).returncode == 0
        assert shop_db.plans.count_documents({}) == 0

        blog_db = client[names["blog"]]
        blog_env = {"BLOG_MONGO_URI": uri_with_database(mongo_uri, names["blog"])}
        up = run_flask(tmp_path, "blog", "migrations", "up", "-v", **blog_env)
        assert up.returncode == 0, up.stderr
        assert f"MongoEngine's default connection (database '{names['blog']}')" in up.stderr
        assert [d["name"] for d in blog_db.users.find()] == ["admin"]
    finally:
        for name in names.values():
            client.drop_database(name)


# -- gunicorn: real worker processes -----------------------------------------------------------


def gunicorn(shop: ShopApp, port: int, *extra: str, **config: str) -> list[str]:
    """``gunicorn -w 3 'shop_x:create_app()'``, with the script installed beside Python."""
    script = Path(sys.executable).with_name("gunicorn")
    if not script.exists():
        pytest.skip("the gunicorn script is not installed beside this Python")
    return [str(script), "-w", "3", "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "5", *extra, f"{shop.name}:create_app()"]


def gunicorn_env(shop: ShopApp, **config: str) -> dict[str, str]:
    env = child_env({**shop.env, **{f"SHOP_{k}": v for k, v in config.items()}})
    env["PYTHONPATH"] = f"{shop.directory}:{env['PYTHONPATH']}"
    for name in SETTING_VARIABLES:
        env.pop(name, None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["workers", "preload"])
def test_gunicorn_workers_upgrade_once_before_serving(pymongo_shop: ShopApp, db: Any,
                                                      preload: bool) -> None:
    pytest.importorskip("gunicorn")
    pymongo_shop.write("0002_add_plans.py", ADD_PLANS)
    port = free_port()
    server = subprocess.Popen(
        gunicorn(pymongo_shop, port, *(["--preload"] if preload else [])),
        cwd=pymongo_shop.directory, env=gunicorn_env(pymongo_shop, UPGRADE_ON_START="true"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def answer() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    return json.loads(page.read())
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                return None

        assert wait_for(answer, timeout=60, message="gunicorn did not answer") == [1, 2]
        # Three workers started; the migrations ran once, all at start-up.
        entries = list(db.migrations_history.find({}, {"_id": 0, "version": 1, "status": 1,
                                                       "pid": 1}))
        assert sorted((e["version"], e["status"]) for e in entries) == [
            (1, "applied"), (2, "applied")]
        ran_in_master = {e["pid"] for e in entries} == {server.pid}
        assert ran_in_master is preload  # --preload: once, in the master, before forking
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("preload, says", [(False, "Worker failed to boot."),
                                           (True, "MigrationFailedError")],
                         ids=["workers", "preload"])
def test_gunicorn_refuses_to_start_when_the_upgrade_fails(pymongo_shop: ShopApp, db: Any,
                                                          preload: bool, says: str) -> None:
    pytest.importorskip("gunicorn")
    pymongo_shop.write("0002_plans.py", PYMONGO_WRITES_THEN_FAILS)
    result = subprocess.run(
        gunicorn(pymongo_shop, free_port(), *(["--preload"] if preload else [])),
        cwd=pymongo_shop.directory, env=gunicorn_env(pymongo_shop, UPGRADE_ON_START="true"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    # Workers: the master halts (exit 3, or 1 when the halt races its own shutdown);
    # --preload: the master fails to load the app (exit 1).
    assert result.returncode in (1, 3), result.stderr
    # (before pymongo 4.17 the app's write is reported as outside the transaction)
    assert says in result.stderr or (preload and "OutsideWritesError" in result.stderr), \
        result.stderr
    assert "Booting worker" not in result.stderr or not preload
    assert "the start-up upgrade failed; not starting" in result.stderr
    # (the outside-writes error names the method: "... data layer) up() failed")
    assert re.search(r"Migration 2 \(Give every user a plan, through the app's data layer\)"
                     r"( up\(\))? failed", result.stderr), result.stderr
    assert db.migrations.find_one({"_id": 1})["status"] == "applied"
    assert db.migrations.find_one({"_id": 2})["status"] == "failed"
    # Three workers started; the first failure is recorded and the others refuse with it
    # instead of running the migration again in turn.
    assert db.migrations_history.count_documents({"version": 2}) == 1
    if hasattr(ClientSession, "bind"):  # the app's own client joined the transaction
        assert db.users.count_documents({"plan": {"$exists": True}}) == 0
