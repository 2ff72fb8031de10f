"""`pause VERSION` from another process or host stops a running backfill at its next
checkpoint and keeps it paused until `resume VERSION`; a kill in between loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from children import PARK_HELPER, Children, children_for, write_migrations
from support import child_env, wait_for

from analytiq_migrations import ConfigurationError, Migration, Migrator
from analytiq_migrations.cli import main

#: Documents, and per batch: the run is inside its third batch when it waits.
DOCUMENTS, BATCH, WAIT_AT = 100, 10, 25

#: Lease of a child that will be killed: short, so the next run may take over soon.
DEAD_TTL = 1.0

BACKFILL = f'''\
"""Count every visit to an item"""

import os
import time

from analytiq_migrations import Migration

{PARK_HELPER}

def visit(doc):
    if doc["_id"] == {WAIT_AT}:
        park("batch")
        gate = os.environ.get("GATE_FILE")
        if gate:
            print("IN_BATCH", flush=True)
            while not os.path.exists(gate):
                time.sleep(0.01)
    return {{"$inc": {{"visits": 1}}}}


class CountVisits(Migration):
    transactional = False

    def up(self, db):
        self.batch_update("items", {{}}, visit, batch_size={BATCH})
'''

AFTER = '''\
"""Mark the items counted"""


def up(db):
    db.items.update_many({}, {"$set": {"counted": True}})
'''


@pytest.fixture
def project(tmp_path: Path, db: Any) -> Path:
    db.items.insert_many([{"_id": i} for i in range(DOCUMENTS)])
    return write_migrations(tmp_path / "migrations",
                            {"0001_count_visits.py": BACKFILL, "0002_mark_counted.py": AFTER})


@pytest.fixture
def children(mongo_uri: str, db: Any) -> Iterator[Children]:
    yield from children_for(mongo_uri, db.name)


class Cli:
    """``main([...])`` in this process, on the test's database and migrations."""

    def __init__(self, capsys: pytest.CaptureFixture[str], uri: str, db: Any,
                 source: Path) -> None:
        self.capsys, self.where = capsys, ["--uri", uri, "--database", db.name,
                                           "--migrations", str(source)]

    def __call__(self, *args: str) -> tuple[int, str]:
        code = main([*args, *self.where])
        out, err = self.capsys.readouterr()
        return code, out + err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path) -> Cli:
    return Cli(capsys, mongo_uri, db, project)


def visits(db: Any) -> list[int]:
    return [doc.get("visits", 0) for doc in db.items.find().sort("_id", 1)]


def test_pause_from_another_process_stops_the_run_at_its_next_checkpoint(
        cli: Cli, db: Any, project: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = subprocess.Popen(
        [sys.executable, "-m", "analytiq_migrations", "up", *cli.where],
        env=child_env({"GATE_FILE": str(gate)}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert run.stdout is not None
        assert run.stdout.readline().strip() == "IN_BATCH"  # batches 1-2 committed, in 3
        code, out = cli("pause", "1")
        assert code == 0, out
        assert "pause requested by" in out and "stops at its next batch_update checkpoint" in out
        gate.touch()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert "Version 1 paused (paused by" in out and "at 30 of ~100 documents (30%)" in out
    assert "`analytiq-migrations resume 1`, then `up`, continues it" in out
    assert visits(db) == [1] * 30 + [0] * 70  # stopped right after its third checkpoint
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "paused" and record["pause"]["reason"] == "request"

    # While paused, `up` leaves it (and everything after it) alone, and says who paused it.
    code, out = cli("up")
    assert code == 0, out
    assert "Version 1 is paused (paused by" in out and "resume 1" in out
    assert visits(db) == [1] * 30 + [0] * 70 and db.migrations.find_one({"_id": 2}) is None
    code, out = cli("up", "--json")
    held = json.loads(out)["paused"]
    assert code == 0 and (held["version"], held["reason"], held["held"]) == (1, "request", True)
    assert held["by"].startswith(f"{record['pause']['user']}@{record['pause']['host']}")
    code, out = cli("plan")
    assert code == 0 and "Version 1 is paused" in out and "later versions wait" in out
    code, out = cli("status", "--check")
    assert code == 6, out
    assert "30 of ~100 documents (30%)" in out and "\n     paused by " in out
    code, out = cli("status", "--json")
    row = json.loads(out)["migrations"][0]
    assert row["status"] == "paused" and row["pause"]["reason"] == "request"

    code, out = cli("resume", "1")
    assert code == 0 and "pause cleared" in out
    code, out = cli("up")
    assert code == 0, out
    assert visits(db) == [1] * DOCUMENTS  # every document changed exactly once
    assert [r["status"] for r in db.migrations.find()] == ["applied", "applied"]
    assert "pause" not in db.migrations.find_one({"_id": 1})


def test_resume_without_a_pause_changes_nothing(cli: Cli) -> None:
    code, out = cli("resume", "1")
    assert code == 0 and "had no pause request" in out


def test_pausing_what_is_not_running_is_refused_with_the_way_out(cli: Cli) -> None:
    code, out = cli("pause", "1")
    assert code == 2
    assert "Version 1 has nothing to pause: it has not been started" in out
    assert cli("up")[0] == 0
    code, out = cli("pause", "1")
    assert code == 2 and "it is applied" in out


def test_a_kill_between_the_pause_request_and_the_checkpoint_loses_nothing(
        children: Children, db: Any, project: Path, cli: Cli) -> None:
    child = children.upgrade(project, lock_ttl=DEAD_TTL, park_at="batch")
    child.expect("PARKED batch")  # inside its third batch; two checkpoints committed
    m = Migrator(db.client, str(project), database=db.name)
    assert m.pause(1)["reason"] == "request"
    child.kill()  # before it reaches the checkpoint where it would have paused
    assert visits(db) == [1] * 20 + [0] * 80

    code, out = cli("up")
    assert code == 0, out  # the request holds for the dead run's version too
    assert "Version 1 is paused" in out and visits(db) == [1] * 20 + [0] * 80
    wait_for(lambda: next(r for r in m.status() if r.version == 1).status == "paused",
             timeout=30, message="once the dead run's lease ran out, the version is paused")
    assert m.validate() == []  # not interrupted: paused on purpose
    code, out = cli("status", "--check")
    assert code == 6, out

    assert m.resume(1) is True
    report = Migrator(db.client, str(project), database=db.name, lock_wait=30).upgrade()
    assert report.versions == [1, 2]
    assert visits(db) == [1] * DOCUMENTS  # the killed batch rolled back; resumed after 20


def test_the_python_api_refuses_an_unknown_version(db: Any, project: Path) -> None:
    m = Migrator(db.client, str(project), database=db.name)
    with pytest.raises(ConfigurationError, match="nothing to pause"):
        m.pause(7)


def test_a_step_without_checkpoints_finishes_regardless_and_clears_the_request(
        db: Any, tmp_path: Path) -> None:
    class AsksForAPause(Migration):
        version = 1
        transactional = False

        def up(self, db: Any) -> None:
            Migrator(db.client, [], database=db.name).pause(1)  # someone, meanwhile

    report = Migrator(db.client, [AsksForAPause()], database=db.name).upgrade()
    assert report.versions == [1] and report.paused is None
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "applied" and "pause" not in record
