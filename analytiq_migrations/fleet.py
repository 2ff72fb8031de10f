"""``Fleet``: one migration set applied to many databases (a database per tenant).

Each database keeps its own records, history and lock, exactly as a single-database
``Migrator`` on it would; the fleet only decides which databases, in which order, how
many at once, and when to stop starting new ones. The work runs in a bounded pool of
threads sharing one client; each database's outcome is handed to ``on_result`` as it
finishes (and kept in the returned ``FleetReport`` unless ``keep=False``).
"""

from __future__ import annotations

import ctypes
import fnmatch
import hashlib
import heapq
import inspect
import logging
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
)

from pymongo.errors import InvalidName

from .errors import ConfigurationError, LockBusyError, MigrationError
from .loader import MigrationSource, load_migrations
from .noop import read_and_judge
from .plan import Target
from .records import Plan, Problem, RunReport, StatusRow
from .runner import Migrator
from .store import utcnow

log = logging.getLogger("analytiq_migrations")

#: A glob, a list of names, or a callable returning names.
DatabaseSpec = Union[str, Iterable[str], Callable[[], Iterable[str]]]

#: What one database's work ended with (an error is a value here, not raised).
Outcome = Any

#: Never migrated by a glob: the server's own databases.
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})

#: Between two tries of a busy database's lock: a run holding it takes seconds, and one
#: read a second per busy database costs nothing next to the work that goes on.
BUSY_RETRY_PAUSE = 1.0

#: Characters that make a pattern a glob (otherwise it is one database's name).
_GLOB_CHARS = frozenset("*?[")


class RunInterruptedError(MigrationError):
    """The fleet run was interrupted (Ctrl-C, SIGTERM) while this database ran."""

    exit_code = 130


@dataclass
class DatabaseStatus:
    """One database's ``status``: where it is and what is pending or wrong."""

    database: str
    current_version: int
    head_version: int
    pending: List[int]
    problems: List[Problem]
    migrations: List[StatusRow]

    @property
    def healthy(self) -> bool:
        """No problem other than a run in progress."""
        return not [p for p in self.problems if p.kind != "running"]


@dataclass
class DatabaseProblems:
    """One database's ``validate``: its version and its problems (none when healthy)."""

    database: str
    current_version: int
    problems: List[Problem]


def version_of(outcome: Outcome) -> Optional[int]:
    """The version a database is at after ``outcome`` (``None`` for an error)."""
    if isinstance(outcome, RunReport):
        return outcome.end_version
    if isinstance(outcome, Plan):
        return outcome.current_version
    if isinstance(outcome, (DatabaseStatus, DatabaseProblems)):
        return outcome.current_version
    if isinstance(outcome, int) and not isinstance(outcome, bool):
        return outcome
    return None


def is_failure(outcome: Outcome) -> bool:
    """An error other than a busy lock."""
    return isinstance(outcome, BaseException) and not isinstance(outcome, LockBusyError)


class FleetReport(Mapping[str, Outcome]):
    """Each database's outcome by name (its report, or its error), and what did not run."""

    def __init__(self, action: str, *, keep: bool = True) -> None:
        self.action = action
        self.keep = keep
        self._outcomes: Dict[str, Outcome] = {}
        #: Versions reached, counted (kept even when the outcomes are not).
        self.at_version: Dict[int, int] = {}
        self.failed: Dict[str, BaseException] = {}
        self.busy: List[str] = []
        #: Ended before their next step because the fleet was stopping.
        self.stopped: List[str] = []
        self.not_started: List[str] = []
        #: ``"SIGINT"``/``"SIGTERM"`` when the run was interrupted.
        self.interrupted: Optional[str] = None
        self.finished = 0

    def add(self, name: str, outcome: Outcome, *, stopped: bool = False) -> None:
        """Count (and keep) one database's outcome."""
        self.finished += 1
        if self.keep:
            self._outcomes[name] = outcome
        version = version_of(outcome)
        if version is not None:
            self.at_version[version] = self.at_version.get(version, 0) + 1
        if isinstance(outcome, LockBusyError):
            self.busy.append(name)
        elif isinstance(outcome, BaseException):
            self.failed[name] = outcome
        if stopped:
            self.stopped.append(name)

    def __getitem__(self, name: str) -> Outcome:
        return self._outcomes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def exit_code(self) -> int:
        """1 if any database failed, else 3 if any was busy, else 0 (130/143 interrupted)."""
        if self.interrupted:
            return 143 if self.interrupted == "SIGTERM" else 130
        return 1 if self.failed else 3 if self.busy else 0

    def summary(self) -> Dict[str, Any]:
        """Counts by version, failures with why, busy, stopped and not started."""
        return {
            "action": self.action, "databases": self.finished + len(self.not_started),
            "finished": self.finished,
            "at_version": {str(v): n for v, n in sorted(self.at_version.items())},
            "failed": {name: f"{type(exc).__name__}: {_first_line(exc)}"
                       for name, exc in sorted(self.failed.items())},
            "busy": sorted(self.busy), "stopped": sorted(self.stopped),
            "not_started": self.not_started, "interrupted": self.interrupted,
            "exit_code": self.exit_code,
        }


