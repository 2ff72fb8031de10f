"""Legacy CI lanes: the core tests on old Pythons with pinned pymongo / pydantic / tenacity,
and framework lanes: the library dropped into a legacy app's pinned environment.

Run by ``.ci/run`` with the main lane's venv (SecantusDB needs Python 3.10+, so the servers
are started from there); each lane is a venv on an interpreter found on this machine
(``pythonX.Y`` on PATH, or pyenv's versions). A lane whose interpreter is missing fails.

    .venv/bin/python .ci/lanes.py            # every lane
    .venv/bin/python .ci/lanes.py 3.8        # one lane (by its name: the Python version,
    .venv/bin/python .ci/lanes.py flask      # or a framework lane's name)

Per lane: install the pins, then the wheel built from this checkout (pip must keep the
pins), check the installed versions, run ``analytiq-migrations up`` on a scratch database,
then the test suite against a fresh SecantusDB replica set and standalone server
(``MONGODB_URI`` / ``MONGODB_STANDALONE_URI``; tests that need flask, django or a server of
their own skip themselves).

A framework lane (``frozen``) is a legacy app's environment: its pins are installed first,
then the wheel with the lane's extra, and ``pip freeze`` before and after must agree on
every package the app had (nothing moved, only new packages added). It runs only the
test files of its framework, against servers whose URI the lane's pymongo understands.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
    #: The lane's name on the command line (default: its Python version).
    name: str = ""
    #: The wheel's extra installed with it (``flask`` -> ``analytiq_migrations[flask]``).
    extra: str = ""
    #: A legacy app's environment: installing the wheel must move nothing it had.
    frozen: bool = False
    #: What pytest runs (default: the whole suite).
    tests: List[str] = field(default_factory=lambda: ["tests"])
    #: The test tools (default: TEST_TOOLS); installed with the pins.
    tools: Optional[List[str]] = None

    @property
    def label(self) -> str:
        return self.name or self.python


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

#: (prometheus-client parses the metrics file; opentelemetry-sdk records the spans)
TEST_TOOLS = ["pytest>=7.4", "mongomock>=4.1", "tomli>=1.1", "prometheus-client>=0.8",
              "opentelemetry-sdk>=1.0"]

#: The packages sdists of the framework lanes' era need to build (flask-mongoengine 0.9.5
#: has only an sdist whose setup_requires builds wheels).
BUILD_TOOLS = ["wheel"]

#: A Flask portal of the Flask 1.x era (issue: "drop into a legacy app"): Flask 1.1.4 with
#: the Werkzeug / Jinja2 / itsdangerous / MarkupSafe / click versions it needs,
#: flask-mongoengine 0.9.5 on MongoEngine 0.20 and pymongo 3.10.1 (the library's floor),
#: Flask-PyMongo, Flask-Script, gunicorn, and its test suite's pytest 4.6.
FLASK_PINS = {
    "Flask==1.1.4": "1.1.4", "Werkzeug==0.16.1": "0.16.1", "Jinja2==2.11.3": "2.11.3",
    "itsdangerous==1.1.0": "1.1.0", "MarkupSafe==1.1.1": "1.1.1", "click==7.1.2": "7.1.2",
    "flask-mongoengine==0.9.5": "0.9.5", "Flask-WTF==0.14.3": "0.14.3",
    "WTForms==2.3.3": "2.3.3", "mongoengine==0.20.0": "0.20.0", "pymongo==3.10.1": "3.10.1",
    "Flask-PyMongo==2.3.0": "2.3.0", "Flask-Script==2.0.6": "2.0.6",
    "gunicorn==20.1.0": "20.1.0", "pytest==4.6.11": "4.6.11",
}

#: A Django 3.2 system on django-mongoengine / MongoEngine 0.23 and pymongo 3.11.2.
DJANGO_PINS = {
    "Django==3.2.25": "3.2.25", "django-mongoengine==0.5.4": "0.5.4",
    "mongoengine==0.23.1": "0.23.1", "pymongo==3.11.2": "3.11.2",
}

FRAMEWORK_LANES = [
    # The host suite runs under the app's own pytest 4.6, and so do these tests.
    Lane("3.8", FLASK_PINS, name="flask", extra="flask", frozen=True,
         tests=["tests/test_flask.py", "tests/test_flask_startup.py",
                "tests/test_flask_discovery.py", "tests/test_pytest_plugin.py",
                "tests/test_foreign_records.py"],
         tools=["mongomock>=4.1", "tomli>=1.1"]),
    Lane("3.8", DJANGO_PINS, name="django", extra="django", frozen=True,
         tests=["tests/test_django.py", "tests/test_foreign_records.py"],
         tools=["pytest>=7.4", "tomli>=1.1"]),
]

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
    venv = LANES_DIR / (lane.name or f"py{lane.python.replace('.', '')}")
    if venv.exists():
        shutil.rmtree(venv)
    if sh([python, "-m", "venv", str(venv)]):
        return "could not create the venv"
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if lane.frozen and sh([*pip, *BUILD_TOOLS]):
        return "could not install the build tools"
    tools = TEST_TOOLS if lane.tools is None else lane.tools
    if sh([*pip, *lane.pins, *tools]):
        return "could not install the pins"
    before = freeze(py)
    if sh([*pip, f"{wheel}[{lane.extra}]" if lane.extra else str(wheel)]):
        return "could not install the wheel next to the pins"
    after = freeze(py)
    if lane.frozen:
        moved = moved_packages(before, after)
        if moved:
            return "installing the wheel moved " + ", ".join(moved)
        print(f"pip freeze: none of the {len(before)} packages moved", flush=True)
    check = ("import sys, pymongo, pydantic, importlib.metadata as m; "
             "print(sys.version.split()[0], 'pymongo', pymongo.version, 'pydantic', "
             "pydantic.VERSION, 'tenacity', m.version('tenacity'))")
    versions = subprocess.check_output([py, "-c", check], text=True).split()
    print("lane versions:", " ".join(versions), flush=True)
    got = dict(zip(versions[1::2], versions[2::2]))
    for requirement, prefix in lane.pins.items():
        name = requirement.split("=")[0].split(">")[0].split("<")[0]
        # Any pinned package, as pip freeze lists it (``Flask==1.1.4``).
        got.setdefault(name, after.get(name.lower().replace("_", "-"), "").partition("==")[2])
        if prefix and not got.get(name, "").startswith(prefix):
            return f"installing the wheel changed {name} to {got.get(name)} (pinned {requirement})"

    with embedded_server() as rs, embedded_server(standalone=True) as standalone:
        uris = [rs.uri, standalone.uri]
        if tuple(int(p) for p in got["pymongo"].split(".")[:2]) < (3, 11):
            # pymongo before 3.11 has no directConnection (a single host is direct there).
            uris = [uri.replace("?directConnection=true", "") for uri in uris]
        env = {**os.environ, "MONGODB_URI": uris[0], "MONGODB_STANDALONE_URI": uris[1],
               "PYTHONDONTWRITEBYTECODE": "1"}
        with tempfile.TemporaryDirectory() as scratch:
            Path(scratch, "0001_smoke.py").write_text(SMOKE_MIGRATION)
            cli = str(venv / "bin" / "analytiq-migrations")
            if sh([cli, "--uri", uris[0], "--database", "lane_smoke", "--migrations", scratch,
                   "up"], env=env):
                return "`analytiq-migrations up` from the installed wheel failed"
        if sh([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *lane.tests], env=env,
              cwd=ROOT):
            return "tests failed"
    return ""


def freeze(py: str) -> Dict[str, str]:
    """``pip freeze`` of a lane's venv: name (normalized) -> the line pip prints."""
    out = subprocess.check_output([py, "-m", "pip", "freeze", "--disable-pip-version-check"],
                                  text=True)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return {line.split("==")[0].split(" @ ")[0].lower().replace("_", "-"): line
            for line in lines}


