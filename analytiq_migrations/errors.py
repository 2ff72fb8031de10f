"""The exception hierarchy: everything the library raises is a ``MigrationError``.

Each error carries the version it concerns (when there is one) and a ``hint``: the
next thing an operator should do. ``str(error)`` includes both, so a log line or a
CLI message is enough to act on at 3 a.m.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional


class MigrationError(Exception):
    """Root of every error this library raises."""

    #: Exit code the CLI uses for this kind of error (the contract's table).
    exit_code = 1
    #: What the run did before it stopped: a ``RunReport`` whose last step is the failed
    #: one (set by ``upgrade``/``downgrade``; ``None`` for errors raised before any step).
    report: Any = None
    #: Where the migration's own code failed (``0005_backfill.py:41``), when known.
    location: Optional[str] = None
    #: The migration's traceback, credentials removed (the CLI prints it with ``-v``).
    trace: Optional[str] = None

    def __init__(
        self, message: str, *, version: Optional[int] = None, hint: Optional[str] = None
    ) -> None:
        self.message = redact(message)
        self.version = version
        self.hint = redact(hint) if hint else hint
        super().__init__(self.__str__())

    def locate(self, location: Optional[str], trace: Optional[str]) -> None:
        """Name where the migration failed: ``location`` ends the message's first line."""
        self.trace = trace
        if location is None or self.location is not None:
            return
        self.location = location
        first, newline, rest = self.message.partition("\n")
        self.message = f"{first} ({location}){newline}{rest}"
        self.args = (self.__str__(),)

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text}\n  -> {self.hint}"
        return text


class MigrationDefinitionError(MigrationError):
    """A migration cannot be loaded or is defined wrongly (file, class, version)."""

    exit_code = 2


class ConfigurationError(MigrationError):
    """Bad options: missing URI or database, unknown option value, bad target."""

    exit_code = 2


class ConnectionFailedError(MigrationError):
    """The server cannot be reached (or refused us) within the allotted time."""

    exit_code = 5


class TransactionsUnsupportedError(ConfigurationError):
    """``transactions="always"`` was asked for but the server cannot do them."""


class LockBusyError(MigrationError):
    """Another run holds the migration lock."""

    exit_code = 3


class LockLostError(MigrationError):
    """This run's lease expired or was taken over while it was working."""

    exit_code = 3


class MigrationFailedError(MigrationError):
    """A migration's ``up``/``down`` raised or returned ``False``."""

    exit_code = 1


class CommitUnknownError(MigrationError):
    """A commit's reply was lost and its outcome could not be read back: it may have
    succeeded. Nothing that could contradict a commit was written."""

    exit_code = 1


class ValidationProblemError(MigrationError):
    """The database and the code disagree; ``validate()`` lists the details."""

    exit_code = 4


class ChecksumDriftError(ValidationProblemError):
    """An applied migration's code changed since it was applied."""


class MissingMigrationError(ValidationProblemError):
    """The database records a version whose code is gone."""


class OutOfOrderError(ValidationProblemError):
    """A pending version sits below the highest applied one."""


class InterruptedMigrationError(ValidationProblemError):
    """A run died mid-migration and the migration cannot be safely re-run."""


class FailedMigrationError(ValidationProblemError):
    """The last attempt at a version failed after partly applying (non-transactional)."""


class CorruptRecordError(ValidationProblemError):
    """A stored record does not have the shape this library writes."""


class InvalidData(MigrationError, ValueError):
    """Data that does not fit a record model (``Model.model_validate``); ``errors()`` are
    pydantic's (``loc``, ``msg``), first error first."""

    def __init__(self, model: str, errors: List[Dict[str, Any]]) -> None:
        self._errors = errors
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        #: The first error's field path (``progress.eta``; ``document`` for the whole) and why.
        self.where = ".".join(str(p) for p in first["loc"]) or "document"
        self.reason = str(first["msg"])
        super().__init__(f"Invalid {model}: {self.where}: {self.reason}")

    def errors(self) -> List[Dict[str, Any]]:
        """What pydantic found."""
        return self._errors


