"""``new``: write the next ``NNNN_slug.py`` migration file from a template."""

from __future__ import annotations

import importlib.util
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError

#: Zero-padding for the first file of a directory: 9999 migrations before the
#: names stop sorting by version in a file listing.
DEFAULT_WIDTH = 4

#: Longest slug: keeps file names readable in listings and far below filesystem limits.
MAX_SLUG = 60

_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_NUMBERED = re.compile(r"^(\d+)_.*\.py$")

TEMPLATE = '''\
"""{description}"""

# Transactions: by default (transactional = None) this migration runs in one transaction
# wherever the server has them (replica set or mongos): its writes, its version record
# and its history entry commit together or not at all, so a failure leaves nothing
# behind. Document reads and writes (find, insert, update, delete, bulk_write) are fine
# in a transaction, like the example in up() below. Not allowed in one, on MongoDB of
# any version (it fails with OperationNotSupportedInTransaction; analytiq_migrations
# refuses these calls before sending them):
#   - create_index / create_indexes on a collection that already exists, drop_index,
#     drop / drop_collection / drop_database, rename;
#   - $out / $merge aggregations, writes to capped or system.* collections, commands
#     such as collMod;
# and no transaction holds more than 60 s of work or 16 MB of changes (for large
# updates use self.batch_update in a Migration class, see the docs).
# What joins it: every call on `db` and on the collections it hands out (pymongo 3's
# insert/update/save/remove/find_and_modify are refused: use insert_one, update_many...).
# Your app's own data layer (MongoEngine documents, Flask-PyMongo's mongo.db,
# db.client[...]) joins it on pymongo 4.17+ only; before, its writes commit on their own
# and a failure names them (docs/compatibility.md).
# For any of these set transactional = False (with idempotent = True if re-running is
# harmless), or split the migration: the DDL in one, the data change in the next.
# transactional = False

# Without a transaction a killed run can leave this half applied. Set
# idempotent = True if running up() again is harmless (e.g. $set to fixed values,
# create_index); the next run then simply re-runs it instead of stopping.
# idempotent = True


def up(db):
    """Apply the change. ``db`` is a pymongo Database; in a transaction, every call on
    it (and on the collections it hands out) joins the transaction automatically."""
    # db.users.update_many({{"status": {{"$exists": False}}}}, {{"$set": {{"status": "active"}}}})
    raise NotImplementedError("write this migration: {filename}")


def down(db):
    """Revert the change. Delete this function if the change cannot be undone: a
    downgrade past this version is then refused up front instead of failing midway."""
    # db.users.update_many({{}}, {{"$unset": {{"status": ""}}}})
    raise NotImplementedError("write this migration's down(): {filename}")
'''


@dataclass(frozen=True)
class Created:
    """What ``new_migration`` wrote."""

    path: Path
    version: int
    made_directory: bool


def slugify(description: str) -> str:
    """``"Add e-mail index!"`` -> ``add_e_mail_index`` (ASCII letters, digits, ``_``)."""
    ascii_text = unicodedata.normalize("NFKD", description).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", ascii_text).strip("_").lower()
    return slug[:MAX_SLUG].rstrip("_")


def migrations_directory(source: str) -> tuple[Path, bool]:
    """The directory behind a ``--migrations`` value (a path, or a package's directory),
    and whether it is a package (its new directories get an ``__init__.py``). A dotted
    name that does not exist yet goes under the deepest importable package it names,
    else under the current directory (``shop.db_migrations`` -> ``./shop/db_migrations``)."""
    path = Path(source)
    if path.is_dir():
        return path, False
    if os.sep not in source and not source.endswith(".py") and _DOTTED_NAME.match(source):
        parts = source.split(".")
        for size in range(len(parts), 0, -1):
            prefix = ".".join(parts[:size])
            try:
                spec = importlib.util.find_spec(prefix)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                continue
            locations = list(spec.submodule_search_locations or [])
            if not locations:
                raise ConfigurationError(
                    f"Migrations '{source}': '{prefix}' is a module, not a package, so it "
                    "cannot hold migrations.",
                    hint="Name a package (a directory with __init__.py), or give a directory "
                    "path.",
                )
            return Path(locations[0]).joinpath(*parts[size:]), True
        return Path.cwd().joinpath(*parts), True
    return path, False


def next_name(directory: Path, slug: str) -> tuple[int, str]:
    """Next free version and its file name, zero-padded like the highest existing file."""
    numbered = []
    if directory.is_dir():
        for entry in directory.iterdir():
            match = _NUMBERED.match(entry.name)
            if match and entry.is_file():
                numbered.append((int(match.group(1)), len(match.group(1))))
    last, width = max(numbered) if numbered else (0, DEFAULT_WIDTH)
    version = last + 1
    return version, f"{version:0{width}d}_{slug}.py"


def new_migration(source: str, description: str) -> Created:
    """Write the next migration file for ``description`` into ``source``'s directory."""
    description = " ".join(description.split())
    slug = slugify(description)
    if not slug:
        raise ConfigurationError(
            f"Cannot make a file name from the description {description!r}.",
            hint="Describe the change in words, e.g. `new add email index`.",
        )
    directory, package = migrations_directory(source)
    made = not directory.exists()
    if made:
        missing = [directory, *[p for p in directory.parents if not p.exists()]]
        directory.mkdir(parents=True)
        for new_directory in missing if package else []:
            (new_directory / "__init__.py").touch()  # importable by its dotted name
    elif not directory.is_dir():
        raise ConfigurationError(f"Migrations path '{directory}' exists but is not a directory.")
    version, name = next_name(directory, slug)
    path = directory / name
    docstring = description.replace("\\", "\\\\").replace('"', '\\"')
    text = TEMPLATE.format(description=docstring, filename=path.as_posix())
    try:
        with path.open("x", encoding="utf-8") as handle:  # "x": never overwrite
            handle.write(text)
    except FileExistsError:
        raise ConfigurationError(
            f"Migration file '{path}' already exists; not overwriting it.",
            hint="Another `new` may have just written it: list the directory and try again.",
        ) from None
    return Created(path=path, version=version, made_directory=made)
