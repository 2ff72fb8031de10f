"""A no-op run costs the same with 3 or 1,000 migrations: unchanged files are neither
imported nor tokenized; their bytes' hash is compared with the one on the record. On the
command line a no-op ``up`` loads neither the runner nor the record models (``noop.py``),
and answers "nothing to do" only when the full path would."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from support import run_python

from analytiq_migrations import (
    ChecksumDriftError,
    MigrationDefinitionError,
    Migrator,
    RunReport,
    filemigration,
    loader,
    noop,
    records,
)
from analytiq_migrations.cli import main
from analytiq_migrations.server import OWN_CODEC

MIGRATION = '''
"""Set users.step{n}."""

def up(db):
    db.users.update_many({{}}, {{"$set": {{"step{n}": True}}}})

def down(db):
    db.users.update_many({{}}, {{"$unset": {{"step{n}": ""}}}})
'''


class Counter:
    """Counts the calls of the function it wraps."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory of five module migrations."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for n in range(1, 6):
        (directory / f"{n:04d}_step{n}.py").write_text(textwrap.dedent(MIGRATION.format(n=n)))
    return directory


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts migration files imported."""
    counter = Counter(filemigration._import_file)
    monkeypatch.setattr(filemigration, "_import_file", counter)
    return counter


@pytest.fixture
def tokenized(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts migration files tokenized for their normalized checksum."""
    counter = Counter(filemigration.source_checksum)
    monkeypatch.setattr(filemigration, "source_checksum", counter)
    return counter


def test_a_noop_up_imports_and_tokenizes_nothing(
    db: Any, project: Path, imports: Counter, tokenized: Counter
) -> None:
    Migrator(db, project).upgrade()
    assert imports.calls == 5  # applying them needs their code
    imports.calls = tokenized.calls = 0
    report = Migrator(db, project).upgrade()
    assert not report.changed
    assert (imports.calls, tokenized.calls) == (0, 0)


def test_status_and_validate_of_unchanged_files_import_nothing(
    db: Any, project: Path, imports: Counter, tokenized: Counter
) -> None:
    Migrator(db, project).upgrade(3)
    imports.calls = tokenized.calls = 0
    migrator = Migrator(db, project)
    rows = migrator.status()
    assert migrator.validate() == []
    assert [(r.version, r.status, r.checksum_ok) for r in rows] == [
        (1, "applied", True), (2, "applied", True), (3, "applied", True),
        (4, "pending", None), (5, "pending", None)]
    assert rows[0].description == "Set users.step1."  # from the record
    assert rows[0].transactional is True  # how it ran, from the record (file not imported)
    assert rows[3].reversible is True  # a pending file is described by its code
    assert (imports.calls, tokenized.calls) == (2, 0)


def test_a_cosmetic_edit_is_tokenized_once_then_remembered(
    db: Any, project: Path, tokenized: Counter
) -> None:
    Migrator(db, project).upgrade()
    path = project / "0002_step2.py"
    path.write_text(path.read_text().replace("def up(db):", "# reviewed\ndef up(db):"))
    tokenized.calls = 0
    Migrator(db, project).upgrade()  # accepted: same code; the new bytes' hash is stored
    assert tokenized.calls == 1
    tokenized.calls = 0
    Migrator(db, project).upgrade()
    assert tokenized.calls == 0


def test_records_written_before_the_raw_hash_existed_tokenize_once(
    db: Any, project: Path, tokenized: Counter
) -> None:
    Migrator(db, project).upgrade()
    db.migrations.update_many({}, {"$unset": {"raw_checksum": ""}})
    tokenized.calls = 0
    Migrator(db, project).upgrade()
    assert tokenized.calls == 5
    assert db.migrations.count_documents({"raw_checksum": {"$type": "string"}}) == 5
    tokenized.calls = 0
    Migrator(db, project).upgrade()
    assert tokenized.calls == 0


def test_a_real_edit_is_still_drift(db: Any, project: Path) -> None:
    Migrator(db, project).upgrade()
    path = project / "0004_step4.py"
    path.write_text(path.read_text().replace("True", "False"))
    with pytest.raises(ChecksumDriftError):
        Migrator(db, project).upgrade()
    record = db.migrations.find_one({"_id": 4})
    assert record["checksum"] != filemigration.source_checksum(path.read_text())


