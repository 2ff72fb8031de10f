"""Bounded retries of transient server errors, and the transaction loop built on them.

One budget (:class:`RetryPolicy`) covers everything: bookkeeping writes, whole
transactions (``TransientTransactionError``) and commits
(``UnknownTransactionCommitResult``). The transaction loop is ours rather than
``ClientSession.with_transaction`` so that no error is retried twice over by two
nested loops, and so that every retry is logged with its cause.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from pymongo.errors import (
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from . import otel
from .errors import scrub

try:
    from pymongo.errors import NotPrimaryError
except ImportError:  # pymongo before 3.12 names it NotMasterError
    from pymongo.errors import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        NotMasterError as NotPrimaryError,
    )

if TYPE_CHECKING:
    from tenacity import RetryCallState, Retrying

log = logging.getLogger("analytiq_migrations")

T = TypeVar("T")

#: Longest server message quoted in a log line.
ERROR_TEXT_LIMIT = 200

#: Server error codes that mean "try again shortly" (step-downs, elections, shutdowns,
#: network-level failures): the set pymongo's own retryable-writes logic uses.
TRANSIENT_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 134}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a transient error becomes the caller's problem."""

    #: 5 attempts ride out a primary election (typically 2-12 s) with the waits below,
    #: yet a dead server still fails the run in well under a minute.
    attempts: int = 5
    #: Wall-clock ceiling across all attempts of one operation; kept below the lock
    #: TTL's default of 60 s so a stuck retry cannot outlive the lease it runs under.
    seconds: float = 30.0
    #: First wait, doubled per attempt up to ``max_wait`` (with jitter so that many
    #: pods retrying the same failover do not hit the new primary in lockstep).
    initial_wait: float = 0.2
    max_wait: float = 5.0

    def retrying(self, what: str, predicate: Callable[[BaseException], bool],
                 spent: float = 0.0) -> Retrying:
        """A tenacity ``Retrying`` for ``what`` that retries exceptions ``predicate`` accepts
        (``spent``: seconds of the budget already used)."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

        return Retrying(
            retry=retry_if_exception(predicate),
            stop=stop_after_attempt(max(1, self.attempts)) |
            stop_after_delay(max(0.0, self.seconds - spent)),
            wait=backoff(self.initial_wait, self.max_wait),
            before_sleep=_log_retry(what),
            reraise=True,
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying transient errors within this budget."""
        return self.run(what, is_transient, fn)

    def run(self, what: str, predicate: Callable[[BaseException], bool],
            fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying the errors ``predicate`` accepts within this budget.

        The first attempt runs bare: tenacity (its import, ~5 ms of a short apply, and a
        ``Retrying`` per call) comes in only after a first retryable failure, which it
        then sees as its attempt 1 (logged, waited on) without running ``fn`` again.
        """
        began = time.monotonic()
        try:
            return fn()
        except BaseException as exc:  # the predicate decides; anything else is re-raised
            if self.attempts <= 1 or not predicate(exc):
                raise
            first: list[BaseException] = [exc]

        def again() -> T:
            if first:
                raise first.pop()
            return fn()

        return self.retrying(what, predicate, spent=time.monotonic() - began)(again)


def backoff(initial: float, maximum: float) -> Any:
    """Exponential wait from ``initial`` up to ``maximum``, plus up to ``initial`` of jitter."""
    from tenacity import wait_exponential, wait_random

    # Composed from parts every tenacity >= 8.2 has (wait_exponential_jitter's
    # arguments were renamed in 9.x).
    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)


#: No retries at all: for tests and for callers who retry at a higher level.
NO_RETRY = RetryPolicy(attempts=1, seconds=0.0)


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    """A tenacity ``before_sleep`` hook that logs the cause of each retry."""

    def hook(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: transient error (attempt %d), retrying in %.2fs: %s",
            what,
            state.attempt_number,
            wait,
            describe_error(exc) if exc is not None else "?",
        )
        otel.event("retry", what=what, attempt=state.attempt_number, wait_s=wait,
                   error=describe_error(exc) if exc is not None else "?")

    return hook


def describe_error(exc: BaseException) -> str:
    """One line for a log: the error's type, code and name, and the server's message.

    Never the raw reply: ``str()`` of a pymongo ``OperationFailure`` appends the whole
    server reply (``$clusterTime`` with its signature bytes, ``operationTime``...).
    """
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, OperationFailure):
        details = exc.details if isinstance(exc.details, dict) else {}
        errmsg = details.get("errmsg")
        text = str(errmsg) if errmsg else text.split(", full error:")[0]
        code_name = details.get("codeName")
        if exc.code is not None:
            name = f"{name} {exc.code}" + (f" ({code_name})" if code_name else "")
    text = " ".join(text.split("\n")[0].split())
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + "..."
    return scrub(f"{name}: {text}" if text else name)


def has_label(exc: BaseException, label: str) -> bool:
    """True when ``exc`` is a pymongo error carrying ``label``."""
    return isinstance(exc, PyMongoError) and exc.has_error_label(label)


def is_transient(exc: BaseException) -> bool:
    """True for errors where the same request may succeed if sent again."""
    if isinstance(exc, ServerSelectionTimeoutError):
        # The driver already waited its whole server-selection budget for a server;
        # waiting that long again per attempt would only make a dead host hang a cron job.
        return False
    if isinstance(exc, (ConnectionFailure, NotPrimaryError)):
        return True
    if has_label(exc, "RetryableWriteError") or has_label(exc, "TransientTransactionError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in TRANSIENT_CODES


def is_transient_transaction(exc: BaseException) -> bool:
    """True when the whole transaction should be run again."""
    return has_label(exc, "TransientTransactionError")


def run_transaction(
    session: Any,
    body: Callable[[Any], T],
    policy: RetryPolicy,
    what: str,
    *,
    options: Optional[dict[str, Any]] = None,
    retry_on: Callable[[BaseException], bool] = lambda exc: is_transient_transaction(exc),
) -> T:
    """Run ``body(session)`` in a transaction and commit; retry transient failures
    (``retry_on``: which errors run the whole transaction again)."""

    def attempt() -> T:
        session.start_transaction(**(options or {}))
        try:
            result = body(session)
        except BaseException:
            if session.in_transaction:
                _abort_quietly(session)
            raise
        try:
            policy.run(f"{what}: commit", _unknown_commit, session.commit_transaction)
        except BaseException:
            end_open_transaction(session)
            raise
        return result

    return policy.run(what, retry_on, attempt)


def _unknown_commit(exc: BaseException) -> bool:
    """The commit may or may not have happened: committing again is safe."""
    return has_label(exc, "UnknownTransactionCommitResult")


def end_open_transaction(session: Any) -> None:
    """After a failed commit, make sure the server holds no open transaction for ``session``.

    A commit can fail before the server acted on it, leaving the transaction open; the
    driver then refuses ``abortTransaction``, and the open transaction would block every
    document it wrote (the lock and record included) until the server reaps it. Ending
    the session's operations settles it: a transaction that did commit stays committed.
    """
    try:
        session.client.admin.command("killSessions", [session.session_id])
    except PyMongoError as exc:
        log.warning("Could not end the transaction left open by a failed commit: %s",
                    describe_error(exc))


def _abort_quietly(session: Any) -> None:
    """Abort, ignoring errors: the server discards an unfinished transaction anyway."""
    try:
        session.abort_transaction()
    except PyMongoError as exc:  # pragma: no cover - pymongo already swallows most
        log.debug("abortTransaction failed (ignored): %s", describe_error(exc))
