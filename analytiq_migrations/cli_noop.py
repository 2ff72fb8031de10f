"""The everyday no-op ``up``, answered on the command line before any ``Migrator`` is
made: the migration files read lazily, one client, one read of the records, judged by
``noop.py``. It imports no runner, no record model (pydantic) and no migration
(``tests/test_noop_cost.py``); when it is not sure, the full path goes on with the
migrations and the client it made."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime, timezone

from .cli_command import Command
from .cli_output import plain


def nothing_to_do(cmd: Command) -> bool:
    """The everyday no-op ``up`` to head, answered without the runner (``noop.py``): True
    when it printed "Nothing to do"; False (having changed nothing) for the full path."""
    s, args = cmd.settings, cmd.args
    target = str(args.target if args.target is not None else "head").strip().lower()
    if args.fake or args.dry_run or target != "head" or s.client is not None \
            or s.transactions == "always" or not s.uri or s.migrations is None \
            or not os.path.isdir(str(s.migrations)):
        return False  # the full path: it checks what these need (or the user's code runs)
    from pymongo.errors import ConfigurationError as PyMongoConfigurationError

    from .config import make_client, ping
    from .loader import load_migrations
    from .noop import read_and_judge

    log = logging.getLogger("analytiq_migrations")
    migrations = load_migrations(s.migrations, lazy=True)  # its errors are the full path's
    client = make_client(s)
    try:
        try:
            database = client[s.database] if s.database else client.get_default_database()
        except PyMongoConfigurationError:
            client.close()
            return False  # no database named anywhere: the full path says how to name one
        ping(client)  # an unreachable server or bad credentials: the full path's errors
        version, why = read_and_judge(database, s.collection, migrations)
    except BaseException:
        client.close()
        raise
    if version is None:
        log.debug("no-op check: %s; taking the full path", why)
        cmd.loaded, cmd.client = migrations, client  # the full path goes on with them
        return False
    client.close()
    log.debug("no-op check: %s", why)
    log.info("Nothing to do: database at version %d", version)
    clock = datetime.now(timezone.utc)
    now = plain(clock.replace(microsecond=clock.microsecond // 1000 * 1000))  # as BSON keeps it
    cmd.out.result(f"Nothing to do: '{database.name}' is at version {version}.", {
        # The fields of a RunReport (what the full path prints), for --json.
        "run_id": uuid.uuid4().hex, "direction": "up", "start_version": version,
        "end_version": version, "started_at": now, "finished_at": now, "steps": [],
        "dry_run": False, "target_version": None, "notes": [], "paused": None,
        "lock_wait_s": 0.0})
    return True
