"""Loading migrations: the three styles, every source kind, and every way a source is wrong."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from analytiq_migrations import Migration, MigrationDefinitionError, load_migrations


def write(directory: Path, name: str, body: str) -> Path:
    """Write a migration file (dedented) and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


# -- the three styles ---------------------------------------------------------------------


class Rename(Migration):
    version = 2
    description = "Rename user.name to user.full_name"

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$rename": {"name": "full_name"}})

    def down(self, db: Any) -> None:
        db.users.update_many({}, {"$rename": {"full_name": "name"}})


class SeedStyle(Migration):
    def __init__(self) -> None:
        super().__init__(version=3, description="Add new_field to user collection")

    def up(self, db: Any) -> bool:
        db.users.update_many({}, {"$set": {"new_field": "new_value"}})
        return True


def test_class_attribute_style() -> None:
    [migration] = load_migrations([Rename])
    assert migration.version == 2
    assert migration.summary() == "Rename user.name to user.full_name"
    assert migration.reversible
    assert migration.transactional is None and migration.idempotent is False


def test_seed_constructor_style_instances() -> None:
    [migration] = load_migrations([SeedStyle()])
    assert migration.version == 3
    assert migration.description == "Add new_field to user collection"
    assert not migration.reversible  # no down(): irreversible


def test_list_is_sorted_by_version() -> None:
    assert [m.version for m in load_migrations([SeedStyle(), Rename()])] == [2, 3]


def test_unversioned_list_is_numbered_in_order() -> None:
    class A(Migration):
        def up(self, db: Any) -> None: ...

    class B(Migration):
        def up(self, db: Any) -> None: ...

    migrations = load_migrations([B(), A()])
    assert [(type(m).__name__, m.version) for m in migrations] == [("B", 1), ("A", 2)]


def test_partly_versioned_list_is_refused() -> None:
    class A(Migration):
        def up(self, db: Any) -> None: ...

    with pytest.raises(MigrationDefinitionError, match="have no version"):
        load_migrations([A(), Rename()])


def test_module_file_style(tmp_path: Path) -> None:
    write(tmp_path, "0001_add_email_index.py", '''
        """Add a unique index on users.email.

        Longer explanation that is not part of the description.
        """
        transactional = False
        idempotent = True

        def up(db):
            db.users.create_index("email", unique=True)

        def down(db):
            db.users.drop_index("email_1")
    ''')
    write(tmp_path, "0002_backfill.py", '''
        def up(db):
            db.users.update_many({}, {"$set": {"active": True}})
    ''')
    write(tmp_path, "helpers.py", "X = 1\n")  # not a migration: ignored
    write(tmp_path, "README.txt", "not python")
    first, second = load_migrations(tmp_path)
    assert (first.version, second.version) == (1, 2)
    assert first.description == "Add a unique index on users.email."
    assert first.transactional is False and first.idempotent is True
    assert first.reversible and not second.reversible
    assert first.origin == str(tmp_path / "0001_add_email_index.py")


def test_file_with_one_migration_class(tmp_path: Path) -> None:
    write(tmp_path, "0007_split.py", '''
        """Split addresses out of users."""
        from analytiq_migrations import Migration

        def helper(db):
            return db.users

        class Split(Migration):
            transactional = False

            def up(self, db):
                helper(db).update_many({}, {"$unset": {"address": ""}})
    ''')
    [migration] = load_migrations(str(tmp_path))
    assert migration.version == 7
    assert migration.description == "Split addresses out of users."
    assert migration.transactional is False


def test_file_class_version_must_match_prefix(tmp_path: Path) -> None:
    write(tmp_path, "0003_x.py", '''
        from analytiq_migrations import Migration

        class X(Migration):
            version = 4
            def up(self, db):
                pass
    ''')
    with pytest.raises(MigrationDefinitionError, match=r"0003_x\.py.*prefix 3.*version is 4"):
        load_migrations(tmp_path)


