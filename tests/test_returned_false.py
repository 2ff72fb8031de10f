"""A migration that fails without raising (the seed's ``except: log; return False``): the
failure carries the cause it hid (the driver error it caught on ``db``, in a transaction
or not, and the last error it logged), what it wrote, and, for the seed's irreversible
``down()``, the ways out."""

from __future__ import annotations

from typing import Any

import pytest
from support import ProjectCli, needs_bind, run_python

from analytiq_migrations import Migration, MigrationFailedError, Migrator

CREATE = '''\
"""Create the roles"""


def up(db):
    db.roles.insert_many([{"_id": "admin"}, {"_id": "guest"}])


def down(db):
    db.roles.delete_many({})
'''

# The seed's style, outside a transaction: the duplicate key is caught, logged, and the
# migration returns False after having written the settings document.
SWALLOWS = '''\
import logging

from pymongo.errors import PyMongoError

from analytiq_migrations import Migration

log = logging.getLogger(__name__)


class AddEditorRole(Migration):
    transactional = False

    def __init__(self):
        super().__init__(version=2, description="Add the editor role")

    def up(self, db) -> bool:
        try:
            db.settings.insert_one({"_id": "roles", "editor": True})
            db.roles.insert_one({"_id": "admin"})
            return True
        except PyMongoError as e:
            log.error(f"Migration failed: {e}")
            return False
'''

# The seed's irreversible idiom: a down() that logs and returns False.
IRREVERSIBLE = '''\
import logging

from analytiq_migrations import Migration

log = logging.getLogger(__name__)


class DropLegacyField(Migration):
    def __init__(self):
        super().__init__(version=2, description="Drop users.legacy")

    def up(self, db) -> bool:
        db.users.update_many({}, {"$unset": {"legacy": ""}})
        return True

    def down(self, db) -> bool:
        log.warning("Migration 2 cannot be reverted: the legacy values are gone")
        return False
'''

TAG = '''\
"""Tag the users"""


def up(db):
    db.users.update_many({}, {"$set": {"tag": "t"}})


def down(db):
    db.users.update_many({}, {"$unset": {"tag": ""}})
'''


def test_outside_a_transaction_returned_false_names_the_caught_error_and_the_log(
        project_cli: ProjectCli) -> None:
    project_cli.write({"0001_create_roles.py": CREATE, "0002_add_editor.py": SWALLOWS})
    code, _, err = project_cli("up")
    assert code == 1
    first = next(line for line in err.splitlines() if "error:" in line)
    assert "Migration 2 (Add the editor role) up() returned False: it caught " \
           "DuplicateKeyError (code 11000) from roles.insert_one()" in first
    assert 'it logged "Migration failed: E11000' in first
    assert "(ERROR at 0002_add_editor.py:22)" in first
    assert "It ran without a transaction; before returning it wrote: settings: 1 inserted." \
        in first
    assert first.count("0002_add_editor.py:22") == 1  # said once
    assert "Raise the error instead of returning False" in err
    stored = project_cli.db.migrations.find_one({"_id": 2})["error"]
    assert "DuplicateKeyError" in stored["message"] and \
        stored["location"] == "0002_add_editor.py:22"
    # The key's value is hidden, and only the key: what follows it is kept.
    assert "admin" not in stored["message"] and "dup key: {...}" in stored["message"]
    assert "before returning it wrote: settings: 1 inserted." in stored["message"]


def test_in_a_transaction_returned_false_says_what_was_logged_and_that_nothing_was_kept(
        db: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    class Gives(Migration):
        version = 1
        description = "Check the invariant"

        def up(self, db: Any) -> bool:
            db.things.insert_one({"_id": 1})
            logging.getLogger("app.migrations").error("invariant broken: %d orphans", 3)
            return False

    class Silent(Migration):
        version = 1

        def up(self, db: Any) -> bool:
            return False

    with pytest.raises(MigrationFailedError) as info:
        Migrator(db, [Gives]).upgrade()
    message = str(info.value)
    assert 'up() returned False: it logged "invariant broken: 3 orphans" (ERROR at ' \
           "test_returned_false.py:" in message
    assert "Its transaction was rolled back: nothing of the step was kept." in message
    assert db.things.count_documents({}) == 0

    with pytest.raises(MigrationFailedError) as info:
        Migrator(db, [Silent]).upgrade()
    assert "returned False: it raised nothing and logged no warning or error" in str(info.value)


def test_the_seeds_irreversible_down_says_so_and_offers_the_ways_out(
        project_cli: ProjectCli) -> None:
    project_cli.write({"0001_create_roles.py": CREATE, "0002_drop_legacy.py": IRREVERSIBLE,
                       "0003_tag_users.py": TAG})
    assert project_cli("up")[0] == 0
    code, out, err = project_cli("down", "base")
    assert code == 1
    assert out.splitlines()[0] == (f"Reverted 1 migration on '{project_cli.db.name}' before "
                                   "migration 2 failed: version 3 -> 2")
    assert "Migration 2 (Drop users.legacy) down() returned False: it logged \"Migration 2 " \
           "cannot be reverted: the legacy values are gone\" (WARNING at " \
           "0002_drop_legacy.py:17)" in err
    assert "Its transaction was rolled back" in err
    assert "If so, delete its down(): a downgrade then refuses, before changing anything, " \
           "to cross it." in err
    assert "record the revert without running it: `analytiq-migrations down --fake 1`" in err

    # The way out it offers works: the revert is recorded, and the rest goes down.
    assert project_cli("down", "--fake", "1")[0] == 0
    code, _, err = project_cli("down", "base")
    assert code == 0, err
    assert project_cli.db.roles.count_documents({}) == 0


def test_a_migrations_log_still_reaches_stderr_when_nothing_else_handles_it(
        mongo_uri: str, db: Any) -> None:
    done = run_python(f"""
        import logging
        from pymongo import MongoClient
        from analytiq_migrations import Migration, Migrator

        class Logs(Migration):
            version = 1
            transactional = False

            def up(self, db):
                logging.getLogger("app").warning("heads up: %s", "slow")
                logging.getLogger("app").error("it broke")
                return False

        client = MongoClient({mongo_uri!r})
        try:
            Migrator(client[{db.name!r}], [Logs]).upgrade()
        except Exception as exc:
            print("raised:", exc)
    """)
    assert "heads up: slow\nit broke\n" in done.stderr
    assert 'it logged "it broke" (ERROR at <string>:' in done.stdout


@needs_bind
def test_a_dry_run_says_the_same(db: Any) -> None:
    import logging

    class Gives(Migration):
        version = 1
        description = "Check the invariant"

        def up(self, db: Any) -> bool:
            logging.getLogger("app.migrations").error("invariant broken")
            return False

    failed = Migrator(db, [Gives]).upgrade(dry_run=True).failed
    assert failed is not None and failed.error is not None
    assert 'up() returned False: it logged "invariant broken" (ERROR at ' in \
        failed.error.message
