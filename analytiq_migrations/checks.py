"""The test kit: drive migrations step by step and check them on a scratch database.

    runner = MigrationRunner(db, "migrations", seed={2: {"users": [{"name": "Ada"}]}})
    runner.migrate_up_to(1)
    runner.insert("users", [{"name": "Alan"}])
    before = runner.snapshot()
    runner.migrate_up_one()
    runner.migrate_down_one()
    assert runner.snapshot() == before

    for result in run_checks(runner):        # the built-in checks, each a CheckResult
        assert result.passed, result.explain()

The pytest plugin (``pytest --analytiq-migrations``) and ``analytiq-migrations verify``
run the same checks. Every check starts by emptying the runner's database: give it a
scratch one.

Seed data: ``seed[v]`` is inserted right before version ``v``'s ``up`` runs, so it has
the shape of the data at version ``v - 1`` (what ``v`` has to migrate). A value is a
mapping of collection name to documents, or a function called with the database.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import MigrationError
from .loader import MigrationSource, load_migrations
from .migration import Migration
from .records import RunReport
from .runner import Migrator
from .snapshot import Snapshot, take_snapshot

#: Documents to insert per collection, or a function that seeds the database itself.
Seed = Union[Mapping[str, Sequence[Mapping[str, Any]]], Callable[[Any], None]]

#: Records collection of the second Migrator that re-runs idempotent migrations.
RERUN_COLLECTION = "analytiq_checks_rerun"


class MigrationRunner:
    """Step a set of migrations up and down on one (scratch) database.

    ``migrations`` is any source ``Migrator`` takes; ``seed`` maps a version to the data
    inserted before its ``up`` (see the module docstring); the other keyword arguments
    go to ``Migrator``.
    """

    def __init__(self, db: Any, migrations: MigrationSource, *,
                 seed: Optional[Mapping[int, Seed]] = None, collection: str = "migrations",
                 transactions: str = "auto") -> None:
        self.db = db
        self.source = migrations
        self.seed: Dict[int, Seed] = dict(seed or {})
        self.collection = collection
        self.transactions = transactions
        self.migrator = Migrator(db, migrations, collection=collection,
                                 transactions=transactions)

    # -- what there is -------------------------------------------------------------------

    @property
    def migrations(self) -> List[Migration]:
        return list(self.migrator.migrations)

    @property
    def versions(self) -> List[int]:
        return [int(m.version or 0) for m in self.migrator.migrations]

    @property
    def head(self) -> int:
        """The highest version (0 without migrations)."""
        return max(self.versions, default=0)

    def current_version(self) -> int:
        return self.migrator.current_version()

    @property
    def bookkeeping(self) -> List[str]:
        """The library's own collections, which snapshots leave out."""
        names = [self.collection, f"{self.collection}_history", self.migrator.lock_collection.name]
        rerun = [RERUN_COLLECTION, f"{RERUN_COLLECTION}_history", f"{RERUN_COLLECTION}_lock"]
        return names + rerun

    # -- moving ----------------------------------------------------------------------------

    def migrate_up_to(self, version: Union[int, str]) -> RunReport:
        """Apply pending migrations up to ``version`` (or ``"head"``)."""
        return self.migrator.upgrade(version)

    def migrate_down_to(self, version: Union[int, str]) -> RunReport:
        """Revert applied migrations above ``version`` (``0`` or ``"base"``: all)."""
        return self.migrator.downgrade(version)

    def migrate_up_one(self) -> RunReport:
        """Apply the next pending migration."""
        return self.migrator.upgrade("+1")

    def migrate_down_one(self) -> RunReport:
        """Revert the highest applied migration."""
        return self.migrator.downgrade("-1")

    # -- data ------------------------------------------------------------------------------

    def insert(self, collection: str,
               docs: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> List[Any]:
        """Insert one document or a list of them (copies: yours are not given ``_id``s);
        returns the ``_id``s."""
        batch = [docs] if isinstance(docs, Mapping) else list(docs)
        if not batch:
            return []
        copies = [copy.deepcopy(dict(d)) for d in batch]
        return list(self.db[collection].insert_many(copies).inserted_ids)

    def apply_seed(self, version: int) -> bool:
        """Insert ``seed[version]``, if there is one; returns whether there was."""
        seed = self.seed.get(version)
        if seed is None:
            return False
        if callable(seed):
            seed(self.db)
        else:
            for collection, docs in seed.items():
                self.insert(collection, docs)
        return True

    def snapshot(self, collections: Optional[Sequence[str]] = None) -> Snapshot:
        """Documents, indexes and options of every collection but the library's own."""
        return take_snapshot(self.db, exclude=self.bookkeeping, collections=collections)

    def reset(self) -> None:
        """Drop every collection of the database (the checks start from empty)."""
        for name in self.db.list_collection_names():
            if not name.startswith("system."):
                self.db.drop_collection(name)

    def rerun(self, version: int) -> RunReport:
        """Run ``version``'s ``up`` once more on the current data, through a second
        ``Migrator`` with its own records (the way an interrupted run repeats it)."""
        migration = next(m for m in self.migrator.migrations if m.version == version)
        for name in (RERUN_COLLECTION, f"{RERUN_COLLECTION}_history",
                     f"{RERUN_COLLECTION}_lock"):
            self.db.drop_collection(name)
        again = Migrator(self.db, [migration], collection=RERUN_COLLECTION,
                         transactions=self.transactions)
        return again.upgrade(version)


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


@dataclass
class CheckFailure:
    """One thing a check found wrong."""

    message: str
    version: Optional[int] = None
    collection: Optional[str] = None
    #: The readable difference (snapshot diff) or the error, when there is one.
    detail: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"message": self.message, "version": self.version,
                "collection": self.collection, "detail": self.detail}


