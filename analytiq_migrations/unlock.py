"""Acting on a lease that may not be this run's: reading the lock document, ending a dead
holder's sessions (their open transactions hold the lock document), and removing the lock
(``unlock``). Whether a lease may be removed is decided in ``leaserules.py``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Optional

from pymongo.errors import OperationFailure, PyMongoError

from .errors import LockBusyError
from .hints import spell
from .leaserules import (
    LOCK_ID,
    ServerClock,
    dead_holder,
    describe,
    expired,
    lock_info,
    recorded_sessions,
)
from .records import LockInfo
from .retry import describe_error
from .server import OWN_CODEC

log = logging.getLogger("analytiq_migrations")

#: Tries at removing a lock that keeps changing hands before ``unlock`` gives up: each
#: retry means another run took the lock in between, so a few are plenty.
BREAK_ATTEMPTS = 5


def read_lock(collection: Any) -> Optional[LockInfo]:
    """The lock document, or ``None`` when nobody holds the lock."""
    doc = collection.find_one({"_id": LOCK_ID})
    return None if doc is None else lock_info(doc)



def kill_sessions(collection: Any, session_ids: list[Any]) -> None:
    """End sessions (and their open transactions) of a dead holder; best effort."""
    if not session_ids:
        return
    try:
        # Our codec: the ids are UUIDs, which the client's own options may encode wrongly
        # (pymongo 3's pythonLegacy) or refuse to encode (pymongo 4's default).
        collection.database.client.admin.command("killSessions", session_ids,
                                                  codec_options=OWN_CODEC)
        log.info("Ended %d session(s) of the previous lock holder", len(session_ids))
    except (OperationFailure, PyMongoError) as exc:
        log.warning("Could not end the previous holder's sessions: %s", describe_error(exc))
    except (AttributeError, NotImplementedError) as exc:  # mongomock: no sessions to end
        log.warning("Could not end the previous holder's sessions: %s", exc)


def break_lock(collection: Any, *, run_id: Optional[str], force: bool, clock: ServerClock) -> bool:
    """Remove the lock document if allowed (``force``, ours, expired, or held by a dead
    process on this machine); returns True when something was removed."""
    host = socket.gethostname()
    for _ in range(BREAK_ATTEMPTS):
        doc = collection.find_one({"_id": LOCK_ID})
        if doc is None:
            return False
        info = lock_info(doc)
        mine = run_id is not None and doc.get("run_id") == run_id
        gone = expired(doc, clock.now()) or dead_holder(doc, host) is not None
        if not (force or mine or gone):
            raise LockBusyError(
                f"The migration lock is held by {describe(info)}, which is not this process.",
                hint=spell(
                    "Only its holder releases a live lock. If that process is dead and you "
                    "cannot wait for the lock to expire: unlock(force=True) "
                    "(`analytiq-migrations unlock --force`).",
                    cli="Only its holder releases a live lock. If that process is dead and "
                    "you cannot wait for the lock to expire: `analytiq-migrations unlock "
                    "--force`."),
            )
        if not mine:
            # First end its sessions: a transaction it left open holds the lock document,
            # and the delete below would wait on it.
            kill_sessions(collection, recorded_sessions(doc))
        # Delete exactly the document we looked at: if it changed hands meanwhile, look again.
        if collection.delete_one(doc).deleted_count:
            if force and not (mine or gone):
                log.warning("Force-broke the migration lock held by %s", describe(info))
            else:
                log.info("Removed the migration lock held by %s", describe(info))
            return True
    raise LockBusyError(
        "The migration lock changed hands on every attempt to remove it; another run is "
        "taking it right now.",
        hint=spell("lock_info() says who holds it.",
                   cli="Run `analytiq-migrations status` to see who holds it."),
    )
