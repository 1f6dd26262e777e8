"""The OpenAI-compatible API: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.

Applications switch to costpass by changing the base URL; `model="auto"` lets the router choose
the (model, strategy) configuration. Each call is a Query like any other: routed, its worst case
reserved under the budgets, priced from every sample's tokens, settled.

Where a query runs: one sample on a remote OpenAI-compatible endpoint runs in this web process
(services.queries.query_runs_inline: the queue hop would cost more than the call); everything
else goes to the Celery workers and this request waits for its end (events from
services.streaming) for at most SYNC_WAIT_S. When the wait runs out the query goes on, and the
answer is an OpenAI-shaped timeout error (HTTP 504, x-should-retry: false: a retry would pay
twice) that carries the query id and where to poll; never a completion without choices.

Request bodies are validated against the official `openai` types (api.openai_request): every
field is honoured, routed to configurations that honour it, or refused with a 400 naming it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routerapp.api import openai_format as fmt
from routerapp.api.auth import admit_request, require_scope
from routerapp.api.errors import error_body
from routerapp.api.openai_request import OpenAIRequest, parse_request
from routerapp.api.schema import ApiAutoSchema, SpendingApiAutoSchema
from routerapp.api.serializers_openai import (
    ChatCompletionInput,
    ChatCompletionOut,
    CompletionInput,
    ErrorOut,
    ModelListOut,
    ModelOut,
    TextCompletionOut,
)
from routerapp.api.views_queries import constraints_from
from routerapp.errors import InvalidInput, NotFound
from routerapp.models import Query, Sample
from routerapp.selectors.catalog import catalog_model, catalog_models
from routerapp.services.queries import (
    TAGS_HEADER,
    query_cancel,
    query_create,
    query_enqueue,
    query_run_inline,
    query_runs_inline,
    query_tags_parse,
)
from routerapp.services.streaming import END, IDLE, TOKEN, LocalSink, query_events, query_wait

log = logging.getLogger(__name__)

# Seconds of silence after which a stream sends an SSE comment, so proxies keep it open and a
# client that went away is noticed (its query is then cancelled).
KEEPALIVE_S = 10.0


class JSONOnlyNegotiation(BaseContentNegotiation):
    """Answer JSON (or SSE) whatever the Accept header says, as OpenAI's API does."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0]

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


_ERRORS = {
    code: OpenApiResponse(ErrorOut, description=text)
    for code, text in [
        (403, "The key lacks the 'query' scope"),
        (404, "Unknown model"),
        (409, "The query was cancelled (x-should-retry: false)"),
        (422, "No configuration satisfies the constraints"),
        (502, "The model endpoint failed; tokens it generated are billed (x-should-retry: false)"),
        (504, "Still running after the synchronous wait: error.query_id / error.poll_url"),
    ]
}
# One server-sent event: `data` is a JSON chunk (chat.completion.chunk / text_completion, the
# last one carrying `usage` and `costpass`), an error object, or `[DONE]`.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "description": "a JSON chunk, an error object, or [DONE]"},
    },
}


def _reload(query_id: Any) -> tuple[Query, list[Sample]]:
    query = Query.objects.select_related("configuration__endpoint", "configuration__strategy").get(
        pk=query_id
    )
    return query, list(Sample.objects.filter(query=query).order_by("index"))


def _query_headers(response: HttpResponseBase, query: Query) -> HttpResponseBase:
    """The headers every answer about a query carries, whatever its state: its id, the
    configuration serving it and the worst case reserved for it under the budgets."""
    response["x-costpass-query-id"] = str(query.pk)
    response["x-costpass-reserved-usd"] = str(query.reserved_usd)
    if query.configuration is not None:
        response["x-costpass-configuration"] = query.configuration.slug
    return response


def _cost_headers(response: HttpResponse, query: Query) -> HttpResponse:
    """A finished query's headers: the above and its real cost."""
    _query_headers(response, query)
    response["x-costpass-cost-usd"] = str(query.cost_usd)
    return response


