"""The test infrastructure itself: servers, fixtures, recorder, failpoints.

These also pin the server behaviour the library relies on (see docs/testing.md), so a
SecantusDB upgrade or a real MongoDB via MONGODB_URI that behaves differently shows up
here first.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Dict

import pymongo
import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import AutoReconnect, OperationFailure, PyMongoError
from support import (
    CommandRecorder,
    Server,
    client_options,
    failpoint,
    free_port,
    run_python,
    spawn_python,
    unique_db_name,
    wait_for,
)

from analytiq_migrations.server import topology

if TYPE_CHECKING:
    Client = MongoClient[Dict[str, Any]]
    Db = Database[Dict[str, Any]]
else:  # pymongo 3's classes are not generic
    Client, Db = MongoClient, Database

def supports_transactions(hello: dict[str, Any]) -> bool:
    """The library's rule: a replica-set member or mongos, with sessions."""
    is_rs_or_mongos = "setName" in hello or hello.get("msg") == "isdbgrid"
    return is_rs_or_mongos and hello.get("logicalSessionTimeoutMinutes") is not None


# -- fixtures ---------------------------------------------------------------------------


def test_db_is_fresh_and_named_legally(db: Db) -> None:
    assert db.list_collection_names() == []
    assert len(db.name.encode()) <= 63
    assert not set(db.name) & set('/\\. "$*<>:|?')
    db.things.insert_one({"a": 1})
    assert db.things.count_documents({}) == 1


def test_unique_db_name_is_bounded_and_unique() -> None:
    name = unique_db_name("test_x[param.with/odd chars]" + "y" * 100)
    assert len(name.encode()) <= 63
    assert not set(name) & set('/\\. "$*<>:|?')
    assert name != unique_db_name("test_x[param.with/odd chars]" + "y" * 100)


def test_mock_db_is_mongomock(mock_db: Any) -> None:
    mock_db.c.insert_one({"_id": 1})
    assert type(mock_db).__module__.startswith("mongomock")
    assert mock_db.c.find_one({"_id": 1}) == {"_id": 1}


# -- transactions on the replica-set server ----------------------------------------------


def test_transaction_commits(client: Client, db: Db) -> None:
    db.create_collection("c")
    with client.start_session() as session, session.start_transaction():
        db.c.insert_one({"_id": 1}, session=session)
        # Not visible outside the transaction until it commits.
        assert db.c.find_one({"_id": 1}) is None
    assert db.c.find_one({"_id": 1}) == {"_id": 1}


def test_transaction_aborts(client: Client, db: Db) -> None:
    db.c.insert_one({"_id": 0})
    with client.start_session() as session:
        session.start_transaction()
        db.c.insert_one({"_id": 1}, session=session)
        db.c.delete_one({"_id": 0}, session=session)
        session.abort_transaction()
    assert list(db.c.find()) == [{"_id": 0}]


def test_exception_in_transaction_block_aborts(client: Client, db: Db) -> None:
    session = client.start_session()
    with pytest.raises(RuntimeError), session, session.start_transaction():
        db.c.insert_one({"_id": 1}, session=session)
        raise RuntimeError("boom")
    assert db.c.count_documents({}) == 0


@pytest.mark.skipif(pymongo.version_tuple < (3, 12), reason="pymongo before 3.12 lists the "
                    "collections first, which a transaction refuses")
def test_collection_and_index_creation_inside_transaction(client: Client, db: Db) -> None:
    with client.start_session() as session, session.start_transaction():
        db.create_collection("made_in_txn", session=session)
        db.made_in_txn.create_index("k", unique=True, session=session)
        db.made_in_txn.insert_one({"k": 1}, session=session)
    assert "k_1" in db.made_in_txn.index_information()
    assert db.made_in_txn.count_documents({}) == 1


def test_pipeline_update_stores_server_now(client: Client, db: Db) -> None:
    db.c.insert_one({"_id": 1})
    db.c.update_one({"_id": 1}, [{"$set": {"at": "$$NOW"}}])
    stored = db.c.find_one({"_id": 1})
    assert stored is not None
    local_time = client.admin.command("hello")["localTime"]
    assert abs((local_time - stored["at"]).total_seconds()) < 60
    # Plain query comparisons against a client-side datetime work.
    assert db.c.count_documents({"at": {"$lte": local_time}}) == 1


# -- hello: replica set vs standalone ----------------------------------------------------


def test_hello_replica_set(client: Client) -> None:
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert isinstance(hello.get("setName"), str)
    assert hello.get("logicalSessionTimeoutMinutes") is not None
    assert supports_transactions(hello)


