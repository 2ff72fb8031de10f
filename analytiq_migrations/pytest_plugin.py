"""pytest plugin (entry point ``pytest11``): fixtures for testing migrations, and the
built-in checks with ``pytest --analytiq-migrations``.

Inert unless used: it starts no server and adds no test until a test asks for one of
its fixtures or ``--analytiq-migrations`` is given. Fixtures (override any of them in a
``conftest.py``):

- ``mongo_server`` (session): a throw-away SecantusDB replica set (the ``server``
  extra), or the server of ``--mongo-uri`` / ``MONGODB_URI``; has ``.uri``;
- ``mongo_uri`` / ``mongo_client`` (session): its URI and a client on it;
- ``mongo_db``: a fresh database per test, dropped after it;
- ``migrations_source``: the migrations (ini ``analytiq_migrations_source``, else the
  ``source`` of ``[tool.analytiq_migrations]`` / ``ANALYTIQ_MIGRATIONS_SOURCE``);
- ``migration_seed``: ``{version: data}``, inserted before that version's up (default
  none);
- ``migration_runner``: a ``MigrationRunner`` on ``mongo_db``.

The built-in checks are collected as ``<dir>/conftest.py::analytiq_migrations::<check>``
of ``tests/conftest.py`` (else the rootdir's ``conftest.py``), so the fixtures that
conftest overrides are theirs; without either file they hang off the session.
See docs/testing-your-migrations.md.

It imports and registers on every pytest from 4.6 (a host suite on an old pytest keeps
starting), and ``-p no:analytiq_migrations`` switches it off altogether.
"""

from __future__ import annotations

import os
import re
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

_ILLEGAL_DB_CHARS = re.compile(r"[^A-Za-z0-9_]")

#: Where the built-in checks attach, relative to the rootdir, first that exists.
_ANCHORS = ("tests/conftest.py", "conftest.py")

#: The sessions whose built-in checks were collected already (no ``config.stash``,
#: pytest 7+, so that older pytests load the plugin too).
_COLLECTED: weakref.WeakSet[Any] = weakref.WeakSet()

#: pytest 7 renamed the ``path`` of ``pytest_collect_file`` (a ``py.path``) to
#: ``file_path`` (a ``Path``); pytest 9 has only the new one. pluggy refuses a hook whose
#: arguments the running pytest does not have, so the right one is defined below.
_PYTEST7 = int(pytest.__version__.split(".")[0]) >= 7


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("analytiq_migrations", "analytiq_migrations test kit")
    group.addoption(
        "--analytiq-migrations", action="store_true", default=False,
        dest="analytiq_migrations",
        help="also run the built-in migration checks (upgrade from empty, up/down "
             "consistency, downgrade leaves no trace, idempotent, unique versions)")
    group.addoption(
        "--mongo-uri", default=None, dest="analytiq_mongo_uri", metavar="URI",
        help="MongoDB for the mongo_server fixture (default: MONGODB_URI, else a "
             "throw-away SecantusDB)")
    parser.addini(
        "analytiq_migrations_source",
        "migrations for migration_runner and the checks: a directory (relative to the "
        "rootdir) or a package name")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "analytiq_migrations: a built-in check of analytiq_migrations")


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongo_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The server the test kit uses: ``--mongo-uri``, else ``MONGODB_URI``, else a
    throw-away SecantusDB replica set started for the session (stopped after it)."""
    from .testing import ExternalServer

    uri = request.config.getoption("analytiq_mongo_uri") or os.environ.get("MONGODB_URI")
    if uri:
        yield ExternalServer(uri)
        return
    server = _start_server()
    try:
        yield server
    finally:
        server.stop()


def _start_server() -> Any:
    from .testing import ServerExtraMissingError, ServerStartError, require_secantus, start_server

    try:
        require_secantus("pass --mongo-uri URI (or set MONGODB_URI)")
        return start_server()
    except (ServerExtraMissingError, ServerStartError) as exc:
        problem = str(exc)  # failing outside the except keeps the chained noise out
    pytest.fail(f"mongo_server: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: Any) -> str:
    """``mongo_server``'s URI."""
    return str(mongo_server.uri)


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[Any]:
    """A ``MongoClient`` on ``mongo_uri`` for the session."""
    from pymongo import MongoClient

    from .testing import client_options

    client: Any = MongoClient(mongo_uri, **client_options(mongo_uri))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_db(request: pytest.FixtureRequest, mongo_client: Any) -> Iterator[Any]:
    """A fresh, uniquely named database for one test, dropped after it."""
    base = _ILLEGAL_DB_CHARS.sub("_", request.node.name).strip("_")[:40] or "test"
    name = f"am_{base}_{uuid.uuid4().hex[:8]}"
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)


@pytest.fixture
def migrations_source(request: pytest.FixtureRequest) -> str:
    """The migrations: ini ``analytiq_migrations_source``, else ``source`` in
    ``[tool.analytiq_migrations]`` of the rootdir's pyproject.toml or
    ``ANALYTIQ_MIGRATIONS_SOURCE``. A relative directory is taken from the rootdir."""
    from .config import load
    from .errors import MigrationError

    rootpath = _rootpath(request.config)
    source = str(request.config.getini("analytiq_migrations_source") or "").strip()
    if not source:
        try:
            settings, _ = load({}, directory=rootpath)
        except MigrationError as exc:
            problem: Optional[str] = str(exc)
        else:
            problem = None
            source = settings.migrations or ""
        if problem is not None:
            pytest.fail(f"migrations_source: {problem}", pytrace=False)
    if not source:
        pytest.fail(
            "migrations_source: no migrations configured: set analytiq_migrations_source "
            "in the pytest configuration, source in [tool.analytiq_migrations] or "
            "ANALYTIQ_MIGRATIONS_SOURCE, or override the migrations_source fixture",
            pytrace=False)
    candidate = rootpath / source
    return str(candidate) if candidate.is_dir() else source


