"""Leases are judged in the server's clock: a client whose clock is an hour fast or slow
still tells a live run from a dead one in ``status``, ``validate``, ``show`` and the
command line's lock line (one rule, ``leaserules.lease_live``, fed ``hello.localTime``)."""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta
from typing import Any, Callable, Iterator

import pytest

from analytiq_migrations import (
    Migration,
    MigrationError,
    Migrator,
    bookkeeping,
    leaserules,
    runloop,
    store,
)
from analytiq_migrations.cli import main

HOUR = timedelta(hours=1)


class SlowBackfill(Migration):
    """Non-transactional: its record says ``running`` while it works."""

    version = 1
    description = "Slow backfill"
    transactional = False
    started = threading.Event()
    release = threading.Event()

    def up(self, db: Any) -> None:
        self.started.set()
        self.release.wait(60)


@pytest.fixture
def client_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[timedelta], None]:
    """Sets how wrong this machine's clock is, for every clock the library reads."""
    real_local, real_utc = leaserules.local_now, store.utcnow

    def skew(by: timedelta) -> None:
        monkeypatch.setattr(leaserules, "local_now", lambda: real_local() + by)
        for module in (store, runloop, bookkeeping):
            monkeypatch.setattr(module, "utcnow", lambda: real_utc() + by)

    return skew


@pytest.fixture
def running_elsewhere(db: Any) -> Iterator[None]:
    """Another run (a thread with its own Migrator) is inside migration 1 and holds a
    fresh lease of ten minutes."""
    SlowBackfill.started.clear()
    SlowBackfill.release.clear()
    other = threading.Thread(
        target=lambda: _quietly(Migrator(db, [SlowBackfill], lock_ttl=600).upgrade), daemon=True)
    other.start()
    assert SlowBackfill.started.wait(30)
    yield
    SlowBackfill.release.set()
    other.join(30)


def _quietly(call: Callable[[], Any]) -> None:
    """Run ``call``; a run whose lease a test expired stops with its own error."""
    with contextlib.suppress(MigrationError):
        call()


def _cli_status(db: Any, mongo_uri: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``status`` on the command line (any migrations do: only its lock line is read)."""
    code = main(["--uri", mongo_uri, "--database", db.name, "--migrations",
                 "analytiq_migrations.examples", "status"])
    out = capsys.readouterr().out
    assert code in (0, 4), out
    return out


@pytest.mark.parametrize("by", [HOUR, -HOUR], ids=["fast", "slow"])
def test_a_live_run_is_running_whatever_this_clock_says(
    db: Any, running_elsewhere: None, client_clock: Callable[[timedelta], None],
    by: timedelta, mongo_uri: str, capsys: pytest.CaptureFixture[str],
) -> None:
    client_clock(by)
    migrator = Migrator(db, [SlowBackfill])

    assert [r.status for r in migrator.status()] == ["running"]
    assert [p.kind for p in migrator.validate()] == ["running"]
    assert migrator.show(1).status == "running"
    assert "; locked by " in _cli_status(db, mongo_uri, capsys)


@pytest.mark.parametrize("by", [HOUR, -HOUR], ids=["fast", "slow"])
def test_a_dead_run_is_interrupted_whatever_this_clock_says(
    db: Any, running_elsewhere: None, client_clock: Callable[[timedelta], None],
    by: timedelta, mongo_uri: str, capsys: pytest.CaptureFixture[str],
) -> None:
    # The holder stopped renewing a minute ago (frozen, or killed): by the server's clock
    # its lease ran out.
    server_now = db.client.admin.command("hello")["localTime"]
    db.migration_lock.update_one({"_id": "migration_lock"},
                                 {"$set": {"expires_at": server_now - timedelta(minutes=1)}})
    client_clock(by)
    migrator = Migrator(db, [SlowBackfill])

    assert [r.status for r in migrator.status()] == ["interrupted"]
    assert [p.kind for p in migrator.validate()] == ["interrupted"]
    assert migrator.show(1).status == "interrupted"
    assert "expired lock of" in _cli_status(db, mongo_uri, capsys)


def test_one_rule_decides_liveness(db: Any) -> None:
    now = db.client.admin.command("hello")["localTime"]
    assert leaserules.lease_live(now + timedelta(seconds=1), now)
    assert not leaserules.lease_live(now, now)
    assert leaserules.lease_live(None, now)  # a foreign document without expiry never runs out
