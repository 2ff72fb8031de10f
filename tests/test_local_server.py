"""``analytiq-migrations server``: a local replica set in the foreground for the command
line: it prints the URI to use, serves transactions, keeps ``--dir`` data, and stops
cleanly on SIGTERM and Ctrl-C, freeing its port."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from support import child_env, free_port

from analytiq_migrations.cli import main

pytestmark = pytest.mark.slow

#: Start-up takes 0.5-1.5 s; the margin is for a loaded machine.
START_S = 60.0


def start(port: int, data: Path) -> tuple[subprocess.Popen[str], str]:
    """The ``server`` command as a user runs it; returns the process and the URI it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "analytiq_migrations", "server", "--port", str(port),
         "--dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_S)
    if not ready:
        proc.kill()
        pytest.fail(f"no URI within {START_S} s: {proc.communicate()}")
    first = proc.stdout.readline().strip()
    return proc, first


def stop(proc: subprocess.Popen[str], how: int) -> tuple[int, str, str]:
    proc.send_signal(how)
    code = proc.wait(60)
    assert proc.stdout is not None and proc.stderr is not None
    return code, proc.stdout.read(), proc.stderr.read()  # what readline() left buffered too


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_server_prints_the_uri_serves_and_stops_on_sigterm_and_ctrl_c(tmp_path: Path) -> None:
    pytest.importorskip("secantus", reason="the server extra needs Python 3.10+")
    port, data = free_port(), tmp_path / "data"
    proc, uri = start(port, data)
    try:
        assert uri == f"mongodb://127.0.0.1:{port}/?directConnection=true"
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10000)
        assert client.admin.command("hello").get("setName")  # a replica set: transactions
        with client.start_session() as session, session.start_transaction():
            client.app.notes.insert_one({"_id": 1, "kept": True}, session=session)
        client.close()
    finally:
        code, out, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert f"export MONGODB_URI='{uri}'" in out
    assert "Stopped the local server." in err
    assert port_is_free(port)

    proc, uri = start(port, data)  # the same --dir: the data is still there
    try:
        client = MongoClient(uri, serverSelectionTimeoutMS=10000)
        assert client.app.notes.find_one({"_id": 1}) == {"_id": 1, "kept": True}
        client.close()
    finally:
        code, _, err = stop(proc, signal.SIGINT)  # Ctrl-C
    assert code == 0, err
    deadline = time.monotonic() + 10
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_is_free(port)


def test_without_the_extra_one_line_names_it(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("analytiq_migrations.testing.secantus_installed", lambda: False)
    assert main(["server"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "pip install 'analytiq_migrations[server]'" in err


def test_a_busy_port_says_so(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("secantus", reason="the server extra needs Python 3.10+")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["server", "--port", str(port)]) == 2
    assert f"Port {port} is in use" in capsys.readouterr().err