class IrreversibleMigrationError(MigrationError):
    """A downgrade would need a migration that has no ``down``."""

    exit_code = 1


#: URI options whose values are secrets, and how far a value runs (to the next option).
_SECRET_OPTION = re.compile(
    r"\b(tlsCertificateKeyFilePassword|sslPEMKeyPassword|sslClientCertificateKeyPassword|"
    r"authMechanismProperties|password|pwd)=[^&\s'\"]*",
    re.IGNORECASE,
)

#: Where a duplicate-key error quotes the key: a value from the user's data follows.
_DUP_KEY = "dup key: "


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it, and the values of secret URI
    options, replaced by ``***``.

    The user information of a URI runs from its ``://`` to the *last* ``@`` of that
    whitespace-delimited word, so a password with an unescaped ``/`` or ``@`` is hidden
    whole (a word with more than one ``@`` may lose a little more than the password).
    Not when it opens with ``[``: that is the ``mongodb://[user:password@]host``
    placeholder of help texts. Each ``://`` is looked at once, and each word's last
    ``@`` found from it: linear in the length of ``text``.
    """
    parts = re.split(r"(\s+)", text)
    for index, word in enumerate(parts):
        if "://" in word and "@" in word:
            parts[index] = _redact_word(word)
    return _SECRET_OPTION.sub(lambda m: f"{m.group(1)}=***", "".join(parts))


def _redact_word(word: str) -> str:
    """One word with its URIs' user information replaced (see ``redact``): whatever
    lies between a ``://`` and the word's last ``@`` after it."""
    out, position, last_at = [], 0, word.rfind("@")
    while True:
        start = word.find("://", position) + 3
        if start < 3 or last_at < start:
            break
        at = last_at
        if word.startswith("[", start):  # the help texts' placeholder
            out.append(word[position:start])
        else:
            out.append(word[position:start] + "***@")
            start = at + 1
        position = start
    out.append(word[position:])
    return "".join(out)


def error_message(exc: BaseException, limit: int = 2000) -> str:
    """What an error says, fit to store or print: for a server error its code and
    message only, never the raw reply (``$clusterTime`` with its signature bytes,
    ``keyValue``, the ``full error`` document); a duplicate key's value left out; no
    credentials; at most ``limit`` characters."""
    details = getattr(exc, "details", None)
    text = scrub(str(exc))
    if isinstance(details, dict):
        errors = details.get("writeErrors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            details = errors[0]  # a bulk write: its first failure says what went wrong
        errmsg = details.get("errmsg")
        code = details.get("code", getattr(exc, "code", None))
        text = scrub(str(errmsg)) if errmsg else text
        if isinstance(code, int) and not isinstance(code, bool):
            text = f"{text} (code {code})"
    return text if len(text) <= limit else text[:limit] + "..."


def scrub(text: str) -> str:
    """A message without pymongo's ``full error`` document, a duplicate key's value or
    credentials."""
    return redact(_hide_dup_keys(text.split(", full error:")[0]))


def _hide_dup_keys(text: str) -> str:
    """Each ``dup key: { ... }`` as ``dup key: {...}``: the braces matched (quoted text
    skipped), so what follows the key stays; an unclosed key is hidden to the line's end."""
    out, position = [], 0
    while True:
        start = text.find(_DUP_KEY, position)
        if start < 0:
            break
        out.append(text[position:start] + _DUP_KEY + "{...}")
        position = _key_end(text, start + len(_DUP_KEY))
    out.append(text[position:])
    return "".join(out)


def _key_end(text: str, start: int) -> int:
    """Where the key document beginning at ``start`` ends (the line's end if it does not)."""
    depth, quoted, index = 0, False, start
    while index < len(text) and text[index] != "\n":
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
        elif depth == 0 and char != " ":
            break  # not a document: hide to the line's end
        index += 1
    end = text.find("\n", start)
    return len(text) if end < 0 else end


def first_line(exc: BaseException) -> str:
    """The first line of an error message (see ``error_message``), cut to a log line."""
    return error_message(exc, limit=2000).split("\n")[0][:300]
