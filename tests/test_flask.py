"""Flask: `init_app(app)` gives `flask migrations <command>` with the app's settings, and can
upgrade on start-up. Run through Flask's own CLI runner against a real server."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from support import free_port

flask = pytest.importorskip("flask")

from analytiq_migrations import ConfigurationError, LockBusyError  # noqa: E402
from analytiq_migrations.contrib.flask import init_app  # noqa: E402

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
    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                 "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_LOCK_WAIT"):
        monkeypatch.delenv(name, raising=False)
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


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["migrations", *args])


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
    for verb in ("status", "plan", "up", "down", "history", "validate", "repair", "baseline",
                 "unlock", "new"):
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
    monkeypatch.delenv("MONGODB_URI", raising=False)
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


def test_upgrade_on_start_gives_up_after_its_lock_wait(app: Any, db: Any) -> None:
    hold_lock(db)
    app.config.update(ANALYTIQ_MIGRATIONS_UPGRADE_ON_START="true",
                      ANALYTIQ_MIGRATIONS_LOCK_WAIT=0.3)
    with pytest.raises(LockBusyError, match="worker@web-2:77/cafe"):
        init_app(app)
    assert db.migrations.count_documents({}) == 0
