"""The migration lock as many pods and cron jobs meet it: a race of real processes, live
leases respected, dead ones taken over (their open transactions ended), leases stolen
mid-migration, ``unlock`` with and without force, and a client with a wrong clock."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pymongo
import pytest
from children import Children, children_for, write_migrations
from pymongo import MongoClient
from support import CLIENT_OPTIONS, deadline, session_uuids, wait_for

import analytiq_migrations.leaserules as leaserules
import analytiq_migrations.lock as lock_module
from analytiq_migrations import LockBusyError, LockLostError, Migration, Migrator
from analytiq_migrations.lock import Lease, ServerClock
from analytiq_migrations.retry import RetryPolicy
from analytiq_migrations.runkit import new_run

LOCK = "migration_lock"

#: Lease length for a child whose lease a test outlives: short, so the test stays quick,
#: yet a heartbeat (every third of it) may come over a second late on a loaded machine.
SHORT_TTL = 2.0


@pytest.fixture
def children(mongo_uri: str, db: Any) -> Iterator[Children]:
    yield from children_for(mongo_uri, db.name)


def server_now(db: Any) -> datetime:
    """The server's clock (from ``hello``), aware UTC."""
    local = db.client.admin.command("hello")["localTime"]
    return local.replace(tzinfo=timezone.utc)


def foreign_lease(db: Any, *, expires_in: float, session_ids: Any = (),
                  holder: str = "deploy@web-7:4242/feedbeef") -> dict[str, Any]:
    """Write the lease of another (possibly dead) process into the lock collection."""
    now = server_now(db)
    doc = {"_id": LOCK, "holder": holder, "run_id": holder.rsplit("/", 1)[-1],
           "host": "web-7", "pid": 4242, "locked_at": now - timedelta(seconds=30),
           "heartbeat_at": now - timedelta(seconds=5),
           "expires_at": now + timedelta(seconds=expires_in), "session_ids": list(session_ids)}
    db[LOCK].replace_one({"_id": LOCK}, doc, upsert=True)
    return doc


class CountRuns(Migration):
    """Bump a counter: how often the body ran, whatever the bookkeeping says."""

    version = 1

    def up(self, db: Any) -> None:
        db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)


# -- many processes at once ------------------------------------------------------------------

RACED_MIGRATIONS = {
    "0001_create_accounts.py": '''\
        """Create accounts (in a transaction)"""


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            db.accounts.insert_many([{"_id": i, "balance": 10} for i in range(20)])
        ''',
    "0002_index_accounts.py": '''\
        """Index accounts by balance (no transaction)"""

        transactional = False


        def up(db):
            db.counters.update_one({"_id": 2}, {"$inc": {"runs": 1}}, upsert=True)
            db.accounts.create_index("balance")
        ''',
    "0003_double_balances.py": '''\
        """Double every balance (not idempotent: a second run would quadruple)"""


        def up(db):
            db.counters.update_one({"_id": 3}, {"$inc": {"runs": 1}}, upsert=True)
            db.accounts.update_many({}, {"$mul": {"balance": 2}})
        ''',
}

RACERS = 8


@pytest.mark.slow
def test_eight_processes_upgrading_at_once_apply_each_migration_exactly_once(
    db: Any, children: Children, tmp_path: Path
) -> None:
    source = write_migrations(tmp_path / "migrations", RACED_MIGRATIONS)
    racers = [children.upgrade(source, lock_wait=90, lock_ttl=10, gate=True)
              for _ in range(RACERS)]
    for racer in racers:
        racer.expect("READY")
    for racer in racers:  # all connected and waiting: release them together
        racer.go()
    codes = [racer.finish() for racer in racers]

    assert codes == [0] * RACERS, [r._story("result") for r in racers if r.proc.returncode]
    applied_by = [v for racer in racers for v in (racer.result or {})["versions"]]
    assert sorted(applied_by) == [1, 2, 3]
    assert {c["_id"]: c["runs"] for c in db.counters.find()} == {1: 1, 2: 1, 3: 1}
    assert {a["balance"] for a in db.accounts.find()} == {20}
    outcomes = Counter((h["version"], h["status"]) for h in db.migrations_history.find())
    assert outcomes == {(1, "applied"): 1, (2, "applied"): 1, (3, "applied"): 1}
    assert [r["status"] for r in db.migrations.find().sort("_id")] == ["applied"] * 3
    assert db[LOCK].count_documents({}) == 0


# -- a live lease ------------------------------------------------------------------------

