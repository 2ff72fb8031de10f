"""What a migration hid or did wrong inside its transaction, as errors that say so."""

from __future__ import annotations

from typing import Any, Optional

import pymongo
from pymongo.errors import InvalidOperation, PyMongoError

from .dbproxy import StepWatch
from .errors import MigrationFailedError
from .records import PlanStep
from .server import describe_client


def raise_hidden(watch: Optional[StepWatch], step: PlanStep, raised: Optional[BaseException],
                 returned_false: bool = False) -> None:
    """Raise what the migration hid inside its transaction: a refused call it caught, or
    the first driver error it caught (which aborted the transaction on the server)."""
    if watch is None or watch.catalog is None:
        return  # outside a transaction a caught error is the migration's own business
    if watch.refused is not None and watch.refused is not raised:
        raise watch.refused
    hidden = watch.first_error
    if hidden is None or hidden.error is raised:
        return
    if isinstance(hidden.error, PyMongoError) and \
            hidden.error.has_error_label("TransientTransactionError"):
        raise hidden.error  # the transaction loop retries the whole step
    then = "then returned False" if returned_false else \
        f"then raised {type(raised).__name__}" if raised is not None else "then carried on"
    raise MigrationFailedError(
        f"Migration {step.version} {step.direction}() caught {hidden.describe()} and "
        f"{then}. Inside a transaction that error aborted the transaction on the server: "
        "nothing after it could be written, and nothing of the step was kept.",
        version=step.version,
        hint="Let the error propagate, or avoid it (for 'insert, ignore duplicates' filter "
        "the duplicates out first or use update_one(..., upsert=True)), or declare the "
        "migration `transactional = False`.",
    ) from hidden.error


def foreign_client_error(step: PlanStep, ours: Any,
                         exc: BaseException) -> Optional[MigrationFailedError]:
    """Ours, for pymongo's refusal of another client's operation in a transaction."""
    if not step.transactional or not isinstance(exc, InvalidOperation) or \
            "Only the client that created the bound session" not in str(exc):
        return None
    other = _refusing_client(exc)
    which = f"another MongoClient ({describe_client(other)})" if other is not None else \
        "another MongoClient"
    return MigrationFailedError(
        f"Migration {step.version} ({step.description}) used {which} inside its "
        "transaction, which runs on the migrations' client "
        f"({describe_client(ours)}): that write could not join the "
        "transaction, and the transaction was rolled back.",
        version=step.version,
        hint="Run the migrations on the client your data layer uses (Flask: "
        "init_app(app, client=...); Django: ANALYTIQ_MIGRATIONS['CLIENT']; command line: "
        "--client MODULE:ATTR), or declare the migration transactional = False (its "
        "writes then commit one by one).",
    )


def _refusing_client(exc: BaseException) -> Any:
    """The ``MongoClient`` whose method raised ``exc`` (innermost frame with one as ``self``)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, pymongo.MongoClient):
            found = candidate
        tb = tb.tb_next
    return found
