"""Figure 6's workloads, and the tools that run them: this library and its peers, each
migration written in the tool's own format from one description, so every tool does
exactly the same work.

Peers: migrate-mongo (Node, ``npm install`` into a temporary directory), pymongo-migrate
and mongodb-migrations (``pip install`` into a temporary venv, on the same pymongo as
this library). One that cannot be installed is left out with a note.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pymongo


@dataclass(frozen=True)
class Step:
    """One migration: a name (lowercase letters and ``_``, mongodb-migrations' file
    pattern), a description and one operation."""

    slug: str
    description: str
    #: ``("insert_one", collection, document)``, ``("create_index", collection, field)``
    #: or ``("update_many", collection, {field: value})`` (``$set`` on every document).
    op: tuple[str, str, Any]

    @property
    def python(self) -> str:
        """The operation in pymongo, on ``db``."""
        kind, coll, arg = self.op
        if kind == "create_index":
            return f"db.{coll}.create_index({arg!r})"
        if kind == "update_many":
            return f"db.{coll}.update_many({{}}, {{'$set': {arg!r}}})"
        return f"db.{coll}.insert_one({arg!r})"

    @property
    def transactional(self) -> bool:
        """Whether this library runs it in a transaction (an index build runs outside)."""
        return self.op[0] != "create_index"

    @property
    def python_in_session(self) -> str:
        """:attr:`python` with ``session=s`` when it runs in a transaction."""
        return self.python[:-1] + ", session=s)" if self.transactional else self.python

    @property
    def js(self) -> str:
        """The same in the Node driver, on ``db``."""
        kind, coll, arg = self.op
        target = f"db.collection({json.dumps(coll)})"
        if kind == "create_index":
            return f"{target}.createIndex({json.dumps({arg: 1})})"
        if kind == "update_many":
            return f"{target}.updateMany({{}}, {json.dumps({'$set': arg})})"
        return f"{target}.insertOne({json.dumps(arg)})"


@dataclass(frozen=True)
class Workload:
    """Migrations to apply to an empty database (``seed`` inserted first), and how to
    tell that a tool really applied them (``check``: collection, filter, count)."""

    name: str
    steps: list[Step]
    check: tuple[str, dict[str, Any], int]
    seed: tuple[str, list[dict[str, Any]]] = ("", [])

    def prepare(self, db: Any) -> None:
        """Drop ``db`` and insert the seed documents."""
        db.client.drop_database(db.name)
        coll, docs = self.seed
        if docs:
            db[coll].insert_many([dict(d) for d in docs])

    def applied(self, db: Any) -> bool:
        """Whether the workload's effect is there."""
        coll, query, count = self.check
        return bool(db[coll].count_documents(query) == count)


#: Documents of the 20-migration workload.
ITEMS = 20
#: Migrations of the large workload.
MANY = 200

APPLY3 = Workload("apply 3 migrations", [
    Step("first_user", "Insert the first user",
         ("insert_one", "users", {"name": "ada", "email": "ada@example.com"})),
    Step("email_index", "Index users by email", ("create_index", "users", "email")),
    Step("free_plan", "Every user starts on the free plan",
         ("update_many", "users", {"plan": "free"})),
], check=("users", {"plan": "free"}, 1))

APPLY20 = Workload(f"apply 20 migrations over {ITEMS} documents", [
    Step("set_step", f"Set items.step{n}", ("update_many", "items", {f"step{n}": True}))
    for n in range(1, 21)
], check=("items", {"step20": True}, ITEMS), seed=("items", [{"n": n} for n in range(ITEMS)]))

APPLY200 = Workload(f"apply {MANY} tiny migrations", [
    Step("add_step", f"Record step {n}", ("insert_one", "steps", {"n": n}))
    for n in range(1, MANY + 1)
], check=("steps", {}, MANY))


def _files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def write_ours(directory: Path, steps: list[Step]) -> None:
    """``NNNN_slug.py`` modules (an index build runs outside a transaction)."""
    _files(directory, {
        f"{n:04d}_{s.slug}.py": f'"""{s.description}"""\n\n'
        + ("" if s.transactional else "transactional = False\n\n")
        + f"\ndef up(db):\n    {s.python}\n"
        for n, s in enumerate(steps, 1)})


def write_pymongo_migrate(directory: Path, steps: list[Step]) -> None:
    """pymongo-migrate modules: ``name``, ``dependencies`` (a chain), up and down."""
    names = [f"{n:04d}_{s.slug}" for n, s in enumerate(steps, 1)]
    _files(directory, {
        f"{name}.py": f"name = {name!r}\ndependencies = {names[i - 1:i]!r}\n\n\n"
        f"def upgrade(db):\n    {s.python}\n\n\ndef downgrade(db):\n    pass\n"
        for i, (name, s) in enumerate(zip(names, steps))})