def test_hello_standalone(standalone_client: Client) -> None:
    hello = standalone_client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert "setName" not in hello
    assert hello.get("msg") != "isdbgrid"
    # Standalone mongod reports sessions too: it is setName that rules transactions out.
    assert hello.get("logicalSessionTimeoutMinutes") is not None
    assert not supports_transactions(hello)
    description = topology(standalone_client)
    assert [s.server_type_name for s in description.server_descriptions().values()] == [
        "Standalone"
    ]


def test_standalone_db_and_recorder(
    recorded_standalone_db: Db, standalone_recorder: CommandRecorder
) -> None:
    recorded_standalone_db.c.insert_one({"a": 1})
    insert = standalone_recorder.first("insert")
    # No retryable-write txnNumber on a standalone server.
    assert insert.txn_number is None
    assert insert.lsid is not None
    assert not insert.in_transaction


def test_standalone_db_is_fresh(standalone_db: Db) -> None:
    assert standalone_db.list_collection_names() == []
    standalone_db.c.insert_one({"a": 1})
    assert standalone_db.c.count_documents({}) == 1


# -- command recorder ---------------------------------------------------------------------


def test_recorder_sees_transaction(
    recorded_client: Client, recorded_db: Db, recorder: CommandRecorder
) -> None:
    recorded_db.create_collection("c")
    recorder.clear()
    with recorded_client.start_session() as session, session.start_transaction():
        recorded_db.c.insert_one({"_id": 1}, session=session)
        recorded_db.c.update_one({"_id": 1}, {"$set": {"x": 1}}, session=session)
    assert recorder.names() == ["insert", "update", "commitTransaction"]
    started = recorder.transactions()
    assert [c.name for c in started] == ["insert"]
    assert started[0].autocommit is False
    assert started[0].database == recorded_db.name
    assert started[0].collection == "c"
    in_txn = recorder.in_transaction()
    assert {c.txn_number for c in in_txn} == {started[0].txn_number}
    assert len({c.session_id for c in in_txn}) == 1
    assert all(c.outcome == "succeeded" for c in in_txn)
    commit = recorder.first("commitTransaction")
    assert commit.database == "admin"
    assert not commit.start_transaction


def test_recorder_retryable_write_is_not_a_transaction(
    recorded_db: Db, recorder: CommandRecorder
) -> None:
    recorded_db.c.insert_one({"a": 1})
    (insert,) = recorder.filter("insert")
    # pymongo numbers every retryable write on a replica set; only autocommit:false and
    # startTransaction mark a transaction.
    assert insert.txn_number is not None
    assert not insert.in_transaction
    assert not insert.start_transaction
    assert insert.command["documents"][0]["a"] == 1


def test_recorder_records_failures(recorded_db: Db, recorder: CommandRecorder) -> None:
    with pytest.raises(OperationFailure):
        recorded_db.command({"noSuchCommandHere": 1})
    (cmd,) = recorder.filter("noSuchCommandHere")
    assert cmd.outcome == "failed"
    assert cmd.failure is not None


# -- failpoints ---------------------------------------------------------------------------


def test_failpoint_fires_once_and_is_cleared(client: Client, db: Db) -> None:
    db.c.insert_one({"_id": 0})
    data = {"failCommands": ["find"], "errorCode": 2}
    with failpoint(client, {"times": 1}, data):
        with pytest.raises(OperationFailure) as info:
            db.c.find_one({"_id": 0})
        assert info.value.code == 2
        assert db.c.find_one({"_id": 0}) == {"_id": 0}  # used up
    with failpoint(client, "alwaysOn", data):
        for _ in range(2):
            with pytest.raises(OperationFailure):
                db.c.find_one({"_id": 0})
    assert db.c.find_one({"_id": 0}) == {"_id": 0}  # switched off at exit


def test_failpoint_is_cleared_when_the_block_raises(client: Client, db: Db) -> None:
    db.c.insert_one({"_id": 0})
    with pytest.raises(KeyError), failpoint(
        client, "alwaysOn", {"failCommands": ["find"], "errorCode": 2}
    ):
        raise KeyError("x")
    assert db.c.find_one({"_id": 0}) == {"_id": 0}


def test_transient_write_conflict_in_transaction_is_retried_by_with_transaction(
    client: Client, recorded_client: Client, recorded_db: Db, recorder: CommandRecorder
) -> None:
    recorded_db.create_collection("c")
    recorder.clear()
    data = {
        "failCommands": ["insert"],
        "errorCode": 112,
        "errorLabels": ["TransientTransactionError"],
    }
    with failpoint(client, {"times": 1}, data), recorded_client.start_session() as s:
        s.with_transaction(lambda s: recorded_db.c.insert_one({"_id": 1}, session=s))
    assert recorded_db.c.count_documents({}) == 1
    # First attempt failed, pymongo aborted and started a new transaction.
    assert [c.name for c in recorder.transactions()] == ["insert", "insert"]
    assert recorder.transactions()[0].outcome == "failed"


