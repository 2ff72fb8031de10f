"""Code behind the database: a rollback to older code keeps the pods ready, pruned or
squashed files can be recorded as gone on purpose, and a gap below the code still fails."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analytiq_migrations import Migrator
from analytiq_migrations.cli import main

FILES = {
    f"000{n}_step_{n}.py": f'"""Step {n}."""\n\ndef up(db):\n    db.steps.insert_one({{"n": {n}}})'
    f'\n\ndef down(db):\n    db.steps.delete_one({{"n": {n}}})\n'
    for n in range(1, 5)
}


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def project(tmp_path: Path, db: Any, mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four migrations, all applied; the CLI configured by flags in the tests."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in FILES.items():
        (directory / name).write_text(text)
    Migrator(db, directory).upgrade()
    monkeypatch.chdir(tmp_path)
    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                 "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_CLIENT"):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture
def cli(project: Path, db: Any, mongo_uri: str, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*args: str) -> Result:
        code = main([*args, "--uri", mongo_uri, "--database", db.name,
                     "--migrations", str(project)])
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


def remove(project: Path, *versions: int) -> None:
    for version in versions:
        next(project.glob(f"000{version}_*.py")).unlink()


def test_rolled_back_code_is_ahead_of_the_database_not_unhealthy(
        project: Path, db: Any, cli: Any) -> None:
    remove(project, 3, 4)  # the older release's code stops at version 2
    migrator = Migrator(db, project)
    problems = migrator.validate()
    assert [(p.kind, p.version, p.severity) for p in problems] == [
        ("ahead_of_code", 3, "warning"), ("ahead_of_code", 4, "warning")]
    assert "ahead of the code" in problems[0].message
    assert [r.status for r in migrator.status()] == [
        "applied", "applied", "ahead_of_code", "ahead_of_code"]
    assert migrator.upgrade().steps == []  # the old pods' start-up `up`: nothing to do

    ready = cli("status", "--check")
    assert ready.code == 0, ready.out + ready.err
    assert "at version 4 (the code's latest is 2: the database is ahead of the code)" \
        in ready.out
    assert "warning: Migration 3 (Step 3.) is applied but the code stops at version 2" \
        in ready.out
    assert cli("status", "--check", "--strict").code == 4
    validate = cli("validate")
    assert validate.code == 0 and "ahead of the code" in validate.out
    assert cli("validate", "--strict").code == 4
    assert cli("up").code == 0


def test_a_gap_below_the_code_still_fails_until_recorded_as_pruned(
        project: Path, db: Any, cli: Any) -> None:
    remove(project, 1, 2)  # squashed away; the code still goes up to 4
    assert [(p.kind, p.version, p.severity) for p in Migrator(db, project).validate()] == [
        ("missing", 1, "error"), ("missing", 2, "error")]
    assert "repair --accept-missing" in cli("validate").out
    assert cli("validate").code == 4
    assert cli("status", "--check").code == 4

    repair = cli("repair", "--accept-missing")
    assert repair.code == 0
    assert "version 1: file removed on purpose" in repair.out
    assert "version 2: file removed on purpose" in repair.out
    note = db.migrations.find_one({"_id": 1})
    assert note["pruned"] is True and note["repairs"][-1]["action"] == "accept_missing"

    migrator = Migrator(db, project)
    assert migrator.validate() == []
    assert [r.status for r in migrator.status()] == ["pruned", "pruned", "applied", "applied"]
    assert cli("status", "--check").code == 0
    assert cli("repair", "--accept-missing").out.strip() == \
        f"Nothing to repair in '{db.name}'."


def test_accepting_missing_files_leaves_files_that_are_there_alone(
        project: Path, db: Any) -> None:
    remove(project, 2)
    migrator = Migrator(db, project)
    assert [(a.version, a.action) for a in migrator.repair(accept_missing=True)] == [
        (2, "accept_missing")]
    assert "pruned" not in db.migrations.find_one({"_id": 1})
    assert migrator.validate() == []

    # the file comes back and the version runs again: no longer marked as removed
    (project / "0002_step_2.py").write_text(FILES["0002_step_2.py"])
    migrator = Migrator(db, project)
    migrator.downgrade(1)
    migrator.upgrade()
    assert "pruned" not in db.migrations.find_one({"_id": 2})


def test_a_fleet_ahead_of_the_code_is_ready_unless_strict(
        project: Path, client: Any, mongo_uri: str, tenant_prefix: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"{tenant_prefix}a", f"{tenant_prefix}b"]
    for name in names:
        Migrator(client, project, database=name).upgrade()
    remove(project, 4)  # the older release
    flags = ["--uri", mongo_uri, "--migrations", str(project), "--databases",
             f"{tenant_prefix}*"]
    assert main(["status", *flags, "--check"]) == 0
    assert main(["validate", *flags]) == 0
    assert main(["status", *flags, "--check", "--strict"]) == 4
    assert main(["validate", *flags, "--strict"]) == 4
    capsys.readouterr()
