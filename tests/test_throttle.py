"""Throttling a backfill on a shared cluster: `max_lag` waits while secondaries lag, and
says once (then carries on) where their lag cannot be read."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Dict, List

import pytest
from pymongo.errors import OperationFailure

from analytiq_migrations import Migration, MigrationDefinitionError, Migrator, throttle

NOW = datetime(2026, 1, 1, 12, 0, 0)


def member(state: int, behind: float, name: str = "") -> Dict[str, Any]:
    return {"name": name, "state": state, "optimeDate": NOW - timedelta(seconds=behind)}


class Backfill(Migration):
    version = 1
    transactional = False

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def up(self, db: Any) -> None:
        self.batch_update("items", {}, {"$inc": {"visits": 1}}, batch_size=10, **self.options)


@pytest.fixture
def items(db: Any) -> Any:
    db.items.insert_many([{"_id": i} for i in range(30)])
    return db


def test_the_lag_is_the_furthest_healthy_secondary_behind_the_primary() -> None:
    status = {"members": [member(1, 0), member(2, 3.5), member(2, 1), member(8, 500),
                          member(3, 900)]}  # down (8) and recovering (3) members don't count
    assert throttle.lag_seconds(status) == 3.5
    assert throttle.lag_seconds({"members": [member(1, 0)]}) == 0.0
    assert throttle.lag_seconds({}) == 0.0


def test_on_the_test_server_max_lag_lets_every_batch_through(items: Any) -> None:
    Migrator(items.client, [Backfill(max_lag=5.0)], database=items.name).upgrade()
    assert {doc["visits"] for doc in items.items.find()} == {1}


def test_batches_wait_while_secondaries_lag(items: Any, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    lags: List[float] = [3.0, 2.5, 0.5] + [0.0] * 10  # behind twice, then caught up
    seen: List[float] = []

    def status(client: Any) -> Dict[str, Any]:
        seen.append(lags.pop(0))
        return {"members": [member(1, 0), member(2, seen[-1])]}

    monkeypatch.setattr(throttle, "read_status", status)
    sleeps: List[float] = []
    monkeypatch.setattr(throttle, "sleep_seconds", sleeps.append)
    with caplog.at_level(logging.INFO, logger="analytiq_migrations"):
        Migrator(items.client, [Backfill(max_lag=1.0)], database=items.name).upgrade()
    assert seen[:3] == [3.0, 2.5, 0.5]
    assert sleeps[:2] == [1.0, 1.0]  # at most a second at a time, then read again
    assert sum("secondaries are 3.0s behind" in r.getMessage() for r in caplog.records) == 1
    assert {doc["visits"] for doc in items.items.find()} == {1}


def test_without_permission_it_is_said_once_and_ignored(
        items: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls: List[int] = []

    def refused(client: Any) -> Dict[str, Any]:
        calls.append(1)
        raise OperationFailure("not authorized on admin to execute command", code=13)

    monkeypatch.setattr(throttle, "read_status", refused)
    with caplog.at_level(logging.WARNING, logger="analytiq_migrations"):
        Migrator(items.client, [Backfill(max_lag=1.0)], database=items.name).upgrade()
    assert len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if "max_lag" in r.getMessage()]
    assert len(warnings) == 1 and "clusterMonitor" in warnings[0]
    assert {doc["visits"] for doc in items.items.find()} == {1}


def test_a_negative_max_lag_is_refused_before_anything_is_written(items: Any) -> None:
    with pytest.raises(MigrationDefinitionError, match="max_lag must be 0 or more seconds"):
        Migrator(items.client, [Backfill(max_lag=-1)], database=items.name).upgrade()
    assert items.items.count_documents({"visits": {"$exists": True}}) == 0
