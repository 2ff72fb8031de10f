"""Shared fixtures. See docs/testing.md.

Servers: a SecantusDB replica set and a SecantusDB standalone server, each started once
per test session on first use, unless ``MONGODB_URI`` / ``MONGODB_STANDALONE_URI`` name a
real MongoDB. Databases: a fresh, uniquely named database per test, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

# Tests import helpers as ``from support import ...``; make that work whatever the
# rootdir or import mode, and make ``tests.support`` the same module object (one
# ``CommandRecorder`` class, one registry of running servers).
_TESTS_DIR = Path(__file__).resolve().parent
for _path in (str(_TESTS_DIR.parent), str(_TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import support  # noqa: E402

sys.modules.setdefault("tests.support", support)

from support import (  # noqa: E402
    CommandRecorder,
    ProjectCli,
    Server,
    ServerStartError,
    client_options,
    deadline,
    set_failpoint,
    start_server,
    unique_db_name,
)

if TYPE_CHECKING:
    Client = MongoClient[Dict[str, Any]]
    Db = Database[Dict[str, Any]]
else:  # pymongo 3's classes are not generic
    Client, Db = MongoClient, Database

# Teardown must never hang a run: a drop blocked by a transaction someone left open
# gives up after this long (seconds) and fails the test's teardown instead.
_TEARDOWN_TIMEOUT = 30.0


def redact_uri(uri: str) -> str:
    """The URI without credentials, for messages."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if "@" not in parts.netloc:
        return uri
    hosts = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{hosts}", parts.path, parts.query, parts.fragment))


@dataclass
class _Target:
    """A server the tests talk to: one we started (``server``) or an external one."""

    uri: str
    label: str
    server: Optional[Server] = None
    _admin: Optional[Client] = field(default=None, repr=False)

    @property
    def owned(self) -> bool:
        return self.server is not None

    @property
    def admin(self) -> Client:
        if self._admin is None:
            self._admin = MongoClient(self.uri, **client_options(self.uri))
        return self._admin

    def reset(self) -> None:
        """Undo what a test may have left behind that would break the next test.

        ``failCommand`` is server-wide, so a failpoint left armed fails everything
        after it: switch it off (best effort; a real mongod may not allow it). On our
        own server also end every session: a transaction left open (by a killed child
        process, say) blocks ``dropDatabase`` on SecantusDB indefinitely. An external
        server is not ours to kill sessions on.
        """
        with contextlib.suppress(PyMongoError):
            set_failpoint(self.admin, "off")
        if self.owned:
            with contextlib.suppress(PyMongoError):
                self.admin.admin.command({"killAllSessions": []})

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


# Targets created in this session, for the per-test hygiene below.
_TARGETS: dict[str, _Target] = {}


def _require_secantus(why: str) -> None:
    try:
        import secantus  # noqa: F401
    except ImportError:
        pytest.fail(
            f"SecantusDB is not installed and {why}: install the test extra "
            "(pip install -e '.[test]') or point MONGODB_URI at a MongoDB server.",
            pytrace=False,
        )


def _start_or_fail(what: str, data_dir: Any, **kwargs: Any) -> Server:
    """``start_server``, or fail the test with the server's log tail (no traceback)."""
    try:
        return start_server(data_dir, **kwargs)
    except ServerStartError as exc:
        problem = str(exc)  # failing outside the except keeps the chained noise out
    pytest.fail(f"could not start {what}: {problem}", pytrace=False)


def _start_target(
    label: str, tmp_path_factory: pytest.TempPathFactory, *, standalone: bool
) -> Iterator[_Target]:
    _require_secantus("MONGODB_URI is not set")
    data_dir = tmp_path_factory.mktemp(f"secantus-{label}")
    server = _start_or_fail(f"the {label} test server", data_dir, standalone=standalone)
    target = _Target(uri=server.uri, label=label, server=server)
    _TARGETS[label] = target
    try:
        yield target
    finally:
        _TARGETS.pop(label, None)
        target.close()
        server.stop()


def _external_target(label: str, uri: str) -> Iterator[_Target]:
    target = _Target(uri=uri, label=label)
    problem: Optional[str] = None
    try:
        target.admin.admin.command("ping")
    except PyMongoError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        target.close()
        where = redact_uri(uri)
        pytest.fail(f"cannot reach the {label} MongoDB at {where}: {problem}", pytrace=False)
    _TARGETS[label] = target
    try:
        yield target
    finally:
        _TARGETS.pop(label, None)
        target.close()


