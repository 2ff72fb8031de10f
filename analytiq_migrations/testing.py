"""A throw-away MongoDB-compatible server for demos and tests (SecantusDB, if installed).

    with embedded_server() as server:
        client = MongoClient(server.uri)

SecantusDB (``pip install SecantusDB``) speaks the MongoDB wire protocol over WiredTiger
and acts as a single-node replica set, so transactions work; ``standalone=True`` makes it
look like a standalone server. It is a test dependency only, never needed at run time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

#: How long a fresh server may take to answer ``ping``; start-up is ~1-2 s, but a
#: loaded CI machine can be several times slower.
START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """A SecantusDB server process on a free port with its data in a directory."""

    def __init__(
        self,
        data_dir: Optional[str] = None,
        *,
        standalone: bool = False,
        extra_args: Sequence[str] = (),
        port: Optional[int] = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="analytiq-secantus-")
        self.standalone = standalone
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.log_path = Path(self.data_dir).with_name(Path(self.data_dir).name + ".log")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def uri(self) -> str:
        """A URI for this server (direct connection: it is a single node)."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> EmbeddedServer:
        """Launch the server and wait until it answers ``ping``."""
        cmd = [
            sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", self.data_dir, "--enable-test-commands", "--log-level", "WARNING",
            *(["--standalone"] if self.standalone else []), *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.data_dir, start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll until the server answers, or fail with the tail of its log."""
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                client: MongoClient[dict[str, object]]
                with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except PyMongoError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"SecantusDB did not start on port {self.port} within {START_TIMEOUT_S:.0f}s. "
            f"Is it installed (pip install SecantusDB)? Log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server gracefully (then forcefully) and remove its data if we made it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def __enter__(self) -> EmbeddedServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_server(standalone: bool = False) -> Iterator[EmbeddedServer]:
    """Start a throw-away server for the duration of the block."""
    server = EmbeddedServer(standalone=standalone)
    server.start()
    try:
        yield server
    finally:
        server.stop()