@dataclass
class CheckResult:
    """The outcome of one check; ``passed`` when it found no failure."""

    name: str
    title: str
    failures: List[CheckFailure] = field(default_factory=list)
    #: What the check did not look at, and why (``v3 has no down``).
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def explain(self) -> str:
        """The failures (with their details) and notes, for a test failure or a terminal."""
        head = f"{self.title}: {'passed' if self.passed else 'FAILED'}"
        lines = [head]
        for failure in self.failures:
            lines.append(f"  {failure.message}")
            lines += [f"    {line}" for line in failure.detail.splitlines()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "title": self.title, "passed": self.passed,
                "failures": [f.to_dict() for f in self.failures], "notes": list(self.notes)}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _step_failed(result: CheckResult, version: int, what: str, exc: BaseException) -> None:
    result.failures.append(CheckFailure(f"v{version}: {what} failed", version=version,
                                        detail=_error(exc)))


# --------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------


def check_unique_versions(source: MigrationSource) -> CheckResult:
    """Every version is used once (two files ``0003_*.py`` after a merge are not)."""
    result = CheckResult("unique_versions", "versions are unique")
    try:
        load_migrations(source, lazy=True)
    except MigrationError as exc:
        if exc.message.startswith("Duplicate version"):
            result.failures.append(CheckFailure(exc.message, version=exc.version,
                                                detail=exc.hint or ""))
        else:
            result.failures.append(CheckFailure(f"cannot load the migrations: {exc.message}",
                                                version=exc.version, detail=exc.hint or ""))
    return result


def check_upgrade_from_empty(runner: MigrationRunner) -> CheckResult:
    """An empty database upgrades to head in one run."""
    result = CheckResult("upgrade_from_empty", "upgrade from an empty database to head")
    runner.reset()
    try:
        report = runner.migrate_up_to("head")
    except MigrationError as exc:
        result.failures.append(CheckFailure(
            f"upgrade from empty stopped: {exc.message}", version=exc.version,
            detail=_error(exc)))
        return result
    if report.end_version != runner.head:
        result.failures.append(CheckFailure(
            f"upgrade from empty ended at version {report.end_version}, not at head "
            f"({runner.head})", version=report.end_version))
    return result


def _walk(runner: MigrationRunner, result: CheckResult,
          each: Callable[[Migration, int], bool]) -> None:
    """From empty, for each migration: seed it, then ``each(migration, previous)``, which
    leaves the database at the migration's version and returns False to stop."""
    runner.reset()
    previous = 0
    for migration in runner.migrations:
        version = int(migration.version or 0)
        try:
            runner.apply_seed(version)
        except Exception as exc:
            _step_failed(result, version, "seeding", exc)
            return
        if not each(migration, previous):
            return
        previous = version


