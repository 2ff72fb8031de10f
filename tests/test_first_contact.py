"""First contact with the server: nothing listening is said at once (not after the 15 s
server selection), and a wrong replica-set name is named next to the server's own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support import free_port

from analytiq_migrations import ConnectionFailedError, Migrator
from analytiq_migrations.cli import main

#: Well under the 15 s default server selection timeout, with room for a loaded machine.
FAST_S = 5.0


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    """``main([...])`` from a project with one migration; returns (code, stderr, seconds)."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_first.py").write_text("def up(db):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    for name in ("MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI", "ANALYTIQ_MIGRATIONS_SERVER_TIMEOUT",
                 "ANALYTIQ_MIGRATIONS_CLIENT"):
        monkeypatch.delenv(name, raising=False)

    def call(uri: str, *extra: str) -> tuple[int, str, float]:
        started = time.monotonic()
        code = main(["status", "--uri", uri, "--database", "app", "--migrations",
                     "migrations", *extra])
        return code, capsys.readouterr().err, time.monotonic() - started
    return call


def test_a_refused_connection_fails_at_once(run: Any, client: Any) -> None:
    port = free_port()  # nothing listens there
    code, err, took = run(f"mongodb://ops:S3cret-pw@127.0.0.1:{port}/app")
    assert code == 5
    assert took < FAST_S, f"took {took:.1f} s"
    assert f"Cannot reach MongoDB at 127.0.0.1:{port}: 127.0.0.1:{port}: connection refused" \
        in err
    assert "S3cret-pw" not in err

    host, live = client.address  # one seed of two answers: the driver decides, as before
    code, err, _ = run(f"mongodb://127.0.0.1:{port},{host}:{live}/app?directConnection=false",
                       "--server-timeout", "5")
    assert "connection refused" not in err
    assert code in (0, 4, 6), err


def test_an_unknown_host_fails_at_once(run: Any) -> None:
    code, err, took = run("mongodb://db.does-not-exist.invalid:27017/app")
    assert code == 5
    assert took < FAST_S, f"took {took:.1f} s"
    assert "Cannot reach MongoDB at db.does-not-exist.invalid:27017: " \
           "db.does-not-exist.invalid:27017: unknown host" in err


def test_a_wrong_replica_set_name_names_both(run: Any, client: Any) -> None:
    name = client.admin.command("hello").get("setName")
    if not name:
        pytest.skip("the test server is not a replica set")
    host, port = client.address
    code, err, _ = run(f"mongodb://{host}:{port}/app?replicaSet=not-{name}",
                       "--server-timeout", "1")
    assert code == 5
    assert f"the URI asks for replicaSet=not-{name}, but {host}:{port} is a member of " \
           f"replica set '{name}'" in err
    assert "MongoDB at ?" not in err


def test_a_wrong_replica_set_name_from_python_names_both(client: Any) -> None:
    name = client.admin.command("hello").get("setName")
    if not name:
        pytest.skip("the test server is not a replica set")
    host, port = client.address
    migrator = Migrator(f"mongodb://{host}:{port}/app?replicaSet=not-{name}"
                        "&serverSelectionTimeoutMS=1000", [])
    with pytest.raises(ConnectionFailedError) as failed:
        migrator.status()
    assert f"Cannot use MongoDB at {host}:{port}: the URI asks for replicaSet=not-{name}, " \
           f"but {host}:{port} is a member of replica set '{name}'" in str(failed.value)
    migrator.close()


def test_a_refused_connection_from_python_is_said_at_once() -> None:
    # The probe names the refusal before any command (the driver would wait out its
    # server selection timeout, then say only "No servers found"); a client the
    # application passes in is not probed (it is the application's).
    port = free_port()
    migrator = Migrator(f"mongodb://ops:S3cret-pw@127.0.0.1:{port}/app", [])
    with pytest.raises(ConnectionFailedError) as failed:
        migrator.status()
    message = str(failed.value)
    assert f"Cannot reach MongoDB at 127.0.0.1:{port}: 127.0.0.1:{port}: connection refused" \
        in message
    assert "S3cret-pw" not in message and "Nothing was changed" in message
    migrator.close()
