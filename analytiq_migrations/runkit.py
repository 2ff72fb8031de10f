"""What every run on one database is made of: its identity, the records as read, the
target and the plan, the lock with the run's session, and where its bookkeeping goes.

``RunKit`` holds what does not change between runs (the database, the migrations, the
store, the settings, the server's ``Capabilities``, the ``Drift`` check). What one run
has (its ``RunInfo``, lease, session, ``Lifecycle``) is a ``Held``, made by ``hold`` and
passed along to whoever acts for that run: nothing of a run is set on the kit.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import __version__
from .capabilities import Capabilities
from .drift import Drift
from .lifecycle import Lifecycle
from .lock import Lease, ServerClock
from .migration import Migration
from .plan import Target, plan_downgrade, plan_upgrade, resolve_target, virtual_records
from .records import MigrationRecord, Plan, RunInfo
from .retry import RetryPolicy
from .server import PIPELINE_UPDATE_WIRE_VERSION
from .store import DatabaseState, Store, writes_together


def new_run() -> RunInfo:
    """Identity of a run, stored on everything it writes."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ImportError):
        user = "unknown"
    return RunInfo(run_id=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                   user=user, tool_version=__version__)


def raise_corrupt(state: DatabaseState) -> None:
    """Refuse to act on a database with malformed records."""
    if state.corrupt:
        raise state.corrupt[0]


@dataclass(frozen=True)
class Held:
    """One run holding the lock: who it is, its lease and session, its bookkeeping."""

    run: RunInfo
    lease: Lease
    #: The run's session (``None`` without sessions: mongomock).
    session: Any
    book: Lifecycle


class RunKit:
    """The shared, unchanging parts of every run on one database."""

    def __init__(self, db: Any, migrations: List[Migration], store: Store, lock_collection: Any,
                 caps: Capabilities, drift: Drift, *, lock_ttl: float, lock_wait: float,
                 retry: RetryPolicy, allow_out_of_order: bool) -> None:
        self.db = db
        self.migrations = migrations
        self.by_version: Dict[int, Migration] = {int(m.version or 0): m for m in migrations}
        self.store = store
        self.lock_collection = lock_collection
        self.caps = caps
        self.drift = drift
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.retry = retry
        self.allow_out_of_order = allow_out_of_order
        #: ``run_id`` of the run of this kit holding the lock, for ``unlock()`` to release
        #: its own: the lock admits one run per database at a time, so there is one at most.
        self.holder: Optional[str] = None

    # -- the records -------------------------------------------------------------------------

    def load(self) -> DatabaseState:
        """Read the records."""
        return self.store.load()

    def records(self, state: DatabaseState) -> Dict[int, MigrationRecord]:
        """Records, with a seed-era database's adoption applied virtually."""
        return virtual_records(self.migrations, state.records, state.legacy_version)

    # -- target and plan ---------------------------------------------------------------------

    def resolve(self, target: Target, current: int, direction: str) -> int:
        """The target version; "latest" never means "down" when the code is behind the db."""
        resolved = resolve_target(target, self.migrations, current,
                                  default_head=direction == "up")
        if target is None or (isinstance(target, str) and target.strip().lower() == "head"):
            return max(resolved, current)
        return resolved

    def steps(self, direction: str, records: Dict[int, MigrationRecord], target: int) -> Plan:
        """The plan in ``direction`` to ``target``, as the records stand (no drift check)."""
        if direction == "up":
            return plan_upgrade(self.migrations, records, target, self.caps.use_transaction,
                                allow_out_of_order=self.allow_out_of_order)
        return plan_downgrade(self.migrations, records, target, self.caps.use_transaction)

    def plan(self, direction: str, records: Dict[int, MigrationRecord], target: int,
             *, remember: bool = True) -> Plan:
        """Check drift, then plan in ``direction`` (``remember=False``: write nothing)."""
        self.drift.check(records, remember=remember)
        return self.steps(direction, records, target)

    # -- the lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, run: RunInfo,
               step: Optional[Dict[str, Any]] = None) -> Iterator[Tuple[Lease, Any]]:
        """Hold the lock (and a session whose id the lease records) for the block; ``step``:
        the transactional step the lock should say runs first."""
        # Refuses an unsupported server before anything is written.
        wire = self.caps.known_wire_version()
        session = self.caps.start_session()
        session_ids = [session.session_id] if session is not None else []
        # $$NOW needs a pipeline update (4.2+); on 4.0 the lease uses the estimated server clock.
        server_time = wire >= PIPELINE_UPDATE_WIRE_VERSION
        lease = Lease(self.lock_collection, run, self.lock_ttl, ServerClock(self.db), self.retry,
                      session_ids=session_ids, server_time=server_time)
        lease.step = step
        try:
            lease.acquire(self.lock_wait)
            self.holder = run.run_id
            try:
                yield lease, session
            finally:
                self.holder = None
                lease.release()
        finally:
            if session is not None:
                session.end_session()

    def book(self, lease: Lease, session: Any, run: RunInfo) -> Lifecycle:
        """The run's bookkeeping: in small fenced transactions wherever they are possible."""
        transactions = session is not None and self.caps.transactions != "never" and \
            self.caps.transactions_available()
        return Lifecycle(store=self.store, lease=lease, run=run, retry=self.retry,
                         session=session, transactions=transactions,
                         together=transactions and writes_together(
                             self.caps.client, self.caps.known_wire_version()))

    @contextlib.contextmanager
    def hold(self, run: RunInfo, step: Optional[Dict[str, Any]] = None) -> Iterator[Held]:
        """``locked``, with the run's bookkeeping: the ``Held`` run, for the block."""
        with self.locked(run, step) as (lease, session):
            yield Held(run=run, lease=lease, session=session,
                       book=self.book(lease, session, run))


__all__ = ["Held", "RunKit", "new_run", "raise_corrupt"]