# --------------------------------------------------------------------------------------
# servers and URIs (session scope)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _rs_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Target]:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield from _external_target("replica-set", uri)
    else:
        yield from _start_target("replica-set", tmp_path_factory, standalone=False)


@pytest.fixture(scope="session")
def _standalone_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Target]:
    uri = os.environ.get("MONGODB_STANDALONE_URI")
    if uri:
        yield from _external_target("standalone", uri)
    elif os.environ.get("MONGODB_URI"):
        pytest.skip(
            "needs a standalone server: MONGODB_URI points at an external MongoDB and "
            "MONGODB_STANDALONE_URI is not set"
        )
    else:
        yield from _start_target("standalone", tmp_path_factory, standalone=True)


@pytest.fixture(scope="session")
def mongo_uri(_rs_target: _Target) -> str:
    """URI of the replica-set server (``MONGODB_URI`` or a SecantusDB started for the
    session): ``mongodb://127.0.0.1:PORT/?directConnection=true``."""
    return _rs_target.uri


@pytest.fixture(scope="session")
def mongo_server(_rs_target: _Target) -> Optional[Server]:
    """The session's SecantusDB replica-set ``Server``, or None with ``MONGODB_URI``."""
    return _rs_target.server


@pytest.fixture(scope="session")
def standalone_uri(_standalone_target: _Target) -> str:
    """URI of a standalone server (``MONGODB_STANDALONE_URI`` or SecantusDB
    ``--standalone``); skips when only ``MONGODB_URI`` is set."""
    return _standalone_target.uri


@pytest.fixture(scope="session")
def client(mongo_uri: str) -> Iterator[Client]:
    """Session-wide MongoClient on ``mongo_uri`` (``CLIENT_OPTIONS``)."""
    c: Client = MongoClient(mongo_uri, **client_options(mongo_uri))
    yield c
    c.close()


@pytest.fixture(scope="session")
def standalone_client(standalone_uri: str) -> Iterator[Client]:
    """Session-wide MongoClient on ``standalone_uri``."""
    c: Client = MongoClient(standalone_uri, **client_options(standalone_uri))
    yield c
    c.close()


# --------------------------------------------------------------------------------------
# fresh databases (function scope)
# --------------------------------------------------------------------------------------

def _fresh_db(client: Client, target: _Target, name: str) -> Iterator[Db]:
    database = client[name]
    try:
        yield database
    finally:
        target.reset()
        try:
            with deadline(_TEARDOWN_TIMEOUT):
                client.drop_database(name)
        except PyMongoError as exc:
            raise AssertionError(
                f"could not drop test database {name!r} on the {target.label} server: {exc}"
            ) from exc


@pytest.fixture
def db(request: pytest.FixtureRequest, client: Client, _rs_target: _Target) -> Iterator[Db]:
    """A fresh database on the replica-set server, dropped after the test."""
    yield from _fresh_db(client, _rs_target, unique_db_name(request.node.name))


@pytest.fixture
def standalone_db(
    request: pytest.FixtureRequest, standalone_client: Client, _standalone_target: _Target
) -> Iterator[Db]:
    """A fresh database on the standalone server, dropped after the test."""
    yield from _fresh_db(
        standalone_client, _standalone_target, unique_db_name(request.node.name, "s")
    )


# --------------------------------------------------------------------------------------
# recorded clients (function scope)
# --------------------------------------------------------------------------------------


@pytest.fixture
def recorder() -> CommandRecorder:
    """The ``CommandRecorder`` attached to ``recorded_client`` (and ``recorded_db``)."""
    return CommandRecorder()


@pytest.fixture
def recorded_client(mongo_uri: str, recorder: CommandRecorder) -> Iterator[Client]:
    """A new MongoClient on ``mongo_uri`` whose commands ``recorder`` sees; closed after."""
    c: Client = MongoClient(mongo_uri, **client_options(mongo_uri, event_listeners=[recorder]))
    yield c
    c.close()


@pytest.fixture
def recorded_db(
    request: pytest.FixtureRequest, recorded_client: Client, _rs_target: _Target
) -> Iterator[Db]:
    """A fresh database on ``recorded_client``, dropped after the test."""
    yield from _fresh_db(recorded_client, _rs_target, unique_db_name(request.node.name, "r"))


@pytest.fixture
def standalone_recorder() -> CommandRecorder:
    """The ``CommandRecorder`` attached to ``recorded_standalone_client``."""
    return CommandRecorder()