HELD_MIGRATION = {
    "0001_long_backfill.py": '''\
        """A long backfill (no transaction)"""

        # park helper

        transactional = False


        def up(db):
            park("backfill")
        ''',
}


@pytest.mark.slow
def test_a_live_holder_keeps_its_lease_beyond_the_ttl_and_others_are_refused(
    db: Any, children: Children, tmp_path: Path
) -> None:
    source = write_migrations(tmp_path / "migrations", HELD_MIGRATION)
    holder = children.upgrade(source, lock_ttl=SHORT_TTL, park_at="backfill")
    holder.expect("PARKED backfill")
    first = db[LOCK].find_one({"_id": LOCK})

    # The heartbeat renews it: well past one TTL it is still the same run's lease.
    later = first["locked_at"] + timedelta(seconds=2.25 * SHORT_TTL)
    wait_for(lambda: db[LOCK].find_one({"_id": LOCK, "expires_at": {"$gt": later}}),
             timeout=30, message="the holder's heartbeat did not renew its lease")
    lease = db[LOCK].find_one({"_id": LOCK})
    assert lease["run_id"] == first["run_id"] and lease["pid"] == holder.proc.pid

    migrator = Migrator(db, source)
    with pytest.raises(LockBusyError) as busy:
        migrator.upgrade()
    message = str(busy.value)
    assert f"pid {holder.proc.pid}" in message and "until " in message
    assert "lock_wait" in message and "unlock --force" in message

    with pytest.raises(LockBusyError, match="not this process"):
        migrator.unlock()
    assert db[LOCK].find_one({"_id": LOCK})["run_id"] == first["run_id"]
    assert holder.proc.poll() is None


def test_a_no_op_upgrade_takes_no_lock(db: Any) -> None:
    Migrator(db, [CountRuns]).upgrade()
    foreign_lease(db, expires_in=600)

    report = Migrator(db, [CountRuns]).upgrade()  # a cron job while someone else holds it

    assert report.steps == [] and report.end_version == 1
    assert db[LOCK].find_one({"_id": LOCK})["holder"] == "deploy@web-7:4242/feedbeef"


def test_lock_wait_gives_up_with_lock_busy_naming_the_holder(db: Any) -> None:
    foreign_lease(db, expires_in=600)
    with pytest.raises(LockBusyError, match="held by deploy@web-7:4242/feedbeef"):
        Migrator(db, [CountRuns], lock_wait=0.5).upgrade()
    assert db.counters.count_documents({}) == 0 and db.migrations.count_documents({}) == 0