@pytest.fixture
def migration_seed() -> Dict[int, Any]:
    """``{version: data}`` inserted right before that version's up in the checks (data
    in the shape of the version before): ``{"users": [{...}, ...]}`` or a function
    called with the database. Override it to seed your own; default: none."""
    return {}


@pytest.fixture
def migration_runner(mongo_db: Any, migrations_source: Any,
                     migration_seed: Dict[int, Any]) -> Iterator[Any]:
    """A ``MigrationRunner`` for ``migrations_source`` on ``mongo_db``:
    ``migrate_up_to(v)``, ``migrate_down_to(v)``, ``migrate_up_one()``,
    ``migrate_down_one()``, ``insert(collection, docs)``, ``snapshot()``."""
    from .checks import MigrationRunner

    runner = MigrationRunner(mongo_db, migrations_source, seed=migration_seed)
    try:
        yield runner
    finally:
        runner.migrator.close()


# --------------------------------------------------------------------------------------
# the built-in checks as tests
# --------------------------------------------------------------------------------------


def _check_unique_versions(migrations_source: Any) -> None:
    from .checks import check_unique_versions

    _report(check_unique_versions(migrations_source))


def _runner_check(name: str) -> Callable[[Any], None]:
    def check(migration_runner: Any) -> None:
        from .checks import CHECKS

        _report(CHECKS[name](migration_runner))

    check.__name__ = name
    check.__doc__ = f"The built-in check {name!r} of analytiq_migrations."
    return check


def _report(result: Any) -> None:
    if not result.passed:
        pytest.fail(result.explain(), pytrace=False)


def _check_functions() -> Dict[str, Callable[..., None]]:
    from .checks import CHECKS

    functions: Dict[str, Callable[..., None]] = {"unique_versions": _check_unique_versions}
    for name in CHECKS:
        if name != "unique_versions":
            functions[name] = _runner_check(name)
    return functions


class CheckItem(pytest.Function):
    """One built-in check."""

    def reportinfo(self) -> Any:
        return getattr(self, "path", None) or self.fspath, None, \
            f"analytiq_migrations::{self.name}"


class ChecksGroup(pytest.Collector):
    """The built-in checks, one test each."""

    #: No module object: pytest before 8 (its nose plugin) looks for a ``setup`` on it.
    obj: Any = None

    def collect(self) -> List[pytest.Item]:
        items: List[pytest.Item] = []
        for name, function in _check_functions().items():
            item = _node(CheckItem, self, name=name, callobj=function)
            item.add_marker(pytest.mark.analytiq_migrations)
            items.append(item)
        return items


class ChecksFile(pytest.File):
    """The conftest.py the built-in checks belong to (collected for them only)."""

    def collect(self) -> List[ChecksGroup]:
        return [_node(ChecksGroup, self, name="analytiq_migrations")]


def _node(kind: Any, parent: Any, **kwargs: Any) -> Any:
    """A collection node made the way the running pytest wants (``from_parent`` since 5.4)."""
    if hasattr(kind, "from_parent"):
        return kind.from_parent(parent, **kwargs)
    return kind(parent=parent, **kwargs)


def _rootpath(config: pytest.Config) -> Path:
    """The rootdir as a ``Path`` (``config.rootpath`` is pytest 6.1+)."""
    return Path(str(getattr(config, "rootpath", None) or getattr(config, "rootdir")))  # noqa: B009


def _anchor(config: pytest.Config) -> Optional[Path]:
    for relative in _ANCHORS:
        path = _rootpath(config) / relative
        if path.is_file():
            return path
    return None


def _collect_checks(file_path: Path, parent: pytest.Collector) -> Optional[ChecksFile]:
    """The built-in checks' file node when ``file_path`` is their anchor, once a session."""
    config = parent.config
    if not config.getoption("analytiq_migrations") or file_path.name != "conftest.py":
        return None
    if file_path != _anchor(config) or config in _COLLECTED:
        return None
    _COLLECTED.add(config)
    if _PYTEST7:
        return _node(ChecksFile, parent, path=file_path)  # type: ignore[no-any-return]
    import py  # type: ignore[import-untyped,unused-ignore]  # pytest before 7: py.path

    return _node(ChecksFile, parent, fspath=py.path.local(file_path))  # type: ignore[no-any-return]


if _PYTEST7:
    def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Optional[ChecksFile]:
        return _collect_checks(file_path, parent)
else:  # pragma: no cover - exercised by the CI lane on pytest 4.6
    def pytest_collect_file(path: Any, parent: pytest.Collector) -> Optional[ChecksFile]:  # type: ignore[misc]
        return _collect_checks(Path(str(path)), parent)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: List[pytest.Item]) -> None:
    """Without a conftest.py to attach to, the checks hang off the session."""
    if not config.getoption("analytiq_migrations") or _anchor(config) is not None:
        return
    if config in _COLLECTED:
        return
    _COLLECTED.add(config)
    group = _node(ChecksGroup, session, name="analytiq_migrations", nodeid="analytiq_migrations")
    items.extend(group.collect())


def pytest_assertrepr_compare(op: str, left: Any, right: Any) -> Optional[List[str]]:
    from .snapshot import Snapshot

    if op == "==" and isinstance(left, Snapshot) and isinstance(right, Snapshot):
        return ["snapshots differ:", *left.diff(right).splitlines()]
    return None
