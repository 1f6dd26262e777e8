"""Our own OpenTelemetry spans, free when tracing is off.

Tracing is an optional extra (``pip install costpass[otel]``): this module never imports
``opentelemetry`` itself. Until :func:`enable` hands it a tracer (done once per process by
``routerapp.observability.tracing.tracing_setup`` when ``COSTPASS_OTEL`` is on), :func:`span`
returns one shared no-op context manager, so the hot path pays a global read and a call.
No Django here: strategies and engines import it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

_NULL = contextlib.nullcontext(None)
_tracer: Any = None

#: Attribute names of our spans (one place, so the test and dashboards agree).
QUERY_ID = "costpass.query.id"
TEAM = "costpass.team"
CONFIGURATION = "costpass.configuration"
ENGINE = "costpass.engine"
MODEL = "costpass.model"
PROMPT_TOKENS = "costpass.tokens.prompt"
COMPLETION_TOKENS = "costpass.tokens.completion"
SAMPLES = "costpass.samples"
COST_USD = "costpass.cost_usd"
RESERVED_USD = "costpass.reserved_usd"


def enable(tracer: Any) -> None:
    """Make :func:`span` record with ``tracer`` (an ``opentelemetry.trace.Tracer``); None
    turns it off again."""
    global _tracer
    _tracer = tracer


def enabled() -> bool:
    return _tracer is not None


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """Return a context manager that runs its block in a new span (the current one while
    it runs) and yields it, or yields None when tracing is off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Set attributes on the current span (a Celery task's, a request's); nothing when off."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def usd(value: Any) -> str:
    """A money amount as a span attribute: the exact decimal as text (floats would round)."""
    return format(value, "f")
