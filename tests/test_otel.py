"""OpenTelemetry (extra `[otel]`): a span per run, per step and per batch, with the version,
direction, database and document counts; retries as events; nothing without the API."""

from __future__ import annotations

from typing import Any, Iterator, List

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo.errors import AutoReconnect
from support import run_python

from analytiq_migrations import Migration, Migrator, otel
from analytiq_migrations.retry import RetryPolicy


class Backfill(Migration):
    version = 1
    description = "Count every visit"
    transactional = False

    def up(self, db: Any) -> None:
        self.batch_update("items", {}, {"$inc": {"visits": 1}}, batch_size=10)


class Flag(Migration):
    version = 2
    description = "Flag the items"

    def up(self, db: Any) -> None:
        db.items.update_many({}, {"$set": {"flag": True}})


_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The SDK, configured once per process as an application would at start-up."""
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(sdk)
    return sdk


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(finished: Any, name: str) -> List[Any]:
    return [s for s in finished if s.name == f"analytiq_migrations.{name}"]


def test_a_run_its_steps_and_batches_are_spans(db: Any, spans: InMemorySpanExporter) -> None:
    db.items.insert_many([{"_id": i} for i in range(25)])
    Migrator(db.client, [Backfill(), Flag()], database=db.name).upgrade()
    finished = spans.get_finished_spans()
    [run] = named(finished, "run")
    steps, batches = named(finished, "step"), named(finished, "batch")
    assert dict(run.attributes) == {
        "migrations.direction": "up", "migrations.database": db.name,
        "migrations.start_version": 0, "migrations.end_version": 2, "migrations.steps": 2}
    assert [(s.attributes["migrations.version"], s.attributes["migrations.status"])
            for s in steps] == [(1, "applied"), (2, "applied")]
    assert all(s.parent.span_id == run.context.span_id for s in steps)
    assert steps[0].attributes["migrations.transactional"] is False
    assert [b.attributes["migrations.documents"] for b in batches] == [10, 10, 5]
    assert [b.attributes["migrations.modified"] for b in batches] == [10, 10, 5]
    assert [b.attributes["migrations.done"] for b in batches] == [10, 20, 25]
    assert {b.attributes["migrations.collection"] for b in batches} == {"items"}
    assert all(b.parent.span_id == steps[0].context.span_id for b in batches)
    assert all(b.attributes["migrations.database"] == db.name for b in batches)


def test_a_failed_step_marks_its_spans_failed(db: Any, spans: InMemorySpanExporter) -> None:
    class Broken(Migration):
        version = 1

        def up(self, db: Any) -> None:
            raise RuntimeError("no")

    with pytest.raises(Exception, match="no"):
        Migrator(db.client, [Broken()], database=db.name).upgrade()
    [step] = named(spans.get_finished_spans(), "step")
    assert step.status.status_code == trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in step.events)


def test_retries_are_events_on_the_current_span(spans: InMemorySpanExporter) -> None:
    tries: List[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise AutoReconnect("connection reset")
        return "ok"

    with otel.span("run", direction="up"):
        assert RetryPolicy(initial_wait=0.01, max_wait=0.01).call("read", flaky) == "ok"
    [run] = named(spans.get_finished_spans(), "run")
    retries = [e for e in run.events if e.name == "retry"]
    assert [e.attributes["migrations.attempt"] for e in retries] == [1, 2]
    assert "connection reset" in retries[0].attributes["migrations.error"]


def test_without_the_package_nothing_is_recorded(
        db: Any, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otel, "_TRACE", False)  # as if opentelemetry-api were not installed
    db.items.insert_many([{"_id": i} for i in range(5)])
    report = Migrator(db.client, [Backfill()], database=db.name).upgrade()
    assert report.versions == [1]
    assert list(spans.get_finished_spans()) == []
    with otel.span("run") as span:
        assert span is None


def test_without_a_configured_provider_spans_record_nothing() -> None:
    done = run_python("""
        from opentelemetry import trace  # the API imported, no provider configured
        from analytiq_migrations import otel
        with otel.span("run", direction="up") as span:
            print(otel.available(), span.is_recording())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]  # the API's no-op tracer


def test_an_up_in_a_process_that_never_imported_the_api_does_not_import_it(
        db: Any, tmp_path: Any, mongo_uri: str) -> None:
    (tmp_path / "0001_flag.py").write_text("def up(db):\n    db.items.insert_one({})\n")
    done = run_python(f"""
        import sys
        from analytiq_migrations.cli import main
        code = main(["up", "-q", "--uri", {mongo_uri!r}, "--database", {db.name!r},
                     "--migrations", {str(tmp_path)!r}])
        print(code, "opentelemetry" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]
    assert db.items.count_documents({}) == 1


def test_a_provider_named_in_the_environment_records_the_spans(
        db: Any, tmp_path: Any, mongo_uri: str) -> None:
    """``OTEL_PYTHON_TRACER_PROVIDER`` configures a provider with no import by the
    application: the library imports the API for it, and the step runs in its span."""
    (tmp_path / "0001_flag.py").write_text(
        "def up(db):\n"
        "    from opentelemetry import trace  # not before the step's span starts\n\n"
        "    print('in span', getattr(trace.get_current_span(), 'name', None))\n")
    done = run_python(f"""
        from analytiq_migrations.cli import main
        main(["up", "-q", "--uri", {mongo_uri!r}, "--database", {db.name!r},
              "--migrations", {str(tmp_path)!r}])
    """, env={"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"})
    assert done.returncode == 0, done.stderr
    assert "in span analytiq_migrations.step" in done.stdout
