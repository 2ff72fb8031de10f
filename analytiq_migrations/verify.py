"""``analytiq-migrations verify``: the test kit's built-in checks outside pytest.

The checks run on a throw-away SecantusDB server (the ``server`` extra) or, given a URI,
in a scratch database ``analytiq_verify_<random>`` created for the run and dropped after
it; no other database is read or written. The URI must be given explicitly: an exported
``MONGODB_URI`` (perhaps production's) is not used.
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .checks import CHECKS, MigrationRunner, Seed, check_unique_versions, run_checks
from .checkwalk import CheckResult
from .errors import ConfigurationError, redact
from .loader import MigrationSource

#: Scratch databases are named ``analytiq_verify_<8 hex digits>``.
SCRATCH_PREFIX = "analytiq_verify_"


@dataclass
class VerifyReport:
    """What ``verify`` found: one ``CheckResult`` per check, and where it ran."""

    server: str
    database: Optional[str]
    results: List[CheckResult] = field(default_factory=list)
    #: Checks that could not run, and why (``the migrations do not load``).
    not_run: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.not_run and all(r.passed for r in self.results)

    def to_dict(self) -> Dict[str, Any]:
        return {"passed": self.passed, "server": self.server, "database": self.database,
                "checks": [r.to_dict() for r in self.results], "not_run": list(self.not_run)}


def verify(migrations: MigrationSource, uri: Optional[str] = None, *,
           seed: Optional[Mapping[int, Seed]] = None, collection: str = "migrations",
           transactions: str = "auto", client: Any = None) -> VerifyReport:
    """Run every built-in check on ``migrations``; see the module docstring for where.

    ``client``: the application's own ``MongoClient`` (or a ``Database`` on it): the scratch
    database is made there and dropped after; the client stays open (it is the caller's).
    Raises ``ServerExtraMissingError`` without ``uri`` or ``client`` when SecantusDB is not
    installed, ``ConnectionFailedError`` when the server at ``uri`` does not answer.
    """
    unique = check_unique_versions(migrations)
    if not unique.passed:
        others = [name for name in CHECKS if name != "unique_versions"]
        return VerifyReport(server="none (the migrations do not load)", database=None,
                            results=[unique],
                            not_run=[f"{name}: the migrations do not load" for name in others])
    if client is not None:
        from pymongo.database import Database

        from .server import describe_client

        own = client.client if isinstance(client, Database) else client
        return _checks_on(own, describe_client(own), migrations, seed, collection,
                          transactions)
    if uri is None:
        from .testing import require_secantus, start_server

        require_secantus("pass --uri URI (a scratch database is created there and dropped)")
        server = start_server()
        try:
            return _run(server.uri, "a throw-away SecantusDB server", migrations, seed,
                        collection, transactions)
        finally:
            server.stop()
    return _run(uri, redact(uri), migrations, seed, collection, transactions)


def _run(uri: str, label: str, migrations: MigrationSource, seed: Optional[Mapping[int, Seed]],
         collection: str, transactions: str) -> VerifyReport:
    from .config import Settings, make_client, ping

    client = make_client(Settings(uri=uri))
    try:
        ping(client)
        return _checks_on(client, label, migrations, seed, collection, transactions)
    finally:
        client.close()


def _checks_on(client: Any, label: str, migrations: MigrationSource,
               seed: Optional[Mapping[int, Seed]], collection: str,
               transactions: str) -> VerifyReport:
    """The checks in a scratch database on ``client``, dropped after them."""
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        runner = MigrationRunner(client[name], migrations, seed=seed, collection=collection,
                                 transactions=transactions)
        results = run_checks(runner)
    finally:
        client.drop_database(name)
    return VerifyReport(server=label, database=name, results=results)


def load_seed(spec: str) -> Mapping[int, Seed]:
    """``MODULE:ATTR``: a ``{version: data}`` mapping, or a function returning one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"Bad seed {spec!r}: expected MODULE:ATTR.",
                                 hint="e.g. --seed tests.seeds:SEED")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"Cannot load the seed {spec!r}: {exc}",
            hint="Run from the project directory, or check the name.") from None
    if callable(value):
        value = value()
    if not isinstance(value, Mapping) or not all(isinstance(k, int) for k in value):
        raise ConfigurationError(f"The seed {spec!r} is not a mapping of versions to data.",
                                 hint="e.g. {2: {\"users\": [{\"name\": \"Ada Lovelace\"}]}}")
    return value
