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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .checkwalk import CheckFailure, CheckResult, Walk, error_text, step_failed
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

    def save_state(self) -> Snapshot:
        """Everything the database holds, the library's records included (for
        :meth:`restore_state`)."""
        rerun = self.bookkeeping[3:]
        return take_snapshot(self.db, exclude=rerun)

    def restore_state(self, state: Snapshot) -> None:
        """Put the database back as ``state`` (from :meth:`save_state`) found it: the checks
        go on from there after a step that failed or left a trace."""
        self.reset()
        for name, saved in state.collections.items():
            options = dict(saved.options)
            if options:
                kind = options.pop("type", "collection")
                if kind == "view":
                    self.db.command({"create": name, **options})
                    continue
                self.db.create_collection(name, **options)
            coll = self.db[name]
            if saved.documents:
                coll.insert_many([copy.deepcopy(d) for d in saved.documents])
            for index_name, spec in saved.indexes.items():
                if index_name == "_id_":
                    continue
                extra = {k: v for k, v in spec.items() if k != "key"}
                coll.create_index(list(spec["key"]), name=index_name, **extra)

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
    """An empty database (with each version's seed) upgrades to head: every ``up`` that
    fails on the way is named."""
    result = CheckResult("upgrade_from_empty", "upgrade from an empty database to head")
    walk = Walk(runner, result)

    def step(migration: Migration, previous: int) -> None:
        version = int(migration.version or 0)
        state = walk.save()
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            result.failures.append(CheckFailure(
                f"upgrade from empty stopped at v{version}: {exc.message}", version=version,
                detail=error_text(exc)))
            walk.skip_up(version, state, "its up failed")

    walk.run(step)
    return result


def check_up_down_consistency(runner: MigrationRunner) -> CheckResult:
    """For every step: up, down, up again, without an error."""
    result = CheckResult("up_down_consistency", "up -> down -> up for every step")
    walk = Walk(runner, result)

    def step(migration: Migration, previous: int) -> None:
        version = int(migration.version or 0)
        before = walk.save()
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            step_failed(result, version, "up", exc)
            walk.skip_up(version, before, "its up failed")
            return
        if not migration.reversible:
            result.notes.append(f"v{version} has no down: only its up was run")
            return
        applied = walk.save()
        for what, move, target in (("down", runner.migrate_down_to, previous),
                                   ("up after down", runner.migrate_up_to, version)):
            try:
                move(target)
            except MigrationError as exc:
                step_failed(result, version, what, exc)
                walk.restore(applied)
                return

    walk.run(step)
    return result


def check_downgrade_leaves_no_trace(runner: MigrationRunner) -> CheckResult:
    """For every reversible step: the snapshot before its up equals the one after its down
    (a step whose up or down fails is not checked here: ``up_down_consistency`` says so)."""
    result = CheckResult("downgrade_leaves_no_trace", "downgrade leaves no trace")
    walk = Walk(runner, result)

    def step(migration: Migration, previous: int) -> None:
        version = int(migration.version or 0)
        state = walk.save()
        before = runner.snapshot()
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            walk.skip_up(version, state, f"not checked: its up failed ({exc.message})")
            return
        if not migration.reversible:
            result.notes.append(f"v{version} has no down: not checked")
            return
        applied = walk.save()
        try:
            runner.migrate_down_to(previous)
        except MigrationError as exc:
            result.notes.append(f"v{version}: not checked: its down failed ({exc.message})")
            walk.restore(applied)
            return
        after = runner.snapshot()
        for name in before.differing_collections(after):
            result.failures.append(CheckFailure(
                f"v{version}: collection {name!r} differs after up and down",
                version=version, collection=name,
                detail=before.diff(after, before=f"before v{version} up",
                                   after=f"after v{version} down")))
        walk.restore(applied)  # on from the data its up made, not from what its down left

    walk.run(step)
    if not any(m.reversible for m in runner.migrations):
        result.notes.append("no migration has a down")
    return result


def check_idempotent(runner: MigrationRunner) -> CheckResult:
    """A migration declared ``idempotent`` gives the same snapshot when its up runs twice
    (one whose first up fails is not checked here: ``upgrade_from_empty`` says so)."""
    result = CheckResult("idempotent", "idempotent migrations can run twice")
    walk = Walk(runner, result)

    def step(migration: Migration, previous: int) -> None:
        version = int(migration.version or 0)
        state = walk.save()
        try:
            runner.migrate_up_to(version)
        except MigrationError as exc:
            why = f"not checked: its up failed ({exc.message})" if migration.idempotent \
                else "its up failed"
            walk.skip_up(version, state, why)
            return
        if not migration.idempotent:
            return
        applied = walk.save()
        once = runner.snapshot()
        try:
            runner.rerun(version)
        except MigrationError as exc:
            step_failed(result, version, "second up", exc)
            walk.restore(applied)
            return
        twice = runner.snapshot()
        for name in once.differing_collections(twice):
            result.failures.append(CheckFailure(
                f"v{version} is declared idempotent but collection {name!r} differs after "
                "its up runs a second time", version=version, collection=name,
                detail=once.diff(twice, before="after one up", after="after two")))
        walk.restore(applied)

    walk.run(step)
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
