"""Test helpers: the SecantusDB server (from ``analytiq_migrations.testing``), command
recording, fault injection, and child Python processes.

Import it as ``from support import ...`` (``tests/conftest.py`` puts ``tests/`` on
``sys.path`` and makes ``tests.support`` the same module). See ``docs/testing.md`` for
what the server does differently from mongod and which ``failCommand`` settings make
good transient faults.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import typing
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import pytest
from pymongo import MongoClient, monitoring

from analytiq_migrations.dbproxy import HAS_BIND
from analytiq_migrations.testing import (  # noqa: F401 - re-exported for the tests
    CLIENT_OPTIONS,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    PathLike,
    Server,
    ServerStartError,
    client_options,
    free_port,
    start_server,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Dry runs are refused without ClientSession.bind() (pymongo 4.17+; see
#: tests/test_compatibility.py for the refusal itself).
needs_bind = pytest.mark.skipif(not HAS_BIND, reason="dry runs need pymongo 4.17+ (bind)")

# --------------------------------------------------------------------------------------
# database names
# --------------------------------------------------------------------------------------

_ILLEGAL_DB_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def unique_db_name(test_name: str, prefix: str = "t") -> str:
    """``<prefix>_<test name>_<8 hex>``: legal on every MongoDB, at most 63 bytes."""
    suffix = uuid.uuid4().hex[:8]
    base = _ILLEGAL_DB_CHARS.sub("_", test_name).strip("_") or "test"
    room = 63 - len(prefix) - len(suffix) - 2
    return f"{prefix}_{base[:room]}_{suffix}"


def make_tenants(client: Any, prefix: str, count: int, *,
                 on_hold: Iterable[int] = ()) -> list[str]:
    """``count`` tenant databases ``<prefix>tNN`` with a user each; those whose index is in
    ``on_hold`` get a ``hold`` document (the fleet migrations' second one then fails)."""
    held = set(on_hold)
    names = [f"{prefix}t{n:02d}" for n in range(count)]
    for n, name in enumerate(names):
        client[name].users.insert_one({"n": n})
        if n in held:
            client[name].hold.insert_one({"why": "billing"})
    return names


# --------------------------------------------------------------------------------------
# command monitoring
# --------------------------------------------------------------------------------------


@dataclass
class RecordedCommand:
    """One command as the driver sent it (from ``CommandStartedEvent``)."""

    name: str
    database: str
    command: dict[str, Any]
    request_id: int
    lsid: Optional[dict[str, Any]]
    txn_number: Optional[int]
    start_transaction: bool
    autocommit: Optional[bool]
    #: "succeeded" or "failed" once the reply arrived, else None.
    outcome: Optional[str] = None
    #: The server's error document (or the exception text) when ``outcome == "failed"``.
    failure: Optional[Any] = None

    @property
    def in_transaction(self) -> bool:
        """Sent as part of a multi-document transaction (``autocommit: false``).

        Note: ``txnNumber`` alone does not mean a transaction; pymongo adds it to every
        retryable write on a replica set."""
        return self.autocommit is False

    @property
    def session_id(self) -> Optional[bytes]:
        if not self.lsid:
            return None
        raw = self.lsid.get("id")
        return bytes(raw) if raw is not None else None

    @property
    def collection(self) -> Optional[str]:
        value = self.command.get(self.name)
        return value if isinstance(value, str) else None


def one_bulk_write(db: Any) -> bool:
    """Whether a step's record and history entry go in one ``bulkWrite`` here (MongoDB
    8.0+ and pymongo 4.9+)."""
    from analytiq_migrations.store import writes_together

    return writes_together(db.client, db.client.admin.command("hello")["maxWireVersion"])


def writes_of(commands: Iterable[RecordedCommand]) -> list[tuple[str, Optional[str]]]:
    """``(kind, collection)`` of every write sent, a ``bulkWrite`` spelled out op by op
    (MongoDB 8.0's command that writes to several collections)."""
    out: list[tuple[str, Optional[str]]] = []
    for c in commands:
        if c.name != "bulkWrite":
            out.append((c.name, c.collection))
            continue
        spaces = [ns["ns"].split(".", 1)[1] for ns in c.command.get("nsInfo", ())]
        for op in c.command.get("ops", ()):
            kind = next(iter(op))
            out.append((kind, spaces[op[kind]]))
    return out


#: Commands the recorder leaves out unless asked: handshakes and monitoring noise.
DEFAULT_IGNORED = frozenset({"hello", "isMaster", "ismaster", "saslStart", "saslContinue"})


class CommandRecorder(monitoring.CommandListener):
    """Records every command a client sends. Thread-safe.

    ``MongoClient(uri, event_listeners=[recorder])``; then ``recorder.names()``,
    ``recorder.filter("insert")``, ``recorder.transactions()``, ``recorder.clear()``.
    """

    def __init__(self, ignore: Iterable[str] = DEFAULT_IGNORED) -> None:
        self.ignore = frozenset(ignore)
        self._lock = threading.Lock()
        self._commands: list[RecordedCommand] = []
        self._pending: dict[tuple[int, Any], RecordedCommand] = {}

    # -- listener interface ------------------------------------------------------------

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in self.ignore:
            return
        try:
            doc: dict[str, Any] = copy.deepcopy(dict(event.command))
        except Exception:  # pragma: no cover - exotic payloads
            doc = dict(event.command)
        lsid = doc.get("lsid")
        txn = doc.get("txnNumber")
        autocommit = doc.get("autocommit")
        rec = RecordedCommand(
            name=event.command_name,
            database=event.database_name,
            command=doc,
            request_id=event.request_id,
            lsid=dict(lsid) if isinstance(lsid, Mapping) else None,
            txn_number=int(txn) if txn is not None else None,
            start_transaction=bool(doc.get("startTransaction", False)),
            autocommit=bool(autocommit) if autocommit is not None else None,
        )
        with self._lock:
            self._commands.append(rec)
            self._pending[(event.request_id, event.connection_id)] = rec

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            rec = self._pending.pop((event.request_id, event.connection_id), None)
        if rec is not None:
            rec.outcome = "succeeded"

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            rec = self._pending.pop((event.request_id, event.connection_id), None)
        if rec is not None:
            rec.outcome = "failed"
            rec.failure = event.failure

    # -- queries -----------------------------------------------------------------------

    @property
    def commands(self) -> list[RecordedCommand]:
        with self._lock:
            return list(self._commands)

    def __len__(self) -> int:
        with self._lock:
            return len(self._commands)

    def __iter__(self) -> Iterator[RecordedCommand]:
        return iter(self.commands)

    def clear(self) -> None:
        with self._lock:
            self._commands.clear()
            self._pending.clear()

    def names(self) -> list[str]:
        return [c.name for c in self.commands]

    def filter(self, *names: str, database: str | None = None) -> list[RecordedCommand]:
        """Commands with one of ``names`` (all when none given), optionally on one db."""
        wanted = set(names)
        return [
            c
            for c in self.commands
            if (not wanted or c.name in wanted) and (database is None or c.database == database)
        ]

    def first(self, name: str) -> RecordedCommand:
        for c in self.commands:
            if c.name == name:
                return c
        raise AssertionError(f"no {name!r} command was recorded; saw {self.names()}")

    def transactions(self) -> list[RecordedCommand]:
        """The commands that started a transaction (``startTransaction: true``)."""
        return [c for c in self.commands if c.start_transaction]

    def in_transaction(self) -> list[RecordedCommand]:
        """Every command sent inside a transaction, commit/abort included."""
        return [c for c in self.commands if c.in_transaction]

    def session_ids(self) -> set[bytes]:
        return {sid for c in self.commands if (sid := c.session_id) is not None}


# --------------------------------------------------------------------------------------
# fault injection
# --------------------------------------------------------------------------------------

FailPointMode = Union[str, typing.Mapping[str, int]]


def set_failpoint(
    client: MongoClient[Any], mode: FailPointMode, data: Mapping[str, Any] | None = None,
    *, name: str = "failCommand",
) -> None:
    """Arm (or with ``mode="off"`` disarm) a server failpoint. Server-wide on SecantusDB."""
    cmd: dict[str, Any] = {"configureFailPoint": name, "mode": mode}
    if data is not None:
        cmd["data"] = dict(data)
    client.admin.command(cmd)


@contextlib.contextmanager
def failpoint(
    client: MongoClient[Any],
    mode: FailPointMode,
    data: Mapping[str, Any],
    *,
    name: str = "failCommand",
) -> Iterator[None]:
    """Arm ``configureFailPoint`` for the ``with`` block; always disarmed at exit.

    ``mode``: ``{"times": 1}``, ``{"skip": 2, "times": 1}``, ``"alwaysOn"``.
    ``data``: e.g. ``{"failCommands": ["insert"], "errorCode": 112,
    "errorLabels": ["TransientTransactionError"]}``. See docs/testing.md for the
    settings that behave well as transient faults.
    """
    set_failpoint(client, mode, data, name=name)
    try:
        yield
    finally:
        set_failpoint(client, "off", name=name)


# --------------------------------------------------------------------------------------
# child Python processes
# --------------------------------------------------------------------------------------


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus ``env``, with the repository root first on ``PYTHONPATH``."""
    merged = dict(os.environ)
    if env:
        merged.update(env)
    parts = [str(REPO_ROOT)]
    if merged.get("PYTHONPATH"):
        parts.append(merged["PYTHONPATH"])
    merged["PYTHONPATH"] = os.pathsep.join(parts)
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged


def run_python(
    code: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    *,
    cwd: PathLike | None = None,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter with the repo importable.

    Returns the completed process (text ``stdout``/``stderr``); does not raise on a
    non-zero exit. Raises ``subprocess.TimeoutExpired`` (child killed) after ``timeout``.
    """
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=child_env(env),
        cwd=str(cwd) if cwd is not None else str(REPO_ROOT),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_python(
    code: str,
    env: Mapping[str, str] | None = None,
    *,
    cwd: PathLike | None = None,
    args: Sequence[str] = (),
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter and return at once (for races and kills).

    Read its output with ``proc.communicate(timeout=...)``: with pipes, a child that
    writes a lot blocks until someone reads. ``proc.kill()`` is a SIGKILL.
    """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=child_env(env),
        cwd=str(cwd) if cwd is not None else str(REPO_ROOT),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def wait_for(
    predicate: Any, timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> Any:
    """Poll ``predicate()`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def deadline(seconds: float) -> contextlib.AbstractContextManager[Any]:
    """``pymongo.timeout(seconds)`` where pymongo has it (4.2+); elsewhere nothing, and the
    test clients' socket timeout is the guard."""
    import pymongo

    timeout = getattr(pymongo, "timeout", None)
    return timeout(seconds) if timeout is not None else contextlib.nullcontext()


def session_uuids(session_ids: Iterable[Mapping[str, Any]]) -> list[uuid.UUID]:
    """Session ids (``{"id": ...}``) as UUIDs, however they were encoded or decoded: a
    subtype-4 ``Binary`` (pymongo 4's default codec, a live session) or a ``UUID`` (ours)."""
    ids = [value["id"] for value in session_ids]
    return [i if isinstance(i, uuid.UUID) else uuid.UUID(bytes=bytes(i)) for i in ids]


class ProjectCli:
    """Runs the command line in this process on one database and migrations directory
    (``--uri``, ``--database``, ``--migrations`` given); returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: Any, db: Any, directory: Path, uri: str) -> None:
        self.capsys, self.db, self.dir, self.uri = capsys, db, directory, uri

    def __call__(self, *args: str) -> tuple[int, str, str]:
        from analytiq_migrations.cli import main

        code = main(["--uri", self.uri, "--database", self.db.name,
                     "--migrations", str(self.dir), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def write(self, files: Mapping[str, str]) -> None:
        """Write (or overwrite) migration files."""
        for name, text in files.items():
            (self.dir / name).write_text(text)
