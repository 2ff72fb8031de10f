"""The command line's verbs that need no database of their own: ``new`` (writes a file),
``verify`` (a throw-away server or a scratch database) and ``server`` (runs one)."""

from __future__ import annotations

from typing import Any

from .cli_command import EXIT_FAILED, EXIT_OK, Command, Terminated
from .config import require


def cmd_new(cmd: Command) -> int:
    """``new DESCRIPTION``: no server needed."""
    from .templates import new_migration

    require(cmd.settings, ["migrations"], cmd.layers)
    created = new_migration(str(cmd.settings.migrations), " ".join(cmd.args.description))
    text = str(created.path)
    if created.made_directory:
        text = f"Created directory {created.path.parent}\n{text}"
    cmd.out.result(text, {"path": str(created.path), "version": created.version})
    return EXIT_OK


def cmd_verify(cmd: Command) -> int:
    """``verify [--uri URI] [--seed MODULE:ATTR]``: only a --uri given here is used."""
    from .verify import load_seed, verify

    require(cmd.settings, ["migrations"], cmd.layers)
    seed = load_seed(cmd.args.seed) if cmd.args.seed else None
    client = None
    if cmd.settings.client is not None:  # --client / ANALYTIQ_MIGRATIONS_CLIENT: the app's
        from .config import resolve_client

        client = resolve_client(cmd.settings.client,
                                cmd.settings.origin.get("client", "the client setting"))
    report = verify(cmd.settings.migrations or "", getattr(cmd.args, "uri", None), seed=seed,
                    collection=cmd.settings.collection, transactions=cmd.settings.transactions,
                    client=client)
    where = report.server + (f", scratch database {report.database} (dropped)"
                             if report.database else "")
    passed = sum(r.passed for r in report.results)
    lines = [f"{passed} of {len(report.results) + len(report.not_run)} checks passed on {where}"]
    lines += [r.explain() for r in report.results] + [f"not run: {n}" for n in report.not_run]
    cmd.out.result("\n".join(lines), report.to_dict())
    if not report.passed:
        cmd.out.explain(lines[0])
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_server(cmd: Command) -> int:
    """``server [--port P] [--dir DIR]``: runs until Ctrl-C / SIGTERM, then exits 0."""
    from .localserver import banner, serve

    def announce(server: Any) -> None:
        data = {"uri": server.uri, "address": server.address, "port": server.port,
                "data_dir": str(server.data_dir), "kept": cmd.args.dir is not None,
                "log": str(server.log_path)}
        if cmd.out.quiet:
            cmd.out.stdout.write(server.uri + "\n")  # -q still says where it is
            cmd.out.stdout.flush()
        cmd.out.result(banner(server, kept=cmd.args.dir is not None), data)

    try:
        serve(cmd.args.port, cmd.args.dir, announce)
    except (KeyboardInterrupt, Terminated):
        if not cmd.out.quiet:
            cmd.out.note("Stopped the local server.")
    return EXIT_OK


