"""Every call a transaction refuses, found before anything runs: ``validate`` lists them all,
``plan`` marks their steps, and the run refuses exactly what they said (one set of rules).

A history ported as a team ports it (seed-style classes and module files, 26 of them) used
to reach head one refusal per ``up``; here one ``validate`` names every refusal."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

from analytiq_migrations import Migration, MigrationDefinitionError, Migrator
from analytiq_migrations.cli import main
from analytiq_migrations.txnscan import scan


def calls(source: str, *, existing: frozenset[str] = frozenset({"users"}),
          wire: int = 17) -> List[tuple[int, str]]:
    """(line, call) of each refusal ``scan`` finds in ``up``."""
    found = scan(textwrap.dedent(source), "up", database="app", wire_version=wire,
                 existing=lambda: existing)
    return [(f.line, f.call) for f in found]


# -- reading the code -----------------------------------------------------------------------


def test_calls_are_followed_through_names_blocks_and_helpers() -> None:
    source = '''
        def _prune(database):
            database.old.drop()

        def up(db):
            users = db.users
            users.create_index("email")
            for name in db.list_collection_names():
                pass
            with open("x") as handle:
                logs = db.get_collection("logs")
                logs.rename("logs_2023")
            try:
                db["things"].aggregate([{"$match": {}}, {"$out": "copy"}])
            except Exception:
                db.command("collMod", "users")
            _prune(db)
    '''
    assert calls(source) == [
        (7, 'users.create_index("email")'), (8, "db.list_collection_names()"),
        (12, 'logs.rename("logs_2023")'),
        (14, 'db["things"].aggregate([{"$match": {}}, {"$out": "copy"}])'),
        (16, 'db.command("collMod", "users")'), (3, "database.old.drop()"),
    ]


def test_what_a_transaction_allows_is_not_reported() -> None:
    source = '''
        def up(db):
            items = [1, 2, 1]
            items.count(1)
            "a-b".replace("-", "_")
            db.users.update_many({}, {"$set": {"active": True}})
            db.create_collection("audit")
            db.audit.create_index("at")          # a collection this transaction creates
            db.fresh.create_index("x")           # does not exist yet: the build creates it
            db.users.aggregate([{"$match": {"active": True}}])
            db.command({"find": "users"})
            db.command(build_command())          # built at run time: left to the run
            db.client.admin.command("ping")      # another database: not followed
    '''
    assert calls(source) == []


def test_class_migrations_are_read_from_their_methods() -> None:
    source = '''
        class Seed(Migration):
            def __init__(self):
                super().__init__(version=3, description="Index users")

            def up(self, db):
                db.users.create_index("email", unique=True)
                return True
    '''
    assert calls(source) == [(7, 'db.users.create_index("email", unique=True)')]


def test_before_mongodb_4_4_every_index_build_is_refused() -> None:
    assert calls('''
        def up(db):
            db.fresh.create_index("x")
    ''', wire=8) == [(3, 'db.fresh.create_index("x")')]


# -- validate, plan and the run agree ---------------------------------------------------------

REFUSED = {  # call -> what the file's up() does around it
    "db.users.drop()": "db.users.drop()",
    'db.users.create_index("email")': 'db.users.create_index("email")',
    'db.users.drop_index("name_1")': 'db.users.drop_index("name_1")',
    "db.list_collection_names()": "names = db.list_collection_names()",
    'db.users.rename("people")': 'db.users.rename("people")',
    'db.command("collMod", "users")': 'db.command("collMod", "users")',
}


@pytest.mark.parametrize("call", sorted(REFUSED))
def test_validate_names_what_the_run_refuses(db: Any, tmp_path: Path, call: str) -> None:
    db.users.insert_one({"name": "Ada"})
    db.users.create_index("name")
    (tmp_path / "0001_step.py").write_text(
        f'"""Step"""\n\n\ndef up(db):\n    db.users.update_many({{}}, {{"$set": {{"a": 1}}}})\n'
        f"    {REFUSED[call]}\n")
    migrator = Migrator(db, tmp_path)
    (problem,) = migrator.validate()
    assert (problem.kind, problem.version) == ("refused_in_transaction", 1)
    assert f"{call} (line 6)" in problem.message
    assert "transactional = False" in problem.hint
    reason = problem.message.split(" (line 6): ", 1)[1].rstrip(".")
    assert migrator.plan().steps[0].refused == f"{call} (line 6)"
    with pytest.raises(MigrationDefinitionError) as refused:
        migrator.upgrade()
    assert reason in str(refused.value)  # the very words of the run-time rule
    assert db.users.find_one({"a": 1}) is None


def test_transactional_false_clears_it(db: Any, tmp_path: Path) -> None:
    (tmp_path / "0001_drop.py").write_text(
        '"""Drop"""\ntransactional = False\n\n\ndef up(db):\n    db.users.drop()\n')
    assert Migrator(db, tmp_path).validate() == []
    assert Migrator(db, tmp_path).plan().steps[0].refused is None


def test_without_transactions_nothing_is_refused(db: Any, tmp_path: Path) -> None:
    (tmp_path / "0001_drop.py").write_text('"""Drop"""\n\n\ndef up(db):\n    db.users.drop()\n')
    assert Migrator(db, tmp_path, transactions="never").validate() == []


def test_applied_migrations_are_not_judged_again(db: Any, tmp_path: Path) -> None:
    (tmp_path / "0001_drop.py").write_text('"""Drop"""\n\n\ndef up(db):\n    db.users.drop()\n')
    Migrator(db, tmp_path).upgrade(fake=True)
    assert Migrator(db, tmp_path).validate() == []


# -- a history of our own making ---------------------------------------------------------------


def history() -> Dict[str, str]:
    """26 migrations as a team ports them: most fine, six calling what a transaction
    refuses (seed-style classes among them), one of those declared non-transactional."""
    files: Dict[str, str] = {}
    refusing = {
        3: "db.sessions.drop()",
        7: 'db.users.create_index("email", unique=True)',
        11: 'db.users.drop_index("legacy_1")',
        15: "names = db.list_collection_names()",
        19: 'db.orders.aggregate([{"$match": {}}, {"$out": "orders_archive"}])',
        23: 'db.events.rename("events_old")',
    }
    for version in range(1, 27):
        body = f'db.users.update_many({{}}, {{"$set": {{"v{version}": True}}}})'
        extra = refusing.get(version, "pass")
        if version % 2:  # seed style
            files[f"{version:04d}_step.py"] = textwrap.dedent(f'''\
                from analytiq_migrations import Migration


                class Step{version}(Migration):
                    def __init__(self):
                        super().__init__("Seed-style step {version}")

                    def up(self, db):
                        {body}
                        {extra}
                        return True
                ''')
        else:
            files[f"{version:04d}_step.py"] = textwrap.dedent(f'''\
                """Module-style step {version}"""
                {"transactional = False" if version == 26 else ""}

                def up(db):
                    {body}
                    {extra if version != 26 else "db.scratch.drop()"}
                ''')
    return files


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str, db: Any) -> Path:
    source = tmp_path / "schema_changes"
    source.mkdir()
    for name, text in history().items():
        (source / name).write_text(text)
    db.users.insert_one({"name": "Ada"})
    for name in ("sessions", "events", "orders"):
        db[name].insert_one({})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_DATABASE", db.name)
    monkeypatch.setenv("ANALYTIQ_MIGRATIONS_SOURCE", str(source))
    return source


def test_one_validate_lists_every_refusal_of_a_history(
        project: Path, db: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json"]) == 4
    import json

    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["kind"], p["version"]) for p in problems] == \
        [("refused_in_transaction", v) for v in (3, 7, 11, 15, 19, 23)]
    assert main(["plan"]) == 0
    table = capsys.readouterr().out
    marked = [line.split()[0] for line in table.splitlines() if "REFUSED" in line]
    assert marked == ["3", "7", "11", "15", "19", "23"]
    assert db.migrations.count_documents({}) == 0  # nothing ran, nothing was written
    assert "migration_lock" not in db.list_collection_names()


def test_validate_fails_on_a_pending_file_that_does_not_load(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "0027_broken.py").write_text('"""Broken"""\n\ndef up(db)\n    pass\n')
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "0027_broken.py" in err and "line 3" in err


def test_seed_class_in_a_list_is_read_too(db: Any) -> None:
    class IndexUsers(Migration):
        def __init__(self) -> None:
            super().__init__(version=1, description="Index users")

        def up(self, db: Any) -> bool:
            db.users.create_index("email")
            return True

    db.users.insert_one({})
    (problem,) = Migrator(db, [IndexUsers()]).validate()
    assert 'db.users.create_index("email")' in problem.message
