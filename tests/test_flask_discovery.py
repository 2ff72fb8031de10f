"""Finding the app's Flask-PyMongo client whatever the names: an app made with
``Flask("svc")`` in ``svcapp.py`` (its import name is no module) is found where its
module holds it; two stay ambiguous; ``-v`` says where it was found."""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_flask import CREATE_USERS, clear_environment, invoke, uri_with_database

pytest.importorskip("flask")
pytest.importorskip("flask_pymongo")

SVC_APP = '''\
import os

from flask import Flask
from flask_pymongo import PyMongo

from analytiq_migrations.contrib.flask import init_app

app = Flask("svc")
app.config["ANALYTIQ_MIGRATIONS_SOURCE"] = os.environ["SVC_MIGRATIONS"]
mongo = PyMongo(app, uri=os.environ["SVC_MONGO_URI"])
{more}
init_app(app)
'''

REPORTS = '''\
import os

from flask_pymongo import PyMongo

from {app_module} import app

reports = PyMongo(app, uri=os.environ["SVC_MONGO_URI"])
'''


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str,
        db: Any) -> Iterator[Any]:
    """``svcapp_<hex>.py`` (and its modules), importable here; closed afterwards."""
    clear_environment(monkeypatch)
    migrations = tmp_path / "svc_migrations"
    migrations.mkdir()
    (migrations / "0001_create_users.py").write_text(CREATE_USERS)
    monkeypatch.setenv("SVC_MIGRATIONS", str(migrations))
    monkeypatch.setenv("SVC_MONGO_URI", uri_with_database(mongo_uri, db.name))
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def load(name: str, text: str) -> Any:
        (tmp_path / f"{name}.py").write_text(text)
        made.append(name)
        return importlib.import_module(name)

    yield load
    for name in made:
        module = sys.modules.pop(name, None)
        for value in vars(module).values() if module is not None else []:
            if type(value).__name__ == "PyMongo" and value.cx is not None:
                value.cx.close()


def test_an_app_whose_import_name_is_no_module_is_found(svc: Any, db: Any) -> None:
    name = f"svcapp_{uuid.uuid4().hex[:8]}"
    app = svc(name, SVC_APP.format(more="")).app
    assert app.import_name == "svc"
    up = invoke(app, "up")
    assert up.exit_code == 0, up.stderr
    assert db.users.count_documents({}) == 2
    verbose = invoke(app, "-v", "status")
    assert f"the app's Flask-PyMongo client ({name}.mongo)" in verbose.stderr


def test_two_clients_in_other_modules_stay_ambiguous(svc: Any) -> None:
    name = f"svcapp_{uuid.uuid4().hex[:8]}"
    app = svc(name, SVC_APP.format(more="")).app
    svc(f"{name}_reports", REPORTS.format(app_module=name))
    result = invoke(app, "status")
    assert result.exit_code == 2
    assert "The app has 2 Flask-PyMongo clients" in result.stderr
    assert f"{name}.mongo" in result.stderr and f"{name}_reports.reports" in result.stderr