@pytest.fixture
def recorded_standalone_client(
    standalone_uri: str, standalone_recorder: CommandRecorder
) -> Iterator[Client]:
    """A new MongoClient on ``standalone_uri`` recorded by ``standalone_recorder``."""
    c: Client = MongoClient(
        standalone_uri, **client_options(standalone_uri, event_listeners=[standalone_recorder])
    )
    yield c
    c.close()


@pytest.fixture
def recorded_standalone_db(
    request: pytest.FixtureRequest,
    recorded_standalone_client: Client,
    _standalone_target: _Target,
) -> Iterator[Db]:
    """A fresh database on ``recorded_standalone_client``, dropped after the test."""
    yield from _fresh_db(
        recorded_standalone_client, _standalone_target, unique_db_name(request.node.name, "rs")
    )


# --------------------------------------------------------------------------------------
# mongomock and private servers
# --------------------------------------------------------------------------------------


@pytest.fixture
def mock_db(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A mongomock database on its own in-memory client (no sessions, no transactions)."""
    import mongomock

    mock_client: Any = mongomock.MongoClient()
    yield mock_client[unique_db_name(request.node.name, "m")]
    mock_client.close()


class ServerFactory:
    """Starts private SecantusDB servers for one test; ``stop_all`` ends them."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.servers: list[Server] = []

    def __call__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        standalone: bool = False,
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> Server:
        """Start a server; its data (and log) go under the test's ``tmp_path`` unless
        ``data_dir`` is given. Use ``.uri``, ``.kill()``, ``.restart()``, ``.stop()``."""
        if data_dir is None:
            data_dir = self.base_dir / f"server{len(self.servers)}"
        server = _start_or_fail("a private test server", data_dir, standalone=standalone,
                                extra_args=extra_args)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        """Stop every server, in parallel (a graceful SecantusDB stop takes ~2 s)."""
        servers, self.servers = self.servers, []
        errors: list[BaseException] = []

        def stop(server: Server) -> None:
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)

        threads = [threading.Thread(target=stop, args=(s,)) for s in servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``server_factory(data_dir=None, *, standalone=False, extra_args=()) -> Server``:
    private servers (for kill / restart / auth tests), all stopped after the test."""
    try:
        import secantus  # noqa: F401
    except ImportError:
        if os.environ.get("MONGODB_URI"):
            pytest.skip("private test servers need SecantusDB, which is not installed")
        _require_secantus("this test starts private servers")
    factory = ServerFactory(tmp_path / "servers")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def project_cli(tmp_path: Path, mongo_uri: str, db: Db, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> ProjectCli:
    """The command line on ``db`` with an empty migrations directory (``.write`` files)."""
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "migrations"
    directory.mkdir()
    return ProjectCli(capsys, db, directory, mongo_uri)


# --------------------------------------------------------------------------------------
# hygiene
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _server_hygiene() -> Iterator[None]:
    """After every test, disarm failpoints (and on our own servers end leftover
    sessions) on the session servers that are running, so one test's faults never
    leak into the next. Costs a couple of milliseconds; starts no server."""
    yield
    for target in list(_TARGETS.values()):
        target.reset()


# --------------------------------------------------------------------------------------
# tenant databases (a fleet)
# --------------------------------------------------------------------------------------


@pytest.fixture
def tenant_prefix(client: Client) -> Iterator[str]:
    """A prefix no other test uses, for one test's tenant databases; each database whose
    name starts with it is dropped after the test."""
    prefix = f"f{uuid.uuid4().hex[:10]}_"
    yield prefix
    for name in client.list_database_names():
        if name.startswith(prefix):
            client.drop_database(name)


#: Two module migrations for a fleet; the second fails on a tenant with a ``hold`` document.
FLEET_FILES = {
    "0001_profile.py": '''
        """Give every user a profile."""

        def up(db):
            db.users.update_many({}, {"$set": {"profile": {}}})

        def down(db):
            db.users.update_many({}, {"$unset": {"profile": ""}})
        ''',
    "0002_plan.py": '''
        """Every user is on the free plan (refused while a tenant is on hold)."""

        def up(db):
            if db.hold.find_one():
                raise RuntimeError("tenant on hold")
            db.users.update_many({}, {"$set": {"plan": "free"}})

        def down(db):
            db.users.update_many({}, {"$unset": {"plan": ""}})
        ''',
}


@pytest.fixture
def fleet_project(tmp_path: Path) -> Path:
    """A directory with ``FLEET_FILES``."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in FLEET_FILES.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory
