"""Show ``ProgressEvent``\\ s and ``StepEvent``\\ s to a person: a live bar on a terminal,
log lines otherwise, and one line as each step starts and ends.

    from analytiq_migrations.progress import make_reporter

    reporter = make_reporter(sys.stderr)
    Migrator(client, MIGRATIONS, progress=reporter, on_step=reporter.step).upgrade()

On a terminal the reporter redraws one line per running ``batch_update`` (count, rate,
ETA); anywhere else (CI logs, cron mail, ``kubectl logs``) it writes a plain line at
most every ``interval`` seconds, so a long migration neither floods the log nor looks
hung. The last event of each call (``done``) is always written.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TextIO

from .records import ProgressEvent, StepEvent

Reporter = Callable[[ProgressEvent], None]

#: Redraw a terminal line at most 10 times a second: smooth to the eye, and cheap even
#: when batches finish every few milliseconds.
TTY_REDRAW_S = 0.1

#: Width of the bar in characters: leaves room for the counts on an 80-column terminal.
BAR_WIDTH = 24


def make_reporter(
    stream: TextIO,
    *,
    tty: Optional[bool] = None,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> _Reporter:
    """A progress hook writing to ``stream`` (its ``step`` method: the ``on_step`` hook);
    ``tty=None`` asks the stream whether it is one."""
    if tty is None:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
    return _Reporter(stream, tty=tty, interval=TTY_REDRAW_S if tty else interval, clock=clock)


class _Reporter:
    """State between events: which call is on screen and when it was last written."""

    def __init__(self, stream: TextIO, *, tty: bool, interval: float,
                 clock: Callable[[], float]) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval
        self.clock = clock
        self._key: Optional[tuple[int, str]] = None
        self._last_write = float("-inf")
        self._open_line = False  # a bar drawn on the terminal without its newline yet

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.version, event.collection)
        now = self.clock()
        if key != self._key:
            self._end_line()
            self._key = key
        elif not event.done and now - self._last_write < self.interval:
            return
        self._last_write = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + bar_line(event))
            self._open_line = True
            if event.done:
                self._end_line()
        else:
            self.stream.write(log_line(event) + "\n")
        self.stream.flush()

    def step(self, event: StepEvent) -> None:
        """One line as a step starts and as it ends (``on_step`` hook)."""
        self._end_line()
        self._key = None
        self.stream.write(step_line(event) + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        """Finish the terminal line the previous call drew on."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


def bar_line(event: ProgressEvent) -> str:
    """``v3 users [#########.......] 45,000/100,000 45%  12,345/s  ETA 0:04``."""
    done, total = event.scanned, _total(event)
    head = f"v{event.version} {event.collection}"
    if total:
        fraction = done / total
        filled = int(fraction * BAR_WIDTH)
        bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
        count = f"{done:,}/{total:,} {fraction:4.0%}"
    else:
        bar, count = "", f"{done:,}"
    parts = [head, bar, count, f"{_rate(event):,.0f}/s"]
    if event.done:
        parts.append(f"done in {_clock(event.elapsed_s)}, {event.modified:,} changed")
    else:
        eta = _eta(event)
        parts.append(f"ETA {_clock(eta)}" if eta is not None else "")
    return " ".join(p for p in parts if p)


def log_line(event: ProgressEvent) -> str:
    """``migration 3 users: 45,000 of 100,000 documents (45%), 12,345/s, ETA 0:04``."""
    done = event.scanned
    what = f"migration {event.version} {event.collection}: "
    if event.done:
        return (f"{what}done: {done:,} documents, {event.modified:,} changed in "
                f"{_clock(event.elapsed_s)} ({_rate(event):,.0f}/s)")
    total = _total(event)
    count = f"{done:,} of {total:,} documents ({done / total:.0%})" if total \
        else f"{done:,} documents"
    eta = _eta(event)
    tail = f", ETA {_clock(eta)}" if eta is not None else ""
    return f"{what}{count}, {_rate(event):,.0f}/s{tail}"


#: How a step's end reads: a revert is "reverted" (the stored ``rolled_back`` reads like a
#: failure to people).
_ENDED = {"applied": "applied", "rolled_back": "reverted", "rehearsed": "rehearsed"}


def step_line(event: StepEvent) -> str:
    """``[2/5] migration 2 up: Rename user.name (in a transaction)`` as a step starts,
    ``[2/5] migration 2 up: applied in 41 ms`` (or ``FAILED after 1.2 s``) as it ends."""
    head = f"[{event.index}/{event.total}] migration {event.version} {event.direction}: "
    if event.status == "started":
        how = "in a transaction" if event.transactional else "no transaction"
        return f"{head}{' '.join(event.description.split())} ({how})"
    took = duration(event.duration_ms or 0)
    if event.status == "failed":
        return f"{head}FAILED after {took}"
    return f"{head}{_ENDED.get(event.status, event.status)} in {took}"


def duration(ms: int) -> str:
    """``41 ms``, ``1.2 s``, ``2:05`` (minutes)."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return _clock(ms / 1000)


def describe_checkpoint(progress: Optional[dict[str, Any]]) -> Optional[str]:
    """A record's ``progress`` for people: ``items: 4,000 of 10,000 documents, ...``."""
    calls = (progress or {}).get("batch_update")
    if not isinstance(calls, list):
        return None
    parts = [_describe_call(state) for state in calls if isinstance(state, dict) and state]
    return "; ".join(parts) or None


def _describe_call(state: dict[str, Any]) -> str:
    """One ``batch_update`` call's checkpoint."""
    name = state.get("collection") or "?"
    modified = int(state.get("modified") or 0)
    if state.get("done"):
        return f"{name}: done, {modified:,} changed"
    scanned, total = int(state.get("scanned") or 0), state.get("total")
    text = f"{name}: {scanned:,}" + \
        (f" of {max(int(total), scanned):,}" if total is not None else "") + \
        f" documents, {modified:,} changed"
    if "last_id" in state:
        last = repr(state["last_id"])
        text += f", last _id {last if len(last) <= 40 else last[:37] + '...'}"
    batches = int(state.get("batches") or 0)
    return text + f" ({batches:,} batch{'' if batches == 1 else 'es'}, " \
        f"{_clock(float(state.get('elapsed_s') or 0.0))})"


def _total(event: ProgressEvent) -> Optional[int]:
    """The documents to walk, never fewer than those walked (documents inserted during
    the walk, or a count taken before a resume, would otherwise show "38,500 of 32,500")."""
    return None if event.total is None else max(event.total, event.scanned)


def _rate(event: ProgressEvent) -> float:
    """Documents walked per second over the call's whole (checkpointed) running time."""
    return event.scanned / event.elapsed_s if event.elapsed_s > 0 else 0.0


def _eta(event: ProgressEvent) -> Optional[float]:
    """Seconds left at the current rate; ``None`` without a total or a rate yet."""
    rate, total = _rate(event), _total(event)
    if not total or rate <= 0:
        return None
    return (total - event.scanned) / rate


def _clock(seconds: float) -> str:
    """``0:04``, ``12:34``, ``1:02:03``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