class Fleet:
    """Applies one migration set to many databases on one server, a few at a time."""

    def __init__(
        self,
        client: Any,
        migrations: MigrationSource,
        databases: DatabaseSpec,
        *,
        concurrency: int = 4,
        canary: int = 0,
        continue_on_error: bool = False,
        shard: Optional[Tuple[int, int]] = None,
        **migrator_options: Any,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be a whole number of at least 1, not "
                                     f"{concurrency!r}.")
        if isinstance(canary, bool) or not isinstance(canary, int) or canary < 0:
            raise ConfigurationError(f"canary must be a whole number of 0 or more, not "
                                     f"{canary!r}.")
        if shard is not None:
            check_shard(shard)
        unknown = sorted(set(migrator_options) - _MIGRATOR_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"Fleet got unknown option(s) {', '.join(unknown)}.",
                hint=f"Migrator options are {', '.join(sorted(_MIGRATOR_OPTIONS))}; each "
                "database is named by `databases`.")
        self._owns_client = isinstance(client, str)
        if self._owns_client:
            client = Migrator(client, [], database="admin").client
        elif type(client).__name__ == "Database":
            client = client.client
        self.client = client
        self.migrations = load_migrations(migrations, lazy=True)
        self.databases = databases
        self.concurrency = concurrency
        self.canary = canary
        self.continue_on_error = continue_on_error
        self.shard = shard
        self.lock_wait = float(migrator_options.pop("lock_wait", 0.0) or 0.0)
        self.options = migrator_options
        # The quick no-op answer needs the files' bytes and the CLI's conditions (noop.py).
        self._quick = all(m.source_bytes is not None for m in self.migrations) and \
            migrator_options.get("transactions", "auto") != "always"
        # Refuses bad options (and a bad lock_wait) once, before any database is touched.
        Migrator(self.client, self.migrations, database="admin", lock_wait=self.lock_wait,
                 **self.options)

    def close(self) -> None:
        """Close the client if this Fleet created it from a URI."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the verbs ------------------------------------------------------------------------

    def plan(self, target: Target = None, **kwargs: Any) -> FleetReport:
        """Each database's ``Plan`` for ``target``."""
        return self.run("plan", target, **kwargs)

    def upgrade(self, target: Target = None, **kwargs: Any) -> FleetReport:
        """Upgrade each database to ``target`` (default: the latest); a ``RunReport`` each."""
        return self.run("up", target, **kwargs)

    def downgrade(self, target: Target, **kwargs: Any) -> FleetReport:
        """Revert each database to ``target``; a ``RunReport`` each."""
        return self.run("down", target, **kwargs)

    def status(self, **kwargs: Any) -> FleetReport:
        """Each database's ``DatabaseStatus``."""
        return self.run("status", None, **kwargs)

    def validate(self, **kwargs: Any) -> FleetReport:
        """Each database's ``DatabaseProblems``."""
        return self.run("validate", None, **kwargs)

    def current_version(self, **kwargs: Any) -> FleetReport:
        """Each database's current version (an ``int``)."""
        return self.run("current", None, **kwargs)

    def names(self) -> List[str]:
        """The databases this fleet (and this shard of it) covers, in name order."""
        names = sorted(set(_validated(self._listed())))
        if self.shard is not None:
            names = [n for n in names if in_shard(n, self.shard)]
        return names

    def run(self, action: str, target: Target = None, *,
            on_result: Optional[Callable[[str, Outcome], None]] = None,
            keep: bool = True) -> FleetReport:
        """Do ``action`` (plan, up, down, status, validate, current) on every database.

        ``on_result(name, outcome)`` is called (in this thread) as each one finishes;
        ``keep=False`` keeps only counts and errors in the report (flat memory). On
        Ctrl-C or another ``BaseException`` no new database starts, running ones are
        interrupted like a single-database run, and the exception is re-raised carrying
        the report so far as ``fleet_report``."""
        if action not in _ACTIONS:
            raise ConfigurationError(f"Unknown fleet action {action!r}.")
        names = self.names()
        report = FleetReport(action, keep=keep)
        driver = _Driver(self, action, target, report, on_result)
        canaries, rest = names[:self.canary], iter(names[self.canary:])
        try:
            driver.phase(iter(canaries))
            if self.canary and any(n in report.failed for n in canaries):
                log.error("A canary database failed: no other database starts")
                driver.halt.set()
            driver.phase(rest)
        except BaseException as exc:
            report.not_started.extend(rest)  # those the canaries' phase never reached
            report.interrupted = "SIGINT" if isinstance(exc, KeyboardInterrupt) else \
                None if isinstance(exc, Exception) else "SIGTERM"
            exc.fleet_report = report  # type: ignore[attr-defined]
            raise
        return report

    # -- one database -----------------------------------------------------------------------

    def migrator(self, name: str, stop: Optional[Callable[[], bool]] = None) -> Migrator:
        """A ``Migrator`` on database ``name`` sharing this fleet's client and migrations."""
        return Migrator(self.client, self.migrations, database=name, stop=stop,
                        **self.options)

    def one(self, action: str, target: Target, name: str,
            stop: Optional[Callable[[], bool]] = None) -> Outcome:
        """Do ``action`` on database ``name``; returns its outcome or raises its error."""
        if action == "up" and self._quick and (target is None or
                                               str(target).strip().lower() == "head"):
            done = self._at_head(name)
            if done is not None:
                return done
        m = self.migrator(name, stop)
        if action == "up":
            return m.upgrade(target)
        if action == "down":
            return m.downgrade(target)
        if action == "plan":
            return m.plan(target)
        if action == "current":
            return m.current_version()
        if action == "validate":
            return DatabaseProblems(name, m.current_version(), m.validate())
        return database_status(m)

    def _at_head(self, name: str) -> Optional[RunReport]:
        """The no-op ``up`` of a database at head from one read of its records, as on the
        command line (``noop.py``); ``None`` when not sure (the full path decides)."""
        try:
            db = self.client[name]
        except (InvalidName, TypeError):
            return None  # the Migrator names the mistake
        version, why = read_and_judge(db, self.options.get("collection", "migrations"),
                                      self.migrations)
        if version is None:
            log.debug("%s: %s; taking the full path", name, why)
            return None
        now = utcnow()
        return RunReport(run_id=uuid.uuid4().hex, direction="up", start_version=version,
                         end_version=version, started_at=now, finished_at=now)

    def _listed(self) -> Iterable[Any]:
        """The names ``databases`` gives (a glob is matched against the server's)."""
        spec = self.databases
        if callable(spec):
            spec = spec()
        if isinstance(spec, str):
            if "," in spec:
                return [part.strip() for part in spec.split(",") if part.strip()]
            if not _GLOB_CHARS & set(spec):
                return [spec.strip()]
            existing = self.client.list_database_names()
            return [n for n in existing
                    if n not in SYSTEM_DATABASES and fnmatch.fnmatchcase(n, spec)]
        try:
            return list(spec)
        except TypeError:
            raise ConfigurationError(
                f"Cannot read database names from {spec!r}.",
                hint="Pass a glob ('tenant_*'), a list of names, or a function returning "
                "names.") from None


