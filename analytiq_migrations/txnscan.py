"""Find, in a migration's source, the calls a transaction refuses, before anything runs.

``validate`` and ``plan`` use it so that a history's refusals show up all at once instead of
one ``up`` at a time. It reads the code (``ast``), never runs it, and judges each call with
the very rule the session-bound ``db`` applies at run time (:func:`txnrules.refusal`), so the
two never disagree: what is found here is refused at run time.

What it follows, from the ``db`` parameter of ``up``/``down`` (and of module-level helpers
they pass ``db`` to): attributes and ``[...]`` (``db.users``, ``db["users"]``),
``get_collection`` / ``create_collection`` / ``with_options``, ``.database``, and local names
assigned from those. What it cannot see (a handle passed through a data structure, a call
built with ``getattr``, the app's own models) is left to the run-time check.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .txnrules import Catalog, refusal

#: Database attributes that are not collections (``db.client``, ``db.name``, ...).
NOT_COLLECTIONS = frozenset({
    "client", "name", "codec_options", "read_preference", "write_concern", "read_concern",
})

#: Calls on a handle that return a handle of the same kind.
SAME_HANDLE = frozenset({"with_options"})

#: How deep helper calls are followed (``up`` -> helper -> helper ...): migrations keep
#: their helpers shallow, and a bound keeps recursion among helpers finite.
MAX_HELPER_DEPTH = 4

#: A handle: ("db", None) for the database, ("coll", name) for a collection (name ``None``
#: when it is not written literally).
Handle = Tuple[str, Optional[str]]
DB: Handle = ("db", None)


@dataclass(frozen=True)
class Finding:
    """One call the transaction would refuse."""

    line: int
    #: The call as written (``db.users.drop()``).
    call: str
    #: Why MongoDB refuses it (the run-time rule's words).
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def scan(source: str, direction: str, *, database: str, wire_version: int,
         existing: Optional[Any] = None) -> List[Finding]:
    """The refused calls of ``up`` or ``down`` (``direction``) in a migration's ``source``.

    ``existing``: a zero-argument callable returning the names of the collections that
    exist (read only if an index build needs it); ``None``: index builds on collections
    are not judged. Raises ``SyntaxError`` for source that does not parse."""
    tree = ast.parse(source)
    helpers = {node.name: node for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    entry = _entry(tree, direction)
    if entry is None:
        return []
    scanner = _Scanner(source, helpers, database, wire_version, existing)
    first = 1 if _is_method(tree, entry) else 0
    params = [a.arg for a in entry.args.args]
    if len(params) <= first:
        return []
    scanner.function(entry, {params[first]: DB}, depth=0)
    return scanner.findings


def _entry(tree: ast.Module, direction: str) -> Optional[ast.FunctionDef]:
    """``up``/``down``: a module-level function, else a method of the file's one class."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == direction:
            return node
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == direction:
                    return item
    return None


def _is_method(tree: ast.Module, function: ast.FunctionDef) -> bool:
    """Whether ``function`` is defined in a class (its first parameter is ``self``)."""
    return not any(node is function for node in tree.body)


