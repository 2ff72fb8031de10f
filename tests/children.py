"""Child processes that run ``upgrade`` the way a deploy script or a pod does, for races
and crashes.

A child tells the test where it is by printing a line (``READY``, ``PARKED <point>``,
``RESULT {...}``); the test reads those lines instead of sleeping. A child can be told
to *park* (block until killed) at a point inside a migration (``park_at``, see
``PARK``) or right after the library logs a message (``park_on_log``), so a SIGKILL
lands exactly there. ``signal_at`` sends the child a signal of its own at an exact
command: ``"SIGKILL update migrations 2"`` kills it as its driver is about to send its
second ``update`` on ``migrations``; ``SIGSTOP`` freezes it there (a GC pause, a frozen
VM) after it prints ``SIGNALLED``, until the test sends ``SIGCONT``.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

from support import child_env

#: How long a test waits for a child to reach a point or to finish. Generous: a loaded
#: 2-core CI machine starting eight interpreters at once is slow, and a correct run
#: never waits this long (it only bounds a broken one).
CHILD_TIMEOUT = 120.0

#: A line in a migration file's text that ``write_migrations`` replaces with ``PARK``.
PARK_HELPER = "# park helper\n"

#: Helper put into migration files: ``park("name")`` blocks (until the process is
#: killed) when the test started the child with ``park_at="name"``, after printing
#: ``PARKED name`` so the test knows the moment has come.
PARK = '''\
import os
import threading


def park(point):
    if os.environ.get("PARK_AT") == point:
        print(f"PARKED {point}", flush=True)
        threading.Event().wait()
'''

#: The child: one ``Migrator(...).upgrade()`` (or ``repair(clear_failed=True)``) configured
#: from the environment.
UPGRADE_CHILD = '''
import json, logging, os, sys, threading

from analytiq_migrations import MigrationError, Migrator

park_on = os.environ.get("PARK_ON_LOG")
signal_at = os.environ.get("SIGNAL_AT", "").split()


class SignalAt(__import__("pymongo").monitoring.CommandListener):
    """Send ``signal_at``'s signal to this process at its ``nth`` ``command`` on ``coll``
    (``write``: any write to ``coll``, one ``bulkWrite`` that includes it too)."""

    seen = 0

    def started(self, event):
        import signal
        name, coll, nth = signal_at[1], signal_at[2], int(signal_at[3])
        if not self.matches(event, name, coll):
            return
        type(self).seen += 1
        if type(self).seen == nth:
            print("SIGNALLED", flush=True)
            os.kill(os.getpid(), getattr(signal, signal_at[0]))

    @staticmethod
    def matches(event, name, coll):
        command = event.command
        if name != "write":
            return event.command_name == name and command.get(name) == coll
        if event.command_name == "bulkWrite":
            return any(ns.get("ns", "").endswith("." + coll) for ns in command.get("nsInfo", ()))
        return event.command_name in ("insert", "update", "delete", "findAndModify") and \
            command.get(event.command_name) == coll

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


class ParkOnLog(logging.Handler):
    """Block the thread that logs ``park_on`` (the library's main thread)."""

    def emit(self, record):
        if park_on and park_on in record.getMessage():
            print(f"PARKED {park_on}", flush=True)
            threading.Event().wait()


log = logging.getLogger("analytiq_migrations")
log.setLevel(logging.INFO)
log.addHandler(ParkOnLog())
shown = logging.StreamHandler(sys.stderr)
shown.setLevel(logging.WARNING)
log.addHandler(shown)

migrator = Migrator(
    os.environ["TEST_URI"], os.environ["TEST_SOURCE"], database=os.environ["TEST_DB"],
    lock_ttl=float(os.environ["TEST_LOCK_TTL"]), lock_wait=float(os.environ["TEST_LOCK_WAIT"]),
) if not signal_at else Migrator(
    __import__("pymongo").MongoClient(os.environ["TEST_URI"], event_listeners=[SignalAt()]),
    os.environ["TEST_SOURCE"], database=os.environ["TEST_DB"],
    lock_ttl=float(os.environ["TEST_LOCK_TTL"]), lock_wait=float(os.environ["TEST_LOCK_WAIT"]),
)
if os.environ.get("TEST_GATE"):
    migrator.current_version()  # connected and ready: only the race itself is left
    print("READY", flush=True)
    sys.stdin.readline()
try:
    if os.environ.get("TEST_ACTION") == "repair_clear_failed":
        actions = migrator.repair(clear_failed=True)
        done = {"ok": True, "versions": [a.version for a in actions]}
    else:
        done = {"ok": True, "versions": migrator.upgrade().versions}
except MigrationError as exc:
    print("RESULT " + json.dumps({"ok": False, "type": type(exc).__name__, "message": str(exc)}),
          flush=True)
    sys.exit(exc.exit_code)
print("RESULT " + json.dumps(done), flush=True)
'''


def write_migrations(directory: Path, files: Mapping[str, str]) -> Path:
    """Write module-style migration files (``NNNN_slug.py``: text) and return the directory.

    Texts are dedented; a ``# park helper`` line becomes the ``park()`` helper."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).replace(PARK_HELPER, PARK))
    return directory


class Child:
    """One running child; its output is read by threads, so its pipes never fill up."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        self.result: Optional[dict[str, Any]] = None
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def expect(self, prefix: str, timeout: float = CHILD_TIMEOUT) -> str:
        """Wait for a stdout line starting with ``prefix`` and return it."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(self._story(f"no {prefix!r} within {timeout}s")) from None
            if line is None:
                self.proc.wait(10)
                raise AssertionError(self._story(f"exited ({self.proc.returncode}) before "
                                                 f"printing {prefix!r}"))
            self.seen.append(line)
            if line.startswith("RESULT "):
                self.result = json.loads(line[len("RESULT "):])
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        """Release a gated child (``gate=True``) into its ``upgrade``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = CHILD_TIMEOUT) -> int:
        """Wait for the child's ``RESULT`` line and exit; returns the exit code."""
        if self.result is None:
            self.expect("RESULT ", timeout)
        self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def _story(self, what: str) -> str:
        return (f"child {self.proc.pid}: {what}\nstdout: {self.seen}\nstderr:\n"
                + "".join(self.stderr[-40:]))


class Children:
    """Starts upgrade children for one test and kills whatever is left at the end."""

    def __init__(self, uri: str, database: str) -> None:
        self.uri = uri
        self.database = database
        self.started: list[Child] = []

    def upgrade(
        self,
        source: Path,
        *,
        lock_ttl: float = 60.0,
        lock_wait: float = 0.0,
        park_at: Optional[str] = None,
        park_on_log: Optional[str] = None,
        gate: bool = False,
        signal_at: Optional[str] = None,
        action: str = "upgrade",
    ) -> Child:
        """Start a child running ``Migrator(...).upgrade()`` on this test's database
        (``action="repair_clear_failed"``: ``repair(clear_failed=True)`` instead)."""
        env = {
            "TEST_ACTION": action,
            "TEST_URI": self.uri, "TEST_DB": self.database, "TEST_SOURCE": str(source),
            "TEST_LOCK_TTL": str(lock_ttl), "TEST_LOCK_WAIT": str(lock_wait),
            "PARK_AT": park_at or "", "PARK_ON_LOG": park_on_log or "",
            "TEST_GATE": "1" if gate else "", "SIGNAL_AT": signal_at or "",
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", UPGRADE_CHILD], env=child_env(env), text=True,
            stdin=subprocess.PIPE if gate else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        child = Child(proc)
        self.started.append(child)
        return child

    def kill_all(self) -> None:
        for child in self.started:
            child.kill()


def children_for(uri: str, database: str) -> Iterator[Children]:
    """Body of a ``children`` fixture: the registry, with every child killed afterwards."""
    registry = Children(uri, database)
    try:
        yield registry
    finally:
        registry.kill_all()
