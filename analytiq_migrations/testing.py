"""A throw-away MongoDB-compatible server for demos and tests: SecantusDB in a subprocess.

    with embedded_server() as server:
        client = MongoClient(server.uri)

SecantusDB (``pip install 'analytiq_migrations[server]'``, Python 3.10+; never needed to
run migrations) speaks the MongoDB wire protocol over WiredTiger and acts as a single-node replica
set, so transactions work; ``standalone=True`` makes its ``hello`` look like a standalone
server. ``docs/testing.md`` lists where it behaves differently from mongod.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from .errors import ConfigurationError, redact

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


class ServerExtraMissingError(ConfigurationError):
    """No server was given and the embedded one (the ``server`` extra) is not installed."""


def secantus_installed() -> bool:
    """Whether SecantusDB (the ``server`` extra) can be started from this interpreter."""
    return importlib.util.find_spec("secantus") is not None


def require_secantus(instead: str = "pass --uri mongodb://HOST:PORT") -> None:
    """Raise ``ServerExtraMissingError`` (one line, naming the extra and ``instead``, the
    way to give a server) unless SecantusDB is installed."""
    if not secantus_installed():
        raise ServerExtraMissingError(
            "no MongoDB server given and the embedded one is not installed: "
            f"pip install 'analytiq_migrations[server]' (Python 3.10+), or {instead}"
        )


# --------------------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class ExternalServer:
    """A server someone else runs (``--uri``, ``MONGODB_URI``): the ``uri`` and ``client``
    of a ``Server``, nothing to start or stop."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def client(self, **kwargs: Any) -> MongoClient[dict[str, Any]]:
        """A new MongoClient on this server with the test ``CLIENT_OPTIONS``."""
        return MongoClient(self.uri, **client_options(self.uri, **kwargs))

    def __repr__(self) -> str:
        return f"<ExternalServer {redact(self.uri)}>"


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


@contextlib.contextmanager
def embedded_server(standalone: bool = False) -> Iterator[Server]:
    """A throw-away server (fresh temporary directory) for the duration of the block.
    Raises ``ServerExtraMissingError`` when SecantusDB is not installed."""
    require_secantus()
    server = start_server(standalone=standalone)
    try:
        yield server
    finally:
        server.stop()