def test_dotted_package_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "shop_migrations"
    package.mkdir()
    write(package, "__init__.py", "")
    write(package, "_common.py", "FIELD = 'sku'\n")
    write(package, "0001_index_sku.py", '''
        """Index products by SKU."""
        from ._common import FIELD

        def up(db):
            db.products.create_index(FIELD)
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    [migration] = load_migrations("shop_migrations")
    assert migration.version == 1
    assert migration.description == "Index products by SKU."
    sys.modules.pop("shop_migrations", None)


def test_module_with_migrations_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "seed_module.py", '''
        from analytiq_migrations import Migration

        class OcrKeyMigration(Migration):
            def __init__(self):
                super().__init__(version=1, description="Rename OCR keys _list -> _json")

            def up(self, db):
                return True

        MIGRATIONS = [OcrKeyMigration()]
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    [migration] = load_migrations("seed_module")
    assert migration.description == "Rename OCR keys _list -> _json"
    sys.modules.pop("seed_module", None)


# -- every way a source is wrong ------------------------------------------------------------


def test_duplicate_versions_name_both() -> None:
    class Other(Migration):
        version = 2

        def up(self, db: Any) -> None: ...

    with pytest.raises(MigrationDefinitionError) as info:
        load_migrations([Rename, Other])
    message = str(info.value)
    assert "Duplicate version 2" in message
    assert "Rename" in message and "Other" in message
    assert info.value.version == 2


def test_duplicate_versions_across_files(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.py", "def up(db):\n    pass\n")
    write(tmp_path, "001_b.py", "def up(db):\n    pass\n")
    with pytest.raises(MigrationDefinitionError, match=r"Duplicate version 1.*0001_a\.py"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("version", [0, -1, "3", 2.0, True])
def test_non_positive_or_non_int_versions(version: Any) -> None:
    class Bad(Migration):
        def up(self, db: Any) -> None: ...

    bad = Bad()
    bad.version = version
    with pytest.raises(MigrationDefinitionError, match="positive integers"):
        load_migrations([bad, Rename()])


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "0001_ok.py", "def up(db):\n    pass\n")
    write(tmp_path, "0002_broken.py", "def up(db)\n    pass\n")
    with pytest.raises(MigrationDefinitionError) as info:
        load_migrations(tmp_path)
    assert "0002_broken.py" in str(info.value) and "line 1" in str(info.value)
    assert info.value.version == 2


def test_import_error_names_file(tmp_path: Path) -> None:
    write(tmp_path, "0001_needs_module.py", "import no_such_module_here\n\ndef up(db):\n    pass\n")
    with pytest.raises(MigrationDefinitionError, match=r"0001_needs_module\.py.*no_such_module"):
        load_migrations(tmp_path)


def test_exception_at_import_names_file(tmp_path: Path) -> None:
    write(tmp_path, "0001_boom.py", "raise RuntimeError('boom at import')\n")
    with pytest.raises(MigrationDefinitionError, match=r"0001_boom\.py.*boom at import"):
        load_migrations(tmp_path)


def test_file_without_up(tmp_path: Path) -> None:
    write(tmp_path, "0001_empty.py", '"""Nothing here."""\n')
    with pytest.raises(MigrationDefinitionError, match="neither up"):
        load_migrations(tmp_path)


def test_file_with_two_migrations(tmp_path: Path) -> None:
    write(tmp_path, "0001_two.py", '''
        from analytiq_migrations import Migration

        class A(Migration):
            def up(self, db):
                pass

        def up(db):
            pass
    ''')
    with pytest.raises(MigrationDefinitionError, match="more than one migration"):
        load_migrations(tmp_path)


def test_badly_named_migration_file(tmp_path: Path) -> None:
    write(tmp_path, "0003-add-index.py", "def up(db):\n    pass\n")
    with pytest.raises(MigrationDefinitionError, match=r"not named NNNN_slug\.py"):
        load_migrations(tmp_path)


def test_async_up_is_refused_with_a_way_out() -> None:
    class AsyncSeed(Migration):
        def __init__(self) -> None:
            super().__init__(version=1, description="async from the seed")

        async def up(self, db: Any) -> bool:  # type: ignore[override]
            return True

    with pytest.raises(MigrationDefinitionError, match="async") as info:
        load_migrations([AsyncSeed()])
    assert "Drop 'async'" in str(info.value)


def test_class_without_up() -> None:
    class NoUp(Migration):
        version = 1

    with pytest.raises(MigrationDefinitionError, match="does not implement up"):
        load_migrations([NoUp])


def test_class_needing_arguments() -> None:
    class NeedsArgs(Migration):
        def __init__(self, table: str) -> None:
            super().__init__(version=1)

        def up(self, db: Any) -> None: ...

    with pytest.raises(MigrationDefinitionError, match="Cannot instantiate"):
        load_migrations([NeedsArgs])


def test_non_migration_in_list() -> None:
    with pytest.raises(MigrationDefinitionError, match="not a Migration"):
        load_migrations([Rename, "0002_x.py"])


def test_missing_directory_and_unknown_package(tmp_path: Path) -> None:
    with pytest.raises(MigrationDefinitionError, match="does not exist"):
        load_migrations(str(tmp_path / "nope"))
    with pytest.raises(MigrationDefinitionError, match="No directory or importable module"):
        load_migrations("no_such_migrations_package")


def test_bad_transactional_value() -> None:
    class Odd(Migration):
        version = 1
        transactional = "yes"  # type: ignore[assignment]

        def up(self, db: Any) -> None: ...

    with pytest.raises(MigrationDefinitionError, match="transactional must be"):
        load_migrations([Odd])


def test_empty_directory_loads_nothing(tmp_path: Path) -> None:
    assert load_migrations(tmp_path) == []


def test_seed_style_description_passed_positionally() -> None:
    """A service's ``super().__init__("Add thing")``: the string is the description, and
    the version comes from the list order like the seed's other versionless instances."""

    class AddThing(Migration):
        def __init__(self) -> None:
            super().__init__("Add thing")

        def up(self, db: Any) -> None: ...

    class Numbered(Migration):
        version = 7

        def __init__(self) -> None:
            super().__init__("Numbered by its class")

        def up(self, db: Any) -> None: ...

    (loaded,) = load_migrations([AddThing()])
    assert (loaded.version, loaded.description) == (1, "Add thing")
    numbered = Numbered()
    assert (numbered.version, numbered.description) == (7, "Numbered by its class")
