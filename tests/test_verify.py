"""``analytiq-migrations verify``: the test kit's checks for CI pipelines that are not pytest."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from analytiq_migrations.cli import run

LOSSY = '''
    """Split users.name into first and last."""

    def up(db):
        for user in db.users.find({"name": {"$exists": True}}):
            first, _, last = user["name"].partition(" ")
            db.users.update_one({"_id": user["_id"]},
                                {"$set": {"first": first, "last": last}, "$unset": {"name": ""}})

    def down(db):
        for user in db.users.find({"first": {"$exists": True}}):
            db.users.update_one({"_id": user["_id"]},
                                {"$set": {"name": user["first"]},
                                 "$unset": {"first": "", "last": ""}})
'''

FIXED = LOSSY.replace('{"name": user["first"]}', '{"name": user["first"] + " " + user["last"]}')

SEEDS = 'SEED = {2: {"users": [{"name": "Ada Lovelace", "email": "ada@example.com"}]}}\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory (the working directory) with three migrations and a seed."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_users.py").write_text(
        "transactional = False\n\ndef up(db):\n    db.create_collection('users')\n\n"
        "def down(db):\n    db.users.drop()\n")
    (migrations / "0002_split_name.py").write_text(textwrap.dedent(LOSSY))
    (migrations / "0003_noop.py").write_text('"""Nothing."""\ndef up(db):\n    pass\n')
    (tmp_path / "seeds_for_verify.py").write_text(SEEDS)
    (tmp_path / "pyproject.toml").write_text('[tool.analytiq_migrations]\nsource = "migrations"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("seeds_for_verify", None)


def verify(*args: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["verify", *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def checks(output: str) -> Dict[str, List[Tuple[Any, Any]]]:
    return {c["name"]: [(f["version"], f["collection"]) for f in c["failures"]]
            for c in json.loads(output)["checks"]}


def test_verify_in_a_scratch_database_catches_the_lossy_down(project: Path, client: Any,
                                                              mongo_uri: str) -> None:
    databases = set(client.list_database_names())
    code, out, _ = verify("--uri", mongo_uri, "--seed", "seeds_for_verify:SEED", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["passed"] is False
    assert report["database"].startswith("analytiq_verify_")
    assert checks(out) == {"unique_versions": [], "upgrade_from_empty": [],
                           "up_down_consistency": [], "downgrade_leaves_no_trace": [(2, "users")],
                           "idempotent": []}
    assert set(client.list_database_names()) == databases  # the scratch database is gone

    (project / "migrations" / "0002_split_name.py").write_text(textwrap.dedent(FIXED))
    code, out, err = verify("--uri", mongo_uri, "--seed", "seeds_for_verify:SEED")
    assert (code, err) == (0, "")
    assert out.startswith("5 of 5 checks passed on mongodb://127.0.0.1:")
    assert "downgrade leaves no trace: passed" in out
    assert "note: v3 has no down: not checked" in out


def test_verify_uses_its_own_server_not_an_exported_uri(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("secantus", reason="verify's own server is SecantusDB")
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300")
    code, out, _ = verify("--seed", "seeds_for_verify:SEED")
    assert code == 1
    assert out.startswith("4 of 5 checks passed on a throw-away SecantusDB server, scratch "
                          "database analytiq_verify_")
    assert "v2: collection 'users' differs after up and down" in out


def test_duplicate_versions_fail_before_any_server(project: Path) -> None:
    (project / "migrations" / "0002_add_plan.py").write_text("def up(db):\n    pass\n")
    code, out, _ = verify("--uri", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300",
                          "--json")
    assert code == 1
    report = json.loads(out)
    assert report["checks"][0]["name"] == "unique_versions"
    assert report["checks"][0]["failures"][0]["version"] == 2
    assert report["not_run"][0] == "upgrade_from_empty: the migrations do not load"


def test_without_the_server_extra_or_a_uri(project: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "secantus" else real_find_spec(name, *a))
    code, out, err = verify()
    assert (code, out) == (2, "")
    assert err == (
        "analytiq-migrations: error: no MongoDB server given and the embedded one is not "
        "installed: pip install 'analytiq_migrations[server]' (Python 3.10+), or pass --uri "
        "URI (a scratch database is created there and dropped)\n")


def test_a_bad_seed_says_what_it_should_be(project: Path, mongo_uri: str) -> None:
    code, _, err = verify("--uri", mongo_uri, "--seed", "seeds_for_verify")
    assert code == 2
    assert "Bad seed 'seeds_for_verify': expected MODULE:ATTR." in err


def test_verify_runs_on_the_apps_own_client(project: Path, client: Any, mongo_uri: str) -> None:
    """``--client MODULE:ATTR``: the scratch database goes on the app's client, which is
    neither replaced by a server of verify's own nor closed."""
    (project / "app_db_for_verify.py").write_text(
        "from pymongo import MongoClient\n"
        f"client = MongoClient({mongo_uri!r})\n"
        "calls = []\n"
        "def get_client():\n"
        "    calls.append(1)\n"
        "    return client\n")
    databases = set(client.list_database_names())
    try:
        code, out, _ = verify("--client", "app_db_for_verify:get_client", "--seed",
                              "seeds_for_verify:SEED", "--json")
        app = sys.modules["app_db_for_verify"]
        assert app.calls == [1]
        report = json.loads(out)
        assert code == 1 and report["database"].startswith("analytiq_verify_")
        assert "127.0.0.1" in report["server"] and "SecantusDB" not in report["server"]
        assert checks(out)["downgrade_leaves_no_trace"] == [(2, "users")]
        assert app.client.admin.command("ping")["ok"] == 1  # still the app's, still open
        assert set(client.list_database_names()) == databases
    finally:
        module = sys.modules.pop("app_db_for_verify", None)
        if module is not None:
            module.client.close()
