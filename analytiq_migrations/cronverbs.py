"""The command line's cron pieces: ``pause``/``resume``, ``--time-budget`` and
``--metrics-file``. Handlers take the command line's ``Command`` (``cli_command.py``)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any, Callable, Dict, Optional

from . import metrics
from .budget import parse_duration
from .errors import ConfigurationError, MigrationError
from .pauses import REQUEST, figures, held_text, stopped_text, who

#: Help texts of the verbs and options (shared by the parser and ``--help``).
COMMANDS = {
    "pause": "ask the run working on VERSION (a batch_update backfill) to stop at its next "
             "checkpoint, from any host; `up` leaves it paused until `resume VERSION`",
    "resume": "clear a `pause VERSION`: the next `up` continues it from its checkpoint",
}
TIME_BUDGET_HELP = ("stop backfills at the next batch_update checkpoint once DURATION (30s, "
                    "10m, 1h or seconds) has passed; the version is recorded paused and the "
                    "next `up` continues it (exit 0)")
METRICS_HELP = ("write Prometheus text format metrics to PATH (atomically, for "
                "node_exporter's textfile collector)")


def duration_arg(text: str) -> float:
    """``--time-budget`` as typed (a usage error, exit 2, otherwise)."""
    try:
        return parse_duration(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message} {exc.hint or ''}".strip()) from None


def add_arguments(verbs: Dict[str, argparse.ArgumentParser],
                  verb: Callable[[str], argparse.ArgumentParser],
                  version_arg: Callable[[str], int]) -> None:
    """The verbs and options of this module on the command line's parser."""
    for name in COMMANDS:
        verb(name).add_argument("version", type=version_arg, metavar="VERSION")
    verbs["up"].add_argument("--time-budget", type=duration_arg, metavar="DURATION",
                             help=TIME_BUDGET_HELP)
    for name in ("up", "status"):
        verbs[name].add_argument("--metrics-file", metavar="PATH", help=METRICS_HELP)


def cmd_pause(cmd: Any) -> int:
    """``pause VERSION``."""
    m = cmd.open(need_code=False)
    request = m.pause(cmd.args.version)
    text = (f"Version {cmd.args.version} in {cmd.where}: pause requested by {who(request)}. "
            "A run working on it stops at its next batch_update checkpoint; `up` leaves it "
            f"paused until `analytiq-migrations resume {cmd.args.version}`.")
    cmd.out.result(text, {"database": m.db.name, "version": cmd.args.version,
                          "pause": _plain(request)})
    return 0


def cmd_resume(cmd: Any) -> int:
    """``resume VERSION``."""
    m = cmd.open(need_code=False)
    cleared = m.resume(cmd.args.version)
    text = (f"Version {cmd.args.version} in {cmd.where}: pause cleared; the next `up` "
            "continues it from its checkpoint." if cleared else
            f"Version {cmd.args.version} in {cmd.where} had no pause request; nothing changed.")
    cmd.out.result(text, {"database": m.db.name, "version": cmd.args.version,
                          "resumed": cleared})
    return 0


def upgrade(cmd: Any, m: Any, target: Any, fake: bool) -> Any:
    """``m.upgrade`` with ``--time-budget``, writing ``--metrics-file`` however it ends."""
    path = getattr(cmd.args, "metrics_file", None)
    try:
        report = m.upgrade(target, fake=fake, time_budget=getattr(cmd.args, "time_budget", None))
    except MigrationError:
        if path:
            metrics.write(path, metrics.report_text(m, None, failed=True))
        raise
    if path:
        metrics.write(path, metrics.report_text(m, report))
    return report


def paused_text(paused: Optional[Dict[str, Any]]) -> str:
    """The line an ``up`` report ends with when a version paused or is held ("" if not)."""
    if not paused:
        return ""
    return held_text(paused) if paused.get("held") else stopped_text(paused)


def status_metrics(cmd: Any, m: Any) -> None:
    """``status --metrics-file``."""
    path = getattr(cmd.args, "metrics_file", None)
    if path:
        metrics.write(path, metrics.status_text(m))


def progress_text(progress: Optional[Dict[str, Any]]) -> Optional[str]:
    """A record's progress figures for ``status``/``show``: ``4,000 of ~10,000 documents
    (40%), 2,500/s, about 2s left`` (``None`` without figures)."""
    if not progress or not isinstance(progress.get("done"), int):
        return None
    return figures(progress)


def row_note(row: Any) -> str:
    """What ``status`` adds under a row's checkpoint: the progress figures and, for a
    ``pause VERSION`` request, who asked and when (each on its own indented line)."""
    lines = [progress_text(row.progress)]
    if isinstance(row.pause, dict) and row.pause.get("reason") == REQUEST:
        lines.append(f"paused by {who(row.pause)}; `analytiq-migrations resume "
                     f"{row.version}` lets `up` continue it")
    return "".join(f"\n     {line}" for line in lines if line)


def _plain(value: Any) -> Any:
    """JSON-ready (datetimes as ISO 8601)."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat()
                                 if isinstance(v, datetime) else str(v)))
