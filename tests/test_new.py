"""`new DESCRIPTION`: the next numbered migration file, from a template, no server needed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import run_python

from analytiq_migrations import MigrationDefinitionError, Migrator, load_migrations
from analytiq_migrations.cli import main
from analytiq_migrations.templates import slugify


@pytest.fixture(autouse=True)
def no_settings_from_outside(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test passes counts: no environment, no pyproject.toml."""
    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_SOURCE",
                 "ANALYTIQ_MIGRATIONS_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def new(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["new", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_first_migration_of_a_new_directory(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = new(capsys, "--migrations", "migrations", "Add", "email", "index")
    assert code == 0
    assert out.splitlines() == ["Created directory migrations",
                                str(Path("migrations") / "0001_add_email_index.py")]
    text = (tmp_path / "migrations" / "0001_add_email_index.py").read_text()
    assert text.startswith('"""Add email index"""\n')
    assert "transactional = False" in text and "idempotent = True" in text
    assert "def up(db):" in text and "def down(db):" in text


def test_next_number_is_padded_like_the_neighbours(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for files, expected in [
        (["0001_a.py", "0002_b.py"], "0003_next.py"),
        (["1_a.py", "2_b.py"], "3_next.py"),
        (["07_a.py", "helpers.py", "README.md"], "08_next.py"),
        (["0009_a.py"], "0010_next.py"),
        (["9999_a.py"], "10000_next.py"),
        (["0001_a.py", "0012_b.py", "0003_c.py"], "0013_next.py"),
    ]:
        directory = tmp_path / f"case_{expected}"
        directory.mkdir()
        for name in files:
            (directory / name).write_text("def up(db):\n    pass\n")
        code, out, _ = new(capsys, "next", "--migrations", str(directory))
        assert code == 0
        assert out.strip() == str(directory / expected)


def test_written_file_loads_and_fails_until_written(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "migs").mkdir()
    (tmp_path / "migs" / "0001_create_users.py").write_text(
        '"""Create users"""\ndef up(db):\n    pass\n')
    code, _, _ = new(capsys, "--migrations", "migs", 'Rename "name" to full_name\\now')
    assert code == 0
    loaded = load_migrations(str(tmp_path / "migs"))
    assert [m.version for m in loaded] == [1, 2]
    second = loaded[1]
    assert second.description == 'Rename "name" to full_name\\now'
    assert second.transactional is None and second.idempotent is False
    assert second.reversible
    with pytest.raises(NotImplementedError, match=r"0002_rename_name_to_full_name_now\.py"):
        second.up(None)  # type: ignore[arg-type]


def test_into_a_package_by_its_dotted_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "src" / "shop" / "mongo_migrations"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    code, out, _ = new(capsys, "--migrations", "shop.mongo_migrations", "seed products")
    assert code == 0
    assert (package / "0001_seed_products.py").exists()
    assert out.strip() == str(package / "0001_seed_products.py")


def test_a_new_package_is_created_with_its_init_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    shop = f"shop_{uuid.uuid4().hex[:8]}"  # not a package imported by another test
    code, out, err = new(capsys, "--migrations", f"{shop}.db_migrations", "seed products")
    assert code == 0, err
    package = tmp_path / shop / "db_migrations"
    assert out.splitlines() == [f"Created directory {package}",
                                str(package / "0001_seed_products.py")]
    assert (tmp_path / shop / "__init__.py").exists()
    assert (package / "__init__.py").exists()
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NotImplementedError, match="write this migration"):
        load_migrations(f"{shop}.db_migrations")[0].up(None)  # loads by its dotted name
    # Into an existing package, only the new subpackage is made.
    code, _, err = new(capsys, "--migrations", f"{shop}.more_migrations", "x")
    assert code == 0, err
    assert (tmp_path / shop / "more_migrations" / "__init__.py").exists()


def test_a_module_cannot_hold_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plainmod.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = new(capsys, "--migrations", "plainmod.migrations", "x")
    assert code == 2
    assert "'plainmod' is a module, not a package" in err
    assert list(tmp_path.iterdir()) == [tmp_path / "plainmod.py"]


