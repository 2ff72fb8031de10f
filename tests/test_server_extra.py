"""The wheel installed with only ``[server]`` runs the demo, ``verify`` and the pytest plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

MIGRATION = '''
    """Give every user a status."""


    def up(db):
        db.users.update_many({"status": {"$exists": False}}, {"$set": {"status": "active"}})


    def down(db):
        db.users.update_many({}, {"$unset": {"status": ""}})
'''


def sh(argv: List[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PYTHON", "VIRTUAL_ENV")) and k != "MONGODB_URI"}
    return subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_server_extra_alone_runs_the_demo_verify_and_the_plugin(tmp_path: Path) -> None:
    pytest.importorskip("secantus", reason="the server extra needs Python 3.10+")
    wheels = tmp_path / "wheels"
    built = sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                str(REPO)], tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("analytiq_migrations-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    installed = sh([python, "-m", "pip", "install", "-q", f"{wheel}[server]"], tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = sh([python, "-m", "pip", "list", "--format=freeze"], tmp_path).stdout.lower()
    assert "secantusdb==0.7.0b3" in listed
    for absent in ("flask", "django", "mypy", "ruff", "pytest", "mongomock"):
        assert f"\n{absent}==" not in f"\n{listed}", listed

    project = tmp_path / "project"
    (project / "migrations").mkdir(parents=True)
    (project / "migrations" / "0001_add_status.py").write_text(textwrap.dedent(MIGRATION))
    (project / "pyproject.toml").write_text('[tool.analytiq_migrations]\nsource = "migrations"\n')

    demo = sh([python, "-m", "analytiq_migrations.demo"], project)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Starting a throw-away SecantusDB server" in demo.stdout

    verified = sh([str(tmp_path / "venv" / "bin" / "analytiq-migrations"), "verify"], project)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("5 of 5 checks passed on a throw-away SecantusDB server")

    # A project that tests has pytest; the plugin needs nothing else.
    assert sh([python, "-m", "pip", "install", "-q", "pytest"], tmp_path).returncode == 0
    checked = sh([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "--analytiq-migrations"], project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 passed" in checked.stdout
