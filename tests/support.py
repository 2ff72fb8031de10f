"""Test helpers: a SecantusDB server in a subprocess, command recording, fault injection,
and child Python processes.

Import it as ``from support import ...`` (``tests/conftest.py`` puts ``tests/`` on
``sys.path`` and makes ``tests.support`` the same module). See ``docs/testing.md`` for
what the server does differently from mongod and which ``failCommand`` settings make
good transient faults.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pymongo import MongoClient, monitoring
from pymongo.errors import PyMongoError

REPO_ROOT = Path(__file__).resolve().parent.parent

#: How long ``start_server`` waits for the server to answer ``ping``. It normally takes
#: 0.5-1.5 s; the margin is for loaded CI machines.
STARTUP_TIMEOUT = 60.0

#: How long ``Server.stop`` waits after SIGTERM before it SIGKILLs.
STOP_TIMEOUT = 15.0

#: Options for test clients. ``heartbeatFrequencyMS=500`` matters: after a
#: NotWritablePrimary / PrimarySteppedDown / ShutdownInProgress error pymongo marks the
#: server Unknown, and with the default 10 s heartbeat (streaming monitor) it stays
#: Unknown for up to 10 s, longer than ``serverSelectionTimeoutMS`` below.
CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 5000,
    "heartbeatFrequencyMS": 500,
}


def client_options(uri: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a test MongoClient on ``uri``: ``CLIENT_OPTIONS`` except
    those the URI sets itself (a keyword argument would silently beat the URI, e.g. a
    ``MONGODB_URI`` from the environment), then ``overrides``, which always apply."""
    query = uri.split("?", 1)[1] if "?" in uri else ""
    in_uri = {part.split("=", 1)[0].lower() for part in query.split("&") if part}
    options = {k: v for k, v in CLIENT_OPTIONS.items() if k.lower() not in in_uri}
    options.update(overrides)
    return options


# ``str | None`` is spelled with typing here: the package supports Python 3.9.
PathLike = Union[str, "os.PathLike[str]"]


class ServerStartError(RuntimeError):
    """The test server did not start (the message carries the tail of its log)."""


# --------------------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# --------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------

# Every server started by this module, so an interpreter exit never leaves one behind.
_LIVE: set[Server] = set()
_LIVE_LOCK = threading.Lock()


def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.kill()


atexit.register(_kill_leftovers)