def _failure(query: Query) -> tuple[int, dict[str, Any]]:
    """The HTTP status and error body of a query that ended without an answer."""
    cost = f"${query.cost_usd.normalize():f}"
    if query.status == Query.Status.CANCELLED:
        return 409, error_body(
            f"query {query.pk} was cancelled; the tokens it generated were billed ({cost})",
            "invalid_request_error",
            "query_cancelled",
        )
    if "PromptTooLong" in query.error:
        return 400, error_body(
            query.error.split(": ", 1)[-1],
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
    return 502, error_body(
        f"the model endpoint failed: {query.error}; the tokens it generated were billed ({cost})",
        "api_error",
        "upstream_error",
    )


def _finished_response(query: Query, samples: list[Sample], kind: str) -> Response:
    if query.status == Query.Status.DONE:
        response = Response(fmt.completion_body(query, samples, kind))
    else:
        status, body = _failure(query)
        response = Response(body, status=status)
        # The query ran and was billed: a client retrying on its own would pay twice.
        response["x-should-retry"] = "false"
    _cost_headers(response, query)
    return response


def _timeout_response(query: Query) -> Response:
    response = Response(fmt.timeout_body(query, settings.SYNC_WAIT_S), status=504)
    response["Location"] = fmt.poll_url(query)
    response["x-costpass-query-id"] = str(query.pk)
    # The query goes on and will be billed: a client retrying on its own would pay twice.
    response["x-should-retry"] = "false"
    _query_headers(response, query)  # no cost header: it is not known yet
    return response


def _run_inline_thread(query: Query, sink: LocalSink) -> None:
    status = Query.Status.FAILED.value
    try:
        status, _ = query_run_inline(query=query, events=sink)
    except Exception:  # the runner marks the query failed itself; this is the last resort
        log.exception("inline query %s crashed", query.pk)
    finally:
        sink.end(str(status))
        connections.close_all()  # this thread's own connections


def stream_events_start(query: Query, *, inline: bool) -> Iterator[Any]:
    """Start a streamed query (an inline run in a thread of this process, or the task queue)
    and return its event stream, bounded by COSTPASS_SYNC_WAIT_S with keep-alives."""
    if inline:
        sink = LocalSink()
        threading.Thread(
            target=_run_inline_thread, args=(query, sink), daemon=True, name=f"q-{query.pk}"
        ).start()
        return sink.events(timeout_s=settings.SYNC_WAIT_S, idle_s=KEEPALIVE_S)
    query_enqueue(query=query)
    return query_events(query.pk, timeout_s=settings.SYNC_WAIT_S, idle_s=KEEPALIVE_S)


def _stream(query: Query, kind: str, include_usage: bool, events: Iterator[Any]) -> Iterator[bytes]:
    """The SSE body. A strategy that draws independent samples and returns them (one sample,
    or OpenAI's ``n``: one per choice) streams each sample's token deltas as they come, as
    choice ``index``, each chunk with its tokens' log-probs when asked and tool-call deltas as
    they come; a strategy that draws
    several samples to choose one (votes, best-of, cascades) sends the chosen answer whole
    at the end. Then any text (and log-probs) not streamed yet (what a strategy
    post-processed) and tool calls, each choice's finish chunk (the last carrying
    `usage` and the `costpass` object, the real cost), with stream_options.include_usage a
    final usage chunk, then [DONE]. A client that goes away cancels its query; what was
    generated is still billed."""
    options = query.request_options or {}
    n = int(options.get("n", 1))
    live = query.samples_planned == n
    wants_logprobs = bool(options.get("logprobs"))
    # Text and log-prob entries streamed per choice; with one choice, the first sample that
    # streams is it.
    streamed: dict[int, list[str]] = {}
    entries_sent: dict[int, list[dict[str, Any]]] = {}
    calls_streamed: set[int] = set()  # choices whose tool calls went out as deltas
    first: int | None = None

    def logprobs_of(choice: int, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The chunk's ``logprobs`` for these entries of a choice (None: not asked)."""
        if not wants_logprobs:
            return None
        before = entries_sent.setdefault(choice, [])
        shaped = (
            {"content": entries, "refusal": None}
            if kind == fmt.CHAT
            else fmt.text_logprobs_of(entries, sum(len(e["token"]) for e in before))
        )
        before.extend(entries)
        return shaped

    over = False
    try:
        for i in range(n):
            yield fmt.sse(fmt.chunk(query, kind, role=True, content="", index=i))
        ended = False
        for event in events:
            if event.kind == TOKEN and live:
                if n == 1:
                    first = event.index if first is None else first
                    choice = 0 if event.index == first else None
                else:  # one sample per choice, in index order (as the choices are)
                    choice = event.index if 0 <= event.index < n else None
                if choice is not None:
                    streamed.setdefault(choice, []).append(event.text)
                    if event.tool_calls:
                        calls_streamed.add(choice)
                    yield fmt.sse(
                        fmt.chunk(
                            query,
                            kind,
                            content=event.text if event.text or not event.tool_calls else None,
                            index=choice,
                            logprobs=logprobs_of(choice, list(event.logprobs)),
                            call_deltas=list(event.tool_calls) or None,
                        )
                    )
            elif event.kind == IDLE:
                yield fmt.SSE_KEEPALIVE
            elif event.kind == END:
                ended = True
                break
        if not ended:
            over = True  # the query goes on; the client was told where to poll
            yield fmt.sse(fmt.timeout_body(query, settings.SYNC_WAIT_S))
            return
        final, samples = _reload(query.pk)
        over = True
        if final.status != Query.Status.DONE:
            _, body = _failure(final)
            yield fmt.sse({**body, "costpass": fmt.extension(final, samples)})
            return
        tail = {"usage": fmt.usage(final), "costpass": fmt.extension(final, samples)}
        choices = fmt._choice_samples(final, samples)
        for i, sample in enumerate(choices):
            text = final.answer if len(choices) == 1 or sample is None else sample.text
            sent = "".join(streamed.get(i, []))
            if not sent:
                rest = text
            elif text.startswith(sent):
                rest = text[len(sent) :]
            else:  # the strategy post-processed the text it streamed; the extension has it
                rest = ""
            calls = sample.tool_calls if sample is not None and i not in calls_streamed else None
            # The log-probs of tokens not streamed yet (all of them when nothing streamed).
            unsent: list[dict[str, Any]] = []
            if wants_logprobs and sample is not None:
                unsent = (sample.logprobs or [])[len(entries_sent.get(i, [])) :]
            if rest or calls or unsent or (wants_logprobs and i not in entries_sent):
                yield fmt.sse(
                    fmt.chunk(
                        final,
                        kind,
                        content=rest,
                        index=i,
                        tool_calls=calls,
                        logprobs=logprobs_of(i, unsent),
                    )
                )
        for i, sample in enumerate(choices):
            last = i == len(choices) - 1
            yield fmt.sse(
                fmt.chunk(
                    final,
                    kind,
                    index=i,
                    reason=fmt.sample_finish_reason(sample),
                    extra=tail if last else None,
                )
            )
        if include_usage:
            yield fmt.sse(fmt.chunk(final, kind, choices=False, extra=tail))
        yield fmt.SSE_DONE
    except GeneratorExit:
        raise
    except Exception:  # headers are sent: report in the stream, never a broken connection
        log.exception("streaming query %s failed", query.pk)
        yield fmt.sse(error_body("internal error while streaming", "api_error", "internal_error"))
    finally:
        if not over:
            _cancel_quietly(query)


def _cancel_quietly(query: Query) -> None:
    """The client went away mid-stream: stop the query (it is billed what it generated)."""
    try:
        query_cancel(query=query)
    except Exception:  # already finished, or the database is gone: nothing more to do
        log.info("query %s not cancelled after the client left", query.pk)


def _serve(request: Request, kind: str) -> HttpResponseBase:
    require_scope(request.user, "query")
    body = parse_request(request.data, kind)
    return serve_request(request, body)


def serve_request(request: Request, body: OpenAIRequest) -> HttpResponseBase:
    """Admit, route, reserve and run one validated OpenAI request; answer it (JSON or SSE).

    The pipeline every OpenAI-style endpoint shares: the request's fields become router
    constraints and RequestOptions (services.request_fields), the rest is the query's."""
    principal = request.user
    kind = body.kind
    admit_request(request, body.text)
    try:
        query = query_create(
            team=principal.team,
            api_key=principal.key,
            prompt=body.prompt,
            messages=body.messages,
            task=body.constraints.get("task", ""),
            end_user=body.user,
            tags=query_tags_parse(request.headers.get(TAGS_HEADER)),
            options=body.options,
            recorded=body.recorded,
            constraints=constraints_from(body.constraints),
            source=Query.Source.CHAT,
            defer_dispatch=True,
        )
    except InvalidInput as exc:
        if exc.code == "model_not_found":  # OpenAI answers 404 for a model it does not have
            raise NotFound(exc.message, param="model", code="model_not_found") from exc
        raise
    inline = query_runs_inline(query)
    if body.stream:
        events = stream_events_start(query, inline=inline)
        response = StreamingHttpResponse(
            _stream(query, kind, body.include_usage, events), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        # Headers go before the run: the reservation; the real cost is in the last chunk.
        _query_headers(response, query)
        return response
    if inline:
        status, samples = query_run_inline(query=query)
        if samples is not None:  # completed here: the query object holds its final values
            return _finished_response(query, samples, kind)
        # Handed over to a worker (a fallback that needs one): wait for it as for any query.
        if (
            status == Query.Status.QUEUED
            and query_wait(query.pk, timeout_s=settings.SYNC_WAIT_S) is None
        ):
            return _timeout_response(query)
    else:
        query_enqueue(query=query)
        if query_wait(query.pk, timeout_s=settings.SYNC_WAIT_S) is None:
            return _timeout_response(query)
    final, samples = _reload(query.pk)
    if not final.is_finished:
        return _timeout_response(final)
    return _finished_response(final, samples, kind)


_EXT_DESCRIPTION = (
    "OpenAI-compatible. `model`: 'auto', a configuration id or a model name (GET /v1/models). "
    "Extra fields: strategy, max_cost_usd, min_accuracy, max_latency_s, task, allowed_models. "
    "The response's `usage` sums every sample's tokens; `costpass` holds the decision, the real "
    "cost and the samples. Headers: x-costpass-query-id, x-costpass-configuration and "
    "x-costpass-reserved-usd (the worst case held under the budgets) on every answer about a "
    "query; x-costpass-cost-usd (the real cost) on a finished one (200, 409, 502). "
    "`stream: true` answers server-sent events in OpenAI's chunk format; the real cost is in "
    "the last chunk's `costpass.cost_usd` (or in the error event). Every OpenAI field is "
    "honoured (the router chooses among configurations that can) or refused with a 400 naming "
    "it. HTTP 504 (x-should-retry: false) when the query outlives the synchronous wait: "
    "`error.poll_url` has its result."
)


class ChatCompletions(APIView):
    content_negotiation_class = JSONOnlyNegotiation
    schema = SpendingApiAutoSchema()

    @extend_schema(
        request=ChatCompletionInput,
        responses={
            (200, "application/json"): ChatCompletionOut,
            (200, "text/event-stream"): _SSE_EVENT,
            **_ERRORS,
        },
        operation_id="chat_completions_create",
        description=_EXT_DESCRIPTION,
        tags=["openai"],
    )
    def post(self, request: Request) -> HttpResponseBase:
        return _serve(request, fmt.CHAT)


class Completions(APIView):
    content_negotiation_class = JSONOnlyNegotiation
    schema = SpendingApiAutoSchema()

    @extend_schema(
        request=CompletionInput,
        responses={
            (200, "application/json"): TextCompletionOut,
            (200, "text/event-stream"): _SSE_EVENT,
            **_ERRORS,
        },
        operation_id="completions_create",
        description=_EXT_DESCRIPTION,
        tags=["openai"],
    )
    def post(self, request: Request) -> HttpResponseBase:
        return _serve(request, fmt.TEXT)


_EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}


class EmbeddingsInput(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    input = serializers.JSONField(help_text="A string, a list of strings or of token-id lists")
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False)
    dimensions = serializers.IntegerField(min_value=1, max_value=65536, required=False)
    user = serializers.CharField(max_length=256, required=False)


class Embeddings(APIView):
    """POST /v1/embeddings, passed through to the endpoint named by `model` (one that serves
    embeddings), billed per input token through the caller's budgets like any query."""

    content_negotiation_class = JSONOnlyNegotiation
    schema = SpendingApiAutoSchema()

    @extend_schema(
        request=EmbeddingsInput,
        responses={200: OpenApiResponse(description="OpenAI's embeddings list"), **_ERRORS},
        operation_id="embeddings_create",
        tags=["openai"],
    )
    def post(self, request: Request) -> HttpResponseBase:
        from routerapp.services.embeddings import UpstreamFailed, embeddings_create

        require_scope(request.user, "query")
        if isinstance(request.data, dict):
            unknown = sorted(set(request.data) - _EMBEDDING_FIELDS)
            if unknown:
                raise InvalidInput(
                    f"unsupported field {unknown[0]!r} for embeddings", param=unknown[0]
                )
        form = EmbeddingsInput(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        value = data["input"]
        text = value if isinstance(value, str) else " ".join(str(v) for v in value or [])
        admit_request(request, text)
        try:
            payload, query = embeddings_create(
                team=request.user.team,
                api_key=request.user.key,
                model=data["model"],
                input=value,
                options=data,
            )
        except UpstreamFailed as exc:
            status, body = _failure(exc.query)
            response = Response(body, status=status)
            response["x-should-retry"] = "false"
            return _cost_headers(response, exc.query)
        return _cost_headers(Response(payload), query)


class Models(APIView):
    content_negotiation_class = JSONOnlyNegotiation
    schema = ApiAutoSchema()

    @extend_schema(
        responses={200: ModelListOut},
        operation_id="models_list",
        tags=["openai"],
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": catalog_models(permitted=_permitted(request))})


class ModelDetail(APIView):
    content_negotiation_class = JSONOnlyNegotiation
    schema = ApiAutoSchema()

    @extend_schema(
        responses={200: ModelOut, 404: _ERRORS[404]},
        operation_id="models_retrieve",
        tags=["openai"],
    )
    def get(self, request: Request, model_id: str) -> Response:
        return Response(catalog_model(model_id, permitted=_permitted(request)))


def _permitted(request: Request) -> frozenset[str] | None:
    """The configurations the calling key (and its team) may call; None: no allowlist."""
    from routerapp.selectors.access import permitted_configuration_slugs

    return permitted_configuration_slugs(team=request.user.team, api_key=request.user.key)