def test_a_broken_pending_file_is_reported_when_its_code_is_needed(
    db: Any, project: Path
) -> None:
    Migrator(db, project).upgrade()
    (project / "0006_broken.py").write_text("def up(db)\n    pass\n")
    migrator = Migrator(db, project)  # reading the directory imports nothing
    with pytest.raises(MigrationDefinitionError, match=r"Syntax error in .*0006_broken\.py"):
        migrator.upgrade()


def test_a_checksum_changed_on_the_record_is_not_vouched_for_by_the_bytes(
    db: Any, project: Path
) -> None:
    Migrator(db, project).upgrade()
    db.migrations.update_one({"_id": 3}, {"$set": {"checksum": "0" * 64}})
    [problem] = Migrator(db, project).validate()
    assert (problem.kind, problem.version) == ("checksum_drift", 3)


# -- the command line's quick answer (noop.py) ---------------------------------------------------


def clean_state(db: Any, project: Path) -> tuple[list[Any], List[Dict[str, Any]]]:
    """The five files applied: the lazily loaded files and the raw records."""
    Migrator(db, project).upgrade()
    migrations = loader.load_migrations(project, lazy=True)
    return migrations, list(db.get_collection("migrations",
                                              codec_options=OWN_CODEC).find())


def test_the_quick_answer_for_an_applied_unchanged_project(db: Any, project: Path) -> None:
    migrations, docs = clean_state(db, project)
    assert noop.judge(migrations, docs) == (5, "every file is applied and unchanged")
    assert noop.judge(migrations, [*docs, {"_id": "schema_version", "version": 5}])[0] == 5


@pytest.mark.parametrize("change, why", [
    (lambda docs: docs[2].update(status="failed"), "version 3 is 'failed'"),
    (lambda docs: docs[2].update(status="rolled_back"), "version 3 is 'rolled_back'"),
    (lambda docs: docs[2].update(status="running"), "version 3 is 'running'"),
    (lambda docs: docs.pop(4), "version 5 is not applied"),
    (lambda docs: docs.append({**docs[0], "_id": 9, "version": 9}), "9 is recorded but has no"),
    (lambda docs: docs[1].update(raw_checksum="0" * 64), "file of version 2 changed"),
    (lambda docs: docs[1].update(checksum="0" * 64), "file of version 2 changed"),
    (lambda docs: docs[1].pop("raw_checksum"), "record 2 has no raw_checksum"),
    (lambda docs: docs[1].update(_id=7), "record 7 has no plain version"),
    # an _id that is not an integer is another tool's document: version 2 is then missing
    (lambda docs: docs[1].update(version=True, _id=True), "version 2 is not applied"),
    (lambda docs: docs[1].update(duration_ms="12"), "record 2 has an unexpected duration_ms"),
    (lambda docs: docs[1].update(last_error={"type": "X"}), "unexpected last_error"),
    (lambda docs: docs[1].update(direction="down"), "version 2 was last run down"),
    (lambda docs: docs.clear(), "no per-version records"),
])
def test_the_quick_answer_is_unsure_of_anything_but_plainly_applied(
    db: Any, project: Path, change: Callable[[List[Dict[str, Any]]], Any], why: str
) -> None:
    migrations, docs = clean_state(db, project)
    change(docs)
    version, reason = noop.judge(migrations, docs)
    assert version is None and why in reason


def test_the_quick_answer_is_unsure_of_an_edited_file(db: Any, project: Path) -> None:
    Migrator(db, project).upgrade()
    path = project / "0003_step3.py"
    path.write_text(path.read_text() + "\n# reviewed\n")  # cosmetic: the full path decides
    migrations = loader.load_migrations(project, lazy=True)
    assert noop.judge(migrations, list(db.migrations.find())) == (
        None, "the file of version 3 changed since it was recorded")


def test_it_checks_every_field_of_the_record_model() -> None:
    assert set(noop._FIELDS) | {"version"} == records.field_names(records.MigrationRecord)


