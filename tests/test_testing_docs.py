"""docs/testing-your-migrations.md, run: its project, its tests, its outputs, its fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing-your-migrations.md"

#: ``<!-- kind: what -->`` then a fenced block.
_BLOCK = re.compile(r"<!-- (file|fixed|output): (.+?) -->\n```[a-z]*\n(.*?)```", re.S)


def blocks(kind: str) -> List[Tuple[str, str]]:
    return [(what, body) for k, what, body in _BLOCK.findall(DOC.read_text()) if k == kind]


def write(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run(project: Path, *argv: str, mongo_uri: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("MONGODB_URI", None)
    env["COLUMNS"] = "80"  # pytest's report lines are cut to the terminal's width
    for name in ("CI", "BUILD_NUMBER"):  # ...except on CI, where pytest never cuts them
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", *argv], cwd=str(project), env=env,
                          capture_output=True, text=True, timeout=300)


def assert_shown(expected: str, actual: str) -> None:
    """Every line the doc shows is in the real output, in that order."""
    position = 0
    for line in expected.strip("\n").splitlines():
        found = actual.find(line, position)
        assert found >= 0, f"the doc shows {line!r}, the output has not:\n{actual}"
        position = found + len(line)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, dict(blocks("file")))
    return tmp_path


def test_the_doc_has_its_examples() -> None:
    files = dict(blocks("file"))
    assert sorted(n for n in files if n.startswith("migrations/")) == [
        "migrations/0001_index_email.py", "migrations/0002_split_name.py",
        "migrations/0003_add_status.py"]
    assert [what for what, _ in blocks("fixed")] == ["migrations/0002_split_name.py"]
    assert [what for what, _ in blocks("output")] == [
        "pytest --analytiq-migrations", "analytiq-migrations verify --seed seeds:SEED"]


def test_the_checks_fail_on_the_lossy_down_then_pass_once_fixed(project: Path,
                                                                 mongo_uri: str) -> None:
    pytest_output, _ = blocks("output")
    argv = ("pytest", "-p", "no:cacheprovider", "--analytiq-migrations",
            "--mongo-uri", mongo_uri)
    done = run(project, *argv, mongo_uri=mongo_uri)
    assert done.returncode == 1, done.stdout + done.stderr
    assert_shown(pytest_output[1], done.stdout)

    write(project, dict(blocks("fixed")))
    done = run(project, *argv, mongo_uri=mongo_uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 passed" in done.stdout


def test_verify_shows_what_the_doc_says(project: Path, mongo_uri: str) -> None:
    _, verify_output = blocks("output")
    done = run(project, "analytiq_migrations", "verify", "--seed", "seeds:SEED", "--uri",
               mongo_uri, mongo_uri=mongo_uri)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("4 of 5 checks passed on mongodb://")
    assert_shown(verify_output[1], done.stdout)
    write(project, dict(blocks("fixed")))
    done = run(project, "analytiq_migrations", "verify", "--seed", "seeds:SEED", "--uri",
               mongo_uri, mongo_uri=mongo_uri)
    assert done.returncode == 0, done.stdout + done.stderr