def check_up_down_consistency(runner: MigrationRunner) -> CheckResult:
    """For every step: up, down, up again, without an error."""
    result = CheckResult("up_down_consistency", "up -> down -> up for every step")

    def step(migration: Migration, previous: int) -> bool:
        version = int(migration.version or 0)
        moves: List[Tuple[str, Callable[[Union[int, str]], RunReport], int]] = [
            ("up", runner.migrate_up_to, version),
            ("down", runner.migrate_down_to, previous),
            ("up after down", runner.migrate_up_to, version),
        ]
        for what, move, target in moves:
            if what == "down" and not migration.reversible:
                result.notes.append(f"v{version} has no down: only its up was run")
                return True
            try:
                move(target)
            except MigrationError as exc:
                _step_failed(result, version, what, exc)
                return False
        return True

    _walk(runner, result, step)
    return result


def check_downgrade_leaves_no_trace(runner: MigrationRunner) -> CheckResult:
    """For every reversible step: the snapshot before its up equals the one after its down."""
    result = CheckResult("downgrade_leaves_no_trace", "downgrade leaves no trace")

    def step(migration: Migration, previous: int) -> bool:
        version = int(migration.version or 0)
        before = runner.snapshot()
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            _step_failed(result, version, "up", exc)
            return False
        if not migration.reversible:
            result.notes.append(f"v{version} has no down: not checked")
            return True
        try:
            runner.migrate_down_to(previous)
        except MigrationError as exc:
            _step_failed(result, version, "down", exc)
            return False
        after = runner.snapshot()
        for name in before.differing_collections(after):
            result.failures.append(CheckFailure(
                f"v{version}: collection {name!r} differs after up and down",
                version=version, collection=name,
                detail=before.diff(after, before=f"before v{version} up",
                                   after=f"after v{version} down")))
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            _step_failed(result, version, "up after down", exc)
            return False
        return True

    _walk(runner, result, step)
    if not any(m.reversible for m in runner.migrations):
        result.notes.append("no migration has a down")
    return result


def check_idempotent(runner: MigrationRunner) -> CheckResult:
    """A migration declared ``idempotent`` gives the same snapshot when its up runs twice."""
    result = CheckResult("idempotent", "idempotent migrations can run twice")

    def step(migration: Migration, previous: int) -> bool:
        version = int(migration.version or 0)
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            _step_failed(result, version, "up", exc)
            return False
        if not migration.idempotent:
            return True
        once = runner.snapshot()
        try:
            runner.rerun(version)
        except MigrationError as exc:
            _step_failed(result, version, "second up", exc)
            return False
        twice = runner.snapshot()
        for name in once.differing_collections(twice):
            result.failures.append(CheckFailure(
                f"v{version} is declared idempotent but collection {name!r} differs after "
                "its up runs a second time", version=version, collection=name,
                detail=once.diff(twice, before="after one up", after="after two")))
        return True

    _walk(runner, result, step)
    if not any(m.idempotent for m in runner.migrations):
        result.notes.append("no migration is declared idempotent")
    return result


#: The built-in checks by name, in the order they run. ``unique_versions`` takes the
#: migrations source, the others a ``MigrationRunner``.
CHECKS: Dict[str, Callable[[MigrationRunner], CheckResult]] = {
    "unique_versions": lambda runner: check_unique_versions(runner.source),
    "upgrade_from_empty": check_upgrade_from_empty,
    "up_down_consistency": check_up_down_consistency,
    "downgrade_leaves_no_trace": check_downgrade_leaves_no_trace,
    "idempotent": check_idempotent,
}


def run_checks(runner: MigrationRunner,
               names: Optional[Sequence[str]] = None) -> List[CheckResult]:
    """Run the built-in checks (all, or ``names``) and return their results; the
    database is left empty."""
    unknown = [n for n in names or () if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; the checks are {list(CHECKS)}")
    try:
        return [CHECKS[name](runner) for name in (names or list(CHECKS))]
    finally:
        runner.reset()