def moved_packages(before: Dict[str, str], after: Dict[str, str]) -> List[str]:
    """The packages of ``before`` that ``after`` changed or removed (``a==1 -> a==2``)."""
    return [f"{line} -> {after.get(name, 'removed')}" for name, line in sorted(before.items())
            if after.get(name) != line]


def main(argv: List[str]) -> int:
    lanes = LANES + FRAMEWORK_LANES
    wanted = [lane for lane in lanes if not argv or lane.label in argv]
    if not wanted:
        print(f"no such lane: {' '.join(argv)} "
              f"(lanes: {', '.join(lane.label for lane in lanes)})")
        return 2
    LANES_DIR.mkdir(exist_ok=True)
    wheel = build_wheel()
    results = []
    for lane in wanted:
        started = time.monotonic()
        print(f"\n---------- lane {lane.label} (Python {lane.python}): "
              f"{' '.join(lane.pins)} ----------", flush=True)
        failure = run_lane(lane, wheel)
        results.append((lane, failure, time.monotonic() - started))
    print("\n---------- lanes ----------")
    for lane, failure, seconds in results:
        print(f"{lane.label:6} Python {lane.python:5} {' '.join(lane.pins)[:55]:55} "
              f"{'ok' if not failure else 'FAILED: ' + failure} ({seconds:.0f} s)")
    return 1 if any(failure for _, failure, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
