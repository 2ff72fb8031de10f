"""The README's first command: the demo applies the guide's examples and steps back one."""

from __future__ import annotations

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
    assert "upgrade: version 0 -> 3, applied [1, 2, 3]" in out
    assert "downgrade -1: version 3 -> 2" in out
    assert out.count("pending") >= 4  # three before, one after stepping back


def test_demo_as_the_readme_runs_it() -> None:
    """`python -m analytiq_migrations.demo` starts and removes its own server."""
    pytest.importorskip("secantus", reason="the demo's own server is SecantusDB")
    done = subprocess.run([sys.executable, "-m", "analytiq_migrations.demo"],
                          capture_output=True, text=True, timeout=180, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Starting a throw-away SecantusDB server" in done.stdout
    assert "After downgrading one step" in done.stdout


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.pop("MONGODB_URI", None)  # the README command uses its own server
    return env
