"""Who holds the migration lock and whether its lease is live: the rules every reader
applies (the run taking the lock, ``status``, ``validate``, ``show``, ``unlock``), and the
server's clock they are judged by.

* A lease is live until its ``expires_at``, written with ``$$NOW`` (the server's clock) and
  compared with the server's time as estimated from ``hello.localTime`` (``ServerClock``),
  never with this machine's clock (``lease_live``).
* A lease whose holder died on this very machine may be taken over at once
  (``dead_holder``): the lease records the holder's process (pid, start time, boot id, pid
  namespace: ``process_identity``), so a reused pid is not mistaken for the holder.
* A foreign or damaged lock document is shown as what it says (``lock_info``), never
  crashed on.

The mechanics of holding a lease (acquire, renew, release) are in ``lock.py``; acting on
someone else's (reading it, ending its sessions, removing it) in ``unlock.py``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

from pymongo.errors import PyMongoError

from .errors import LockBusyError
from .hints import spell
from .records import LockInfo
from .server import hello
from .timetext import text_time

#: ``_id`` of the single lock document (the seed's lock uses the same one).
LOCK_ID = "migration_lock"

#: Linux's view of processes: ``PROC/PID/stat``, the boot id, this process's pid namespace.
PROC = "/proc"


# -- which process holds the lease ------------------------------------------------------------


def _read(path: str) -> Optional[str]:
    """A small text file's content, or ``None`` when it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _stat(pid: int) -> Optional[tuple[str, int]]:
    """``(state, starttime)`` of ``pid`` from ``/proc/PID/stat``, ``None`` when unreadable."""
    text = _read(f"{PROC}/{pid}/stat")
    if not text or ")" not in text:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; starttime is the
    # 22nd field, the 20th after comm.
    fields = text.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _machine() -> Optional[Dict[str, str]]:
    """This boot of this machine and this process's pid namespace: where a pid means the
    same process (two containers with one host name have separate pid namespaces)."""
    boot = _read(f"{PROC}/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink(f"{PROC}/self/ns/pid")
    except OSError:
        return None
    if not boot or not boot.strip():
        return None
    return {"boot_id": boot.strip(), "pid_namespace": namespace}


def process_identity(pid: int) -> Optional[Dict[str, Any]]:
    """What the lease records about its holder's process: the machine's boot id, the pid
    namespace and the process's start time (clock ticks after boot). ``None`` where it
    cannot be read: such a lease can only expire."""
    machine = _machine()
    stat = _stat(pid)
    if machine is None or stat is None:
        return None
    return {**machine, "started": stat[1]}


def dead_holder(doc: Dict[str, Any], host: str) -> Optional[str]:
    """Why the holder of the lease ``doc`` is surely dead, or ``None`` (alive, or unknown).

    Only for a holder on this host, in this boot and pid namespace, that recorded its
    process: it is dead when its pid is not running, has exited (a zombie), or now
    belongs to a process started at another time (the pid was reused).
    """
    recorded = doc.get("process")
    pid = doc.get("pid")
    if doc.get("host") != host or not isinstance(recorded, dict) or \
            not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    machine = _machine()
    if machine is None or any(recorded.get(k) != v for k, v in machine.items()):
        return None
    stat = _stat(pid)
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"its process (pid {pid}) is not running on this host"
        except OSError:
            return None  # exists, but not ours to inspect
        return None  # running, but its start time cannot be read: let the lease expire
    state, started = stat
    if state in ("Z", "X"):
        return f"its process (pid {pid}) has exited on this host"
    if started != recorded.get("started"):
        return f"its process (pid {pid}) is gone; that pid now belongs to another process"
    return None


def local_now() -> datetime:
    """This machine's clock, aware UTC (which may be wrong: ``ServerClock`` corrects it)."""
    return datetime.now(timezone.utc)


class ServerClock:
    """The server's time, estimated from ``hello.localTime`` (``isMaster`` on old servers)
    and the round trip."""

    def __init__(self, db: Any) -> None:
        self.offset = timedelta(0)
        try:
            sent = local_now()
            reply = hello(db.client)
            received = local_now()
        except (PyMongoError, AttributeError, NotImplementedError):
            return  # no server clock to read (mongomock): trust ours
        local_time = reply.get("localTime")
        if isinstance(local_time, datetime):
            if local_time.tzinfo is None:
                local_time = local_time.replace(tzinfo=timezone.utc)
            self.offset = local_time - (sent + (received - sent) / 2)

    def now(self) -> datetime:
        """Current server time (aware UTC)."""
        return local_now() + self.offset


def describe(info: LockInfo) -> str:
    """Who holds a lock and until when, for messages."""
    who = info.holder or f"run {info.run_id or '?'}"
    parts = [who]
    if info.host or info.pid:
        parts.append(f"(host {info.host or '?'}, pid {info.pid or '?'})")
    if info.locked_at:
        parts.append(f"since {text_time(info.locked_at)}")
    parts.append(f"until {text_time(info.expires_at)}" if info.expires_at else "with no expiry")
    return " ".join(parts)


def lock_info(doc: dict[str, Any]) -> LockInfo:
    """A lock document as ``LockInfo``; a foreign or damaged one shows as its text."""
    body = {k: v for k, v in doc.items() if k != "_id"}
    body["session_ids"] = recorded_sessions(doc)
    try:
        info = LockInfo.model_validate(body)
    except ValueError:
        info = None
    if info is None or not (info.holder or info.run_id):
        # A foreign or damaged document: show what it says, never crash on it.
        return LockInfo(holder=f"an unrecognised lock document {_short(doc)}",
                        expires_at=info.expires_at if info else None)
    return info


def recorded_sessions(doc: dict[str, Any]) -> list[Any]:
    """The session ids a lease recorded (``{"id": UUID}`` each); whatever else a damaged
    or foreign document holds there (a string, a number, a dict) is ignored."""
    ids = doc.get("session_ids")
    if not isinstance(ids, list):
        return []
    return [sid for sid in ids if isinstance(sid, dict) and "id" in sid]


def _short(doc: dict[str, Any]) -> str:
    """A lock document as text for a message, cut to a readable length."""
    text = repr({k: v for k, v in doc.items() if k != "session_ids"})
    return text if len(text) <= 200 else text[:200] + "...}"


def lease_live(expires_at: Any, now: datetime) -> bool:
    """Whether a lease is still live: the one rule every reader (the run, ``status``,
    ``validate``, ``show``, ``unlock``) applies. ``expires_at`` was written with ``$$NOW``
    (the server's clock) and ``now`` is the server's time from ``ServerClock``, never
    this machine's clock. A lease without a valid expiry (a foreign document) never runs
    out on its own."""
    if not isinstance(expires_at, datetime):
        return True
    return _aware(expires_at) > _aware(now)


def _aware(moment: datetime) -> datetime:
    """A datetime as aware UTC (BSON's are naive UTC unless the codec says otherwise)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def expired(doc: dict[str, Any], now: datetime) -> bool:
    """True when a lock document's lease ran out (see ``lease_live``)."""
    return not lease_live(doc.get("expires_at"), now)


def busy_error(doc: dict[str, Any]) -> LockBusyError:
    """The error for a lock someone else holds (the lock document ``doc``)."""
    return LockBusyError(
        f"The migration lock is held by {describe(lock_info(doc))}.",
        hint=spell(
            "Wait for that run to finish, or wait for the lock with lock_wait=SECONDS "
            "(--lock-wait). If that process is dead, the lock expires on its own; to "
            "break it now: `analytiq-migrations unlock --force`.",
            cli="Wait for that run to finish, or wait for the lock with --lock-wait "
            "SECONDS. If that process is dead, the lock expires on its own; to break it "
            "now: `analytiq-migrations unlock --force`."),
    )
