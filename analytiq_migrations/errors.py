"""The exception hierarchy: everything the library raises is a ``MigrationError``.

Each error carries the version it concerns (when there is one) and a ``hint``: the
next thing an operator should do. ``str(error)`` includes both, so a log line or a
CLI message is enough to act on at 3 a.m.
"""

from __future__ import annotations

import re
from typing import Optional


class MigrationError(Exception):
    """Root of every error this library raises."""

    #: Exit code the CLI uses for this kind of error (the contract's table).
    exit_code = 1

    def __init__(
        self, message: str, *, version: Optional[int] = None, hint: Optional[str] = None
    ) -> None:
        self.message = redact(message)
        self.version = version
        self.hint = redact(hint) if hint else hint
        super().__init__(self.__str__())

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


class IrreversibleMigrationError(MigrationError):
    """A downgrade would need a migration that has no ``down``."""

    exit_code = 1


#: ``user:password@`` after any URI scheme (a MongoDB URI with a mistyped scheme still
#: carries a real password). Not when it opens with ``[``: that is the
#: ``mongodb://[user:password@]host`` placeholder of help texts, and a real user name
#: cannot start with an unescaped bracket (RFC 3986).
_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)(?!\[)(?P<userinfo>[^@/\s]+)@", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with the credentials of any URI in it replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)


def first_line(exc: BaseException) -> str:
    """The first line of an error message (the server's errmsg if any), no credentials."""
    details = getattr(exc, "details", None)
    errmsg = details.get("errmsg") if isinstance(details, dict) else None
    text = str(errmsg or exc).split("\n")[0]
    if len(text) > 300:
        text = text[:300] + "..."
    return redact(text)