def test_transient_fault_labels(client: Client, db: Db) -> None:
    db.create_collection("c")
    # 6 HostUnreachable inside a transaction: TransientTransactionError, server stays
    # selectable (no step-down handling in pymongo).
    fault = {"failCommands": ["insert"], "errorCode": 6}
    session = client.start_session()
    with failpoint(client, {"times": 1}, fault), session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as info:
            db.c.insert_one({"_id": 1}, session=session)
        session.abort_transaction()
    assert info.value.has_error_label("TransientTransactionError")
    # Outside a transaction the same code is a retryable write: pymongo retries once.
    with failpoint(client, {"times": 1}, fault):
        db.c.insert_one({"_id": 2})
    assert db.c.count_documents({}) == 1


def test_close_connection_is_a_network_error(client: Client, db: Db, mongo_uri: str) -> None:
    db.c.insert_one({"_id": 0})
    no_retry: Client = MongoClient(mongo_uri, **client_options(mongo_uri, retryWrites=False))
    try:
        fault = {"failCommands": ["insert"], "closeConnection": True}
        with failpoint(client, {"times": 1}, fault), pytest.raises(AutoReconnect):
            no_retry[db.name].c.insert_one({"_id": 1})
        # The client recovers on its own (pool cleared, server rediscovered).
        assert no_retry[db.name].c.count_documents({}) == 1
    finally:
        no_retry.close()


# -- sessions -----------------------------------------------------------------------------


def test_kill_sessions_ends_open_transaction(client: Client, db: Db, mongo_uri: str) -> None:
    db.c.insert_one({"_id": 1, "v": 0})
    owner: Client = MongoClient(mongo_uri, **client_options(mongo_uri))
    try:
        session = owner.start_session()
        session.start_transaction()
        owner[db.name].c.update_one({"_id": 1}, {"$set": {"v": 1}}, session=session)
        # Another transaction touching the same document conflicts at once.
        other = client.start_session()
        with other, pytest.raises(OperationFailure) as info, other.start_transaction():
            db.c.update_one({"_id": 1}, {"$set": {"v": 2}}, session=other)
        assert info.value.code == 112
        assert info.value.has_error_label("TransientTransactionError")

        client.admin.command({"killSessions": [session.session_id]})

        # The document is free again and the killed transaction cannot commit.
        db.c.update_one({"_id": 1}, {"$set": {"v": 3}})
        with pytest.raises(OperationFailure) as info:
            session.commit_transaction()
        assert info.value.code == 251  # NoSuchTransaction
        assert db.c.find_one({"_id": 1}) == {"_id": 1, "v": 3}
    finally:
        owner.close()


# -- private servers and child processes --------------------------------------------------


def test_server_factory_kill_and_restart(server_factory: Any) -> None:
    server: Server = server_factory(extra_args=["--sync-on-commit"])
    with server.client() as c:
        c.d.c.insert_one({"_id": 1})
    server.kill()
    assert not server.running
    server.restart()
    with server.client() as c:
        assert c.d.c.find_one({"_id": 1}) == {"_id": 1}
    assert "listening on" in server.log_tail()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_run_python_sees_repo_and_env(mongo_uri: str) -> None:
    result = run_python(
        """
        import os, sys
        import tests.support
        from pymongo import MongoClient
        print(MongoClient(os.environ["MONGODB_URI"], serverSelectionTimeoutMS=5000)
              .admin.command("ping")["ok"])
        print(os.environ["EXTRA"])
        """,
        env={"MONGODB_URI": mongo_uri, "EXTRA": "yes"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1.0", "yes"]


def test_spawn_python_can_be_killed() -> None:
    proc = spawn_python("import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    try:
        assert proc.stdout is not None
        wait_for(lambda: proc.stdout is not None and proc.stdout.readline().strip() == "ready")
        proc.kill()
        proc.wait(10)
        assert proc.returncode == (-9 if sys.platform != "win32" else 1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_server_error_is_clear(tmp_path: Any) -> None:
    from support import ServerStartError, start_server

    with pytest.raises(ServerStartError) as info:
        start_server(tmp_path / "bad", extra_args=["--cache-size", "not-a-size"], timeout=30)
    assert "Log" in str(info.value)


def test_hygiene_left_no_failpoint(client: Client, db: Db) -> None:
    # A failpoint left armed by a test (here: armed directly, never disarmed) is turned
    # off by the autouse hygiene fixture; the next test checks.
    from support import set_failpoint

    set_failpoint(client, "alwaysOn", {"failCommands": ["count"], "errorCode": 2})
    with pytest.raises(PyMongoError):
        db.command({"count": "c"})


def test_hygiene_left_no_failpoint_check(db: Db) -> None:
    assert db.command({"count": "c"})["n"] == 0