def write_mongodb_migrations(directory: Path, steps: list[Step]) -> None:
    """mongodb-migrations modules: a ``Migration(BaseMigration)`` class each."""
    _files(directory, {
        f"{n:04d}_{s.slug}.py": "from mongodb_migrations.base import BaseMigration\n\n\n"
        "class Migration(BaseMigration):\n    def upgrade(self):\n        db = self.db\n"
        f"        {s.python}\n\n    def downgrade(self):\n        pass\n"
        for n, s in enumerate(steps, 1)})


def write_migrate_mongo(directory: Path, steps: list[Step]) -> None:
    """migrate-mongo CommonJS modules, named so that they sort in order."""
    _files(directory, {
        f"2026{n:010d}-{s.slug.replace('_', '-')}.js":
        f"module.exports = {{\n  async up(db) {{ await {s.js}; }},\n  async down(db) {{}}\n}};\n"
        for n, s in enumerate(steps, 1)})


@dataclass
class Tool:
    """A command line that applies a directory of migrations to a database."""

    name: str
    write: Callable[[Path, list[Step]], None]
    #: ``(project directory, URI, database) -> argv``; the migrations are in
    #: ``project/migrations`` and the command runs in ``project``.
    argv: Callable[[Path, str, str], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    #: A migration tool (runs the no-op row too), not a baseline that only applies.
    peer: bool = True


def ours(name: str, command: list[str], **env: str) -> Tool:
    """``analytiq-migrations up`` (``command``), with the library found via ``env``."""
    return Tool(name, write_ours, lambda d, uri, db: [
        *command, "up", "-q", "--uri", uri, "--database", db,
        "--migrations", str(d / "migrations")], env)


def _with_database(uri: str, db: str) -> str:
    """``uri`` with ``db`` as its path (mongodb-migrations takes the database from it)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


def python_peers(tmp: Path) -> list[Tool]:
    """pymongo-migrate and mongodb-migrations in one venv, on this pymongo (or none)."""
    venv = tmp / "python-peers"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "pymongo-migrate",
                           "mongodb-migrations", f"pymongo=={pymongo.version}"],
                          capture_output=True, text=True) if made.returncode == 0 else made
    if done.returncode != 0:
        print(f"pymongo-migrate, mongodb-migrations: skipped (pip install failed: "
              f"{str(done.stderr).strip()[-200:]})")
        return []
    versions = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from importlib.metadata import version as v; "
         "print(v('pymongo-migrate'), v('mongodb-migrations'), v('pymongo'))"],
        capture_output=True, text=True, check=True).stdout.split()
    print(f"pymongo-migrate {versions[0]}, mongodb-migrations {versions[1]} (pymongo "
          f"{versions[2]})")
    pm, mdm = str(venv / "bin" / "pymongo-migrate"), str(venv / "bin" / "mongodb-migrate")
    return [
        Tool(f"pymongo-migrate {versions[0]}", write_pymongo_migrate, lambda d, uri, db: [
            pm, "migrate", "-u", uri, "-d", db, "-m", str(d / "migrations")]),
        Tool(f"mongodb-migrations {versions[1]}", write_mongodb_migrations,
             lambda d, uri, db: [mdm, "--url", _with_database(uri, db),
                                 "--migrations", str(d / "migrations")]),
    ]


def migrate_mongo(tmp: Path) -> Optional[Tool]:
    """migrate-mongo installed with npm into ``tmp``, or ``None`` (with a note)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        print("migrate-mongo: skipped (no node/npm here)")
        return None
    home = tmp / "migrate-mongo"
    home.mkdir()
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent",
                           "migrate-mongo"], cwd=home, capture_output=True, text=True)
    script = home / "node_modules" / ".bin" / "migrate-mongo"
    if done.returncode != 0 or not script.exists():
        print(f"migrate-mongo: skipped (npm install failed: {done.stderr.strip()[:200]})")
        return None
    version = json.loads((home / "node_modules" / "migrate-mongo" / "package.json")
                         .read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"migrate-mongo {version} (node {node})")

    def argv(directory: Path, uri: str, db: str) -> list[str]:
        config = {"mongodb": {"url": uri, "databaseName": db, "options": {}},
                  "migrationsDir": "migrations", "changelogCollectionName": "changelog",
                  "lockCollectionName": "changelog_lock", "lockTtl": 0,
                  "migrationFileExtension": ".js", "useFileHash": False,
                  "moduleSystem": "commonjs"}
        (directory / "migrate-mongo-config.js").write_text(
            f"module.exports = {json.dumps(config)};\n")
        return [str(script), "up"]

    return Tool(f"migrate-mongo {version}", write_migrate_mongo, argv)


