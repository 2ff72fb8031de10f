"""How a ``Fleet`` runs: a bounded pool of threads fed from a stream of names, busy
databases tried again within ``lock_wait``, and stopping (after a failure, or on Ctrl-C)."""

from __future__ import annotations

import ctypes
import heapq
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from .errors import LockBusyError, MigrationError
from .fleetreport import FleetReport, Outcome, RunInterruptedError, is_failure
from .plan import Target

if TYPE_CHECKING:
    from .fleet import Fleet

log = logging.getLogger("analytiq_migrations")

#: Between two tries of a busy database's lock: a run holding it takes seconds, and one
#: read a second per busy database costs nothing next to the work that goes on.
BUSY_RETRY_PAUSE = 1.0

#: A database the fleet was stopping before it began (counted as not started).
_NOT_STARTED = object()


#: Per pool thread: the database it is working on (named in that thread's log lines).
_WORKING_ON = threading.local()


class NameTheDatabase(logging.Filter):
    """Prefix the library's log lines from a fleet's threads with their database's name
    (several databases log at once; a line without its database says little)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(_WORKING_ON, "name", None)
        if name is not None and not getattr(record, "fleet_named", False):
            shown = name.replace("%", "%%") if record.args else name  # kept literal
            record.msg = f"{shown}: {record.msg}"
            record.fleet_named = True
        return True


class _Stop:
    """A database's ``stop`` question: is the fleet stopping? (remembers saying yes)"""

    def __init__(self, halt: threading.Event) -> None:
        self.halt, self.said_yes = halt, False

    def __call__(self) -> bool:
        if self.halt.is_set():
            self.said_yes = True
        return self.said_yes


@dataclass
class Driver:
    """One fleet run: a bounded pool fed from a stream of names, busy ones retried."""

    fleet: Fleet
    action: str
    target: Target
    report: FleetReport
    on_result: Optional[Callable[[str, Outcome], None]]
    #: Set: no new database starts; running ones stop before their next step.
    halt: threading.Event = field(default_factory=threading.Event)
    #: Thread id of each database running now (to interrupt it on Ctrl-C).
    threads: Dict[str, int] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def phase(self, names: Iterator[str]) -> None:
        """Run ``names`` to the end (or until halted); the rest are "not started"."""
        running: Dict[Future[Tuple[Outcome, bool]], Tuple[str, Optional[float]]] = {}
        retries: List[Tuple[float, str, float]] = []  # (when, name, first found busy)
        with ThreadPoolExecutor(self.fleet.concurrency, thread_name_prefix="fleet") as pool:
            try:
                while True:
                    self._fill(pool, running, retries, names)
                    if not running and (not retries or self.halt.is_set()):
                        break
                    pause = max(0.0, retries[0][0] - time.monotonic()) if retries else None
                    done, _ = wait(list(running), pause, FIRST_COMPLETED)
                    for future in done:
                        name, busy_since = running.pop(future)
                        self._finished(name, busy_since, future.result(), retries)
            except BaseException:
                self.halt.set()
                self._interrupt()
                self._drain(running)
                raise
            finally:
                self.report.not_started.extend(name for _, name, _ in sorted(retries))
                if self.halt.is_set():
                    self.report.not_started.extend(names)

    def _fill(self, pool: ThreadPoolExecutor,
              running: Dict[Future[Tuple[Outcome, bool]], Tuple[str, Optional[float]]],
              retries: List[Tuple[float, str, float]], names: Iterator[str]) -> None:
        """Start databases while a thread is free: busy ones that are due first."""
        while len(running) < self.fleet.concurrency and not self.halt.is_set():
            busy_since: Optional[float] = None
            if retries and retries[0][0] <= time.monotonic():
                _, name, busy_since = heapq.heappop(retries)
            else:
                following = next(names, None)
                if following is None:
                    return
                name = following
            running[pool.submit(self._one, name)] = (name, busy_since)

    def _finished(self, name: str, busy_since: Optional[float], result: Tuple[Outcome, bool],
                  retries: List[Tuple[float, str, float]]) -> None:
        """Record one database's outcome (or queue a busy one for another try)."""
        outcome, stopped = result
        if outcome is _NOT_STARTED:
            self.report.not_started.append(name)
            return
        now = time.monotonic()
        if isinstance(outcome, LockBusyError) and self.fleet.lock_wait > 0:
            since = now if busy_since is None else busy_since
            left = self.fleet.lock_wait - (now - since)
            if left > 0 and not self.halt.is_set():
                heapq.heappush(retries, (now + min(BUSY_RETRY_PAUSE, left), name, since))
                return
        self.report.add(name, outcome, stopped=stopped)
        if is_failure(outcome) and not self.fleet.continue_on_error \
                and not isinstance(outcome, RunInterruptedError):
            if not self.halt.is_set():
                log.error("%s failed: no other database starts (--continue-on-error "
                          "attempts every one)", name)
            self.halt.set()
        if self.on_result is not None:
            self.on_result(name, outcome)

    def _one(self, name: str) -> Tuple[Outcome, bool]:
        """In a pool thread: one database's outcome, its error included."""
        try:
            stop = _Stop(self.halt)
            with self.guard:
                if self.halt.is_set():  # queued before the fleet began to stop
                    return _NOT_STARTED, False
                self.threads[name] = threading.get_ident()
            _WORKING_ON.name = name
            try:
                return self.fleet.one(self.action, self.target, name, stop), stop.said_yes
            finally:
                _WORKING_ON.name = None
                with self.guard:
                    self.threads.pop(name, None)
        except KeyboardInterrupt:
            return _interrupted(name), False
        except MigrationError as exc:
            return exc, stop.said_yes
        except Exception as exc:  # one tenant's surprise must not end the others' runs
            log.exception("%s: unexpected error", name)
            return exc, stop.said_yes

    def _interrupt(self) -> None:
        """Raise ``KeyboardInterrupt`` in each thread running a database (as Ctrl-C does
        in a single-database run: its step unwinds and its lock is released)."""
        api = getattr(ctypes, "pythonapi", None)
        with self.guard:
            if api is None:  # not CPython: they stop before their next step (``halt``)
                return
            for ident in self.threads.values():
                api.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                              ctypes.py_object(KeyboardInterrupt))
            self.threads.clear()

    def _drain(self, running: Mapping[Future[Tuple[Outcome, bool]],
                                      Tuple[str, Optional[float]]]) -> None:
        """Wait for the interrupted databases and record how they ended."""
        while True:
            try:
                wait(list(running))
                break
            except KeyboardInterrupt:  # a second Ctrl-C: they are already stopping
                continue
        for future, (name, _) in running.items():
            if future.exception() is not None:  # interrupted outside ``_one``'s handlers
                outcome, stopped = _interrupted(name), False
            else:
                outcome, stopped = future.result()
            if outcome is _NOT_STARTED:
                self.report.not_started.append(name)
                continue
            if isinstance(outcome, RunInterruptedError):
                self.fleet.release_leftover(name)
            self.report.add(name, outcome, stopped=stopped)
            if self.on_result is not None:
                self.on_result(name, outcome)


def _interrupted(name: str) -> RunInterruptedError:
    """The outcome of a database whose run Ctrl-C (or SIGTERM) cut short."""
    return RunInterruptedError(
        f"Database '{name}': interrupted while it ran.",
        hint="Its lock was released; a migration cut short shows as interrupted in "
        "`status`, and the next `up` re-runs it if that is safe.")
