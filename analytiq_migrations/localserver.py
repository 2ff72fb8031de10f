"""``analytiq-migrations server``: a local single-node replica set (SecantusDB, the
``[server]`` extra) in the foreground, for trying the command line and developing
migrations without a MongoDB of one's own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from . import testing
from .errors import ConfigurationError, MigrationError

#: mongod's port, so ``mongodb://localhost:27017`` (every tutorial's URI) reaches it.
DEFAULT_PORT = 27017

#: How often the foreground loop checks that the server is still alive: a crash is
#: reported within this, and Ctrl-C / SIGTERM interrupt the sleep at once anyway.
POLL_S = 0.5


def check_extra() -> None:
    """One line naming the extra when SecantusDB is not installed."""
    if not testing.secantus_installed():
        raise ConfigurationError(
            "`server` needs the [server] extra: pip install 'analytiq_migrations[server]' "
            "(SecantusDB; Python 3.10+)."
        )


def serve(port: int, directory: Optional[Path], announce: Callable[[Any], None]) -> None:
    """Start the server, call ``announce(server)``, and block until interrupted (Ctrl-C,
    SIGTERM: the exception propagates) or until the server dies; always stops it."""
    check_extra()
    if not 0 < port < 65536:
        raise ConfigurationError(f"--port must be a TCP port (1-65535), not {port}.")
    if directory is not None:
        directory = directory.expanduser().resolve()
        if directory.exists() and not directory.is_dir():
            raise ConfigurationError(f"--dir {directory} is a file, not a directory.")
    try:
        server = testing.start_server(directory, port=port)
    except testing.ServerStartError as exc:
        if "Address already in use" in str(exc):
            raise ConfigurationError(
                f"Port {port} is in use (another MongoDB, or a server started earlier).",
                hint="Stop it, or pick another port: `analytiq-migrations server --port "
                "27018`.",
            ) from None
        raise MigrationError(f"The local server did not start: {exc}") from None
    try:
        announce(server)
        while server.running:
            time.sleep(POLL_S)
        raise MigrationError(
            f"The local server on port {port} stopped by itself.\n"
            f"Log {server.log_path}:\n{server.log_tail(20)}"
        )
    finally:
        server.stop()


def banner(server: Any, kept: bool) -> str:
    """What to tell the user once it runs: the URI first, on a line of its own."""
    data = f"{server.data_dir} (kept: start it again with the same --dir)" if kept else \
        "a temporary directory, removed when it stops (--dir DIR keeps the data)"
    return (f"{server.uri}\n\n"
            f"A local MongoDB-compatible server (SecantusDB, a single-node replica set, so "
            f"transactions work) listens on {server.address}.\n"
            f"  data: {data}\n"
            f"  log:  {server.log_path}\n"
            f"Use it from another terminal:\n"
            f"  export MONGODB_URI='{server.uri}'\n"
            f"  export ANALYTIQ_MIGRATIONS_DATABASE=app\n"
            f"Ctrl-C (or SIGTERM) stops it.")