class LosesFirstReply:
    """The lock collection, except that the first ``find_one_and_update`` is applied and
    its reply then lost (as a connection that drops after the write does)."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collection, name)

    def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        """The real call; the first time, an ``AutoReconnect`` after it was applied."""
        result = self.collection.find_one_and_update(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise pymongo.errors.AutoReconnect("connection closed after the write")
        return result


def test_a_retry_after_a_lost_reply_finds_its_own_lease(recorded_db: Any, recorder: Any) -> None:
    # The retried findAndModify matches this run's own lease (the first one did insert it):
    # no collision, so no LockBusyError against ourselves and no takeover.
    db = recorded_db
    run = new_run()
    collection = LosesFirstReply(db[LOCK])
    fast = RetryPolicy(attempts=3, seconds=10.0, initial_wait=0.01, max_wait=0.05)
    lease = Lease(collection, run, 30.0, ServerClock(db), fast)
    recorder.clear()

    lease.acquire()
    try:
        assert collection.lost == 1 and lease.held and lease.previous_holder is None
        assert [c.name for c in recorder if c.collection == LOCK] == ["findAndModify"] * 2
        assert db[LOCK].find_one({"_id": LOCK})["run_id"] == run.run_id
    finally:
        lease.release()
    assert db[LOCK].count_documents({}) == 0


# -- a dead holder -----------------------------------------------------------------------


def test_an_expired_lease_is_taken_over_and_its_open_transaction_ended(
    recorded_db: Any, mongo_uri: str, recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    db = recorded_db
    # A holder that died inside its migration's transaction: the transaction re-checked
    # the lease by writing it and touched the counter, and was never committed.
    dead = MongoClient(mongo_uri, **CLIENT_OPTIONS)
    session = dead.start_session()
    lease = foreign_lease(db, expires_in=-1, session_ids=[session.session_id],
                          holder="deploy@web-3:77/0ddba11")
    session.start_transaction()
    dead[db.name][LOCK].update_one({"_id": LOCK}, {"$set": {"heartbeat_at": 1}},
                                   session=session)
    dead[db.name].counters.update_one({"_id": 1}, {"$inc": {"runs": 100}}, upsert=True,
                                      session=session)

    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    with deadline(60):  # a regression would block on the dead transaction
        report = Migrator(db, [CountRuns], lock_ttl=5).upgrade()

    assert report.versions == [1]
    assert db.counters.find_one({"_id": 1})["runs"] == 1  # the dead write never landed
    killed = [c for c in recorder.filter("killSessions")
              if session_uuids(lease["session_ids"]) == session_uuids(c.command["killSessions"])]
    assert killed, "the dead holder's session was not ended"
    assert "Took over an expired migration lock from deploy@web-3:77/0ddba11" in caplog.text
    with pytest.raises(pymongo.errors.OperationFailure):
        session.commit_transaction()  # it can never commit now
    dead.close()


KILLED_IN_TRANSACTION = {
    "0001_credit_accounts.py": '''\
        """Credit the accounts (in a transaction); the holder is killed halfway"""

        # park helper


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            park("halfway")
        ''',
}


def this_process() -> dict[str, Any]:
    """What a lease records about this process; skips where that cannot be read (no
    /proc: leases there are left to expire)."""
    identity = lock_module.process_identity(os.getpid())
    if identity is None:
        pytest.skip("process start times cannot be read here: leases are left to expire")
    return identity


def this_hosts_lease(db: Any, *, pid: int, process: Any, expires_in: float = 600) -> None:
    """A live-looking lease of a process on this machine (``process``: what it recorded)."""
    holder = f"deploy@{socket.gethostname()}:{pid}/c0ffee"
    foreign_lease(db, expires_in=expires_in, holder=holder)
    db[LOCK].update_one({"_id": LOCK}, {"$set": {"host": socket.gethostname(), "pid": pid,
                                                 "process": process}})


@pytest.mark.slow
def test_a_holder_killed_on_this_host_is_taken_over_at_once(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    this_process()
    source = write_migrations(tmp_path / "migrations", KILLED_IN_TRANSACTION)
    holder = children.upgrade(source, lock_ttl=600, park_at="halfway")
    holder.expect("PARKED halfway")
    pid = holder.proc.pid
    lease = db[LOCK].find_one({"_id": LOCK})
    assert lease["pid"] == pid and lease["process"]["started"] > 0
    holder.kill()  # SIGKILL, its transaction left open, its lease good for ten minutes

    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    with deadline(60):  # the dead transaction holds the lease: its session must be ended
        report = Migrator(db, source).upgrade()

    assert report.versions == [1]
    assert db.counters.find_one({"_id": 1})["runs"] == 1  # the killed attempt never landed
    assert f"Took over the migration lock from {lease['holder']} at once" in caplog.text
    assert f"at once: its process (pid {pid}) is not running on this host" in caplog.text
    assert "Ended 1 session(s) of the previous lock holder" in caplog.text
    assert db[LOCK].count_documents({}) == 0


def test_a_reused_pid_is_not_mistaken_for_the_holder(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The lease names this host and a running pid (ours), but a process started at
    # another time: the holder died and the system gave its pid to this process.
    recorded = {**this_process(), "started": 1}
    this_hosts_lease(db, pid=os.getpid(), process=recorded)

    caplog.set_level(logging.WARNING, logger="analytiq_migrations")
    assert Migrator(db, [CountRuns]).upgrade().versions == [1]
    assert "that pid now belongs to another process" in caplog.text


def test_a_live_holder_on_this_host_keeps_its_lease(db: Any) -> None:
    this_hosts_lease(db, pid=os.getpid(), process=this_process())
    with pytest.raises(LockBusyError, match=f"pid {os.getpid()}"):
        Migrator(db, [CountRuns]).upgrade()
    with pytest.raises(LockBusyError):
        Migrator(db, [CountRuns]).unlock()
    assert db.counters.count_documents({}) == 0


def test_a_dead_holder_that_recorded_no_process_is_left_to_expire(db: Any) -> None:
    # An older version's lease, or one from a machine without /proc: the pid alone could
    # have been reused, so only the lease's expiry frees it.
    dead_pid = dead_process_pid()
    this_hosts_lease(db, pid=dead_pid, process=None)
    with pytest.raises(LockBusyError):
        Migrator(db, [CountRuns]).upgrade()


def test_a_lease_from_another_pid_namespace_is_left_to_expire(db: Any) -> None:
    # Same host name, another container: its pids mean nothing here.
    recorded = {**this_process(), "pid_namespace": "pid:[1]"}
    this_hosts_lease(db, pid=dead_process_pid(), process=recorded)
    with pytest.raises(LockBusyError):
        Migrator(db, [CountRuns]).upgrade()


def test_unlock_removes_the_lease_of_a_dead_process_on_this_host(db: Any) -> None:
    this_hosts_lease(db, pid=dead_process_pid(), process=this_process())
    assert Migrator(db, [CountRuns]).unlock() is True
    assert db[LOCK].count_documents({}) == 0


def dead_process_pid() -> int:
    """The pid of a process that ran and was reaped (unused until the system reuses it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_lease_whose_expiry_is_damaged_never_expires_on_its_own(db: Any) -> None:
    db[LOCK].insert_one({"_id": LOCK, "holder": "old-tool", "expires_at": "tomorrow"})
    with pytest.raises(LockBusyError, match="unrecognised lock document") as busy:
        Migrator(db, [CountRuns]).upgrade()
    assert "unlock --force" in str(busy.value)
    assert Migrator(db, [CountRuns]).unlock(force=True) is True
    assert Migrator(db, [CountRuns]).upgrade().versions == [1]


# -- unlock ----------------------------------------------------------------------------------


def test_unlock_leaves_a_live_lease_alone_and_force_breaks_it(
    recorded_db: Any, recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    db = recorded_db
    holder_session = db.client.start_session()
    foreign_lease(db, expires_in=600, session_ids=[holder_session.session_id])
    migrator = Migrator(db, [CountRuns])

    with pytest.raises(LockBusyError) as refused:
        migrator.unlock()
    assert "unlock --force" in str(refused.value)
    assert db[LOCK].count_documents({}) == 1
    assert not recorder.filter("killSessions")

    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    assert migrator.unlock(force=True) is True
    assert db[LOCK].count_documents({}) == 0
    assert "Force-broke the migration lock held by deploy@web-7:4242/feedbeef" in caplog.text
    assert [session_uuids(c.command["killSessions"]) for c in recorder.filter("killSessions")] \
        == [session_uuids([holder_session.session_id])]
    assert migrator.unlock() is False  # nothing left to release
    holder_session.end_session()


def test_unlock_without_force_removes_an_expired_lease(db: Any) -> None:
    foreign_lease(db, expires_in=-5)
    assert Migrator(db, [CountRuns]).unlock() is True
    assert db[LOCK].count_documents({}) == 0


# -- a lease stolen mid-migration ----------------------------------------------------------


class OverwritesTheLock(Migration):
    """While it runs, an operator force-breaks the lock and another run takes it."""

    version = 1
    transactional = False
    uri = ""

    def up(self, db: Any) -> None:
        db.accounts.insert_one({"_id": 1})
        # The operator works elsewhere: another client, on another thread.
        operator = threading.Thread(target=self.steal, args=(db.name,))
        operator.start()
        operator.join()

    def steal(self, name: str) -> None:
        other = MongoClient(self.uri, **CLIENT_OPTIONS)
        other[name][LOCK].replace_one(
            {"_id": LOCK}, {"holder": "intruder", "run_id": "intruder",
                            "expires_at": datetime.now(timezone.utc) + timedelta(hours=1)})
        other.close()


def test_a_run_that_lost_its_lease_records_nothing_over_the_new_holder(
    db: Any, mongo_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    OverwritesTheLock.uri = mongo_uri
    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    with pytest.raises(LockLostError) as lost:
        Migrator(db, [OverwritesTheLock]).upgrade()

    assert "lost the migration lock" in str(lost.value) and "lock_ttl" in str(lost.value)
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "running"  # left for the new holder to settle as interrupted
    assert db.migrations_history.count_documents({}) == 0
    assert db[LOCK].find_one({"_id": LOCK})["holder"] == "intruder"  # not released by us
    assert "no longer this run's; left it as it is" in caplog.text


STOLEN_IN_TRANSACTION = {
    "0001_move_funds.py": '''\
        """Move funds (in a transaction), waiting halfway for the lock to be stolen"""

        import os
        import threading
        import time

        from pymongo import MongoClient


        def wait_for_intruder(name):
            watcher = MongoClient(os.environ["TEST_URI"])
            lock = watcher[name].migration_lock
            while lock.find_one({"_id": "migration_lock", "holder": "intruder"}) is None:
                time.sleep(0.05)
            watcher.close()


        def up(db):
            db.accounts.insert_one({"_id": "debit", "amount": -5})
            print("HALFWAY", flush=True)
            # Another client, so another thread: the migration's own is bound to its session.
            watcher = threading.Thread(target=wait_for_intruder, args=(db.name,))
            watcher.start()
            watcher.join()
            db.accounts.insert_one({"_id": "credit", "amount": 5})
        ''',
}


@pytest.mark.slow
def test_a_transaction_whose_lease_was_stolen_cannot_commit(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_migrations(tmp_path / "migrations", STOLEN_IN_TRANSACTION)
    victim = children.upgrade(source)
    victim.expect("HALFWAY")

    caplog.set_level(logging.WARNING, logger="analytiq_migrations")
    with deadline(60):
        assert Migrator(db, source).unlock(force=True) is True
    assert "Force-broke" in caplog.text
    db[LOCK].insert_one({"_id": LOCK, "holder": "intruder", "run_id": "intruder",
                         "expires_at": server_now(db) + timedelta(hours=1)})

    assert victim.finish() == LockLostError.exit_code
    assert victim.result is not None and victim.result["type"] == "LockLostError"
    assert db.accounts.count_documents({}) == 0  # neither half of the transfer
    # A transactional step writes its record only when it commits: there is none.
    assert db.migrations.find_one({"_id": 1}) is None
    assert db.migrations_history.count_documents({}) == 0
    assert db[LOCK].find_one({"_id": LOCK})["holder"] == "intruder"


# -- the heartbeat and the run's own transactions --------------------------------------------

#: Runs in the write-conflict test, and their lease: renewed every second.
CONFLICT_RUNS = 20
CONFLICT_TTL = 3.0


def renewals(recorder: Any) -> int:
    """Lease renewals so far: writes of the lock outside any transaction."""
    return sum(1 for c in recorder.filter("update") if c.collection == LOCK
               and not c.in_transaction)


def batches_across_a_renewal(version: int, recorder: Any) -> type[Migration]:
    """A migration whose small batch transactions run back to back until the heartbeat
    has renewed the lease among them: each batch re-checks the lease in its transaction."""

    class BatchesAcrossARenewal(Migration):
        transactional = False

        def up(self, db: Any) -> None:
            before = renewals(recorder)
            while renewals(recorder) == before:
                self.batch_update(db.accounts, {}, {"$inc": {"passes": 1}}, batch_size=2)

    BatchesAcrossARenewal.version = version
    BatchesAcrossARenewal.__name__ = f"BatchesAcrossARenewal{version}"
    return BatchesAcrossARenewal


@pytest.mark.slow
def test_the_heartbeat_never_conflicts_with_the_runs_own_transactions(
    recorded_db: Any, recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    db = recorded_db
    db.accounts.insert_many([{"_id": i} for i in range(20)])
    migrations = [batches_across_a_renewal(v, recorder) for v in range(1, CONFLICT_RUNS + 1)]
    caplog.set_level(logging.INFO, logger="analytiq_migrations")

    for run in range(1, CONFLICT_RUNS + 1):
        report = Migrator(db, migrations[:run], lock_ttl=CONFLICT_TTL).upgrade()
        assert report.versions == [run]

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    conflicts = [w for w in warnings if "WriteConflict" in w or " 112" in w]
    assert conflicts == [], f"{len(conflicts)} write conflicts in {CONFLICT_RUNS} runs"
    assert warnings == []
    assert renewals(recorder) >= CONFLICT_RUNS  # the lease was renewed during every run


# -- clocks ----------------------------------------------------------------------------------


def fast_clock() -> datetime:
    """The clock of a machine that runs an hour ahead."""
    return datetime.now(timezone.utc) + timedelta(hours=1)


def test_a_client_with_a_fast_clock_cannot_take_a_live_lease(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign_lease(db, expires_in=600)  # ten minutes left by the server's clock
    monkeypatch.setattr(leaserules, "local_now", fast_clock)

    with pytest.raises(LockBusyError):
        Migrator(db, [CountRuns]).upgrade()
    assert db.counters.count_documents({}) == 0


def test_the_lease_is_written_in_server_time(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Peek(Migration):
        version = 1

        def up(self, db: Any) -> None:
            seen.update(db[LOCK].find_one({"_id": LOCK}) or {})

    monkeypatch.setattr(leaserules, "local_now", fast_clock)
    before = server_now(db)
    Migrator(db, [Peek], lock_ttl=30).upgrade()

    assert seen["run_id"] and seen["pid"] == os.getpid()
    expires = seen["expires_at"].replace(tzinfo=timezone.utc)
    # 30 s after the server's now, not an hour later as this machine's clock would have it.
    assert before < expires < before + timedelta(minutes=30)
