"""Checksums of migration source code, blind to formatting, comments and docstrings.

The hash is taken over the token stream of the source, not over bytecode (a stale
``.pyc`` must not hide an edit) and not over ``ast.dump`` (its output changes between
Python versions, which would make every applied migration "drift" on an interpreter
upgrade). Tokens are stable across Python versions; string literals are compared by
value so that ``'x'`` and ``"x"`` are the same code.
"""

from __future__ import annotations

import ast
import hashlib
import io
import textwrap
import tokenize

_SKIPPED = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}
# Python 3.12+ splits f-strings into several tokens; we keep them as one raw slice.
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    """Positions (line, column) where docstrings begin."""
    starts: set[tuple[int, int]] = set()
    for node in ast.walk(tree):
        if isinstance(
            node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        ) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                starts.add((first.value.lineno, first.value.col_offset))
    return starts


def _normal_string(text: str) -> str:
    """A string literal by value (quote style and escapes do not matter)."""
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


def normalized_tokens(source: str) -> list[str]:
    """The source as a list of significant tokens; raises ``SyntaxError`` on bad code."""
    source = textwrap.dedent(source)
    docstrings = _docstring_starts(ast.parse(source))
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    fstring_depth = 0
    fstring_start: tuple[int, int] = (0, 0)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if _FSTRING_START is not None and tok.type == _FSTRING_START:
            if fstring_depth == 0:
                fstring_start = tok.start
            fstring_depth += 1
            continue
        if fstring_depth:
            if tok.type == _FSTRING_END:
                fstring_depth -= 1
                if fstring_depth == 0:
                    out.append(_slice(lines, fstring_start, tok.end))
            continue
        if tok.type in _SKIPPED:
            continue
        if tok.type == tokenize.STRING:
            if tok.start in docstrings:
                continue
            out.append(_normal_string(tok.string))
        elif tok.type == tokenize.NEWLINE:
            if out and out[-1] not in ("\n", "{", "}"):
                out.append("\n")
        elif tok.type == tokenize.INDENT:
            out.append("{")
        elif tok.type == tokenize.DEDENT:
            out.append("}")
        else:
            out.append(tok.string)
    return out


def _slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    """The raw source text between two token positions."""
    (l1, c1), (l2, c2) = start, end
    if l1 == l2:
        return lines[l1 - 1][c1:c2]
    parts = [lines[l1 - 1][c1:], *lines[l1 : l2 - 1], lines[l2 - 1][:c2]]
    return "".join(parts)


def raw_checksum(data: bytes, checksum: str) -> str:
    """sha256 (hex) of a file's bytes bound to its normalized ``checksum``: a record whose
    value matches holds that checksum for these very bytes, so they need no tokenizing."""
    return hashlib.sha256(checksum.encode() + b"\0" + data).hexdigest()


def source_checksum(source: str) -> str:
    """sha256 (hex) of the normalized source text."""
    digest = hashlib.sha256()
    for token in normalized_tokens(source):
        digest.update(token.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()
