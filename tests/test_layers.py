"""The package's shape: imports point one way (down the layers below), and no module is
longer than one sitting's reading.

A module may import modules of its own layer or of a lower one, never of a higher one.
Every import counts, at the top of a module or inside a function, relative (``from .x
import y``) or absolute (``import analytiq_migrations.x``), with one exception: imports
under ``if TYPE_CHECKING:`` do not. They never run, so they cannot make a cycle at run
time, and they are how a lower module names a higher one's types in annotations (the
package's ``__init__`` names ``Migrator`` and ``Fleet`` that way and loads them on first
use). Imports by name at run time (``importlib.import_module``) are not seen here.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Sequence, Set, Tuple

import pytest

import analytiq_migrations

PACKAGE = Path(analytiq_migrations.__file__).parent
ROOT = "analytiq_migrations"

#: Bottom first. A module is named by its path in the package, dots for slashes
#: (``contrib.flask``); a package by its directory (``contrib``), the root package
#: ``__init__``. ``*`` matches any part of a name.
LAYERS: List[Set[str]] = [
    # The error root, and the package itself: its own imports are the errors; its public
    # names (Migrator, Fleet, the records) load on first use.
    {"errors", "__init__"},
    # Helpers that know nothing of migrations or runs: checksums, hints, times, the
    # server's facts, transactions' rules, the watched database, retries, spans, BSON values.
    {"appddl", "budget", "checksum", "dbproxy", "hints", "idorder", "otel", "outside",
     "reach", "retry", "server", "snapshot", "stored", "throttle", "timetext", "txnrules",
     "txnscan", "valuetypes", "writes", "connect"},
    # The data shapes: what is stored and returned, and what a running migration reaches.
    {"checkpoints", "context", "modelbase", "pauses", "progress", "records", "repairnotes"},
    # Migrations: the class, its batch_update, loading them from files, lists, packages.
    {"batch", "checkwalk", "filemigration", "loader", "locate", "migration", "noop"},
    # Decisions (plan, targets, refusals, lease rules, what the server can do, drift, what a
    # transaction would refuse) and storage (records, the lock).
    {"capabilities", "drift", "leaserules", "lifecycle", "lock", "plan", "refusals",
     "startonce", "store", "targets", "txnpending", "unlock"},
    # One step of a run.
    {"runsteps", "step", "stepenv", "stepfaults", "swallowed"},
    # The run's parts: what every locked run needs, the bookkeeping moves, the run loop.
    {"bookkeeping", "runkit", "runloop"},
    # The run: Migrator, and its dry run.
    {"rehearsal", "runner"},
    # Built on Migrator: fleets, the test kit, settings from files and the environment,
    # the throw-away server.
    {"checks", "config", "fleet", "fleetdriver", "fleetreport", "pyprojectfile", "testing"},
    # The tools beside the command line: the pytest plugin, ``verify``, the local server,
    # new migration files, the metrics file, the demo and its example migrations.
    {"demo", "examples", "examples.*", "localserver", "metrics", "pytest_plugin",
     "templates", "verify"},
    # The command line (``cli``, its parts ``cli_*``, the cron verbs).
    {"cli", "cli_*", "cronverbs", "fastexit"},
    # Above the command line: ``python -m``, the Flask and Django integrations.
    {"__main__", "contrib", "contrib.*"},
]

#: Longest module, in lines: readable in one sitting.
MAX_LINES = 450

#: Modules still over MAX_LINES, each while it is being split; remove a name once its
#: module is under the limit (the test says so).
TOO_LONG_FOR_NOW: Set[str] = set()


def module_names(root: Path) -> Dict[str, Path]:
    """Every module of the package under ``root``, by name (see ``LAYERS``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_only(tree: ast.AST) -> Set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    inside: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING") or
                (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def imports_of(name: str, source: str, known: Set[str],
               package: bool) -> Iterator[Tuple[str, int, str]]:
    """``(imported module, line, statement)`` for each run-time import of a package
    module by the module ``name`` (``package``: an ``__init__.py``) whose text is
    ``source``."""
    tree = ast.parse(source)
    here = [] if name == "__init__" else name.split(".")
    inside = here if package or name == "__init__" else here[:-1]
    skipped = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(inside):
                    continue  # above the package: not one of its modules
                module = inside[:len(inside) - node.level + 1] + \
                    (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == ROOT:
                module = node.module.split(".")[1:]
            else:
                continue
            targets = [_member(module, alias.name, known) for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".")[1:] for alias in node.names
                       if alias.name.split(".")[0] == ROOT]
        else:
            continue
        statement = " ".join((ast.get_source_segment(source, node) or "").split())
        for target in targets:
            yield ".".join(target) or "__init__", node.lineno, statement


def _member(module: List[str], member: str, known: Set[str]) -> List[str]:
    """``from MODULE import MEMBER``: the submodule MEMBER if there is one, else MODULE."""
    sub = ".".join([*module, member])
    return [*module, member] if sub in known else module


def layer_of(name: str, layers: Sequence[Set[str]]) -> int:
    """The index of the layer that lists ``name`` (or a pattern matching it); -1: none."""
    for index, layer in enumerate(layers):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in layer):
            return index
    return -1


def upward_imports(sources: Dict[str, str], layers: Sequence[Set[str]],
                   packages: FrozenSet[str] = frozenset()) -> List[str]:
    """Every import of a module from a higher layer, and every module in no layer
    (``sources``: each module's text by name; ``packages``: those that are packages)."""
    known = set(sources)
    found = []
    for name in sorted(sources):
        level = layer_of(name, layers)
        if level < 0:
            found.append(f"{name} is in no layer: put {name} in a layer (LAYERS)")
            continue
        for target, line, statement in imports_of(name, sources[name], known, name in packages):
            above = layer_of(target, layers)
            if above > level:
                found.append(f"{name} (layer {level}) imports {target} (layer {above}) at "
                             f"line {line}: `{statement}`")
    return found


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    modules = module_names(PACKAGE)
    sources = {name: path.read_text(encoding="utf-8") for name, path in modules.items()}
    packages = frozenset(name for name, path in modules.items() if path.name == "__init__.py")
    problems = upward_imports(sources, LAYERS, packages)
    assert not problems, "Imports against the layers (move the function down, or the " \
        "module up):\n" + "\n".join(problems)


def test_every_layer_entry_names_a_module() -> None:
    names = set(module_names(PACKAGE))
    stale = sorted(pattern for layer in LAYERS for pattern in layer
                   if not any(fnmatch.fnmatchcase(name, pattern) for name in names))
    assert not stale, f"LAYERS lists modules that do not exist: {stale}"


def test_no_module_is_in_two_layers() -> None:
    for name in module_names(PACKAGE):
        homes = [i for i, layer in enumerate(LAYERS)
                 if any(fnmatch.fnmatchcase(name, pattern) for pattern in layer)]
        assert len(homes) <= 1, f"{name} is in layers {homes}"


def test_no_module_is_longer_than_one_sitting() -> None:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines())
               for name, path in module_names(PACKAGE).items()}
    too_long = sorted(f"{name}.py: {n} lines" for name, n in lengths.items()
                      if n > MAX_LINES and name not in TOO_LONG_FOR_NOW)
    assert not too_long, f"Modules over {MAX_LINES} lines (split them): {too_long}"
    done = sorted(name for name in TOO_LONG_FOR_NOW if lengths.get(name, 0) <= MAX_LINES)
    assert not done, f"Now within {MAX_LINES} lines: remove {done} from TOO_LONG_FOR_NOW"


