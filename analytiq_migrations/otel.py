"""OpenTelemetry spans for runs, steps and batches (extra ``[otel]``: ``opentelemetry-api``).

Spans: ``analytiq_migrations.run`` (one ``upgrade``/``downgrade``), ``analytiq_migrations.step``
(one version) and ``analytiq_migrations.batch`` (one ``batch_update`` batch), with the
version, direction, database and document counts as ``migrations.*`` attributes; each
transient-error retry is an event (``retry``) on the span it happened in. Spans are
recorded when the application has imported the API (as configuring a tracer provider
does) or names a provider in ``OTEL_PYTHON_TRACER_PROVIDER``; otherwise nothing is
imported or recorded (see ``_api``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any, Iterator, Optional

#: ``opentelemetry.trace`` once found (``False``: not installed).
_TRACE: Any = None

#: The instrumentation scope's name, as the OpenTelemetry conventions want (the package).
SCOPE = "analytiq_migrations"

#: Attribute value types OpenTelemetry accepts (others are left out).
_VALUE_TYPES = (str, bool, int, float)

#: The environment variable with which the API loads a tracer provider by itself.
_PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"


def _api() -> Any:
    """``opentelemetry.trace`` when a tracer provider can be configured in this process,
    else ``None``.

    One can only be configured through the API, so an application that traces (or
    ``opentelemetry-instrument``) has imported it before a run starts; the exception, a
    provider named by ``OTEL_PYTHON_TRACER_PROVIDER``, is imported here. Otherwise nothing
    is imported: the API's import alone was 12 ms of a short ``up`` with no provider to
    record anything. Looked up again at every span until found.
    """
    global _TRACE
    if _TRACE is None:
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None and _PROVIDER_VARIABLE in os.environ:
            try:
                from opentelemetry import trace
            except ImportError:
                _TRACE = False
        if trace is None:
            return None
        _TRACE = trace
    return _TRACE or None


def available() -> bool:
    """Is ``opentelemetry-api`` installed?"""
    return importlib.util.find_spec("opentelemetry") is not None


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
