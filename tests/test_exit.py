"""How the command line's process ends: at once, without waiting for pymongo's monitor
threads, yet with every ``atexit`` handler of the user's code run and all output written.

Each run is a real process started as the console script starts it, with a probe in
front: it registers an ``atexit`` handler before anything else (handlers run
last-registered first, so the probe runs after all the others, pymongo's included at a
normal exit), then opens a client of its own that it never closes, as an application's
code might. pymongo's exit handler would stop and join that client's threads; the probe
reports whether they were still alive, that is whether anything waited for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from children import write_migrations
from support import child_env, free_port

#: The console script's body with the probe in front (it must be registered first).
CONSOLE = """\
import atexit, os, sys, threading

def probe():
    alive = [t for t in WATCHED if t.is_alive()]
    sys.stderr.write(f"PROBE pymongo threads alive at exit: {len(alive)} of {len(WATCHED)}\\n")

atexit.register(probe)
import pymongo
before = set(threading.enumerate())
watched_client = pymongo.MongoClient(os.environ["PROBE_URI"])
watched_client.admin.command("ping")
WATCHED = [t for t in threading.enumerate() if t not in before]
sys.argv[0] = "analytiq-migrations"
"""

#: How the console script enters (``sys.exit(console())``), and how ``python -m`` does.
SCRIPT = "from analytiq_migrations.cli import console\nsys.exit(console())\n"
DASH_M = "import runpy\nrunpy.run_module('analytiq_migrations', run_name='__main__')\n"

#: A migration that leaves a trace at exit, on stdout and in a file.
SAYS_BYE = '''\
    """Greet the users"""
    import atexit
    import os

    def bye():
        print("BYE from the migration's atexit handler")
        with open(os.environ["BYE_FILE"], "w") as f:
            f.write("ran")

    atexit.register(bye)

    def up(db):
        db.users.insert_one({"name": "ada"})
    '''

FAILS = '''\
    """Fail on purpose"""

    def up(db):
        raise RuntimeError("the users collection is not ready")
    '''

#: Lines a chatty migration prints (several MB: far more than any pipe buffer).
LINES = 100_000

CHATTY = f'''\
    """Print a lot, during the run and at exit"""
    import atexit
    import sys

    def up(db):
        for n in range({LINES}):
            print(f"stdout line {{n}}")
            sys.stderr.write(f"stderr line {{n}}\\n")

    @atexit.register
    def tail():
        for n in range({LINES}, {LINES} + 1000):
            print(f"stdout line {{n}}")
            sys.stderr.write(f"stderr line {{n}}\\n")
        print("LAST stdout line")
        sys.stderr.write("LAST stderr line\\n")
    '''

#: A ``--client`` module: the app's own client, and a handler that uses it at exit.
APP = """\
import atexit, os, sys
import pymongo

client = pymongo.MongoClient(os.environ["APP_MONGO_URI"])
database = client[os.environ["APP_DATABASE"]]

def still_ours():
    ok = client.admin.command("ping")["ok"]
    sys.stdout.write(f"APP client still open at exit: ping ok={ok}\\n")

atexit.register(still_ours)
"""


@dataclass
class Exited:
    code: int
    out: str
    err: str

    @property
    def waited_for_pymongo(self) -> bool:
        """Whether pymongo's threads were gone by the end of the ``atexit`` handlers."""
        probes = [line for line in self.err.splitlines() if line.startswith("PROBE ")]
        assert len(probes) == 1, self.err[-2000:]
        alive, watched = probes[0].split(": ")[1].split(" of ")
        assert int(watched) > 0, probes[0]
        return alive == "0"