# -- the check itself ------------------------------------------------------------------------

TOY = [{"errors"}, {"records"}, {"runner"}, {"cli", "contrib", "contrib.*"}]


@pytest.mark.parametrize("statement", [
    "from .runner import Migrator",
    "from . import runner",
    "import analytiq_migrations.runner",
    "from analytiq_migrations.runner import Migrator",
    "from analytiq_migrations import runner",
    "def later():\n    from .runner import Migrator",
])
def test_an_upward_import_is_named_with_its_module_and_line(statement: str) -> None:
    sources = {"errors": "", "records": f"import os\n{statement}\n", "runner": "",
               "cli": ""}
    problems = upward_imports(sources, TOY)
    line = 2 + statement.count("\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"records (layer 1) imports runner (layer 2) at line {line}")


def test_a_type_only_import_does_not_count() -> None:
    sources = {"errors": "", "runner": "", "cli": "",
               "records": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from .runner import Migrator\n"}
    assert upward_imports(sources, TOY) == []


def test_imports_down_and_across_are_fine() -> None:
    sources = {"errors": "", "records": "from .errors import X\n",
               "runner": "from .records import Y\nfrom . import errors\n",
               "cli": "from .runner import Migrator\nfrom .contrib import flask\n",
               "contrib": "", "contrib.flask": "from ..cli import main\nfrom . import other\n",
               "contrib.other": "from ..errors import X\n"}
    assert upward_imports(sources, TOY) == []


def test_relative_imports_resolve_from_where_the_module_sits() -> None:
    sources = {"errors": "", "records": "", "runner": "", "cli": "", "contrib": "",
               "contrib.django": "from ...records import X\nfrom ...cli import main\n",
               "contrib.django.apps": "from .. import flask\nfrom ..django import setup\n",
               "contrib.flask": "from ..runner import Migrator\n"}
    layers = [{"errors"}, {"records", "contrib.django", "contrib.django.*"}, {"runner"},
              {"cli", "contrib", "contrib.flask"}]
    assert upward_imports(sources, layers, frozenset({"contrib", "contrib.django"})) == [
        "contrib.django (layer 1) imports cli (layer 3) at line 2: `from ...cli import main`",
        "contrib.django.apps (layer 1) imports contrib.flask (layer 3) at line 1: "
        "`from .. import flask`",
    ]


def test_a_module_in_no_layer_is_named() -> None:
    sources = {"errors": "", "records": "", "runner": "", "cli": "", "newthing": ""}
    assert upward_imports(sources, TOY) == [
        "newthing is in no layer: put newthing in a layer (LAYERS)"]
