"""OpenTelemetry tracing (the ``otel`` extra), off unless ``COSTPASS_OTEL`` is true.

One trace per query: the official instrumentation packages make the spans of the HTTP request
(Django), of the task's publication and run (Celery, which carries the trace context in the
message's headers), of every database statement (psycopg) and of every upstream HTTP call
(httpx); our own spans (``workers.tracing``) add routing, the budget reservation, each engine
request and the settlement, with the configuration, tokens and cost as attributes.

Spans leave through OTLP (HTTP/protobuf, configured by the standard ``OTEL_EXPORTER_OTLP_*``
variables) or are printed (``COSTPASS_OTEL_EXPORTER=console``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from workers import tracing

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}


def _instrumentors() -> list[Any]:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    return [
        DjangoInstrumentor(),
        CeleryInstrumentor(),
        HTTPXClientInstrumentor(),
        PsycopgInstrumentor(),
    ]


def _exporter(kind: str) -> Any:
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


def tracing_setup(*, exporter: Any = None, set_global: bool = True) -> Any:
    """Start tracing in this process (once): a tracer provider named ``OTEL_SERVICE_NAME``
    exporting to ``exporter`` (default: ``settings.OTEL_EXPORTER``'s) through a batch
    processor, the Django, Celery, httpx and psycopg instrumentations, and our own spans.
    Return the provider. Raise ImportError naming the extra when it is not installed.

    ``set_global=False`` leaves the process-wide provider alone (tests install their own)."""
    if "provider" in _state:
        return _state["provider"]
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:  # COSTPASS_OTEL on without the extra: say what to install
        raise ImportError(
            "COSTPASS_OTEL is on but OpenTelemetry is not installed: pip install 'costpass[otel]'"
        ) from exc

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.OTEL_SERVICE_NAME}))
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(_exporter(settings.OTEL_EXPORTER)))
    else:  # a test's in-memory exporter sees each span as it ends
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    instrumentors = _instrumentors()
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
    tracing.enable(provider.get_tracer("costpass"))
    _state.update(provider=provider, instrumentors=instrumentors)
    log.info(
        "OpenTelemetry tracing on (%s)",
        type(exporter).__name__ if exporter is not None else f"{settings.OTEL_EXPORTER} exporter",
    )
    return provider


def tracing_teardown() -> None:
    """Stop tracing in this process: flush what is pending, remove the instrumentations."""
    provider = _state.pop("provider", None)
    if provider is None:
        return
    tracing.enable(None)
    for instrumentor in _state.pop("instrumentors", []):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    provider.shutdown()