#: Bare pymongo sending, for each migration, the commands this library sends on a replica
#: set (tests/test_round_trips.py pins them): read the records (the no-op check), read them,
#: take the lock, read them again; per transactional step, in one transaction: the lease
#: check, the migration's write, the record and history entry (one ``bulkWrite`` on MongoDB
#: 8.0+ with pymongo 4.9+, else two inserts), the commit; a step outside a transaction
#: writes ``running`` and its outcome in two such transactions around its write, and the
#: next transactional step marks the lock first. Then the lock is released and the process
#: ends without pymongo's exit wait, as the command line does (``fastexit.py``). What is
#: left between this and ``analytiq-migrations up`` is the library's own work: imports,
#: loading, checksums, planning, reporting.
SAME_COMMANDS = """\
import datetime, os, sys, uuid
import pymongo
from pymongo import InsertOne, UpdateOne

client = pymongo.MongoClient(sys.argv[1])
db, name = client[sys.argv[2]], sys.argv[2]
run, ttl = uuid.uuid4().hex, datetime.timedelta(seconds=60)
together = callable(getattr(type(client), "bulk_write", None)) and \
    client.admin.command("hello")["maxWireVersion"] >= 25  # as store.writes_together
now = lambda: datetime.datetime.now(datetime.timezone.utc)
lease = {"_id": "migration_lock", "run_id": run}


def fence(s):
    db.migration_lock.update_one({**lease, "expires_at": {"$gt": now()}}, {"$set": {
        "heartbeat_at": now(), "expires_at": now() + ttl, "step": None}}, session=s)


def write(s, ops):
    if together and len(ops) > 1:
        client.bulk_write([op(f"{name}.{coll}") for coll, op in ops], session=s)
    else:
        for coll, op in ops:
            db[coll].bulk_write([op(None)], session=s)


def record(v, status):
    return {"_id": v, "version": v, "status": status, "run_id": run, "started_at": now(),
            "finished_at": now(), "checksum": "0" * 64, "attempts": 1}


def entry(v):
    return {"_id": f"{run}:{v}:up:1:applied", "version": v, "status": "applied",
            "run_id": run, "started_at": now(), "finished_at": now()}


def insert(doc):
    return lambda ns: InsertOne(doc, namespace=ns) if ns else InsertOne(doc)


def update(v):
    def op(ns):
        args = ({"_id": v}, {"$set": {"status": "applied", "finished_at": now()}})
        return UpdateOne(*args, namespace=ns) if ns else UpdateOne(*args)
    return op


list(db.migrations.find({}))  # the command line's no-op check
list(db.migrations.find({}))
db.migration_lock.find_one_and_update({"_id": "migration_lock"}, {"$set": {
    "run_id": run, "expires_at": now() + ttl}}, upsert=True)
list(db.migrations.find({}))
marked = True
for v, (transactional, op) in enumerate(STEPS, 1):
    with client.start_session() as s:
        if transactional:
            if not marked:
                db.migration_lock.update_one(lease, {"$set": {"step": {"version": v}}})
            with s.start_transaction():
                fence(s)
                exec(op)
                write(s, [("migrations", insert(record(v, "applied"))),
                          ("migrations_history", insert(entry(v)))])
            marked = True
        else:
            with s.start_transaction():
                fence(s)
                write(s, [("migrations", insert(record(v, "running")))])
            exec(op)
            with s.start_transaction():
                fence(s)
                write(s, [("migrations", update(v)), ("migrations_history", insert(entry(v)))])
            marked = False
db.migration_lock.delete_one(lease)
client.close()
sys.stdout.flush()
os._exit(0)
"""


#: The baseline's name in the tables.
SAME = "pymongo, our commands"


def write_same_commands(directory: Path, steps: list[Step]) -> None:
    """:data:`SAME_COMMANDS` with the steps' operations, as ``run.py``."""
    ops = [(s.transactional, s.python_in_session) for s in steps]
    _files(directory, {"run.py": f"STEPS = {ops!r}\n" + SAME_COMMANDS})


def same_commands() -> Tool:
    """Bare pymongo sending the commands this library sends (:data:`SAME_COMMANDS`)."""
    return Tool(SAME, write_same_commands, lambda d, uri, db: [
        sys.executable, str(d / "migrations" / "run.py"), uri, db], peer=False)


def bare_floor(uri: str, db: str) -> list[str]:
    """``python -c``: import pymongo, ping, read one record (what any tool must do)."""
    return [sys.executable, "-c", textwrap.dedent(f"""\
        import pymongo
        c = pymongo.MongoClient({uri!r})
        c.admin.command('ping')
        c[{db!r}].migrations.find_one()""")]
