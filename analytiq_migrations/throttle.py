"""``batch_update(..., max_lag=SECONDS)``: wait between batches while secondaries lag.

A backfill on a busy replica set writes as fast as the primary takes it; secondaries
applying the same oplog can fall behind, and reads from them (or a ``w: majority``
write elsewhere) go stale or slow. Before each batch the walk reads ``replSetGetStatus``
and, while the furthest-behind healthy secondary (state ``SECONDARY``) is more than
``max_lag`` seconds behind the primary's last applied operation, waits. Members that
are down, starting or recovering are left out: a dead secondary would otherwise stop
the backfill forever. While it waits, a spent ``--time-budget`` or a ``pause`` request
still stops the walk at the checkpoint it just wrote.

``replSetGetStatus`` needs the ``clusterMonitor`` role (or ``replSetGetStatus`` on the
cluster), does not exist on a standalone server and is not served by ``mongos``; there
the option is said once in the log and ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from pymongo.errors import PyMongoError

log = logging.getLogger("analytiq_migrations")

#: ``replSetGetStatus`` member states: the primary, and a secondary that is applying the
#: oplog (others, like ``RECOVERING`` or ``(not reachable/healthy)``, do not count).
PRIMARY, SECONDARY = 1, 2

#: Longest single wait before the lag is read again: short enough to notice a caught-up
#: secondary (or a pause request) quickly, long enough not to poll the primary hard.
MAX_POLL_S = 1.0


def sleep_seconds(seconds: float) -> None:
    """Wait (a function of its own, so tests can count the waits)."""
    time.sleep(seconds)


def read_status(client: Any) -> Mapping[str, Any]:
    """``replSetGetStatus`` from the admin database."""
    result: Mapping[str, Any] = client.admin.command("replSetGetStatus")
    return result


def lag_seconds(status: Mapping[str, Any]) -> float:
    """How far the furthest-behind healthy secondary is behind the primary (0: none)."""
    members = [m for m in status.get("members", []) if isinstance(m, Mapping)]
    primary = next((m for m in members if m.get("state") == PRIMARY), None)
    if primary is None or primary.get("optimeDate") is None:
        return 0.0
    behind = [(primary["optimeDate"] - m["optimeDate"]).total_seconds()
              for m in members if m.get("state") == SECONDARY and m.get("optimeDate")]
    return float(max([0.0, *behind]))


class LagGuard:
    """One walk's lag checks; ``usable`` turns False (said once) where the status can't
    be read."""

    def __init__(self, client: Any, max_lag: float, version: int,
                 sleep: Optional[Callable[[float], None]] = None) -> None:
        self.client = client
        self.max_lag = max_lag
        self.version = version
        self.sleep = sleep or sleep_seconds
        self.usable = True
        #: Seconds this walk has waited for secondaries (for logs and spans).
        self.waited_s = 0.0

    def wait(self, stop: Callable[[], Optional[str]]) -> Optional[str]:
        """Wait while secondaries lag more than ``max_lag``; returns ``stop()``'s reason
        if it asks to stop meanwhile (else ``None``)."""
        said = False
        while self.usable:
            lag = self._lag()
            if lag is None or lag <= self.max_lag:
                return None
            if not said:
                log.info("Migration %d: secondaries are %.1fs behind (max_lag %.1fs); "
                         "waiting before the next batch", self.version, lag, self.max_lag)
                said = True
            pause = min(MAX_POLL_S, max(lag - self.max_lag, 0.1))
            self.sleep(pause)
            self.waited_s += pause
            reason = stop()
            if reason is not None:
                return reason
        return None

    def _lag(self) -> Optional[float]:
        """The lag now; ``None`` (and the guard off, said once) when it can't be read."""
        try:
            return lag_seconds(read_status(self.client))
        except (PyMongoError, AttributeError, NotImplementedError) as exc:
            self.usable = False
            log.warning("Migration %d: batch_update(max_lag=%s) is ignored: replSetGetStatus "
                        "could not be read (%s). It needs a replica set (not mongos or a "
                        "standalone server) and the clusterMonitor role.", self.version,
                        self.max_lag, str(exc).splitlines()[0] if str(exc) else
                        type(exc).__name__)
            return None
