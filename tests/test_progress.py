"""What a person watching a long ``batch_update`` sees: a bar on a terminal, log lines in CI."""

from __future__ import annotations

import io
from typing import Any

import pytest

from analytiq_migrations import Migration, MigrationFailedError, Migrator, ProgressEvent
from analytiq_migrations.progress import bar_line, describe_checkpoint, log_line, make_reporter


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TTYStream(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def event(scanned: int, elapsed: float, **extra: Any) -> ProgressEvent:
    """A batch_update report for version 3 on ``users``."""
    fields: dict[str, Any] = {
        "version": 3, "collection": "users", "scanned": scanned, "matched": scanned,
        "modified": scanned, "batches": scanned // 1000, "elapsed_s": elapsed,
        "total": 100_000, **extra,
    }
    return ProgressEvent(**fields)


def test_bar_shows_count_percentage_rate_and_eta() -> None:
    line = bar_line(event(25_000, 5.0))
    assert line.startswith("v3 users [######")
    assert "25,000/100,000" in line
    assert "25%" in line
    assert "5,000/s" in line
    assert "ETA 0:15" in line


def test_without_a_total_the_bar_shows_count_and_rate_only() -> None:
    line = bar_line(event(2_000, 1.0, total=None))
    assert "[" not in line and "ETA" not in line
    assert "2,000" in line and "2,000/s" in line


def test_log_line_reads_as_a_sentence() -> None:
    assert log_line(event(50_000, 10.0)) == (
        "migration 3 users: 50,000 of 100,000 documents (50%), 5,000/s, ETA 0:10"
    )
    assert log_line(event(100_000, 20.0, done=True, modified=99_000)) == (
        "migration 3 users: done: 100,000 documents, 99,000 changed in 0:20 (5,000/s)"
    )


def test_long_etas_show_hours() -> None:
    assert "ETA 2:46:40" in log_line(event(1, 0.1, total=100_000))


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_ends_with_a_newline() -> None:
    stream, clock = TTYStream(), FakeClock()
    report = make_reporter(stream, clock=clock)
    for i in range(1, 5):
        clock.now = float(i)
        report(event(i * 1000, float(i)))
    report(event(5000, 5.0, done=True))
    out = stream.getvalue()
    assert out.count("\r") == 5  # every event redrawn (they are seconds apart)
    assert out.endswith("\n") and out.count("\n") == 1
    assert "done in 0:05" in out


def test_a_fast_terminal_redraws_at_most_ten_times_a_second() -> None:
    stream, clock = TTYStream(), FakeClock()
    report = make_reporter(stream, clock=clock)
    for i in range(1, 101):
        clock.now = i * 0.001  # 100 batches within 0.1 s
        report(event(i * 100, clock.now))
    assert stream.getvalue().count("\r") == 1


def test_in_a_log_a_line_is_written_every_interval_and_when_done() -> None:
    stream, clock = io.StringIO(), FakeClock()
    report = make_reporter(stream, interval=5.0, clock=clock)
    for second in range(12):
        clock.now = float(second)
        report(event(second * 1000, float(second)))
    report(event(12_000, 12.0, done=True))
    lines = stream.getvalue().splitlines()
    assert lines[:3] == [
        "migration 3 users: 0 of 100,000 documents (0%), 0/s",
        "migration 3 users: 5,000 of 100,000 documents (5%), 1,000/s, ETA 1:35",
        "migration 3 users: 10,000 of 100,000 documents (10%), 1,000/s, ETA 1:30",
    ]
    assert len(lines) == 4 and "done" in lines[-1]
    assert "\r" not in stream.getvalue()


def test_each_call_gets_its_own_line() -> None:
    stream, clock = TTYStream(), FakeClock()
    report = make_reporter(stream, clock=clock)
    report(event(1000, 1.0))
    report(event(1000, 1.0, collection="orders"))  # the next batch_update, same instant
    report(event(2000, 2.0, collection="orders", done=True))
    lines = stream.getvalue().split("\n")
    assert "users" in lines[0] and "orders" in lines[1] and lines[2] == ""


def test_tty_can_be_forced_either_way() -> None:
    plain = TTYStream()
    make_reporter(plain, tty=False)(event(1000, 1.0))
    assert "\r" not in plain.getvalue() and plain.getvalue().endswith("\n")
    forced = io.StringIO()
    make_reporter(forced, tty=True)(event(1000, 1.0))
    assert forced.getvalue().startswith("\r")


# -- a checkpoint in status --------------------------------------------------------------------


def test_a_checkpoint_reads_as_how_far_each_call_got() -> None:
    progress = {"batch_update": [
        {"collection": "orders", "done": True, "modified": 1200, "scanned": 1250},
        {"collection": "items", "done": False, "scanned": 4000, "total": 10_000,
         "modified": 3990, "last_id": 3999, "batches": 4, "elapsed_s": 72.4},
    ]}
    assert describe_checkpoint(progress) == (
        "orders: done, 1,200 changed; items: 4,000 of 10,000 documents, 3,990 changed, "
        "last _id 3999 (4 batches, 1:12)"
    )


def test_a_call_that_has_not_finished_a_batch_yet_shows_no_last_id() -> None:
    progress = {"batch_update": [{"collection": "items", "started": True, "done": False}]}
    assert describe_checkpoint(progress) == "items: 0 documents, 0 changed (0 batches, 0:00)"


def test_no_checkpoint_no_text() -> None:
    assert describe_checkpoint(None) is None
    assert describe_checkpoint({}) is None
    assert describe_checkpoint({"batch_update": [{}]}) is None


def test_never_more_done_than_there_is_to_do() -> None:
    # Documents inserted during the walk, or a count taken before a resume: the count
    # walked wins, and the percentage stops at 100.
    assert log_line(event(38_500, 7.0, total=32_500)) == (
        "migration 3 users: 38,500 of 38,500 documents (100%), 5,500/s, ETA 0:00")
    line = bar_line(event(38_500, 7.0, total=32_500))
    assert "38,500/38,500 100%" in line and "#" * 24 in line
    assert describe_checkpoint({"batch_update": [{
        "collection": "users", "scanned": 38_500, "total": 32_500, "modified": 1,
        "batches": 2, "elapsed_s": 1.0}]}).startswith("users: 38,500 of 38,500 documents")


class BackfillActive(Migration):
    """Backfill users.active; the first attempt dies at user 55 (a bad document)."""

    version = 1
    transactional = False
    attempts = 0

    def up(self, db: Any) -> None:
        type(self).attempts += 1
        first = type(self).attempts == 1

        def activate(user: dict[str, Any]) -> dict[str, Any]:
            if first and user["_id"] == 55:
                raise ValueError("user 55 is damaged")
            return {"$set": {"active": True}}

        self.batch_update(db.users, {"active": {"$exists": False}}, activate, batch_size=10)


def test_a_resumed_walk_counts_what_the_first_attempt_walked(db: Any) -> None:
    db.users.insert_many([{"_id": i} for i in range(100)])
    with pytest.raises(MigrationFailedError):
        Migrator(db, [BackfillActive]).upgrade()  # no progress display: no total saved
    assert db.users.count_documents({"active": True}) == 50

    events: list[ProgressEvent] = []
    Migrator(db, [BackfillActive], progress=events.append).upgrade()

    # 50 walked before the checkpoint + 50 still matching after it; counting the filter
    # again would have said 50 and ended at "100 of 50".
    assert {e.total for e in events} == {100}
    assert events[0].scanned == 60 and events[-1].scanned == 100 and events[-1].done
    assert db.users.count_documents({"active": True}) == 100


def test_a_record_whose_progress_has_unknown_figures_loads() -> None:
    # The first checkpoint has no rate yet (eta_s None) and a paused version's note may
    # carry None figures: pydantic 1.10 refused None inside those dicts.
    from analytiq_migrations.records import MigrationRecord

    doc = {"_id": 2, "version": 2, "description": "Tag items", "checksum": "a" * 64,
           "status": "running", "direction": "up",
           "progress": {"batch_update": [{"collection": "items", "started": True}],
                        "done": 0, "total": 10, "rate": None, "eta_s": None},
           "pause": {"reason": "request", "user": None}}
    record = MigrationRecord.from_document(doc, "migrations")
    assert record.progress is not None and record.progress["eta_s"] is None
    assert record.pause == {"reason": "request", "user": None}