# Runs in the child before the server: on Linux it asks the kernel to SIGKILL the
# server when the process that started it dies (even by SIGKILL), so an interrupted
# test run leaves no server behind. Done in the child after exec (not with preexec_fn,
# which is unsafe next to pymongo's threads). The death signal fires when the *thread*
# that started the server ends: start servers from the main thread (pytest does).
_LAUNCHER = """
import os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    except Exception:
        pass
    if os.getppid() != parent:
        sys.exit("secantus launcher: parent process is gone")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _tail(path: Path, max_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(lines[-max_lines:]) if lines else "<log is empty>"


class Server:
    """A SecantusDB server running as a subprocess.

    Use ``start_server`` to create one. Data lives in ``data_dir`` (a directory this
    object created and removes on ``stop`` unless one was given); the server's
    output goes to ``log_path``, never to the terminal.
    """

    def __init__(
        self,
        data_dir: PathLike | None = None,
        *,
        standalone: bool = False,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        log_path: PathLike | None = None,
    ) -> None:
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="secantus-test-")
            base = Path(self._own_dir.name)
            self.data_dir = base / "data"
        else:
            self.data_dir = Path(data_dir)
            base = self.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path) if log_path is not None else base / "secantus-server.log"
        # An empty config file: passing --config stops the server from picking up a
        # secantusd.toml from the working directory or the user's home.
        self._config_path = self.log_path.with_name("secantusd-test.toml")
        self._config_path.write_text("# empty on purpose: tests pass every option as a flag\n")
        self.standalone = standalone
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- addresses ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT/?directConnection=true``.

        directConnection works for both modes (the replica-set server advertises
        ``hosts: ["127.0.0.1:PORT"]``, so discovery without it works too) and
        transactions work through it.
        """
        return f"mongodb://{self.address}/?directConnection=true"

    def client(self, **kwargs: Any) -> MongoClient[dict[str, Any]]:
        """A new MongoClient on this server with the test ``CLIENT_OPTIONS``."""
        return MongoClient(self.uri, **client_options(self.uri, **kwargs))

    # -- life cycle --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-c",
            _LAUNCHER,
            str(os.getpid()),
            "-m",
            "secantus",
            "--config",
            str(self._config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.data_dir),
            "--enable-test-commands",
        ]
        if self.standalone:
            argv.append("--standalone")
        argv.extend(self.extra_args)
        return argv

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Server:
        """Launch the server and wait until it answers ``ping``."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            self._launch()
            try:
                self._wait_ready(timeout)
                return self
            except ServerStartError as exc:
                self.kill()
                in_use = "Address already in use" in str(exc)
                if not in_use or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"---- starting secantus on port {self.port}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.log_path.parent),
                # Own session: Ctrl-C reaches pytest, which then stops the server in
                # fixture teardown; the death signal covers pytest being killed.
                start_new_session=True,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _listening(self) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return False
        return f"listening on {self.address}" in text

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no attempt yet"
        # With --log-level above INFO the "listening on" line never comes; then a
        # successful ping from a still-running process is what we have.
        quiet_log = "--log-level" in self.extra_args
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"SecantusDB exited with status {code} during start-up "
                    f"(port {self.port}, data {self.data_dir}).\n"
                    f"Log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"SecantusDB did not answer ping within {timeout:.0f}s "
                    f"(port {self.port}, last error: {last_error}).\n"
                    f"Log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if quiet_log or self._listening():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        pass
                    probe: MongoClient[dict[str, Any]] = MongoClient(
                        self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
                    )
                    try:
                        probe.admin.command("ping")
                    finally:
                        probe.close()
                    if self.proc.poll() is None:
                        return
                except (OSError, PyMongoError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after ``timeout``; remove an own data dir."""
        self._terminate(timeout)
        self._cleanup_dir()

    def _terminate(self, timeout: float) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL the server (a crash). The data dir stays, so ``start`` or ``restart``
        recovers it. Writes acknowledged in the last ~second may be lost unless they
        used ``j: true`` or the server runs with ``--sync-on-commit``."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def restart(
        self,
        *,
        extra_args: Sequence[str] | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> Server:
        """Stop (gracefully, if still running) and start again on the same port and data
        dir. ``extra_args`` replaces the extra arguments (e.g. add ``--auth``)."""
        self._terminate(STOP_TIMEOUT)
        if extra_args is not None:
            self.extra_args = tuple(extra_args)
        self._fixed_port = True
        return self.start(timeout)

    def _cleanup_dir(self) -> None:
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                self._own_dir.cleanup()
            self._own_dir = None

    def log_tail(self, max_lines: int = 40) -> str:
        return _tail(self.log_path, max_lines)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        mode = "standalone" if self.standalone else "replica set"
        return f"<Server {self.address} {mode} {state} data={self.data_dir}>"


def start_server(
    data_dir: PathLike | None = None,
    *,
    standalone: bool = False,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    log_path: PathLike | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Server:
    """Start SecantusDB (``--enable-test-commands`` always on) and wait for ``ping``.

    ``data_dir=None`` uses a fresh temporary directory, removed by ``stop()``. By default
    the server is a single-node replica set ``secantus``; ``standalone=True`` makes its
    ``hello`` look like a standalone mongod. ``extra_args`` go to the server as they
    are (e.g. ``["--auth"]``, ``["--sync-on-commit"]``). Raises ``ServerStartError``
    with the log tail if the server exits or does not answer in ``timeout`` seconds.
    """
    server = Server(
        data_dir, standalone=standalone, extra_args=extra_args, port=port, log_path=log_path
    )
    try:
        return server.start(timeout)
    except BaseException:
        server.stop()
        raise


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

FailPointMode = Union[str, Mapping[str, int]]


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
