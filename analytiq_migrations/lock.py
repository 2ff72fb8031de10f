"""The migration lock: a lease with a TTL in the server's clock, renewed by a heartbeat.

* Acquired optimistically: one atomic ``find_one_and_update`` with ``upsert`` whose
  filter matches only this run's own lease. The lock document is deleted on release, so
  normally there is none and the upsert inserts it: one command. Any document already
  there (someone else's lease, live or expired, or a foreign one) makes the upsert collide
  on ``_id`` (``DuplicateKeyError``), so two processes can never both believe they hold
  it; the run then reads the lease and decides: busy, or (expired, or its holder died on
  this host) taken over by a second, conditional ``find_one_and_update``.
* Expiry is written with ``$$NOW`` (server time) and compared against the server's time
  as estimated from ``hello.localTime``, so a client with a wrong clock cannot steal a
  live lease.
* Inside a migration's transaction the lease is re-checked *by writing it*: a takeover
  then conflicts with the transaction, so a run that lost its lease cannot commit.
* Whoever takes over an expired lease first ends the previous holder's sessions
  (``killSessions``): a transaction left open by a killed process would otherwise block
  the documents it touched until the server reaps it.
* A lease whose holder died on this very machine is taken over at once, without
  waiting for it to expire. The lease records which process holds it (pid, the
  process's start time, the machine's boot id and the pid namespace, from ``/proc``),
  so a pid the system has since given to another process is not mistaken for the
  holder. Where that cannot be read (not Linux), the lease is left to expire.
* While one of the run's transactions is open the heartbeat does not renew: the
  transaction wrote the lease (its re-check), so a renewal would make it fail with a
  WriteConflict. The transaction's own write renews the lease when it commits. So
  while the lock says a transactional step runs (``step``), every write of the lease
  makes it last the TTL plus the longest a transaction can live
  (``TRANSACTION_LIFETIME``): a live holder in a long transaction is never taken for
  dead, and a dead one is taken over that much later (at once on its own host).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any, Optional

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from .errors import LockBusyError, LockLostError
from .hints import spell
from .leaserules import (
    LOCK_ID,
    ServerClock,
    busy_error,
    dead_holder,
    describe,
    expired,
    lease_live,
    local_now,
    process_identity,
    recorded_sessions,
)
from .records import RunInfo
from .retry import RetryPolicy, backoff, describe_error
from .unlock import break_lock, kill_sessions, read_lock

log = logging.getLogger("analytiq_migrations")

#: What callers import from here: the lease, and the rules and the unlock that live in
#: their own modules now (``leaserules``, ``unlock``) but stay importable from here.
__all__ = [
    "LOCK_ID", "TRANSACTION_LIFETIME", "Lease", "ServerClock", "break_lock", "dead_holder",
    "describe", "kill_sessions", "lease_live", "local_now", "process_identity", "read_lock",
    "recorded_sessions",
]

#: Renew at a third of the TTL: two renewals can fail (a blip, a slow election)
#: before the lease runs out.
HEARTBEAT_FRACTION = 1 / 3

#: How often the heartbeat looks again while renewal waits for a transaction to end
#: (seconds; a local check, no round trip).
PAUSED_POLL = 0.05

#: How long a transaction can live on the server (mongod's default
#: ``transactionLifetimeLimitSeconds``): a run's lease is extended by this much when its
#: migration's transaction begins, because the heartbeat cannot renew the lease while the
#: transaction holds the lock document. A live holder so keeps its lease for as long as
#: its transaction can live; a server that raises the limit should raise the TTL too.
TRANSACTION_LIFETIME = 60.0


class Lease:
    """This run's hold on the migration lock."""

    def __init__(
        self,
        collection: Any,
        run: RunInfo,
        ttl: float,
        clock: ServerClock,
        policy: RetryPolicy,
        *,
        session_ids: Optional[list[Any]] = None,
        server_time: bool = True,
    ) -> None:
        if ttl <= 0:
            raise ValueError("lock_ttl must be positive")
        self.collection = collection
        self.run = run
        self.ttl = ttl
        self.clock = clock
        self.policy = policy
        self.session_ids = session_ids or []
        #: The transactional step the lock document says is running (see ``step.py``).
        self.step: Optional[dict[str, Any]] = None
        self.server_time = server_time
        self.held = False
        self.waited_s = 0.0
        #: The expired lease this run took over (its ``step`` says what was running).
        self.previous_holder: Optional[dict[str, Any]] = None
        self.lost_reason: Optional[str] = None
        self._deadline = 0.0  # time.monotonic() by which the lease surely still holds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.process = process_identity(run.pid)
        # Held while the lease is written: a renewal and the first write of a transaction
        # (its lease check) never overlap.
        self._writing = threading.RLock()
        #: The session whose transactions re-check the lease (see ``check``).
        self._txn_session: Any = None

    @property
    def holder(self) -> str:
        """The seed-compatible ``holder`` string."""
        return f"{self.run.user}@{self.run.host}:{self.run.pid}/{self.run.run_id}"

    # -- acquire / release ---------------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds; raise ``LockBusyError`` if held."""
        began = time.monotonic()
        if wait <= 0:
            self._try_acquire()
        else:
            # Imported when a run waits for the lock: a run that takes it at once never does.
            from tenacity import Retrying, retry_if_exception_type, stop_after_delay

            for attempt in Retrying(
                retry=retry_if_exception_type(LockBusyError),
                stop=stop_after_delay(wait),
                wait=backoff(0.1, min(2.0, max(wait / 4, 0.1))),
                reraise=True,
            ):
                with attempt:
                    self._try_acquire()
        self.held = True
        self.waited_s = time.monotonic() - began  # the metrics' lock wait
        self._start_heartbeat()

    def _fields(self) -> dict[str, Any]:
        """What the lock document says about us (besides the times)."""
        return {
            "holder": self.holder,
            "host": self.run.host,
            "pid": self.run.pid,
            "run_id": self.run.run_id,
            "user": self.run.user,
            "tool_version": self.run.tool_version,
            "session_ids": self.session_ids,
            "step": self.step,
            "process": self.process,
        }

    def _times_update(self, fields: dict[str, Any], *, first: bool) -> Any:
        """An update setting ``fields`` plus times: server time via ``$$NOW`` when possible."""
        ttl_ms = int(self.span() * 1000)
        if self.server_time:
            times: dict[str, Any] = {
                "heartbeat_at": "$$NOW",
                "expires_at": {"$add": ["$$NOW", ttl_ms]},
            }
            if first:
                times["locked_at"] = "$$NOW"
            literal = {k: {"$literal": v} for k, v in fields.items()}
            return [{"$set": {**literal, **times}}]
        now = self.clock.now()
        times = {"heartbeat_at": now, "expires_at": now + timedelta(milliseconds=ttl_ms)}
        if first:
            times["locked_at"] = now
        return {"$set": {**fields, **times}}

    def span(self) -> float:
        """How long each write of the lease makes it last: the TTL, plus the longest a
        transaction can live while the lock says a transactional step runs (``step``)."""
        return self.ttl + (TRANSACTION_LIFETIME if self.step is not None else 0.0)

    def _write_lease(self, query: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Write our lease over the lock document ``query`` matches, or insert it (upsert);
        returns the document it replaced. Raises ``DuplicateKeyError`` when another
        document holds the ``_id``."""
        result: Optional[dict[str, Any]] = self.policy.call(
            "acquire the migration lock",
            lambda: self.collection.find_one_and_update(
                query,
                self._times_update(self._fields(), first=True),
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            ),
        )
        return result

    def _try_acquire(self) -> None:
        """One attempt at the lock: first as if nobody held it, else the careful way."""
        started = time.monotonic()
        try:
            # Only our own lease matches: with no document the upsert inserts ours; a retry
            # after a write whose reply was lost finds ours and rewrites it. Any other
            # document (live, expired or foreign) collides on _id: nothing was written.
            self._write_lease({"_id": LOCK_ID, "run_id": self.run.run_id})
        except DuplicateKeyError:
            self._try_take_over()
            return
        self._deadline = started + self.ttl
        log.info("Acquired the migration lock as %s (ttl %.0fs)", self.holder, self.ttl)

    def _try_take_over(self) -> None:
        """Someone's lock document is there: raise ``LockBusyError`` while its lease is live,
        else take it over atomically (ending its holder's sessions first)."""
        current = self.policy.call(
            "read the migration lock", lambda: self.collection.find_one({"_id": LOCK_ID})
        )
        killed: list[Any] = []
        dead: Optional[str] = None
        if current is not None and current.get("run_id") != self.run.run_id:
            if not expired(current, self.clock.now()):
                dead = dead_holder(current, self.run.host)
                if dead is None:
                    raise busy_error(current)
            # End the dead holder's sessions *before* writing: a transaction it left open
            # holds the lock document (it re-checks its lease by writing it), and our
            # write would wait on that transaction until the server reaps it.
            killed = recorded_sessions(current)
            kill_sessions(self.collection, killed)
        started = time.monotonic()
        takeable: list[dict[str, Any]] = [{"expires_at": {"$lte": self.clock.now()}},
                                          {"run_id": self.run.run_id}]
        if dead is not None:  # exactly that lease: if it changed hands meanwhile, we lose
            takeable.append({"run_id": current["run_id"],
                             "process": current["process"]})
        query = {"_id": LOCK_ID, "$or": takeable}
        try:
            previous = self._write_lease(query)
        except DuplicateKeyError:
            raw = self.collection.find_one({"_id": LOCK_ID})
            if raw is None:  # released between our two commands: try once more
                return self._try_acquire()
            raise busy_error(raw) from None
        self._deadline = started + self.ttl
        if previous is not None and previous.get("run_id") != self.run.run_id:
            self._take_over(previous, killed, dead)
        log.info("Acquired the migration lock as %s (ttl %.0fs)", self.holder, self.ttl)

    def _take_over(self, previous: dict[str, Any], killed: list[Any],
                   dead: Optional[str]) -> None:
        """We replaced an expired lease: make sure the dead holder's sessions are ended."""
        self.previous_holder = previous
        if dead is not None:
            log.warning(
                "Took over the migration lock from %s at once: %s (its lease ran until %s)",
                previous.get("holder"), dead, previous.get("expires_at"),
            )
        else:
            log.warning(
                "Took over an expired migration lock from %s (expired %s)",
                previous.get("holder"),
                previous.get("expires_at"),
            )
        # Normally ended just before; a lease that changed hands in between is ended now.
        remaining = [sid for sid in recorded_sessions(previous) if sid not in killed]
        kill_sessions(self.collection, remaining)

    def release(self) -> None:
        """Give the lock back (only if we still hold it)."""
        self._stop_heartbeat()
        if not self.held:
            return
        self.held = False
        try:
            result = self.policy.call(
                "release the migration lock",
                lambda: self.collection.delete_one({"_id": LOCK_ID, "run_id": self.run.run_id}),
            )
        except PyMongoError as exc:
            log.warning("Could not release the migration lock (it expires on its own): %s",
                        describe_error(exc))
            return
        if result.deleted_count:
            log.info("Released the migration lock")
        else:
            log.warning("The migration lock was no longer this run's; left it as it is")

    # -- while held ----------------------------------------------------------------------

    def check(self, session: Any = None, next_step: Optional[dict[str, Any]] = None) -> None:
        """Prove we still hold the lease (and extend it) by writing it; raises ``LockLostError``.

        Outside a transaction this renews the lease, so whatever comes next starts with a
        full TTL. Inside one the write joins the transaction: a takeover then conflicts
        with it, and a run that lost its lease cannot commit. It must be the
        transaction's first statement: it waits for a renewal in flight to finish, and
        the heartbeat then leaves the lease alone until the transaction ends (a renewal
        committed after the transaction's snapshot would fail it with a WriteConflict).
        Its write is invisible to others until the transaction commits: the lease they see
        is the one written before, which already covers the transaction (``span``).
        """
        if self.lost_reason:
            raise self._lost()
        if session is None or not session.in_transaction:
            self.renew()
            return
        ttl = timedelta(seconds=self.ttl + (TRANSACTION_LIFETIME if next_step else 0.0))
        with self._writing:
            self._txn_session = session
            now = self.clock.now()
            result = self.collection.update_one(
                {"_id": LOCK_ID, "run_id": self.run.run_id, "expires_at": {"$gt": now}},
                # The step marker commits with the step: the lock stops saying this step
                # runs (and says which runs next) exactly when its record says it is done.
                {"$set": {"heartbeat_at": now, "expires_at": now + ttl, "step": next_step}},
                session=session,
            )
        if result.matched_count != 1:
            self.lost_reason = "its lease expired or another run took the lock over"
            raise self._lost()

    def refresh(self) -> None:
        """Renew unless renewed within the last heartbeat interval (saves a round trip)."""
        if self.lost_reason:
            raise self._lost()
        if time.monotonic() >= self._deadline - self.ttl * (1 - HEARTBEAT_FRACTION):
            self.renew()

    def renew(self, step: Optional[dict[str, Any]] = None) -> None:
        """Extend the lease by one TTL (and record the ``step`` now running, if given);
        marks the lease lost if it is no longer ours."""
        if self.lost_reason:
            raise self._lost()
        with self._writing:
            started = time.monotonic()
            fields = {} if step is None else {"step": step}
            if step is not None:
                self.step = step
            result = self.policy.call(
                "renew the migration lock",
                lambda: self.collection.update_one(
                    {"_id": LOCK_ID, "run_id": self.run.run_id},
                    self._times_update(fields, first=False),
                ),
            )
            if result.matched_count != 1:
                self.lost_reason = "another process took the lock over or broke it"
                raise self._lost()
            self._deadline = started + self.ttl

    def _beat(self) -> bool:
        """One heartbeat: renew, unless a transaction of this run is open (False then)."""
        with self._writing:
            session = self._txn_session
            if session is not None and session.in_transaction:
                return False
            self.renew()
            return True

    def _lost(self) -> LockLostError:
        """The error for a lease that is gone."""
        return LockLostError(
            f"This run lost the migration lock: {self.lost_reason}.",
            hint="Another process may be migrating now; nothing more is run by this one. "
            "Check `status`, then run again. If this happens often, raise "
            + spell("lock_ttl.", cli="--lock-ttl."),
        )

    def _start_heartbeat(self) -> None:
        """Renew the lease in the background at a third of the TTL."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat, name="analytiq-migrations-heartbeat", daemon=True
        )
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        """Stop renewing."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _heartbeat(self) -> None:
        """Heartbeat loop: renew until stopped or lost; while a transaction of the run is
        open, look again shortly (the renewal lands between two transactions)."""
        interval = self.ttl * HEARTBEAT_FRACTION
        wait = interval
        while not self._stop.wait(wait):
            try:
                wait = interval if self._beat() else min(interval, PAUSED_POLL)
            except LockLostError:
                log.error("Migration lock lost: %s", self.lost_reason)
                return
            except PyMongoError as exc:
                wait = interval
                error = describe_error(exc)
                log.warning("Could not renew the migration lock (will retry): %s", error)
                if time.monotonic() >= self._deadline:
                    self.lost_reason = f"it could not be renewed before it expired ({error})"
                    log.error("Migration lock lost: %s", self.lost_reason)
                    return

