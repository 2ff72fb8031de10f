"""The command line's verbs on one database: each calls ``Migrator`` (which returns
data) and prints the result (``cli_output``); the quick no-op ``up`` is ``cli_noop``'s."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from . import cronverbs
from .cli_command import EXIT_OK, EXIT_PENDING, EXIT_PROBLEMS, Command
from .cli_noop import nothing_to_do
from .cli_output import (
    clip,
    dump,
    failing_problems,
    history_rows,
    history_table,
    plain,
    plural,
    print_rehearsal,
    print_report,
    problems_text,
    shown,
    step_note,
    stored_traceback,
    text_table,
    when,
    yes,
)
from .errors import ConfigurationError


def cmd_status(cmd: Command) -> int:
    """``status [--check]``."""
    from .fleet import database_status
    from .lock import describe, lease_live

    m = cmd.open()
    state = database_status(m)  # what is pending and the code's head: decided there
    rows, problems, current = state.migrations, state.problems, state.current_version
    pending, head = state.pending, state.head_version
    lock = m.lock_info()
    lock_live = lock is not None and lease_live(lock.expires_at, m.server_now())
    data = {
        "database": m.db.name, "current_version": current, "head_version": head,
        "pending": pending, "healthy": not failing_problems(problems, False),
        "migrations": dump(rows), "problems": dump(problems),
        "lock": plain(lock.model_dump()) if lock else None,
    }
    table = text_table(
        ["VERSION", "DESCRIPTION", "STATUS", "APPLIED AT (UTC)", "CHECKSUM"],
        [[str(r.version), clip(r.description), shown(r.status), when(r.applied_at),
          {True: "ok", False: "CHANGED", None: "-"}[r.checksum_ok]] for r in rows],
        right=[0],
    ) if rows else "  (no migrations in the code or the database)"
    lock_text = "lock free" if lock is None else \
        f"locked by {describe(lock)}" if lock_live else f"expired lock of {describe(lock)}"
    latest = f"latest {head}" if current <= head else \
        f"the code's latest is {head}: the database is ahead of the code"
    text = (f"Database {cmd.where} at version {current} ({latest}): "
            f"{len(pending)} pending; {lock_text}\n\n{table}\n")
    checkpoints = [f"  {r.version}: {r.checkpoint}{cronverbs.row_note(r)}"
                   for r in rows if r.checkpoint]
    if checkpoints:
        text += "\nCheckpoints (where unfinished batch_update calls resume):\n" + \
            "\n".join(checkpoints) + "\n"
    if problems:
        text += f"\nProblems:\n{problems_text(problems)}\n"
    cmd.out.result(text, data)
    cronverbs.status_metrics(cmd, m)
    if not cmd.args.check:
        return EXIT_OK
    blocking = [p for p in failing_problems(problems, cmd.args.strict) if p.kind != "running"]
    if blocking:
        cmd.out.explain(f"{cmd.where} is unhealthy:\n{problems_text(blocking)}")
        return EXIT_PROBLEMS
    if pending or any(p.kind == "running" for p in problems):
        waiting = ", ".join(str(v) for v in pending) or "a run in progress"
        cmd.out.explain(f"{cmd.where} has pending migrations: {waiting}")
        return EXIT_PENDING
    return EXIT_OK


def cmd_plan(cmd: Command) -> int:
    """``plan [TARGET]``."""
    m = cmd.open()
    plan = m.plan(cmd.args.target)
    if not plan.steps:
        text = f"Nothing to do: {cmd.where} is at version {plan.current_version}."
    else:
        table = text_table(
            ["VERSION", "DIRECTION", "DESCRIPTION", "TRANSACTION", "NOTE"],
            [[str(s.version), s.direction, clip(s.description), yes(s.transactional),
              step_note(s)] for s in plan.steps],
            right=[0],
        )
        text = (f"Plan for {cmd.where}: {plan.direction} from version {plan.current_version} "
                f"to {plan.target_version}, {plural(len(plan.steps), 'step')}:\n\n{table}")
    if plan.paused:
        text += "\n\n" + cronverbs.paused_text(plan.paused)
    cmd.out.result(text, plain(plan.model_dump()))
    return EXIT_OK


def _starting(cmd: Command, direction: str) -> None:
    """Remember when this ``up``/``down`` began (see ``cli._interrupted_report``)."""
    # A second back: the history's times come from this machine's clock, in whole ms.
    cmd.run_started = datetime.now(timezone.utc) - timedelta(seconds=1)
    cmd.run_direction = direction


def cmd_up(cmd: Command) -> int:
    """``up [TARGET] [--fake | --dry-run]``."""
    if not cmd.args.metrics_file and nothing_to_do(cmd):
        return EXIT_OK
    m = cmd.open()
    _starting(cmd, "up")
    fake = cmd.args.fake
    if cmd.args.dry_run:
        return print_rehearsal(cmd, m.upgrade(cmd.args.target, fake=fake, dry_run=True))
    return print_report(cmd, cronverbs.upgrade(cmd, m, cmd.args.target, fake), faked=fake)


def cmd_down(cmd: Command) -> int:
    """``down TARGET [--fake | --dry-run]``."""
    m = cmd.open()
    _starting(cmd, "down")
    fake = cmd.args.fake
    if cmd.args.dry_run:
        return print_rehearsal(cmd, m.downgrade(cmd.args.target, fake=fake, dry_run=True))
    return print_report(cmd, m.downgrade(cmd.args.target, fake=fake), faked=fake)


def cmd_current(cmd: Command) -> int:
    """``current``: the version alone (scripts: ``v=$(analytiq-migrations current)``)."""
    m = cmd.open()
    version = m.current_version()
    cmd.out.result(str(version), {"database": m.db.name, "current_version": version})
    return EXIT_OK


def cmd_show(cmd: Command) -> int:
    """``show VERSION``."""
    m = cmd.open()
    details = m.show(cmd.args.version)
    record = details.record
    lines = [f"Version {details.version} in {cmd.where}: {details.description}",
             f"  status        {shown(details.status)}"
             + (" (faked: recorded without running the code)" if details.faked else ""),
             f"  file          {details.file or '- (not in the code)'}"]
    if details.checksum or details.recorded_checksum:
        state = {True: "ok", False: "CHANGED since it was applied", None: "-"}[details.checksum_ok]
        lines.append(f"  checksum      {(details.checksum or '-')[:16]} (code), "
                     f"{(details.recorded_checksum or '-')[:16]} (recorded): {state}")
    if details.transactional is not None or details.reversible is not None:
        reversible = "unknown (no code for it)" if details.reversible is None else \
            yes(details.reversible)
        lines.append(f"  transaction   {yes(bool(details.transactional))}; reversible: "
                     f"{reversible}")
    if record is not None:
        lines.append(f"  last run      {record.direction} {when(record.started_at)} -> "
                     f"{when(record.finished_at)} by {record.user or '?'}@{record.host or '?'} "
                     f"(run {record.run_id or '?'}, {record.attempts} attempt(s))")
        if record.applied_at:
            lines.append(f"  applied at    {when(record.applied_at)}")
        if cronverbs.progress_text(record.progress):
            lines.append(f"  progress      {cronverbs.progress_text(record.progress)}")
    if details.last_failure is not None and details.last_failure.error is not None:
        failure = details.last_failure
        lines.append(f"  last error    {when(failure.started_at)} ({failure.direction}, "
                     f"{failure.status}): {failure.error.type}: "
                     f"{clip(failure.error.message, 200)}")
        lines += stored_traceback(failure.error)
    if details.history:
        lines += ["", "History (newest first):", history_table(details.history)]
    else:
        lines += ["", "No history for this version."]
    data = plain(details.model_dump())
    data["database"] = m.db.name
    cmd.out.result("\n".join(lines), data)
    return EXIT_OK


def cmd_history(cmd: Command) -> int:
    """``history [VERSION] [--limit N]``."""
    if cmd.args.limit < 0:
        raise ConfigurationError(f"--limit must be 0 (all) or more, not {cmd.args.limit}.")
    m = cmd.open(need_code=False)
    entries = m.history(cmd.args.version, limit=cmd.args.limit)
    repairs = m.repairs(cmd.args.version)
    if cmd.args.limit:  # the newest N lines of the table, repairs included
        shown = history_rows(entries, repairs)[:cmd.args.limit]
        entries = [e for e in entries if any(e is row for row in shown)]
        repairs = [r for r in repairs if any(r is row for row in shown)]
    if entries or repairs:
        text = history_table(entries, repairs)
    else:
        text = f"No history{f' for version {cmd.args.version}' if cmd.args.version else ''} " \
               f"in {cmd.where}."
    cmd.out.result(text, {"database": m.db.name, "entries": dump(entries),
                          "repairs": dump(repairs)})
    return EXIT_OK


def cmd_validate(cmd: Command) -> int:
    """``validate``."""
    m = cmd.open()
    problems = m.validate()
    failing = failing_problems(problems, cmd.args.strict)
    data = {"database": m.db.name, "healthy": not failing, "problems": dump(problems)}
    if not problems:
        cmd.out.result(f"No problems: {cmd.where} matches the code.", data)
        return EXIT_OK
    text = f"{plural(len(problems), 'problem')} in {cmd.where}:\n{problems_text(problems)}"
    cmd.out.result(text, data)
    if not failing:
        return EXIT_OK  # warnings only (a database ahead of older code)
    cmd.out.explain(text)
    return EXIT_PROBLEMS


def cmd_repair(cmd: Command) -> int:
    """``repair [--accept-checksums] [--clear-failed] [--accept-missing]``."""
    if not (cmd.args.accept_checksums or cmd.args.clear_failed or cmd.args.accept_missing):
        raise ConfigurationError(
            "repair needs to be told what to fix: --accept-checksums, --clear-failed and/or "
            "--accept-missing.",
            hint="Run `validate` first: each problem it lists says which repair fits.",
        )
    m = cmd.open()
    actions = m.repair(accept_checksums=cmd.args.accept_checksums,
                       clear_failed=cmd.args.clear_failed,
                       accept_missing=cmd.args.accept_missing)
    text = ("Repaired:\n" + "\n".join(f"  version {a.version}: {a.detail}" for a in actions)
            ) if actions else f"Nothing to repair in {cmd.where}."
    cmd.out.result(text, {"database": m.db.name, "actions": dump(actions)})
    return EXIT_OK


def cmd_baseline(cmd: Command) -> int:
    """``baseline VERSION``."""
    m = cmd.open()
    return print_report(cmd, m.baseline(cmd.args.version), faked=True)


def cmd_unlock(cmd: Command) -> int:
    """``unlock [--force]``."""
    m = cmd.open(need_code=False)
    removed = m.unlock(force=cmd.args.force)
    text = "Removed the migration lock." if removed else "The migration lock was not held."
    cmd.out.result(text, {"database": m.db.name, "removed": removed})
    return EXIT_OK