def database_status(m: Migrator) -> DatabaseStatus:
    """``status`` of one database: everything ``up`` would run (or stops at) is pending."""
    rows = m.status()
    code = {int(x.version or 0) for x in m.migrations}
    pending = [r.version for r in rows if r.status == "pending" or
               (r.status in ("failed", "interrupted", "running") and r.version in code)]
    return DatabaseStatus(database=m.db.name, current_version=m.current_version(),
                          head_version=max(code, default=0), pending=pending,
                          problems=m.validate(), migrations=rows)


def check_shard(shard: Tuple[int, int]) -> None:
    """Refuse a shard that is not ``(I, N)`` with ``1 <= I <= N``."""
    try:
        index, count = shard
        good = all(type(x) is int for x in shard) and 1 <= index <= count
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigurationError(f"Bad shard {shard!r}: it is I/N with 1 <= I <= N.",
                                 hint="For example --shard 2/3: the second of three hosts.")


def in_shard(name: str, shard: Tuple[int, int]) -> bool:
    """Whether ``name`` falls in shard ``I`` of ``N`` (sha256 of the name: stable across
    hosts, processes and Python versions, unlike ``hash``)."""
    index, count = shard
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count \
        == index - 1


def _validated(names: Iterable[Any]) -> Iterator[str]:
    """Each name, once it is a non-empty string."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Bad database name {name!r} in the databases given.",
                                     hint="Database names are non-empty strings.")
        yield name


def _first_line(exc: BaseException) -> str:
    """An error's message, first line."""
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


