"""A no-op run costs the same with 3 or 1,000 migrations: unchanged files are neither
imported nor tokenized; their bytes' hash is compared with the one on the record."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from analytiq_migrations import ChecksumDriftError, MigrationDefinitionError, Migrator, loader

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

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


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
    counter = Counter(loader._import_file)
    monkeypatch.setattr(loader, "_import_file", counter)
    return counter


@pytest.fixture
def tokenized(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts migration files tokenized for their normalized checksum."""
    counter = Counter(loader.source_checksum)
    monkeypatch.setattr(loader, "source_checksum", counter)
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
    assert record["checksum"] != loader.source_checksum(path.read_text())


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