def test_never_overwrites_whatever_holds_the_name(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "migs").mkdir()
    (tmp_path / "migs" / "0001_a.py").write_text("def up(db):\n    pass\n")
    (tmp_path / "migs" / "0002_add_index.py").mkdir()  # not a migration file, but the name
    code, _, err = new(capsys, "--migrations", "migs", "add index")
    assert code == 2
    assert "0002_add_index.py' already exists; not overwriting it" in err


def test_description_without_letters_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = new(capsys, "--migrations", "migs", "!!!")
    assert code == 2
    assert "Cannot make a file name from the description '!!!'" in err


def test_new_needs_the_migrations_setting_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = new(capsys, "something")
    assert code == 2
    assert "Missing setting: migrations" in err
    assert "MongoDB URI" not in err


def test_quiet_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = new(capsys, "-q", "--migrations", "migs", "first")
    assert (code, out, err) == (0, "", "")
    code, out, _ = new(capsys, "--json", "--migrations", "migs", "second")
    assert code == 0
    assert json.loads(out) == {"path": str(Path("migs") / "0002_second.py"), "version": 2}


@pytest.mark.parametrize(("description", "slug"), [
    ("Add email index", "add_email_index"),
    ("  Rename user.name -> full_name  ", "rename_user_name_full_name"),
    ("Crème brûlée façade", "creme_brulee_facade"),
    ("x" * 100, "x" * 60),
])
def test_slugs(description: str, slug: str) -> None:
    assert slugify(description) == slug


def test_new_in_a_fresh_process_needs_no_server(tmp_path: Path) -> None:
    result = run_python(
        "import sys; from analytiq_migrations.cli import main; sys.exit(main())",
        env={"ANALYTIQ_MIGRATIONS_SOURCE": "migs", "MONGODB_URI": "mongodb://127.0.0.1:1/x"},
        cwd=tmp_path, args=["new", "backfill", "status"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("0001_backfill_status.py")


# -- the template's own advice, run ---------------------------------------------------------


def written(capsys: pytest.CaptureFixture[str], directory: Path, description: str) -> Path:
    """The file `new` writes, with the examples of up() and down() uncommented."""
    code, out, _ = new(capsys, "--migrations", str(directory), description)
    assert code == 0
    path = Path(out.strip().splitlines()[-1])
    lines = [line.replace("    # db.", "    db.", 1) for line in path.read_text().splitlines()
             if "raise NotImplementedError" not in line]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_templates_example_runs_in_its_default_transaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], db: Any
) -> None:
    db.users.insert_many([{"_id": 1}, {"_id": 2, "status": "banned"}])
    written(capsys, tmp_path / "migrations", "Give users a status")
    migrator = Migrator(db, str(tmp_path / "migrations"))

    report = migrator.upgrade()

    assert [(s.version, s.transactional) for s in report.steps] == [(1, True)]
    assert {u["_id"]: u["status"] for u in db.users.find()} == {1: "active", 2: "banned"}
    migrator.downgrade(0)
    assert list(db.users.find()) == [{"_id": 1}, {"_id": 2}]


def test_an_index_on_an_existing_collection_needs_transactional_false_as_the_notes_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], db: Any
) -> None:
    db.users.insert_one({"_id": 1, "email": "ada@example.com"})
    path = written(capsys, tmp_path / "migrations", "Index users by email")
    text = path.read_text().replace('db.users.update_many({"status": {"$exists": False}}, '
                                    '{"$set": {"status": "active"}})',
                                    'db.users.create_index("email", name="email_1")')
    path.write_text(text)

    with pytest.raises(MigrationDefinitionError, match="transactional = False"):
        Migrator(db, str(tmp_path / "migrations")).upgrade()
    assert "email_1" not in db.users.index_information()

    path.write_text(text.replace("# transactional = False", "transactional = False", 1))
    Migrator(db, str(tmp_path / "migrations")).upgrade()
    assert "email_1" in db.users.index_information()
