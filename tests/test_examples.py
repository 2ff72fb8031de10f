"""The README's first command: the demo applies the guide's examples and steps back one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Any

import pytest

from analytiq_migrations import Migrator, load_migrations
from analytiq_migrations.demo import main


def test_examples_are_the_guides_three_styles() -> None:
    first, second, third = load_migrations("analytiq_migrations.examples")
    assert [m.version for m in (first, second, third)] == [1, 2, 3]
    assert first.description == "Rename user.name to user.full_name"  # seed constructor style
    assert second.description == "Add new_field to the users collection."  # module file
    assert third.transactional is False and third.idempotent is True  # class attributes


def test_examples_on_a_database(db: Any) -> None:
    db.users.insert_one({"name": "Ada", "email": "ada@example.com"})
    migrator = Migrator(db, "analytiq_migrations.examples")
    assert migrator.upgrade().versions == [1, 2, 3]
    assert db.users.find_one({}, {"_id": 0}) == {
        "email": "ada@example.com", "full_name": "Ada", "new_field": "new_value"}
    assert "email_1" in db.users.index_information()
    assert migrator.downgrade(0).versions == [3, 2, 1]
    assert db.users.find_one({}, {"_id": 0}) == {"email": "ada@example.com", "name": "Ada"}


def test_demo_against_a_given_server(mongo_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--uri", mongo_uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Using the server given with --uri: {mongo_uri}\n")
    assert "upgrade: version 0 -> 3, applied [1, 2, 3]" in out
    assert "downgrade -1: version 3 -> 2" in out
    assert out.count("pending") >= 4  # three before, one after stepping back


def test_demo_as_the_readme_runs_it() -> None:
    """`python -m analytiq_migrations.demo` starts and removes its own server, and never
    uses an exported MONGODB_URI (here one where nothing listens) it was not given."""
    pytest.importorskip("secantus", reason="the demo's own server is SecantusDB")
    env = dict(os.environ, MONGODB_URI="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300")
    done = subprocess.run([sys.executable, "-m", "analytiq_migrations.demo"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting a throw-away SecantusDB server" in done.stdout
    assert "Using it at mongodb://127.0.0.1:" in done.stdout
    assert "127.0.0.1:9/" not in done.stdout
    assert "After downgrading one step" in done.stdout


def test_demo_without_the_server_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "secantus" else real_find_spec(name, *a))
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "demo: no MongoDB server given and the embedded one is not installed: pip install "
        "'analytiq_migrations[server]' (Python 3.10+), or pass --uri mongodb://HOST:PORT\n")


def test_demo_names_a_server_it_cannot_reach(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--uri", "mongodb://app:s3cret@127.0.0.1:9/?serverSelectionTimeoutMS=300"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo: ") and err.count("\n") == 1
    assert "s3cret" not in err
