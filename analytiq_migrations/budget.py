"""``--time-budget``: how long a run may work on backfills before it stops at a checkpoint.

The budget is looked at only where a ``batch_update`` has just committed a checkpoint (and
nowhere else: a migration's own code is never stopped mid-step). When it is spent, or a
``pause VERSION`` request is on the record, the walk raises ``StopAtCheckpoint``; the step
records the version ``paused`` and the run ends there, exit 0.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Optional, Protocol, Union

from .errors import ConfigurationError

#: ``90``, ``90s``, ``1.5m``, ``10m``, ``1h``: a number with an optional unit.
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smh]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class StopAtCheckpoint(BaseException):
    """A ``batch_update`` stopped after a committed checkpoint: budget spent or a pause
    requested. A ``BaseException`` so that a migration's ``except Exception`` around its
    ``batch_update`` call does not swallow it and carry on."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(f"version {version} stopped at a checkpoint ({reason})")
        self.version = version
        self.reason = reason


def parse_duration(text: Union[str, float, int]) -> float:
    """Seconds in ``30s``, ``10m``, ``1h`` or a plain number; ``ConfigurationError`` else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ConfigurationError(
                f"time budget {text!r} is not a duration.",
                hint="Write seconds (90), or a number with s, m or h: 30s, 10m, 1h.")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if not seconds > 0:
        raise ConfigurationError(f"time budget {text!r} must be more than 0 seconds.",
                                 hint="Write 30s, 10m or 1h, say; leave it out for no limit.")
    return seconds


class Budget:
    """A deadline on the monotonic clock, from when the run began."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = parse_duration(seconds)
        self.clock = clock
        self.deadline = clock() + self.seconds

    def spent(self) -> bool:
        """Has the run used its time?"""
        return self.clock() >= self.deadline


def make_budget(seconds: Optional[float]) -> Optional[Budget]:
    """A ``Budget`` for ``time_budget=seconds`` (``None``: no limit)."""
    return None if seconds is None else Budget(seconds)


class _Book(Protocol):
    """What ``stop_reason`` reads: the run's bookkeeping (``lifecycle.Lifecycle``)."""

    def pause_requested(self, version: int) -> bool: ...


def stop_reason(book: _Book, version: int, budget: Optional[Budget]) -> Optional[str]:
    """Why the walk should stop at the checkpoint it just wrote: ``request`` (a ``pause
    VERSION`` on the record, read each time), ``time_budget``, or ``None``."""
    if book.pause_requested(version):
        return "request"
    if budget is not None and budget.spent():
        return "time_budget"
    return None