@pytest.fixture(autouse=True)
def probe_server(mongo_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server the probe's own client connects to."""
    monkeypatch.setenv("PROBE_URI", mongo_uri)
    yield


def console(cwd: Path, *args: str, entry: str = SCRIPT, **env: str) -> Exited:
    """The command line in a fresh process, its output piped (block-buffered, as under
    cron or a deploy tool, not line by line)."""
    environ = child_env(env)
    environ.pop("PYTHONUNBUFFERED", None)
    done = subprocess.run([sys.executable, "-c", CONSOLE + entry, *args], cwd=cwd, env=environ,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    return Exited(done.returncode, done.stdout, done.stderr)


def where(mongo_uri: str, db: Any) -> list[str]:
    return ["--uri", mongo_uri, "--database", db.name, "--migrations", "migrations"]


@pytest.mark.parametrize("failing, entry", [(False, SCRIPT), (True, SCRIPT), (False, DASH_M)],
                         ids=["up", "failed up", "python -m"])
def test_a_migrations_atexit_handler_runs_after_up(tmp_path: Path, mongo_uri: str, db: Any,
                                                   failing: bool, entry: str) -> None:
    files = {"0001_greet.py": SAYS_BYE, **({"0002_not_ready.py": FAILS} if failing else {})}
    write_migrations(tmp_path / "migrations", files)
    bye = tmp_path / "bye.txt"
    up = console(tmp_path, "up", *where(mongo_uri, db), entry=entry, BYE_FILE=str(bye))
    if failing:
        assert up.code == 1, up.err
        assert "the users collection is not ready" in up.err
    else:
        assert up.code == 0, up.err
        assert "Applied 1 migration" in up.out
    assert "BYE from the migration's atexit handler" in up.out
    assert bye.read_text() == "ran"
    assert not up.waited_for_pymongo
    assert db.migrations.find_one({"_id": len(files)})["status"] == \
        ("failed" if failing else "applied")


def test_sys_exit_in_a_migration_keeps_its_code_and_message(tmp_path: Path, mongo_uri: str,
                                                            db: Any) -> None:
    write_migrations(tmp_path / "migrations", {"0001_stop.py": '''\
        import sys

        def up(db):
            sys.exit("stopping: the app is still on the old schema")
        '''})
    up = console(tmp_path, "up", *where(mongo_uri, db))
    assert up.code == 1
    assert "stopping: the app is still on the old schema" in up.err
    assert not up.waited_for_pymongo


def test_a_migrations_large_output_is_complete_when_piped(tmp_path: Path, mongo_uri: str,
                                                          db: Any) -> None:
    write_migrations(tmp_path / "migrations", {"0001_chatty.py": CHATTY})
    up = console(tmp_path, "up", *where(mongo_uri, db))
    assert up.code == 0, up.err[-2000:]
    out, err = up.out.splitlines(), up.err.splitlines()
    lines = [f"line {n}" for n in range(LINES + 1000)]
    assert [line for line in out if line.startswith("stdout line")] == \
        [f"stdout {line}" for line in lines]
    assert [line for line in err if line.startswith("stderr line")] == \
        [f"stderr {line}" for line in lines]
    assert any(line.startswith("Applied 1 migration") for line in out)
    assert (out[-1], err[-2]) == ("LAST stdout line", "LAST stderr line")  # then the probe
    assert not up.waited_for_pymongo


def test_a_long_history_as_json_is_complete_when_piped(tmp_path: Path, mongo_uri: str,
                                                       db: Any) -> None:
    count = 300
    write_migrations(tmp_path / "migrations", {
        f"{n:04d}_step.py": f'"""Step {n} of a long project history"""\n\n'
                            "transactional = False\n\ndef up(db):\n    pass\n"
        for n in range(1, count + 1)})
    assert console(tmp_path, "up", "-q", *where(mongo_uri, db)).code == 0
    history = console(tmp_path, "history", "--json", *where(mongo_uri, db))
    assert history.code == 0, history.err
    assert len(history.out) > 100_000  # well past a pipe's buffer
    entries = json.loads(history.out)["entries"]
    assert sorted(e["version"] for e in entries) == list(range(1, count + 1))
    assert not history.waited_for_pymongo


def test_exit_codes_are_unchanged(tmp_path: Path, mongo_uri: str, db: Any) -> None:
    write_migrations(tmp_path / "migrations", {"0001_greet.py": SAYS_BYE})
    bye = str(tmp_path / "bye.txt")
    assert console(tmp_path, "status", "--check", *where(mongo_uri, db)).code == 6
    assert console(tmp_path, "up", "-q", *where(mongo_uri, db), BYE_FILE=bye).code == 0
    noop = console(tmp_path, "up", *where(mongo_uri, db))  # the quick no-op check's answer
    assert (noop.code, noop.out.strip()) == (0, f"Nothing to do: '{db.name}' is at version 1.")
    assert not noop.waited_for_pymongo
    assert console(tmp_path, "up", "--lock-wait", *where(mongo_uri, db)).code == 2
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=200"
    assert console(tmp_path, "up", "--uri", nowhere, "--database", db.name,
                   "--migrations", "migrations").code == 5
    assert console(tmp_path, "new", "second", "step", "--migrations", "migrations").code == 0
    db.migrations.update_one({"_id": 1}, {"$set": {"checksum": "0" * 64}})
    assert console(tmp_path, "validate", *where(mongo_uri, db)).code == 4


def test_a_user_client_stays_open_for_its_own_atexit_handlers(tmp_path: Path, mongo_uri: str,
                                                              db: Any) -> None:
    write_migrations(tmp_path / "migrations", {"0001_greet.py": SAYS_BYE})
    (tmp_path / "appdb.py").write_text(textwrap.dedent(APP))
    up = console(tmp_path, "up", "--client", "appdb:database", "--migrations", "migrations",
                 APP_MONGO_URI=mongo_uri, APP_DATABASE=db.name,
                 BYE_FILE=str(tmp_path / "bye.txt"))
    assert up.code == 0, up.err
    assert f"Applied 1 migration on '{db.name}'" in up.out
    assert "APP client still open at exit: ping ok=1.0" in up.out
    assert "BYE from the migration's atexit handler" in up.out
    assert not up.waited_for_pymongo


def test_threads_a_migration_leaves_running_are_joined_first(tmp_path: Path, mongo_uri: str,
                                                             db: Any) -> None:
    write_migrations(tmp_path / "migrations", {"0001_notify.py": '''\
        """Notify the team in the background"""
        import threading
        import time

        def notify():
            time.sleep(0.3)
            print("THREAD finished its work")

        def up(db):
            threading.Thread(target=notify).start()
        '''})
    up = console(tmp_path, "up", *where(mongo_uri, db))
    assert up.code == 0, up.err
    assert up.out.splitlines()[-1] == "THREAD finished its work"
    # (Not asserted here whether pymongo's threads were still there: while the user's thread
    # is joined they may end on their own, the sooner the busier the machine.)


def test_a_quiet_up_with_stdout_closed_exits_cleanly(tmp_path: Path, mongo_uri: str,
                                                     db: Any) -> None:
    # cron jobs and init scripts sometimes start commands with `>&-`: an apply, then a no-op
    write_migrations(tmp_path / "migrations", {"0001_greet.py": SAYS_BYE})
    environ = child_env({"BYE_FILE": str(tmp_path / "bye.txt")})
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", CONSOLE + SCRIPT, "up", "-q",
                               *where(mongo_uri, db)], cwd=tmp_path, env=environ, timeout=300,
                              stdin=subprocess.DEVNULL, stdout=None, stderr=subprocess.PIPE,
                              text=True, preexec_fn=lambda: os.close(1))
        assert done.returncode == 0, done.stderr
        assert [line for line in done.stderr.splitlines()
                if not line.startswith("PROBE")] == []
    assert (tmp_path / "bye.txt").read_text() == "ran"
    assert db.migrations.find_one({"_id": 1})["status"] == "applied"
