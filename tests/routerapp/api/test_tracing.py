"""OpenTelemetry tracing (the `otel` extra): a real query over HTTP, run by a real Celery worker,
is one trace from the request through routing, the budget reservation, the task's publication
and run, each engine request and its upstream HTTP calls, to the settlement; the tokens and
cost on the spans are the ledger's.

The web side is this process (the SDK's in-memory exporter); the worker is its own process and
sends its spans through the OTLP exporter to a receiver started here, as it would to a collector.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.testcases import LiveServerThread  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from routerapp.models import BudgetPolicy, Query, Sample  # noqa: E402
from routerapp.observability.tracing import tracing_setup, tracing_teardown  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.routerapp.api.conftest import make_configuration  # noqa: E402
from tests.stack import start_worker  # noqa: E402
from workers import tracing  # noqa: E402

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

QUEUE = "tracing.otlp"


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver (protobuf), as a collector's: keeps every span it gets."""

    spans: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.server.spans.append(  # type: ignore[attr-defined]
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
def otlp_receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.spans = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def traced_web() -> Iterator[tuple[str, InMemorySpanExporter]]:
    """This process traced into memory, and a live server whose handler is built after the
    Django instrumentation added its middleware."""
    exporter = InMemorySpanExporter()
    tracing_setup(exporter=exporter, set_global=False)
    server = LiveServerThread("127.0.0.1", StaticFilesHandler, connections_override={}, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    try:
        if server.error:
            raise server.error
        yield f"http://127.0.0.1:{server.port}", exporter
    finally:
        server.terminate()
        tracing_teardown()


def _post(url: str, body: dict, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_one_trace_from_request_to_settlement(  # type: ignore[no-untyped-def]
    tmp_path, upstream_url, make_caller, otlp_receiver, traced_web
) -> None:
    web_url, web_spans = traced_web
    # Two samples on its own queue: only the traced worker below runs it.
    configuration = make_configuration(
        upstream_url,
        name="traced",
        strategy="majority_vote",
        strategy_name="maj2-traced",
        params={"n": 2, "max_tokens": 16},
        queue=QUEUE,
    )
    caller = make_caller("tracing-team")
    BudgetPolicy.objects.create(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    worker = start_worker(
        tmp_path,
        db_name=connection.settings_dict["NAME"],
        queues=QUEUE,
        env={
            "COSTPASS_OTEL": "true",
            "OTEL_SERVICE_NAME": "costpass-worker",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": (
                f"http://127.0.0.1:{otlp_receiver.server_port}/v1/traces"
            ),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        name="otel",
    )
    try:
        answer = _post(
            f"{web_url}/v1/chat/completions",
            {"model": configuration.slug, "messages": [{"role": "user", "content": "2+2?"}]},
            caller.auth,
        )
        query = Query.objects.get(pk=answer["costpass"]["query_id"])
        assert query.status == Query.Status.DONE
        received = otlp_receiver.spans  # type: ignore[attr-defined]
        wait_for(lambda: any(s["name"] == "costpass.budget.settle" for s in received), 30)
    finally:
        worker.stop()

    web = {s.name: s for s in web_spans.get_finished_spans() if s.name != "costpass.budget.settle"}
    request = next(s for s in web.values() if s.kind.name == "SERVER")
    trace_id = format(request.context.trace_id, "032x")
    assert request.parent is None  # the trace starts at the request
    assert request.attributes["http.route"] == "v1/chat/completions"
    assert request.attributes[tracing.QUERY_ID] == str(query.pk)
    route, reserve = web["costpass.route"], web["costpass.budget.reserve"]
    publish = web["apply_async/costpass.query_execute"]
    for span in (route, reserve, publish):
        assert format(span.context.trace_id, "032x") == trace_id
    assert route.attributes[tracing.CONFIGURATION] == configuration.slug
    assert route.attributes[tracing.TEAM] == "tracing-team"
    assert Decimal(reserve.attributes[tracing.RESERVED_USD]) == query.reserved_usd

    # The worker's spans continue the same trace (context carried in the task's headers).
    # (Its other traces are its own housekeeping: start-up queries, heartbeats.)
    received = [s for s in received if s["trace_id"] == trace_id]
    by_name: dict[str, list[dict]] = {}
    for s in received:
        by_name.setdefault(s["name"], []).append(s)
    (task,) = by_name["run/costpass.query_execute"]
    assert task["parent_id"] == format(publish.context.span_id, "016x")
    assert task["attributes"][tracing.QUERY_ID] == str(query.pk)
    engine_requests = by_name["costpass.engine.request"]
    samples = list(Sample.objects.filter(query=query))
    assert len(samples) == 2
    assert sum(s["attributes"][tracing.SAMPLES] for s in engine_requests) == 2
    assert sum(s["attributes"][tracing.PROMPT_TOKENS] for s in engine_requests) == sum(
        s.prompt_tokens for s in samples
    )
    assert sum(s["attributes"][tracing.COMPLETION_TOKENS] for s in engine_requests) == sum(
        s.completion_tokens for s in samples
    )
    # Each upstream HTTP call (httpx instrumentation) sits inside an engine request.
    engine_ids = {s["span_id"] for s in engine_requests}
    upstream = [
        s for s in received if str(s["attributes"].get("http.url", "")).startswith(upstream_url)
    ]
    assert len(upstream) == 2  # one HTTP request per sample
    assert {s["parent_id"] for s in upstream} <= engine_ids
    # The worker's database statements are traced (psycopg instrumentation), the budget
    # settlement's inside its span.
    (settle,) = by_name["costpass.budget.settle"]
    statements = [s for s in received if s["attributes"].get("db.system") == "postgresql"]
    assert any(
        s["parent_id"] == settle["span_id"]
        and "routerapp_budgetusage" in s["attributes"]["db.statement"]
        for s in statements
    )
    (settle,) = by_name["costpass.budget.settle"]
    attributes = settle["attributes"]
    assert attributes[tracing.QUERY_ID] == str(query.pk)
    assert attributes[tracing.CONFIGURATION] == configuration.slug
    assert attributes[tracing.PROMPT_TOKENS] == query.prompt_tokens > 0
    assert attributes[tracing.COMPLETION_TOKENS] == query.completion_tokens > 0
    assert Decimal(attributes[tracing.COST_USD]) == query.cost_usd > 0
    assert query.cost_usd == sum((s.cost_usd for s in samples), Decimal(0))


def test_an_inline_query_is_one_trace_in_the_web_process(  # type: ignore[no-untyped-def]
    upstream_url, make_caller, traced_web
) -> None:
    """A single sample on a remote endpoint runs in the web process: the engine request, its
    upstream call and the settlement are in the request's trace there."""
    web_url, exporter = traced_web
    configuration = make_configuration(upstream_url, name="inline-traced")
    caller = make_caller("tracing-inline")
    answer = _post(
        f"{web_url}/v1/chat/completions",
        {"model": configuration.slug, "messages": [{"role": "user", "content": "2+2?"}]},
        caller.auth,
    )
    query = Query.objects.get(pk=answer["costpass"]["query_id"])
    spans = exporter.get_finished_spans()
    request = next(s for s in spans if s.kind.name == "SERVER")
    trace = [s for s in spans if s.context.trace_id == request.context.trace_id]
    names = [s.name for s in trace]
    assert "apply_async/costpass.query_execute" not in names  # no queue hop
    (engine,) = [s for s in trace if s.name == "costpass.engine.request"]
    (settle,) = [s for s in trace if s.name == "costpass.budget.settle"]
    (call,) = [s for s in trace if str(s.attributes.get("http.url", "")).startswith(upstream_url)]
    assert call.parent.span_id == engine.context.span_id
    assert engine.attributes[tracing.PROMPT_TOKENS] == query.prompt_tokens > 0
    assert engine.attributes[tracing.COMPLETION_TOKENS] == query.completion_tokens > 0
    assert Decimal(settle.attributes[tracing.COST_USD]) == query.cost_usd > 0
    assert settle.attributes[tracing.QUERY_ID] == str(query.pk)


def test_tracing_off_records_nothing() -> None:
    """Off (the default), our spans are one shared no-op: nothing is created or recorded."""
    assert not tracing.enabled()
    with tracing.span("costpass.route") as span:
        assert span is None
    assert tracing.span("a") is tracing.span("b")
