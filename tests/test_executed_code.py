"""The code that runs is the code whose checksum is recorded: a migration file is compiled
from the very text that was hashed, never from a bytecode cache nor from a module an
earlier load left in ``sys.modules``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from analytiq_migrations import Migrator, load_migrations
from analytiq_migrations.checksum import source_checksum

BEFORE = '''"""Set the plan price"""


def up(db):
    db.plans.insert_one({"_id": "pro", "price": 10})
'''
AFTER = BEFORE.replace('"price": 10', '"price": 25')  # same size: a cache keyed on size misses it


def _edit_in_the_same_second(path: Path, text: str) -> None:
    """Rewrite ``path`` with ``text`` of the same size and its old modification time."""
    stat = path.stat()
    assert len(text.encode()) == stat.st_size
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def bytecode_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python writes ``.pyc`` files here, as it does on most machines."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def test_a_same_size_edit_in_the_same_second_runs_the_new_code(
    db: Any, tmp_path: Path, bytecode_allowed: None
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    path = directory / "0001_price.py"
    path.write_text(BEFORE)
    [first] = load_migrations(directory)  # imported once: a cache would be warm now
    assert first.checksum == source_checksum(BEFORE)

    _edit_in_the_same_second(path, AFTER)
    Migrator(db, directory).upgrade()

    assert db.plans.find_one({"_id": "pro"})["price"] == 25
    assert db.migrations.find_one({"_id": 1})["checksum"] == source_checksum(AFTER)
    assert not (directory / "__pycache__").exists()  # no bytecode cache for migrations


@pytest.fixture
def forget_package() -> Iterator[None]:
    """The test's package leaves ``sys.modules`` as it found it."""
    yield
    for name in [n for n in sys.modules if n.startswith("shop_migrations")]:
        del sys.modules[name]


def test_a_package_edited_after_an_earlier_load_runs_the_new_code(
    db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytecode_allowed: None,
    forget_package: None,
) -> None:
    package = tmp_path / "shop_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("PLAN = 'pro'\n")
    path = package / "0001_price.py"
    path.write_text(BEFORE.replace('"pro"', "PLAN").replace(
        '"""Set the plan price"""\n', '"""Set the plan price"""\nfrom .helpers import PLAN\n'))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_migrations("shop_migrations")  # an earlier load in the same process

    text = path.read_text().replace('"price": 10', '"price": 25')
    _edit_in_the_same_second(path, text)
    Migrator(db, "shop_migrations").upgrade()

    assert db.plans.find_one({"_id": "pro"})["price"] == 25
    assert db.migrations.find_one({"_id": 1})["checksum"] == source_checksum(text)
