"""Another tool's documents in the records collection: a portal's own migration tool keeps
``{plugin, filename, date, ops}`` in ``migrations``. This library works alongside them (its
records are the documents whose ``_id`` is a version number, plus the seed's
``schema_version``): it reads past them, never changes them, and never calls them malformed
or suggests deleting them."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from analytiq_migrations import CorruptRecordError, Migrator, cli, load_migrations
from analytiq_migrations.noop import read_and_judge

FIRST = '''"""Create the first users"""


def up(db):
    db.users.insert_one({"_id": 1, "name": "Ada"})


def down(db):
    db.users.delete_many({})
'''

SECOND = '''"""Give users a role"""


def up(db):
    db.users.update_many({}, {"$set": {"role": "member"}})


def down(db):
    db.users.update_many({}, {"$unset": {"role": ""}})
'''


def portal_documents() -> list[dict[str, Any]]:
    """What the portal's own migration tool leaves in ``migrations`` after its upgrade."""
    when = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    return [
        {"_id": ObjectId(), "plugin": "core", "filename": "0001_initial.py", "date": when,
         "ops": [{"op": "create_collection", "name": "pages"}]},
        {"_id": ObjectId(), "plugin": "blog", "filename": "0003_tags.py", "date": when,
         "ops": [{"op": "add_field", "collection": "posts", "field": "tags"}]},
    ]


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "db_migrations"
    directory.mkdir()
    (directory / "0001_create_users.py").write_text(FIRST)
    (directory / "0002_user_roles.py").write_text(SECOND)
    return directory


@pytest.fixture
def portal_db(db: Any) -> Any:
    """A database whose ``migrations`` collection the portal's tool already uses."""
    db.migrations.insert_many(portal_documents())
    return db


def foreign(db: Any) -> list[dict[str, Any]]:
    return list(db.migrations.find({"plugin": {"$exists": True}}).sort("filename"))


def test_migrator_works_alongside_the_portals_documents(portal_db: Any, migrations_dir: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    before = foreign(portal_db)
    migrator = Migrator(portal_db, str(migrations_dir))
    with caplog.at_level(logging.INFO, logger="analytiq_migrations"):
        assert [row.status for row in migrator.status()] == ["pending", "pending"]
    notes = [r.getMessage() for r in caplog.records if "another tool" in r.getMessage()]
    assert len(notes) == 1 and "date, filename, ops, plugin" in notes[0]
    assert migrator.validate() == []
    assert migrator.upgrade().versions == [1, 2]
    assert migrator.current_version() == 2
    assert migrator.validate() == []
    assert [row.status for row in migrator.status()] == ["applied", "applied"]
    assert migrator.downgrade(1).versions == [2]
    assert foreign(portal_db) == before  # never changed
    assert portal_db.migrations.count_documents({}) == len(before) + 2


def test_a_seed_era_database_beside_them_is_still_adopted(portal_db: Any,
                                                          migrations_dir: Path) -> None:
    portal_db.migrations.insert_one({"_id": "schema_version", "version": 1,
                                     "updated_at": datetime.now(timezone.utc)})
    migrator = Migrator(portal_db, str(migrations_dir))
    assert [row.status for row in migrator.status()] == ["baselined", "pending"]
    assert migrator.upgrade().versions == [2]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.run(list(argv), stdout=out, stderr=out)
    return code, out.getvalue()


def test_the_command_line_reads_past_them(portal_db: Any, migrations_dir: Path,
                                          mongo_uri: str) -> None:
    where = ["--uri", mongo_uri, "--database", portal_db.name, "--migrations",
             str(migrations_dir)]
    for argv in (["status"], ["validate"], ["up"], ["status", "--check"], ["validate"],
                 ["up"], ["history"]):
        code, output = run(*where, *argv)
        assert code == 0, (argv, output)
        assert "malformed" not in output and "delete" not in output.lower(), output
    assert len(foreign(portal_db)) == 2


def test_the_quick_no_op_answer_skips_them(portal_db: Any, migrations_dir: Path) -> None:
    migrations = load_migrations(str(migrations_dir))
    Migrator(portal_db, migrations).upgrade()
    version, why = read_and_judge(portal_db, "migrations", migrations)
    assert version == 2, why


def test_a_record_that_is_not_ours_never_suggests_deleting_it(db: Any,
                                                              migrations_dir: Path) -> None:
    # A tool keying its documents by number can collide with version numbers: refuse,
    # naming the setting for a collection of our own, never suggesting a delete.
    db.migrations.insert_one({"_id": 7, "plugin": "core", "filename": "0007_x.py"})
    with pytest.raises(CorruptRecordError) as raised:
        Migrator(db, str(migrations_dir)).upgrade()
    text = f"{raised.value.message} {raised.value.hint}"
    assert "delete" not in text.lower()
    assert "ANALYTIQ_MIGRATIONS_COLLECTION" in text and "baseline VERSION" in text


def test_upgrade_on_start_boots_beside_them(portal_db: Any, migrations_dir: Path,
                                            mongo_uri: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    flask = pytest.importorskip("flask")
    from analytiq_migrations.contrib.flask import init_app

    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_DATABASE",
                 "ANALYTIQ_MIGRATIONS_SOURCE", "ANALYTIQ_MIGRATIONS_CLIENT"):
        monkeypatch.delenv(name, raising=False)
    app = flask.Flask("portal")
    app.config.update(MONGO_URI=mongo_uri, ANALYTIQ_MIGRATIONS_DATABASE=portal_db.name,
                      ANALYTIQ_MIGRATIONS_SOURCE=str(migrations_dir),
                      ANALYTIQ_MIGRATIONS_UPGRADE_ON_START=True)
    init_app(app)
    assert app.extensions["analytiq_migrations"].start_report.versions == [1, 2]
    assert len(foreign(portal_db)) == 2
