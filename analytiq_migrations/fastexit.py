"""How the command line ends its process: a normal exit minus pymongo's thread join.

A pymongo process spends about half a second *after* its work: pymongo's ``atexit``
handler stops and joins every client's monitor threads, and each of them notices that
it was stopped only when its current 0.5 s sleep ends (closing the client first does not
help). Measured on a whole ``up`` that applies three small migrations (median of 9
interleaved runs, SecantusDB, bytecode cached): a normal exit 685 ms; without pymongo's
join 276 ms; this module's exit 232 ms (the rest of a normal exit: interpreter teardown,
freeing every module and object). The join protects nothing a finished command needs: the
library has closed its own clients by then, and the threads only poll servers.

:func:`leave` therefore ends the process as the interpreter would, in the same order,
and skips only that join and the teardown:

1. ``threading._shutdown()``: user threads that are not daemons are joined and
   ``concurrent.futures`` pools drained, as at a normal exit;
2. pymongo's handler is unregistered, then every other ``atexit`` handler runs, last
   registered first: the ones migrations and ``--client`` modules registered,
   ``logging.shutdown``, ``weakref.finalize`` objects, ``multiprocessing``'s;
3. stdout and stderr are flushed (a closed pipe falls back to the normal exit, which
   reports it as Python does);
4. ``os._exit(code)`` ends the process; the monitor threads end with it.

What a normal exit does and this does not: objects still referenced by a module when the
process ends are not finalized, so a file a migration opens at import time and never
closes is not flushed by its ``__del__`` (close it, or register an ``atexit`` handler).
A client the user handed in (``--client``) is not closed by the library either way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import Any, Callable, NoReturn, Optional

#: Modules that register pymongo's join at exit: ``pymongo.synchronous.monitor`` from 4.9
#: on, ``pymongo.monitor`` before (3.x and 4.0-4.8). Its name there: ``_shutdown_resources``.
_PYMONGO_MONITOR_MODULES = ("pymongo.synchronous.monitor", "pymongo.monitor")


def exit_code(exc: SystemExit) -> int:
    """The process's exit code for ``SystemExit(code)``, as the interpreter computes it
    (``None`` is 0, an integer itself, anything else is printed to stderr and is 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def leave(code: int) -> NoReturn:
    """End the process with ``code`` after a normal exit's work, without pymongo's join."""
    shutdown: Optional[Callable[[], Any]] = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    for name in _PYMONGO_MONITOR_MODULES:
        handler = getattr(sys.modules.get(name), "_shutdown_resources", None)
        if handler is not None:
            atexit.unregister(handler)
    # A handler's error is printed by _run_exitfuncs; Python before 3.10 also re-raises the
    # last one here, where a normal interpreter exit keeps its status.
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the process was started with that file closed
                stream.flush()
    except (OSError, ValueError):  # a closed pipe: the normal exit reports it (code 120)
        sys.exit(code)
    os._exit(code)
