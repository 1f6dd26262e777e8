"""The Responses API: POST /v1/responses (sync and streaming) and GET /v1/responses/{id}, on the
same pipeline as chat completions (admit -> route -> reserve -> run inline or in a worker ->
bill -> settle). Request and response translation: routerapp.api.responses_format."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routerapp.api import responses_format as rfmt
from routerapp.api.auth import admit_request, require_scope
from routerapp.api.openai_request import check_tool_turns, content_text
from routerapp.api.schema import ApiAutoSchema, SpendingApiAutoSchema
from routerapp.api.serializers import (
    ConstraintFields,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from routerapp.api.views_openai import (
    _ERRORS,
    JSONOnlyNegotiation,
    _cancel_quietly,
    _cost_headers,
    _failure,
    _reload,
    stream_events_start,
)
from routerapp.api.views_queries import constraints_from
from routerapp.errors import InvalidInput, NotFound
from routerapp.models import Query, Sample
from routerapp.selectors.queries import query_get_for_team
from routerapp.services.queries import (
    query_create,
    query_enqueue,
    query_run_inline,
    query_runs_inline,
)
from routerapp.services.streaming import END, IDLE, TOKEN, query_wait
from workers.strategies.request_options import RequestOptions

log = logging.getLogger(__name__)


class ResponseCreateInput(ConstraintFields):
    """The Responses fields honoured here (others: responses_format.refuse_unsupported)."""

    model = StrictCharField(required=False, default="auto", allow_blank=True, max_length=200)
    input = serializers.JSONField(help_text="A string or a list of message items")
    instructions = StrictCharField(
        required=False, allow_null=True, allow_blank=True, trim_whitespace=False
    )
    stream = StrictBooleanField(required=False, default=False)
    stream_options = serializers.DictField(required=False, allow_null=True)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    max_output_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    safety_identifier = StrictCharField(required=False, allow_blank=True, max_length=256)
    metadata = serializers.DictField(
        child=StrictCharField(max_length=512, allow_blank=True),
        required=False,
        allow_null=True,
    )
    store = StrictBooleanField(required=False, allow_null=True)
    previous_response_id = StrictCharField(required=False, allow_null=True, max_length=100)
    tools = serializers.ListField(required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    text = serializers.DictField(required=False, allow_null=True)
    truncation = serializers.ChoiceField(choices=["disabled"], required=False, allow_null=True)
    include = serializers.ListField(child=StrictCharField(), required=False, allow_null=True)
    top_logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    service_tier = serializers.ChoiceField(
        choices=["auto", "default"], required=False, allow_null=True
    )
    reasoning = serializers.DictField(required=False, allow_null=True)
    prompt_cache_key = StrictCharField(required=False, allow_null=True, max_length=1024)
    prompt_cache_retention = serializers.ChoiceField(
        choices=["in-memory", "24h"], required=False, allow_null=True
    )

    def validate_stream_options(self, value: dict | None) -> dict | None:
        unknown = sorted(set(value or {}) - {"include_obfuscation"})
        if unknown:
            raise serializers.ValidationError({unknown[0]: ["unknown stream option"]})
        if (value or {}).get("include_obfuscation"):
            raise serializers.ValidationError(
                {"include_obfuscation": ["stream obfuscation is not supported by this gateway"]}
            )
        return value

    def validate_metadata(self, value: dict | None) -> dict | None:
        if value and len(value) > 16:
            raise serializers.ValidationError("at most 16 metadata entries")
        return value

    def validate_text(self, value: dict | None) -> dict | None:
        unknown = sorted(set(value or {}) - {"format", "verbosity"})
        if unknown:
            raise serializers.ValidationError({unknown[0]: ["not supported"]})
        if (value or {}).get("verbosity") not in (None, "low", "medium", "high"):
            raise serializers.ValidationError({"verbosity": ["must be low, medium or high"]})
        return value

    def validate_include(self, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name != LOGPROBS_INCLUDE:
                raise serializers.ValidationError(f"{name!r} cannot be included")
        return value

    def validate_reasoning(self, value: dict | None) -> dict | None:
        # The effort passes through as chat's reasoning_effort; summaries are not produced.
        for key, given in (value or {}).items():
            if key != "effort" and given is not None:
                raise serializers.ValidationError({key: ["not supported by this gateway"]})
        effort = (value or {}).get("effort")
        if effort not in (None, "none", "minimal", "low", "medium", "high", "xhigh", "max"):
            raise serializers.ValidationError({"effort": [f"unknown effort {effort!r}"]})
        return value


#: The ``include`` value that asks for the answer's token log-probs.
LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _messages(request: Request, data: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if data.get("instructions"):
        messages.append({"role": "system", "content": data["instructions"]})
    previous = data.get("previous_response_id")
    if previous:
        # The earlier turns and the answer of a stored response (same team only); its
        # instructions are not carried over, as OpenAI does.
        try:
            earlier = query_get_for_team(
                team=request.user.team, query_id=rfmt.query_id_of(previous)
            )
        except NotFound:
            raise InvalidInput(
                f"previous response {previous!r} not found", param="previous_response_id"
            ) from None
        if not _stored(earlier):
            raise InvalidInput(
                f"previous response {previous!r} was not stored (store: false)",
                param="previous_response_id",
            )
        if earlier.status != Query.Status.DONE:
            raise InvalidInput(
                f"previous response {previous!r} has not completed ({earlier.status})",
                param="previous_response_id",
            )
        turns = earlier.messages or [{"role": "user", "content": earlier.prompt}]
        messages += [m for m in turns if m.get("role") != "system"]
        # Its answer, with the tool calls it made (what a function_call_output answers).
        chosen = Sample.objects.filter(query=earlier, chosen=True).first()
        answer: dict[str, Any] = {"role": "assistant", "content": earlier.answer}
        if chosen is not None and chosen.tool_calls:
            answer["tool_calls"] = chosen.tool_calls
            answer["content"] = earlier.answer or None
        messages.append(answer)
    messages += rfmt.input_messages(data["input"])
    check_tool_turns(messages, param="input")
    return messages


def _stream(query: Query, echo: dict[str, Any], events: Iterator[Any]) -> Iterator[bytes]:
    """The Responses event stream: created, in_progress; then, as a one-sample query
    generates them, the message item (with its text part, a text delta per token carrying
    its log-probs when asked) and one function_call item per tool call (added when the call
    starts, its arguments as function_call_arguments deltas); a multi-sample strategy's
    chosen answer comes whole at the end. Then each item's done events and
    response.completed with usage and the real cost (or response.failed). A client that
    goes away cancels its query; what was generated is billed."""
    seq = 0

    def ev(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        seq += 1
        return rfmt.event(kind, seq - 1, **fields)

    item_id = rfmt.message_id(query)
    single = query.samples_planned == 1
    streamed: list[str] = []
    index: int | None = None
    over = False
    next_index = 0  # the output index of the next item opened
    message_at: int | None = None  # the message item's output index, once opened
    part = {"type": "output_text", "text": "", "annotations": []}
    # Function calls opened while streaming, by their index in the sample's tool calls:
    # output index, item id, arguments sent.
    call_at: dict[int, int] = {}
    call_args: dict[int, list[str]] = {}

    def open_message() -> Iterator[bytes]:
        nonlocal message_at, next_index
        message_at, next_index = next_index, next_index + 1
        item = rfmt.message_item(query, "", status="in_progress")
        yield ev(
            "response.output_item.added", output_index=message_at, item={**item, "content": []}
        )
        yield ev(
            "response.content_part.added",
            item_id=item_id,
            output_index=message_at,
            content_index=0,
            part=part,
        )

    logprobs_sent: list[dict[str, Any]] = []

    def text_delta(text: str, logprobs: list[dict[str, Any]]) -> bytes:
        logprobs_sent.extend(logprobs)
        return ev(
            "response.output_text.delta",
            item_id=item_id,
            output_index=message_at,
            content_index=0,
            delta=text,
            logprobs=logprobs,
        )

    def open_call(j: int, call_id: str, name: str) -> bytes:
        nonlocal next_index
        call_at[j], next_index = next_index, next_index + 1
        call_args[j] = []
        item = rfmt.function_call_item(
            query,
            j,
            {"id": call_id, "function": {"name": name, "arguments": ""}},
            status="in_progress",
        )
        return ev("response.output_item.added", output_index=call_at[j], item=item)

    def args_delta(j: int, piece: str) -> bytes:
        call_args[j].append(piece)
        return ev(
            "response.function_call_arguments.delta",
            item_id=rfmt.function_call_id(query, j),
            output_index=call_at[j],
            delta=piece,
        )

    try:
        yield ev("response.created", response=rfmt.response_body(query, None, echo, final=False))
        yield ev(
            "response.in_progress", response=rfmt.response_body(query, None, echo, final=False)
        )
        ended = False
        for event in events:
            if event.kind == TOKEN and single:
                if index is None:
                    index = event.index
                if event.index != index:
                    continue
                if event.text or event.logprobs:
                    if message_at is None:
                        yield from open_message()
                    streamed.append(event.text)
                    yield text_delta(event.text, list(event.logprobs))
                for delta in event.tool_calls:
                    j = int(delta.get("index", 0))
                    function = delta.get("function") or {}
                    if j not in call_at:
                        yield open_call(j, str(delta.get("id") or ""), function.get("name", ""))
                    if function.get("arguments"):
                        yield args_delta(j, str(function["arguments"]))
            elif event.kind == IDLE:
                yield b": keep-alive\n\n"
            elif event.kind == END:
                ended = True
                break
        if not ended:
            over = True
            yield ev(
                "error",
                code="still_running",
                message=f"still running after {settings.SYNC_WAIT_S:g}s; the response "
                f"continues: GET /v1/responses/{rfmt.response_id(query)}",
                param=None,
            )
            return
        final, samples = _reload(query.pk)
        over = True
        if final.status != Query.Status.DONE:
            yield ev("response.failed", response=rfmt.response_body(final, samples, echo))
            return
        sample = rfmt.chosen_sample(samples)
        calls = (sample.tool_calls if sample is not None else None) or []
        if final.answer or not calls or message_at is not None:
            if message_at is None:
                yield from open_message()
            sent = "".join(streamed)
            rest = final.answer[len(sent) :] if final.answer.startswith(sent) else ""
            logprobs = rfmt.text_logprobs(final, sample)
            unsent = logprobs[len(logprobs_sent) :]
            if rest or unsent:
                yield text_delta(rest, unsent)
            yield ev(
                "response.output_text.done",
                item_id=item_id,
                output_index=message_at,
                content_index=0,
                text=final.answer,
                logprobs=logprobs,
            )
            yield ev(
                "response.content_part.done",
                item_id=item_id,
                output_index=message_at,
                content_index=0,
                part={**part, "text": final.answer, "logprobs": logprobs},
            )
            yield ev(
                "response.output_item.done",
                output_index=message_at,
                item=rfmt.message_item(final, final.answer, logprobs=logprobs),
            )
        for j, call in enumerate(calls):
            item = rfmt.function_call_item(final, j, call, status=rfmt.item_status(sample))
            if j not in call_at:  # not streamed (a multi-sample strategy's choice)
                yield open_call(j, item["call_id"], item["name"])
            sent = "".join(call_args[j])
            rest = item["arguments"][len(sent) :] if item["arguments"].startswith(sent) else ""
            if rest:
                yield args_delta(j, rest)
            yield ev(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=call_at[j],
                name=item["name"],
                arguments=item["arguments"],
            )
            yield ev("response.output_item.done", output_index=call_at[j], item=item)
        body = rfmt.response_body(final, samples, echo)
        kind = "response.completed" if body["status"] == "completed" else "response.incomplete"
        yield ev(kind, response=body)
    except GeneratorExit:
        raise
    except Exception:  # headers are sent: report in the stream, never a broken connection
        log.exception("streaming response %s failed", query.pk)
        yield ev(
            "error", code="internal_error", message="internal error while streaming", param=None
        )
    finally:
        if not over:
            _cancel_quietly(query)


class Responses(APIView):
    content_negotiation_class = JSONOnlyNegotiation
    schema = SpendingApiAutoSchema()

    @extend_schema(
        request=ResponseCreateInput,
        responses={200: OpenApiResponse(description="A Responses `response` object"), **_ERRORS},
        operation_id="responses_create",
        description="OpenAI's Responses API: `model` as in chat completions ('auto' lets "
        "the router choose); text, function tools (function_call / function_call_output "
        "items), text.format json_object / json_schema and log-probs, routed to "
        "configurations that honour them (else a 400 naming the field); `costpass` "
        "extension as in chat completions.",
        tags=["openai"],
    )
    def post(self, request: Request) -> HttpResponseBase:
        require_scope(request.user, "query")
        if not isinstance(request.data, dict):
            raise InvalidInput("the body must be a JSON object")
        form = ResponseCreateInput(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        rfmt.refuse_unsupported(dict(request.data), set(ResponseCreateInput().fields))
        messages = _messages(request, data)
        options = _options(data, messages)
        admit_request(request, " ".join(content_text(m.get("content")) for m in messages))
        echo = {k: data.get(k) for k in ResponseCreateInput().fields if k != "input"}
        try:
            query = _create(request, data, messages, options)
        except InvalidInput as exc:
            # Routing names the chat field a configuration cannot honour: name the Responses one.
            exc.param = _RESPONSES_PARAM.get(exc.param or "", exc.param)
            if exc.param == "top_logprobs" and not data.get("top_logprobs"):
                exc.param = "include"
            raise
        inline = query_runs_inline(query)
        if data.get("stream"):
            events = stream_events_start(query, inline=inline)
            response = StreamingHttpResponse(
                _stream(query, echo, events), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            response["x-costpass-query-id"] = str(query.pk)
            return response
        if inline:
            status, samples = query_run_inline(query=query)
            if samples is not None:
                return _answer(query, samples, echo)
            if status == Query.Status.QUEUED:  # handed over to a worker (a fallback)
                query_wait(query.pk, timeout_s=settings.SYNC_WAIT_S)
        else:
            query_enqueue(query=query)
            query_wait(query.pk, timeout_s=settings.SYNC_WAIT_S)
        final, samples = _reload(query.pk)
        return _answer(final, samples, echo)


#: The chat pipeline's parameter names, as the Responses API calls them.
_RESPONSES_PARAM = {
    "messages": "input",
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "logprobs": "top_logprobs",
}


#: The request fields a response repeats (kept on the query, so a retrieval repeats them too).
_ECHOED = (
    "instructions",
    "metadata",
    "store",
    "previous_response_id",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "service_tier",
    "reasoning",
    "user",
    "safety_identifier",
)


def _stored(query: Query) -> bool:
    recorded = (query.request_options or {}).get("recorded") or {}
    return recorded.get("store") is not False


def _create(
    request: Request,
    data: dict[str, Any],
    messages: list[dict[str, Any]],
    options: RequestOptions | None,
) -> Query:
    return query_create(
        team=request.user.team,
        api_key=request.user.key,
        messages=messages,
        task=data.get("task", ""),
        # The sampling fields through the chat pipeline's RequestOptions: honoured by the
        # configuration (or bounding a multi-sample one), reserved as they will run.
        options=options,
        end_user=data.get("user") or data.get("safety_identifier") or "",
        recorded={
            **{k: data[k] for k in ("metadata", "store", "safety_identifier") if data.get(k)},
            **({"store": False} if data.get("store") is False else {}),
            "response": {k: data[k] for k in _ECHOED if data.get(k) is not None},
        },
        constraints=constraints_from(data),
        source=Query.Source.CHAT,
        defer_dispatch=True,
    )


def _options(data: dict[str, Any], messages: list[dict[str, Any]]) -> RequestOptions | None:
    """The request's answer-changing fields as the chat pipeline's RequestOptions: sampling,
    function tools, text.format, log-probs and pass-through fields, so routing honours them
    (or refuses them by name) exactly as for chat completions."""
    given: dict[str, Any] = {
        "temperature": data.get("temperature"),
        "top_p": data.get("top_p") or None,
        "max_tokens": data.get("max_output_tokens"),
    }
    fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    tools = rfmt.chat_tools(data.get("tools") or [])
    if tools:
        fields["tools"] = tools
    choice = rfmt.chat_tool_choice(data.get("tool_choice"), tools)
    if choice is not None and not (choice in ("auto", "none") and not tools):
        if not tools:
            raise InvalidInput("tool_choice needs tools", param="tool_choice")
        fields["tool_choice"] = choice
    response_format = rfmt.chat_response_format(data.get("text"))
    if response_format is not None:
        fields["response_format"] = response_format
    if LOGPROBS_INCLUDE in (data.get("include") or []) or data.get("top_logprobs"):
        fields["logprobs"] = True
        fields["top_logprobs"] = data.get("top_logprobs") or 0
    if any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        fields["tool_history"] = True
    passthrough: dict[str, Any] = {}
    if data.get("parallel_tool_calls") is False and tools:
        passthrough["parallel_tool_calls"] = False  # OpenAI's default is True
    verbosity = (data.get("text") or {}).get("verbosity")
    if verbosity is not None:
        passthrough["verbosity"] = verbosity
    effort = (data.get("reasoning") or {}).get("effort")
    if effort is not None:
        passthrough["reasoning_effort"] = effort
    for name in ("prompt_cache_key", "prompt_cache_retention"):
        if data.get(name):
            passthrough[name] = data[name]
    if passthrough:
        fields["passthrough"] = passthrough
    return RequestOptions.model_validate(fields) if fields else None


def _answer(query: Query, samples: list[Any], echo: dict[str, Any]) -> Response:
    if not query.is_finished:
        response = Response(rfmt.response_body(query, samples, echo), status=202)
        response["Location"] = f"/v1/responses/{rfmt.response_id(query)}"
        response["Retry-After"] = "5"
    elif query.status == Query.Status.DONE:
        response = Response(rfmt.response_body(query, samples, echo))
    else:
        status, body = _failure(query)
        response = Response(body, status=status)
        response["x-should-retry"] = "false"
    _cost_headers(response, query)
    return response


class ResponseDetail(APIView):
    content_negotiation_class = JSONOnlyNegotiation
    schema = ApiAutoSchema()

    @extend_schema(
        responses={200: OpenApiResponse(description="A Responses `response` object")},
        operation_id="responses_retrieve",
        tags=["openai"],
    )
    def get(self, request: Request, response_id: str) -> Response:
        try:
            query_id = rfmt.query_id_of(response_id)
        except InvalidInput:
            raise NotFound(f"no response {response_id!r}", param="response_id") from None
        query = query_get_for_team(team=request.user.team, query_id=query_id)
        if not _stored(query):  # store: false, as OpenAI: not retrievable (still billed)
            raise NotFound(f"no response {response_id!r} (store: false)", param="response_id")
        _, samples = _reload(query.pk)
        echo = ((query.request_options or {}).get("recorded") or {}).get("response") or {}
        response = Response(rfmt.response_body(query, samples, echo, final=True))
        _cost_headers(response, query)
        return response
