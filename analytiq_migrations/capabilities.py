"""What the server can do: its kind, wire version, whether transactions and sessions exist.

Built once per ``Migrator`` and handed to the parts that ask (the run loop, the lock kit,
the rehearsal, the refusal scan). Answers come from the driver's view of the topology
(the servers' ``hello``), so asking costs no round trip once the client is connected; they
are read again on every question, as the topology can change (a failover) between runs.
"""

from __future__ import annotations

from typing import Any

import pymongo
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.errors import (
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from .errors import (
    ConfigurationError,
    ConnectionFailedError,
    MigrationError,
    TransactionsUnsupportedError,
    first_line,
)
from .hints import spell
from .migration import Migration
from .reach import set_name_mismatch
from .server import MIN_WIRE_VERSION, hosts, mongodb_release, topology


class Capabilities:
    """The server behind ``client``, as far as migrations on database ``database`` care."""

    def __init__(self, client: Any, database: str, transactions: str) -> None:
        self.client = client
        self.database = database
        #: The Migrator's ``transactions`` setting: auto, always or never.
        self.transactions = transactions

    @property
    def real(self) -> bool:
        """A pymongo client (not mongomock): sessions and server time exist."""
        return isinstance(self.client, pymongo.MongoClient)

    def server_description(self) -> Any:
        """The primary's (or mongos') description, from its ``hello``; connects if needed."""
        for _ in range(2):
            known = [d for d in topology(self.client).server_descriptions().values()
                     if d.is_server_type_known]
            # Writes (and so transactions) go to the writable server: a secondary that
            # happens to be listed first says nothing about them.
            writable = [d for d in known if d.is_writable]
            if writable or known:
                return (writable or known)[0]
            self.client.admin.command("ping")  # connects; works on every server release
        return None

    def transactions_available(self) -> bool:
        """Replica-set member or mongos with sessions, according to ``hello``."""
        if not self.real:
            return False
        description = self.server_description()
        if description is None:
            return False
        kind = description.server_type_name
        if kind not in ("RSPrimary", "Mongos"):
            return False
        if description.logical_session_timeout_minutes is None:
            return False
        # Transactions need 4.0 (wire 7) on a replica set, 4.2 (wire 8) through mongos.
        return bool(description.max_wire_version >= (8 if kind == "Mongos" else 7))

    def server_kind(self) -> str:
        """A short description of the server type, for messages."""
        if not self.real:
            return "not a pymongo client"
        description = self.server_description()
        return description.server_type_name if description else "unknown"

    def wire_version(self) -> int:
        """The server's wire version; refuses servers older than MongoDB 4.0 up front."""
        description = self.server_description()
        wire = int(description.max_wire_version or 0) if description is not None else 0
        if description is not None and wire < MIN_WIRE_VERSION:
            raise ConfigurationError(
                f"The server at {hosts(self.client)} is MongoDB {mongodb_release(wire)} "
                f"(wire version {wire}); analytiq_migrations needs MongoDB 4.0 or newer.",
                hint="Upgrade the server to MongoDB 4.0+ (sessions, killSessions and "
                "transactions start there). Nothing was changed.",
            )
        return wire

    def known_wire_version(self) -> int:
        """``wire_version()`` on a pymongo client; 0 where there is no server (mongomock)."""
        return self.wire_version() if self.real else 0

    def start_session(self) -> Any:
        """A session for a run, or ``None`` where sessions don't exist (mongomock)."""
        if not self.real:
            return None
        try:
            return self.client.start_session(causal_consistency=True)
        except (PyMongoConfigurationError, NotImplementedError):
            return None

    def check_transactions_possible(self) -> None:
        """``transactions="always"`` fails up front on a server without them."""
        if self.transactions == "always" and not self.transactions_available():
            raise TransactionsUnsupportedError(
                spell("transactions='always'", cli="--transactions always")
                + f" but the server does not support transactions ({self.server_kind()}).",
                hint="Use a replica set or mongos (a single-node replica set works), or "
                + spell("transactions='auto'.", cli="--transactions auto."),
            )

    def use_transaction(self, migration: Migration) -> bool:
        """Whether ``migration`` runs in a transaction; refuses impossible demands."""
        if migration.transactional is False or (self.transactions == "never" and
                                                migration.transactional is None):
            return False
        if self.transactions_available():
            return True
        if migration.transactional is True or self.transactions == "always":
            raise TransactionsUnsupportedError(
                f"Migration {migration.version} requires a transaction but the server does "
                f"not support them ({self.server_kind()}).",
                version=migration.version,
                hint="Run it against a replica set or mongos, or set transactional = None/False "
                "on the migration.",
            )
        return False

    def translate_error(self, exc: PyMongoError) -> MigrationError:
        """The ``MigrationError`` a driver error stands for (every public method uses it)."""
        where = hosts(self.client)
        if isinstance(exc, PyMongoConfigurationError) and "wire version" in str(exc):
            return ConfigurationError(
                f"pymongo {pymongo.version} cannot talk to the server at {where}: "
                f"{first_line(exc)}",
                hint="Install a pymongo release that supports this server (pymongo 4.10 and "
                "3.12 both talk to MongoDB 4.0), or upgrade the server. Nothing was changed.",
            )
        mismatch = set_name_mismatch(self.client)
        if isinstance(exc, ServerSelectionTimeoutError) and mismatch is not None:
            return ConnectionFailedError(
                f"Cannot use MongoDB at {where}: {mismatch}.",
                hint="Put the server's replica-set name in the URI's replicaSet option. "
                "Nothing was changed.",
            )
        if isinstance(exc, (ServerSelectionTimeoutError, ConnectionFailure)):
            return ConnectionFailedError(
                f"Cannot reach MongoDB at {where}: {first_line(exc)}",
                hint="Check the URI, that the server is running and reachable from here, and "
                "any firewall/TLS settings. Nothing was changed.",
            )
        if isinstance(exc, OperationFailure) and exc.code in (18, 13):
            what = "Authentication failed" if exc.code == 18 else "Not authorized"
            return ConfigurationError(
                f"{what} on {where} (database '{self.database}'): {first_line(exc)}",
                hint="Check the user, password and authSource in the URI, and that the user "
                "may read and write this database.",
            )
        return MigrationError(
            f"MongoDB error on {where}: {type(exc).__name__}: {first_line(exc)}",
            hint="Run `analytiq-migrations status` to see the state; records are written "
            "so that a later run can continue.",
        )


__all__ = ["Capabilities"]
