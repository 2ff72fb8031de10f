"""A commit that became durable, then the server died before its reply: the retried
commit reaches a restarted server that has forgotten the transaction.

A loopback proxy between the migrator and a private server (``--sync-on-commit``, so a
commit is on disk before it is answered) watches the wire: when the reply to the armed
``commitTransaction`` comes back, it withholds it, SIGKILLs the server and starts it again
on the same port and data. SecantusDB forgets committed transactions across a restart
(mongod keeps their outcome); the library must not depend on either.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any, Optional

import bson
import pytest
from pymongo import MongoClient
from support import Server, client_options, free_port
from test_exactly_once import counting

from analytiq_migrations import Migrator, RetryPolicy

pytestmark = pytest.mark.slow

#: Enough budget to ride out a server restart (a few seconds).
PATIENT = RetryPolicy(attempts=12, seconds=60.0, initial_wait=0.2, max_wait=2.0)

OP_MSG = 2013


class CrashingProxy:
    """Forwards 127.0.0.1:``port`` to ``server``; once armed, crashes the server right after
    it answered a ``commitTransaction`` and before that answer reaches the client."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.port = free_port()
        self.armed = threading.Event()
        self.crashed = threading.Event()
        self.restarted = threading.Event()
        self.restart_error: Optional[BaseException] = None
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._commit_ids: set[int] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()
        # One thread lives for the whole test to restart the server: a server started
        # from a thread dies with that thread (its parent-death signal).
        threading.Thread(target=self._restarter, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def close(self) -> None:
        self._closing.set()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server.port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        try:
            while True:
                message = _read_message(source)
                if message is None:
                    break
                request_id, response_to, op_code = struct.unpack_from("<iii", message, 4)
                if to_server and op_code == OP_MSG and self.armed.is_set() and \
                        _command_name(message) == "commitTransaction":
                    with self._lock:
                        self._commit_ids.add(request_id)
                if not to_server and response_to in self._commit_ids:
                    self.armed.clear()
                    self._commit_ids.clear()
                    self.crashed.set()
                    self.server.kill()  # durable (--sync-on-commit), never answered
                    break
                sink.sendall(message)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def _restarter(self) -> None:
        self.crashed.wait()
        try:
            self.server.restart()
        except Exception as exc:  # seen by the test through ``restart_error``
            self.restart_error = exc
        self.restarted.set()
        self._closing.wait()


def _read_message(sock: socket.socket) -> Optional[bytes]:
    """One wire-protocol message, or ``None`` at the end of the stream."""
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack("<i", header)
    body = _read_exactly(sock, length - 4)
    return None if body is None else header + body


def _read_exactly(sock: socket.socket, n: int) -> Optional[bytes]:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _command_name(message: bytes) -> Optional[str]:
    """The command of an OP_MSG (its kind-0 section's first key)."""
    offset = 16 + 4  # header, flagBits
    if message[offset] != 0:
        return None
    (size,) = struct.unpack_from("<i", message, offset + 1)
    doc = bson.decode(message[offset + 1:offset + 1 + size])
    return next(iter(doc), None)


@pytest.fixture
def proxy(server_factory: Any) -> Iterator[CrashingProxy]:
    server = server_factory(extra_args=["--sync-on-commit"])
    crashing = CrashingProxy(server)
    yield crashing
    crashing.close()


def test_a_commit_durable_before_a_server_crash_is_not_applied_again_after_the_restart(
    proxy: CrashingProxy,
) -> None:
    client: MongoClient[Any] = MongoClient(proxy.uri, **client_options(proxy.uri))
    db = client["restart_commit"]

    Counted = counting(proxy.armed.set)  # its first transaction's commit is the one to lose

    try:
        report = Migrator(db, [Counted], retry=PATIENT).upgrade()
        assert proxy.crashed.is_set() and proxy.restarted.wait(60)
        assert proxy.restart_error is None, proxy.restart_error
        assert report.versions == [1]
        assert db.counters.find_one({"_id": 1})["runs"] == 1
        assert [h["status"] for h in db.migrations_history.find()] == ["applied"]
        assert Migrator(db, [Counted]).upgrade().versions == []
    finally:
        client.close()
