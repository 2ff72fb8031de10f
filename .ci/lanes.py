"""Legacy CI lanes: the core tests on old Pythons with pinned pymongo / pydantic / tenacity.

Run by ``.ci/run`` with the main lane's venv (SecantusDB needs Python 3.10+, so the servers
are started from there); each lane is a venv on an interpreter found on this machine
(``pythonX.Y`` on PATH, or pyenv's versions). A lane whose interpreter is missing fails.

    .venv/bin/python .ci/lanes.py            # every lane
    .venv/bin/python .ci/lanes.py 3.8        # one lane (by its Python version)

Per lane: install the pins, then the wheel built from this checkout (pip must keep the
pins), check the installed versions, run ``analytiq-migrations up`` on a scratch database,
then the test suite against a fresh SecantusDB replica set and standalone server
(``MONGODB_URI`` / ``MONGODB_STANDALONE_URI``; tests that need flask, django or a server of
their own skip themselves).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
LANES_DIR = ROOT / ".lanes"

sys.path.insert(0, str(ROOT))
from analytiq_migrations.testing import embedded_server  # noqa: E402


@dataclass
class Lane:
    python: str
    #: pip requirement -> the version prefix the lane must end up with ("" = any)
    pins: Dict[str, str]


LANES = [
    Lane("3.8", {"pymongo==3.12.*": "3.12", "pydantic==1.10.*": "1.10", "tenacity==8.0.*": "8.0",
                 "mongoengine==0.27.*": "", "flask-pymongo==2.3.*": ""}),
    Lane("3.9", {"pymongo==4.10.*": "4.10", "pydantic==1.10.*": "1.10",
                 "mongoengine==0.28.*": "", "flask-pymongo==3.0.*": ""}),
    Lane("3.11", {"pymongo==4.16.*": "4.16", "pydantic>=2,<3": "2.",
                  "mongoengine==0.29.*": "", "flask-pymongo==3.0.*": ""}),
    Lane("3.13", {"pymongo": "", "pydantic": "", "tenacity": "", "mongoengine": "",
                  "flask-pymongo": ""}),  # newest of each
]

TEST_TOOLS = ["pytest>=7.4", "mongomock>=4.1", "tomli>=1.1"]

SMOKE_MIGRATION = '''"""Create the lane's smoke collection"""


def up(db):
    db.smoke.insert_one({"_id": 1, "ok": True})


def down(db):
    db.smoke.drop()
'''


def find_python(version: str) -> Optional[str]:
    """A working interpreter for ``version``: pyenv's newest build of it, else one on PATH
    (pyenv's shims are on PATH too but refuse versions that are not selected)."""
    candidates = []
    for root in filter(None, [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]):
        pattern = os.path.join(root, "versions", f"{version}.*", "bin", "python")
        candidates += sorted(glob.glob(pattern), reverse=True)
    candidates += filter(None, [shutil.which(f"python{version}")])
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for candidate in candidates:
        try:
            out = subprocess.run([candidate, "-c", probe], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def sh(cmd: List[str], env: Optional[Dict[str, str]] = None, **kw: object) -> int:
    """Run ``cmd`` with its output shown; the exit code."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env, **kw)  # type: ignore[call-overload]


def build_wheel() -> Path:
    """The wheel of this checkout (built once, with the main lane's Python)."""
    out = Path(tempfile.mkdtemp(prefix="lanes-wheel-"))
    subprocess.check_call([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(out), str(ROOT)])
    return next(out.glob("analytiq_migrations-*.whl"))


def run_lane(lane: Lane, wheel: Path) -> str:
    """Run one lane; "" when it passed, else why it failed."""
    python = find_python(lane.python)
    if python is None:
        return (f"no Python {lane.python} on this machine (looked for python{lane.python} on "
                "PATH and in pyenv's versions): install it, or this lane cannot run")
    venv = LANES_DIR / f"py{lane.python.replace('.', '')}"
    if venv.exists():
        shutil.rmtree(venv)
    if sh([python, "-m", "venv", str(venv)]):
        return "could not create the venv"
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if sh([*pip, *lane.pins, *TEST_TOOLS]):
        return "could not install the pins"
    if sh([*pip, str(wheel)]):
        return "could not install the wheel next to the pins"
    check = ("import sys, pymongo, pydantic, importlib.metadata as m; "
             "print(sys.version.split()[0], 'pymongo', pymongo.version, 'pydantic', "
             "pydantic.VERSION, 'tenacity', m.version('tenacity'))")
    versions = subprocess.check_output([py, "-c", check], text=True).split()
    print("lane versions:", " ".join(versions), flush=True)
    got = dict(zip(versions[1::2], versions[2::2]))
    for requirement, prefix in lane.pins.items():
        name = requirement.split("=")[0].split(">")[0].split("<")[0]
        if prefix and not got.get(name, "").startswith(prefix):
            return f"installing the wheel changed {name} to {got.get(name)} (pinned {requirement})"

    with embedded_server() as rs, embedded_server(standalone=True) as standalone:
        env = {**os.environ, "MONGODB_URI": rs.uri, "MONGODB_STANDALONE_URI": standalone.uri,
               "PYTHONDONTWRITEBYTECODE": "1"}
        with tempfile.TemporaryDirectory() as scratch:
            Path(scratch, "0001_smoke.py").write_text(SMOKE_MIGRATION)
            cli = str(venv / "bin" / "analytiq-migrations")
            if sh([cli, "--uri", rs.uri, "--database", "lane_smoke", "--migrations", scratch,
                   "up"], env=env):
                return "`analytiq-migrations up` from the installed wheel failed"
        if sh([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], env=env, cwd=ROOT):
            return "tests failed"
    return ""


def main(argv: List[str]) -> int:
    wanted = [lane for lane in LANES if not argv or lane.python in argv]
    if not wanted:
        print(f"no such lane: {' '.join(argv)} (lanes: {', '.join(lane.python for lane in LANES)})")
        return 2
    LANES_DIR.mkdir(exist_ok=True)
    wheel = build_wheel()
    results = []
    for lane in wanted:
        started = time.monotonic()
        print(f"\n---------- lane Python {lane.python}: {' '.join(lane.pins)} ----------",
              flush=True)
        failure = run_lane(lane, wheel)
        results.append((lane, failure, time.monotonic() - started))
    print("\n---------- lanes ----------")
    for lane, failure, seconds in results:
        print(f"Python {lane.python:5} {' '.join(lane.pins):55} "
              f"{'ok' if not failure else 'FAILED: ' + failure} ({seconds:.0f} s)")
    return 1 if any(failure for _, failure, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