_ACTIONS = ("plan", "up", "down", "status", "validate", "current")

#: What ``**migrator_options`` may hold (``Migrator``'s keyword arguments but these).
_MIGRATOR_OPTIONS = frozenset(inspect.signature(Migrator.__init__).parameters) - {
    "self", "client_or_db", "migrations", "database", "stop"}


#: A database the fleet was stopping before it began (counted as not started).
_NOT_STARTED = object()


class _Stop:
    """A database's ``stop`` question: is the fleet stopping? (remembers saying yes)"""

    def __init__(self, halt: threading.Event) -> None:
        self.halt, self.said_yes = halt, False

    def __call__(self) -> bool:
        if self.halt.is_set():
            self.said_yes = True
        return self.said_yes


@dataclass
class _Driver:
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
        stop = _Stop(self.halt)
        try:
            with self.guard:
                if self.halt.is_set():  # queued before the fleet began to stop
                    return _NOT_STARTED, False
                self.threads[name] = threading.get_ident()
            try:
                return self.fleet.one(self.action, self.target, name, stop), stop.said_yes
            finally:
                with self.guard:
                    self.threads.pop(name, None)
        except KeyboardInterrupt:
            return RunInterruptedError(
                f"Database '{name}': interrupted while it ran.",
                hint="Any lock it held was released; a migration cut short shows as "
                "interrupted in `status`, and the next `up` re-runs it if that is safe."), False
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
        for future, (name, _) in running.items():
            while True:
                try:
                    outcome, stopped = future.result()
                    break
                except KeyboardInterrupt:  # a second Ctrl-C: they are already stopping
                    continue
            if outcome is _NOT_STARTED:
                self.report.not_started.append(name)
                continue
            self.report.add(name, outcome, stopped=stopped)
            if self.on_result is not None:
                self.on_result(name, outcome)


def parse_shard(text: str) -> Tuple[int, int]:
    """``"I/N"`` as ``(I, N)``; a ``ConfigurationError`` otherwise."""
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ConfigurationError(f"Bad shard {text!r}: it is I/N with 1 <= I <= N.",
                                 hint="For example --shard 2/3: the second of three hosts.")
    shard = (int(parts[0]), int(parts[1]))
    check_shard(shard)
    return shard


__all__ = ["DatabaseProblems", "DatabaseStatus", "Fleet", "FleetReport",
           "RunInterruptedError", "in_shard", "parse_shard", "version_of"]
