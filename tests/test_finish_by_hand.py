"""A non-transactional migration that failed or was interrupted halfway: the message
gives both ways out, and following it never applies the change twice.

Finished by hand -> record it as done without running it (``up --fake VERSION``, or
``down --fake BELOW`` for a revert), the history saying it was faked. Undone by hand ->
``repair --clear-failed``, and the next run starts it afresh."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from analytiq_migrations import FailedMigrationError, MigrationFailedError, Migrator
from analytiq_migrations.cli import main

CREATE = '''\
"""Create the items collection"""


def up(db):
    db.items.insert_one({"_id": "seed"})


def down(db):
    db.items.delete_one({"_id": "seed"})
'''

# Two writes without a transaction; it stops between them while `db.stop` says so.
TWO_WRITES = '''\
"""Add items a and b"""

transactional = False


def up(db):
    db.items.insert_one({"_id": "a"})
    if db.stop.find_one({"_id": "up"}):
        raise RuntimeError("the billing API timed out")
    db.items.insert_one({"_id": "b"})


def down(db):
    db.items.delete_one({"_id": "b"})
    if db.stop.find_one({"_id": "down"}):
        raise RuntimeError("the billing API timed out")
    db.items.delete_one({"_id": "a"})
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str, db: Any) -> Path:
    """Two migrations; the command line configured by the environment."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_create.py").write_text(CREATE)
    (directory / "0002_two_writes.py").write_text(TWO_WRITES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_DATABASE", db.name)
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_SOURCE", str(directory))
    return directory


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Tuple[int, str]:
    """Run the command line; its exit code and everything it printed."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def advised(text: str, verb: str) -> List[str]:
    """The ``analytiq-migrations <verb> ...`` command the message tells the operator to run."""
    match = re.search(rf"`analytiq-migrations ({verb}[^`]*)`", " ".join(text.split()))
    assert match, text
    return match.group(1).split()


def history(db: Any, version: int) -> List[Tuple[str, bool]]:
    """(status, faked) of a version's history, oldest first."""
    return [(e["status"], bool(e.get("faked"))) for e in
            db.migrations_history.find({"version": version}).sort(
                [("started_at", 1), ("finished_at", 1)])]


def failed_up(db: Any, capsys: pytest.CaptureFixture[str]) -> str:
    """``up`` stopped by migration 2 after its first write; what it printed, on one line."""
    db.stop.insert_one({"_id": "up"})
    code, text = cli(capsys, "up")
    assert code == 1, text
    return " ".join(text.split())


def test_a_failed_up_finished_by_hand_is_recorded_and_not_applied_again(
    db: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = failed_up(db, capsys)
    assert "finished the change of version 2 by hand" in text
    assert "repair --clear-failed" in text  # the other way: undone by hand

    db.items.insert_one({"_id": "b"})  # the operator finishes it by hand
    db.stop.delete_many({})
    assert advised(text, "up") == ["up", "--fake", "2"]
    assert cli(capsys, "up", "--fake", "2")[0] == 0

    code, text = cli(capsys, "up")
    assert code == 0, text
    assert sorted(d["_id"] for d in db.items.find()) == ["a", "b", "seed"]
    assert db.migrations.find_one({"_id": 2})["status"] == "baselined"
    assert history(db, 2) == [("failed", False), ("baselined", True)]
    assert cli(capsys, "validate")[0] == 0


def test_an_interrupted_up_finished_by_hand_is_recorded_and_not_applied_again(
    db: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C between the two writes: the record stays `running`, its run is gone.
    db.stop.insert_one({"_id": "up"})
    (project / "0002_two_writes.py").write_text(TWO_WRITES.replace(
        'raise RuntimeError("the billing API timed out")\n    db.items.insert_one({"_id": "b"})',
        'raise KeyboardInterrupt\n    db.items.insert_one({"_id": "b"})'))
    with pytest.raises(KeyboardInterrupt):
        Migrator(db, project).upgrade()
    (project / "0002_two_writes.py").write_text(TWO_WRITES)

    code, text = cli(capsys, "up")
    assert code == 4
    assert "was interrupted" in text and "repair --clear-failed" in text
    db.items.insert_one({"_id": "b"})
    db.stop.delete_many({})
    assert cli(capsys, *advised(text, "up"))[0] == 0

    assert cli(capsys, "up")[0] == 0
    assert sorted(d["_id"] for d in db.items.find()) == ["a", "b", "seed"]
    assert history(db, 2) == [("interrupted", False), ("baselined", True)]


def test_a_failed_down_finished_by_hand_is_recorded_as_reverted(
    db: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "up")[0] == 0
    db.stop.insert_one({"_id": "down"})
    code, text = cli(capsys, "down", "1")
    assert code == 1
    assert "finished reverting version 2 by hand" in " ".join(text.split())
    assert "repair --clear-failed" in text

    db.items.delete_one({"_id": "a"})  # the operator finishes the revert by hand
    db.stop.delete_many({})
    assert advised(text, "down") == ["down", "--fake", "1"]
    assert cli(capsys, "down", "--fake", "1")[0] == 0

    assert cli(capsys, "down", "1")[0] == 0  # nothing left to revert
    assert sorted(d["_id"] for d in db.items.find()) == ["seed"]
    assert db.migrations.find_one({"_id": 2})["status"] == "rolled_back"
    assert history(db, 2)[-2:] == [("failed", False), ("rolled_back", True)]


def test_a_failed_up_undone_by_hand_runs_afresh_after_clear_failed(
    db: Any, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = failed_up(db, capsys)
    assert "If you undid it by hand, forget the attempt" in text
    assert advised(text, "repair") == ["repair", "--clear-failed"]
    db.items.delete_one({"_id": "a"})  # the operator undoes it by hand
    db.stop.delete_many({})

    assert cli(capsys, "repair", "--clear-failed")[0] == 0
    assert cli(capsys, "up")[0] == 0
    assert sorted(d["_id"] for d in db.items.find()) == ["a", "b", "seed"]


def test_the_python_api_spells_both_ways_for_python(db: Any, project: Path) -> None:
    db.stop.insert_one({"_id": "up"})
    with pytest.raises(MigrationFailedError) as failed:
        Migrator(db, project).upgrade()
    hint = " ".join(str(failed.value).split())
    assert "upgrade(2, fake=True)" in hint and "repair(clear_failed=True)" in hint
    with pytest.raises(FailedMigrationError) as refused:
        Migrator(db, project).upgrade()
    hint = " ".join(str(refused.value).split())
    assert "upgrade(2, fake=True)" in hint and "repair(clear_failed=True)" in hint
    [problem] = Migrator(db, project).validate()
    assert "upgrade(2, fake=True)" in " ".join(problem.hint.split())