def test_a_noop_up_on_the_command_line_loads_no_runner_models_or_migration(
    db: Any, project: Path, mongo_uri: str
) -> None:
    Migrator(db, project).upgrade()
    done = run_python(f"""
        import sys
        from analytiq_migrations.cli import main
        code = main(["up", "--uri", {mongo_uri!r}, "--database", {db.name!r},
                     "--migrations", {str(project)!r}])
        loaded = [name for name in sys.modules if name.startswith(("pydantic", "tenacity"))
                  or name in ("analytiq_migrations.runner", "analytiq_migrations.records")
                  or "step" in name]
        print("exit", code, "loaded", sorted(loaded))
    """)
    assert done.returncode == 0, done.stderr
    assert f"Nothing to do: '{db.name}' is at version 5." in done.stdout
    assert "exit 0 loaded []" in done.stdout


@pytest.mark.parametrize("applied_before", [0, 3])
def test_an_apply_that_runs_cleanly_loads_neither_pydantic_nor_tenacity(
    db: Any, project: Path, mongo_uri: str, applied_before: int
) -> None:
    """Records are checked plainly (pydantic only for what is not plainly right) and the
    retry machinery is imported on a first retryable error, not before."""
    if applied_before:
        Migrator(db, project).upgrade(applied_before)  # records to read, plainly
    done = run_python(f"""
        import sys
        from analytiq_migrations.cli import main
        code = main(["up", "--uri", {mongo_uri!r}, "--database", {db.name!r},
                     "--migrations", {str(project)!r}])
        print("exit", code, "loaded",
              sorted(n for n in sys.modules if n.startswith(("pydantic", "tenacity"))))
    """)
    assert done.returncode == 0, done.stderr
    assert "exit 0 loaded []" in done.stdout
    assert Migrator(db, project).current_version() == 5
    assert [e.status for e in Migrator(db, project).history()] == ["applied"] * 5


def up_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Dict[str, Any]:
    assert main(["up", "--json", *argv]) == 0
    data: Dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def test_the_quick_answer_prints_what_the_full_path_prints(
    db: Any, project: Path, mongo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Migrator(db, project).upgrade()
    argv = ("--uri", mongo_uri, "--database", db.name, "--migrations", str(project))
    quick = up_json(capsys, *argv)
    full = up_json(capsys, *argv, "--transactions", "always")  # "always" takes the full path
    assert set(quick) == set(full) == set(records.field_names(RunReport))
    timeless = ("run_id", "started_at", "finished_at")
    assert {k: v for k, v in quick.items() if k not in timeless} == \
        {k: v for k, v in full.items() if k not in timeless}
    assert len(quick["started_at"]) == len(full["started_at"])  # milliseconds, like BSON's


def test_when_unsure_the_command_line_takes_the_full_path(
    db: Any, project: Path, mongo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Migrator(db, project).upgrade(4)
    argv = ["up", "-v", "--uri", mongo_uri, "--database", db.name, "--migrations", str(project)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "no-op check: version 5 is not applied; taking the full path" in captured.err
    assert "Applied 1 migration" in captured.out
    assert db.migrations.find_one({"_id": 5})["status"] == "applied"


def test_when_unsure_the_full_path_goes_on_with_what_the_check_made(
    db: Any, project: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    from analytiq_migrations import config, runner

    Migrator(db, project).upgrade(4)
    clients, pings, loads = Counter(config.make_client), Counter(config.ping), \
        Counter(loader.load_migrations)
    monkeypatch.setattr(config, "make_client", clients)
    monkeypatch.setattr(config, "ping", pings)
    monkeypatch.setattr(loader, "load_migrations", loads)
    monkeypatch.setattr(runner, "load_migrations", loads)
    monkeypatch.setattr(loader, "_from_name_or_path", reads := Counter(loader._from_name_or_path))
    argv = ["up", "--uri", mongo_uri, "--database", db.name, "--migrations", str(project)]
    assert main(argv) == 0
    assert "Applied 1 migration" in capsys.readouterr().out
    # One client, asked once whether its server answers; the directory read once (the
    # Migrator is given the list the check loaded).
    assert (clients.calls, pings.calls, reads.calls, loads.calls) == (1, 1, 1, 2)