class _Scanner:
    """Walks functions in source order, tracking which names hold handles."""

    def __init__(self, source: str, helpers: Dict[str, Any], database: str,
                 wire_version: int, existing: Optional[Any]) -> None:
        self.source, self.helpers, self.database = source, helpers, database
        self.findings: List[Finding] = []
        self._existing = existing
        # One catalog per scan: a collection created earlier in the step may get indexes.
        self.catalog = Catalog(loader=self._load, wire_version=wire_version)
        self._visited: Set[Tuple[str, Tuple[Tuple[str, Handle], ...]]] = set()

    def _load(self) -> Dict[str, Any]:
        """Existing collections (every name, when they are not to be judged)."""
        if self._existing is None:
            return {}
        return {name: {} for name in self._existing()}

    def function(self, node: Any, names: Dict[str, Handle], depth: int) -> None:
        """Scan one function's body with ``names`` bound to handles."""
        key = (node.name, tuple(sorted(names.items(), key=lambda kv: kv[0])))
        if key in self._visited or depth > MAX_HELPER_DEPTH:
            return
        self._visited.add(key)
        scope = dict(names)
        for statement in node.body:
            self._statement(statement, scope, depth)

    def _statement(self, statement: ast.stmt, scope: Dict[str, Handle], depth: int) -> None:
        """Calls in ``statement`` in source order; then the names it binds. Blocks (``if``,
        ``for``, ``with``, ``try``...) are walked statement by statement."""
        children = list(ast.iter_child_nodes(statement))
        if any(isinstance(child, ast.stmt) for child in children):
            for child in children:
                if isinstance(child, ast.stmt):
                    self._statement(child, scope, depth)
                elif isinstance(child, ast.ExceptHandler):
                    for inner in child.body:
                        self._statement(inner, scope, depth)
                elif not isinstance(child, (ast.arguments, ast.expr_context)):
                    self._calls_in(child, scope, depth)
            return
        self._calls_in(statement, scope, depth)
        if isinstance(statement, ast.Assign):
            handle = self._handle(statement.value, scope)
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    if handle is None:
                        scope.pop(target.id, None)
                    else:
                        scope[target.id] = handle

    def _calls_in(self, node: ast.AST, scope: Dict[str, Handle], depth: int) -> None:
        """Judge every call within ``node``, in source order."""
        calls = sorted((n for n in ast.walk(node) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))
        for call in calls:
            self._call(call, scope, depth)
        if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            handle = self._handle(node.context_expr, scope)
            if handle is not None:
                scope[node.optional_vars.id] = handle

    def _call(self, call: ast.Call, scope: Dict[str, Handle], depth: int) -> None:
        """Judge one call: a method on a handle, or a helper given a handle."""
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.helpers:
            bound = self._helper_names(self.helpers[func.id], call, scope)
            if bound:
                self.function(self.helpers[func.id], bound, depth + 1)
            return
        if not isinstance(func, ast.Attribute):
            return
        handle = self._handle(func.value, scope)
        if handle is None:
            return
        kind, name = handle
        method = func.attr
        if kind == "coll" and name is None and method in ("create_index", "create_indexes"):
            return  # which collection is not written here: left to the run-time check
        args, kwargs = _arguments(call)
        if method in ("command", "cursor_command") and \
                (args[0] if args else kwargs.get("command")) is None:
            return  # the command is built at run time: left to the run-time check
        reason = refusal(self.database, name if kind == "coll" else None, method, args,
                         kwargs, self.catalog) if kind == "db" or name is not None else \
            refusal(self.database, "?", method, args, kwargs, self.catalog)
        if reason is None:
            return
        if kind == "coll" and name is None:
            reason = reason.replace("'?'", f"'{self._text(func.value)}'")
        self.findings.append(Finding(line=call.lineno, call=self._text(call), reason=reason))

    def _helper_names(self, helper: Any, call: ast.Call,
                      scope: Dict[str, Handle]) -> Dict[str, Handle]:
        """The helper's parameters that receive handles from ``call``."""
        params = [a.arg for a in helper.args.args]
        bound: Dict[str, Handle] = {}
        for param, arg in zip(params, call.args):
            handle = self._handle(arg, scope)
            if handle is not None:
                bound[param] = handle
        for keyword in call.keywords:
            handle = self._handle(keyword.value, scope)
            if keyword.arg is not None and keyword.arg in params and handle is not None:
                bound[keyword.arg] = handle
        return bound

    def _handle(self, node: Optional[ast.expr], scope: Dict[str, Handle]) -> Optional[Handle]:
        """What handle ``node`` evaluates to, when it is one."""
        if isinstance(node, ast.Name):
            return scope.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._handle(node.value, scope)
            return _child(base, node.attr)
        if isinstance(node, ast.Subscript):
            base = self._handle(node.value, scope)
            key = _literal(_subscript_key(node))
            return _child(base, key) if isinstance(key, str) else \
                (("coll", None) if base is not None else None)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = self._handle(node.func.value, scope)
            if base is None:
                return None
            if node.func.attr in SAME_HANDLE:
                return base
            if base == DB and node.func.attr in ("get_collection", "create_collection"):
                name = _literal(node.args[0]) if node.args else None
                return ("coll", name if isinstance(name, str) else None)
        return None

    def _text(self, node: ast.AST) -> str:
        """The source text of ``node``, cut to one readable line."""
        text = ast.get_source_segment(self.source, node) or "the call"
        text = " ".join(text.split())
        return text if len(text) <= 80 else text[:77] + "..."


def _child(base: Optional[Handle], attr: Any) -> Optional[Handle]:
    """The handle ``base.attr`` / ``base[attr]``."""
    if base is None or not isinstance(attr, str):
        return None
    kind, name = base
    if kind == "db":
        return None if attr in NOT_COLLECTIONS else ("coll", attr)
    if attr == "database":
        return DB
    if attr in NOT_COLLECTIONS or attr.startswith("_"):
        return None
    return ("coll", f"{name}.{attr}" if name is not None else None)


def _subscript_key(node: ast.Subscript) -> Optional[ast.expr]:
    """The index expression (Python 3.8 wraps it in ``ast.Index``)."""
    key: Any = node.slice
    inner: Optional[ast.expr] = getattr(key, "value", key) if type(key).__name__ == "Index" \
        else key
    return inner


def _literal(node: Optional[ast.expr]) -> Any:
    """A literal's value; for a dict with literal keys, those keys (values unknown)."""
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        pass
    if isinstance(node, ast.Dict):
        keys = [_literal(k) for k in node.keys]
        if keys and all(isinstance(k, str) for k in keys):
            return {k: None for k in keys}
    if isinstance(node, ast.List):
        return [_literal(item) for item in node.elts]
    return None


def _arguments(call: ast.Call) -> Tuple[Sequence[Any], Dict[str, Any]]:
    """The call's arguments as far as they are literal (``None`` where they are not)."""
    args = [_literal(a) for a in call.args if not isinstance(a, ast.Starred)]
    kwargs = {k.arg: _literal(k.value) for k in call.keywords if k.arg is not None}
    return args, kwargs


def source_of(migration: Any) -> Optional[str]:
    """The source text ``scan`` reads for ``migration`` (its file, else its class)."""
    raw = getattr(migration, "source_bytes", None)
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    text = getattr(migration, "_source", None)
    if isinstance(text, str):
        return text
    import inspect
    import textwrap

    try:
        return textwrap.dedent(inspect.getsource(type(migration)))
    except (OSError, TypeError):
        return None  # built at run time (exec, a REPL): nothing to read


def refusals_of(migration: Any, direction: str, *, database: str, wire_version: int,
                existing: Optional[Any] = None) -> List[Finding]:
    """``scan`` of ``migration``'s ``up``/``down`` (nothing when its source is not to be had)."""
    source = source_of(migration)
    if source is None:
        return []
    try:
        return scan(source, direction, database=database, wire_version=wire_version,
                    existing=existing)
    except SyntaxError:
        return []  # loading the migration reports it, with its file and line
