"""`--metrics-file` on `up` and `status`: Prometheus text format a textfile collector can
scrape (parsed here by the Prometheus client's own parser), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from children import write_migrations
from prometheus_client.parser import text_string_to_metric_families

from analytiq_migrations import metrics
from analytiq_migrations.cli import main

BACKFILL = '''\
"""Count every visit to an item"""

from analytiq_migrations import Migration


class CountVisits(Migration):
    transactional = False

    def up(self, db):
        self.batch_update("items", {}, {"$inc": {"visits": 1}}, batch_size=10)
'''

BROKEN = '''\
"""Fail on purpose"""


def up(db):
    raise RuntimeError("no")
'''

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


@pytest.fixture
def project(tmp_path: Path, db: Any) -> Path:
    db.items.insert_many([{"_id": i} for i in range(50)])
    return write_migrations(tmp_path / "migrations", {"0001_count_visits.py": BACKFILL})


def run(capsys: pytest.CaptureFixture[str], uri: str, db: Any, source: Path,
        *args: str) -> int:
    code = main([*args, "--uri", uri, "--database", db.name, "--migrations", str(source)])
    capsys.readouterr()
    return code


def scrape(path: Path) -> Samples:
    """Every sample in the file, as a Prometheus server would read it."""
    found: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.documentation
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_a_paused_backfill_shows_its_documents_and_the_run_its_outcome(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path,
        tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "migrations.prom"
    prom.parent.mkdir()
    assert run(capsys, mongo_uri, db, project, "up", "--time-budget", "0.001",
               "--metrics-file", str(prom)) == 0
    found = scrape(prom)
    here = (("database", db.name),)
    assert found[("analytiq_migrations_pending_versions", here)] == 1
    assert found[("analytiq_migrations_paused_versions", here)] == 1
    assert found[("analytiq_migrations_applied_versions", here)] == 0
    version = tuple(sorted((*here, ("version", "1"))))
    assert found[("analytiq_migrations_backfill_documents_done", version)] == 10
    assert found[("analytiq_migrations_backfill_documents_total", version)] == 50
    assert found[("analytiq_migrations_last_run_outcome",
                  tuple(sorted((*here, ("outcome", "paused")))))] == 1
    assert found[("analytiq_migrations_last_run_outcome",
                  tuple(sorted((*here, ("outcome", "failed")))))] == 0
    assert found[("analytiq_migrations_last_run_duration_seconds", here)] >= 0
    assert found[("analytiq_migrations_lock_wait_seconds", here)] >= 0
    assert found[("analytiq_migrations_last_run_timestamp_seconds", here)] > 1.7e9
    assert os.listdir(prom.parent) == ["migrations.prom"]  # no temporary file left over

    assert run(capsys, mongo_uri, db, project, "up", "--metrics-file", str(prom)) == 0
    found = scrape(prom)
    assert found[("analytiq_migrations_pending_versions", here)] == 0
    assert found[("analytiq_migrations_applied_versions", here)] == 1
    assert ("analytiq_migrations_backfill_documents_done", version) not in found  # finished
    assert found[("analytiq_migrations_last_run_outcome",
                  tuple(sorted((*here, ("outcome", "applied")))))] == 1

    before = found[("analytiq_migrations_last_run_timestamp_seconds", here)]
    assert run(capsys, mongo_uri, db, project, "up", "--metrics-file", str(prom)) == 0
    found = scrape(prom)  # a no-op run refreshes the file too
    assert found[("analytiq_migrations_last_run_outcome",
                  tuple(sorted((*here, ("outcome", "nothing_to_do")))))] == 1
    assert found[("analytiq_migrations_last_run_timestamp_seconds", here)] >= before


def test_status_writes_the_same_metrics_from_the_history(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path,
        tmp_path: Path) -> None:
    (project / "0002_fail.py").write_text(BROKEN)
    prom = tmp_path / "status.prom"
    assert run(capsys, mongo_uri, db, project, "up", "--metrics-file", str(prom)) == 1
    failed_run = scrape(prom)
    here = (("database", db.name),)
    assert failed_run[("analytiq_migrations_last_run_outcome",
                       tuple(sorted((*here, ("outcome", "failed")))))] == 1
    prom.unlink()
    assert run(capsys, mongo_uri, db, project, "status", "--metrics-file", str(prom)) == 0
    found = scrape(prom)
    assert found[("analytiq_migrations_failed_versions", here)] == 1
    assert found[("analytiq_migrations_applied_versions", here)] == 1
    assert found[("analytiq_migrations_pending_versions", here)] == 1
    assert found[("analytiq_migrations_last_run_outcome",
                  tuple(sorted((*here, ("outcome", "failed")))))] == 1


def test_a_metrics_file_in_a_missing_directory_is_a_configuration_error(
        capsys: pytest.CaptureFixture[str], mongo_uri: str, db: Any, project: Path,
        tmp_path: Path) -> None:
    code = main(["status", "--metrics-file", str(tmp_path / "nope" / "m.prom"), "--uri",
                 mongo_uri, "--database", db.name, "--migrations", str(project)])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err


def test_label_values_are_escaped() -> None:
    text = metrics.render('we"ird\\name', [], None)
    family = next(iter(text_string_to_metric_families(text)))
    assert family.samples[0].labels == {"database": 'we"ird\\name'}
