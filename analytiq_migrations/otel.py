"""OpenTelemetry spans for runs, steps and batches (extra ``[otel]``: ``opentelemetry-api``).

Spans: ``analytiq_migrations.run`` (one ``upgrade``/``downgrade``), ``analytiq_migrations.step``
(one version) and ``analytiq_migrations.batch`` (one ``batch_update`` batch), with the
version, direction, database and document counts as ``migrations.*`` attributes; each
transient-error retry is an event (``retry``) on the span it happened in. Without the
package nothing is imported or recorded; with it but without a configured tracer
provider the API's no-op tracer makes every call here nearly free.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

#: ``opentelemetry.trace`` once looked for (``False``: not installed); imported on first
#: use, so the quick no-op ``up`` never pays for it.
_TRACE: Any = None

#: The instrumentation scope's name, as the OpenTelemetry conventions want (the package).
SCOPE = "analytiq_migrations"

#: Attribute value types OpenTelemetry accepts (others are left out).
_VALUE_TYPES = (str, bool, int, float)


def _api() -> Any:
    """``opentelemetry.trace``, or ``None`` without the package."""
    global _TRACE
    if _TRACE is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _TRACE = False
        else:
            _TRACE = trace
    return _TRACE or None


def available() -> bool:
    """Is ``opentelemetry-api`` installed?"""
    return _api() is not None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Optional[Any]]:
    """A span named ``analytiq_migrations.<name>`` around the block (``None`` without the
    API); an exception leaving the block is recorded on it and marks it failed."""
    trace = _api()
    if trace is None:
        yield None
        return
    from . import __version__

    tracer = trace.get_tracer(SCOPE, __version__)
    with tracer.start_as_current_span(f"{SCOPE}.{name}", attributes=_clean(attributes)) as s:
        yield s


def annotate(target: Optional[Any], **attributes: Any) -> None:
    """Add attributes to a span from ``span`` (nothing when it is ``None``)."""
    if target is not None:
        target.set_attributes(_clean(attributes))


def event(name: str, **attributes: Any) -> None:
    """An event on the current span (a retry, say); nothing without the API."""
    trace = _api()
    if trace is not None:
        trace.get_current_span().add_event(name, attributes=_clean(attributes))


def report_fields(report: Any) -> dict[str, Any]:
    """A ``RunReport``'s figures for the run span."""
    paused = report.paused or {}
    return {"start_version": report.start_version, "end_version": report.end_version,
            "steps": len(report.steps), "paused_version": paused.get("version")}


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """``migrations.<key>`` attributes with values OpenTelemetry accepts."""
    return {f"migrations.{key}": value for key, value in attributes.items()
            if isinstance(value, _VALUE_TYPES)}
