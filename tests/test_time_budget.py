"""A backfill too big for one cron slot: `up --time-budget` stops at a checkpoint, records
the version `paused`, and the next `up` continues it until every document is changed once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from children import write_migrations

from analytiq_migrations import Migrator
from analytiq_migrations.budget import parse_duration
from analytiq_migrations.cli import main
from analytiq_migrations.errors import ConfigurationError

#: Documents in the backfilled collection, and per batch: ten checkpoints.
DOCUMENTS, BATCH = 100, 10

BACKFILL = f'''\
"""Count every visit to an item"""

from analytiq_migrations import Migration


class CountVisits(Migration):
    transactional = False

    def up(self, db):
        self.batch_update("items", {{}}, {{"$inc": {{"visits": 1}}}}, batch_size={BATCH})
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
                            {"0001_count_visits.py": BACKFILL, "0002_index_visits.py": AFTER})


def cli(capsys: pytest.CaptureFixture[str], uri: str, db: Any, source: Path,
        *args: str) -> tuple[int, str, str]:
    code = main([*args, "--uri", uri, "--database", db.name, "--migrations", str(source)])
    out, err = capsys.readouterr()
    return code, out, err


def visits(db: Any) -> list[int]:
    return [doc.get("visits", 0) for doc in db.items.find().sort("_id", 1)]


@pytest.mark.parametrize("text,seconds", [("30s", 30.0), ("10m", 600.0), ("1h", 3600.0),
                                          ("90", 90.0), ("1.5m", 90.0)])
def test_durations_read_as_people_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10d", "-5s", "0", "5 m s"])
def test_a_bad_duration_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigurationError, match="30s, 10m"):
        parse_duration(text)


def test_a_bad_time_budget_on_the_command_line_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path) -> None:
    code, _, err = cli(capsys, mongo_uri, db, project, "up", "--time-budget", "soon")
    assert code == 2
    assert "--time-budget" in err and "30s, 10m, 1h" in err


def test_repeated_budgeted_runs_finish_the_backfill_changing_every_document_once(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path) -> None:
    runs, lines = 0, []
    while True:
        runs += 1
        assert runs <= DOCUMENTS // BATCH + 2, lines
        # A budget spent at once: each run commits one batch, then stops at its checkpoint.
        code, out, err = cli(capsys, mongo_uri, db, project, "up", "--time-budget", "0.001")
        assert code == 0, err
        paused = [line for line in out.splitlines() if "paused" in line]
        if not paused:
            break
        lines.append(paused[-1])
        record = db.migrations.find_one({"_id": 1})
        assert record["status"] == "paused" and record["paused_reason"] == "time_budget"
        assert db.migrations.find_one({"_id": 2}) is None  # later versions wait behind it
        assert Migrator(db.client, str(project), database=db.name).lock_info() is None
    assert runs == DOCUMENTS // BATCH + 1, lines
    assert visits(db) == [1] * DOCUMENTS  # every document changed exactly once
    assert "Version 1 paused (time budget spent) at 10 of ~100 documents (10%)" in lines[0]
    assert "left; the next `up` continues from the checkpoint" in lines[0]
    assert "at 50 of 100 documents (50%)" in lines[4]  # counted on resuming: exact
    assert [r["status"] for r in db.migrations.find({"_id": {"$in": [1, 2]}})] == \
        ["applied", "applied"]
    history = [e["status"] for e in db.migrations_history.find({"version": 1})]
    assert history.count("paused") == runs - 1 and history.count("applied") == 1


def test_the_python_api_reports_the_pause_and_continues(db: Any, project: Path) -> None:
    m = Migrator(db.client, str(project), database=db.name)
    report = m.upgrade(time_budget=0.001)
    assert [s.status for s in report.steps] == ["paused"]
    assert report.paused is not None and report.paused["reason"] == "time_budget"
    assert report.paused["done"] == BATCH and report.paused["total"] == DOCUMENTS
    assert report.end_version == 0 and not report.changed
    assert m.lock_info() is None  # released: the next cron run takes it at once
    row = next(r for r in m.status() if r.version == 1)
    assert row.status == "paused" and row.progress is not None
    assert row.progress["done"] == BATCH and row.progress["total_estimated"] is True
    assert m.plan().steps[0].note == "continue from checkpoint (paused)"
    report = m.upgrade()  # without a budget: to the end
    assert report.versions == [1, 2] and report.paused is None
    assert visits(db) == [1] * DOCUMENTS


def test_status_check_exits_6_while_a_version_is_paused(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path) -> None:
    assert cli(capsys, mongo_uri, db, project, "up", "--time-budget", "0.001")[0] == 0
    code, out, err = cli(capsys, mongo_uri, db, project, "status", "--check")
    assert code == 6, out + err
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("1 "))
    assert "paused" in row, out
    assert "10 of ~100 documents (10%)" in out
    code, out, _ = cli(capsys, mongo_uri, db, project, "status", "--json")
    data = json.loads(out)
    assert data["pending"] == [1, 2] and data["healthy"] is True
    progress = data["migrations"][0]["progress"]
    assert (progress["done"], progress["total"]) == (BATCH, DOCUMENTS)
    assert isinstance(progress["rate"], float) and isinstance(progress["eta_s"], float)
    code, out, _ = cli(capsys, mongo_uri, db, project, "show", "1")
    assert "status        paused" in out
    assert "progress      10 of ~100 documents (10%)" in out


def test_ordinary_code_is_never_stopped_by_the_budget(db: Any, project: Path) -> None:
    (project / "0001_count_visits.py").unlink()
    m = Migrator(db.client, str(project), database=db.name)
    report = m.upgrade(time_budget=0.001)
    assert report.versions == [2] and report.paused is None


def test_a_quiet_budgeted_run_prints_nothing_for_a_pause(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path) -> None:
    code, out, err = cli(capsys, mongo_uri, db, project, "up", "-q", "--time-budget", "0.001")
    assert (code, out, err) == (0, "", "")  # cron mails nothing
    assert db.migrations.find_one({"_id": 1})["status"] == "paused"
