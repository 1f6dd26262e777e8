"""The Responses API (POST /v1/responses) on top of the chat pipeline: a request's ``input``,
``instructions`` and ``previous_response_id`` become chat messages; a query becomes a
``response`` object (``output`` items, ``usage`` in input/output tokens, the ``costpass``
extension) or the stream of typed events the official client parses. Pure functions.

Function tools (``tools``, ``tool_choice``, ``function_call`` / ``function_call_output`` input
items) and ``text.format`` (json_object / json_schema) become the chat request's ``tools`` /
``tool_choice`` / ``response_format``, so the router chooses only configurations that honour
them, exactly as for chat completions; a chosen sample's tool calls come back as
``function_call`` output items. What the chat pipeline cannot honour is refused with a 400
naming the field (hosted tools, image / file / audio parts, reasoning summaries, background
mode and the other fields listed in UNSUPPORTED), never dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from routerapp.api import openai_format as fmt
from routerapp.errors import InvalidInput
from routerapp.models import Query, Sample

#: Responses fields this gateway does not honour yet: a request that sets one to anything but
#: its neutral value is refused (400 naming it). Read from the official client's types, so a
#: field OpenAI adds is refused by name too (see unknown_fields).
UNSUPPORTED = (
    "background",
    "background_options",
    "context_management",
    "conversation",
    "image",
    "max_tool_calls",
    "moderation",
    "prompt",
    "prompt_cache_options",
    "access_programs",
)
_NEUTRAL: tuple[Any, ...] = (None, False, [], {}, "")


def known_fields() -> set[str]:
    """Every field of OpenAI's Responses create request, from the official client's types."""
    from openai.types.responses import response_create_params as params

    return set(params.ResponseCreateParamsBase.__annotations__) | {"stream"}


def refuse_unsupported(data: dict[str, Any], handled: set[str]) -> None:
    """Raise InvalidInput naming the first field that is set and not honoured."""
    for name in sorted(data):
        if name in handled:
            continue
        value = data[name]
        if name in known_fields():
            if value in _NEUTRAL or (name == "truncation" and value == "disabled"):
                continue
            raise InvalidInput(
                f"{name!r} is not supported by this gateway's Responses API", param=name
            )
        raise InvalidInput(f"unknown field {name!r}", param=name)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidInput(f"{where} must be a string or a list of parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidInput(
                f"{where}[{j}]: content part of type {kind!r} is not supported (text parts only)",
                param=f"{where}[{j}]",
            )
    return "\n".join(texts)


def input_messages(value: Any) -> list[dict[str, Any]]:
    """Return the chat messages of a Responses ``input`` (a string or a list of items):
    messages, ``function_call`` items (an assistant turn's tool calls, consecutive ones in one
    turn) and ``function_call_output`` items (tool results)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidInput("input must be a non-empty string or list of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInput(f"input[{i}] must be an object", param=f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "function_call":
            call = _function_call(item, i)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if kind == "function_call_output":
            out.append(_function_call_output(item, i))
            continue
        if kind != "message":
            raise InvalidInput(
                f"input[{i}]: items of type {kind!r} are not supported (messages, function_call "
                "and function_call_output only)",
                param=f"input[{i}].type",
                code="unsupported_parameter",
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidInput(
                f"input[{i}].role must be user, assistant, system or developer",
                param=f"input[{i}].role",
            )
        out.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _text_of(item.get("content"), f"input[{i}].content"),
            }
        )
    return out


def _refuse_extra(item: dict[str, Any], honoured: set[str], where: str) -> None:
    """Refuse (400 naming it) a key of ``item`` that is set and not honoured."""
    for key in sorted(item):
        if key not in honoured and item[key] not in _NEUTRAL:
            raise InvalidInput(
                f"{where}.{key} is not supported by this gateway",
                param=f"{where}.{key}",
                code="unsupported_parameter",
            )


def _required_str(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}.{key} must be a non-empty string", param=f"{where}.{key}")
    return value


def _function_call(item: dict[str, Any], i: int) -> dict[str, Any]:
    where = f"input[{i}]"
    _refuse_extra(item, {"type", "id", "call_id", "name", "arguments", "status"}, where)
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise InvalidInput(f"{where}.arguments must be a string", param=f"{where}.arguments")
    return {
        "id": _required_str(item, "call_id", where),
        "type": "function",
        "function": {"name": _required_str(item, "name", where), "arguments": arguments},
    }


def _function_call_output(item: dict[str, Any], i: int) -> dict[str, Any]:
    where = f"input[{i}]"
    _refuse_extra(item, {"type", "id", "call_id", "output", "status"}, where)
    output = item.get("output")
    if isinstance(output, list):  # content parts: text only
        output = _text_of(output, f"{where}.output")
    if not isinstance(output, str):
        raise InvalidInput(f"{where}.output must be a string", param=f"{where}.output")
    return {
        "role": "tool",
        "tool_call_id": _required_str(item, "call_id", where),
        "content": output,
    }


_FUNCTION_TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}


def chat_tools(tools: list[Any]) -> list[dict[str, Any]]:
    """Return the chat-completions ``tools`` of Responses function tools; raise InvalidInput
    naming a hosted tool (web search, file search, ...) or a tool field it cannot honour."""
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidInput(f"{where} must be an object", param=where)
        if tool.get("type") != "function":
            raise InvalidInput(
                f"{where}: tools of type {tool.get('type')!r} are not supported by this gateway "
                "(function tools only)",
                param=f"{where}.type",
                code="unsupported_parameter",
            )
        _refuse_extra(tool, _FUNCTION_TOOL_KEYS, where)
        function: dict[str, Any] = {"name": _required_str(tool, "name", where)}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        if tool.get("parameters") is not None:
            if not isinstance(tool["parameters"], dict):
                raise InvalidInput(
                    f"{where}.parameters must be a JSON schema object",
                    param=f"{where}.parameters",
                )
            function["parameters"] = tool["parameters"]
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(value: Any, tools: list[dict[str, Any]]) -> Any:
    """Return the chat-completions ``tool_choice`` of a Responses one (None: not given)."""
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        _refuse_extra(value, {"type", "name"}, "tool_choice")
        name = _required_str(value, "name", "tool_choice")
        if name not in {t["function"]["name"] for t in tools}:
            raise InvalidInput(
                f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
            )
        return {"type": "function", "function": {"name": name}}
    kind = value.get("type") if isinstance(value, dict) else value
    raise InvalidInput(
        f"tool_choice {kind!r} is not supported by this gateway (auto, none, required or a "
        "function)",
        param="tool_choice",
        code="unsupported_parameter",
    )


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the chat ``response_format`` of ``text.format`` (None: plain text)."""
    fmt_ = (text or {}).get("format")
    if fmt_ is None:
        return None
    if not isinstance(fmt_, dict):
        raise InvalidInput("text.format must be an object", param="text.format")
    kind = fmt_.get("type")
    if kind == "text":
        _refuse_extra(fmt_, {"type"}, "text.format")
        return None
    if kind == "json_object":
        _refuse_extra(fmt_, {"type"}, "text.format")
        return {"type": "json_object"}
    if kind == "json_schema":
        _refuse_extra(fmt_, {"type", "name", "schema", "strict", "description"}, "text.format")
        schema = fmt_.get("schema")
        if not isinstance(schema, dict):
            raise InvalidInput("text.format.schema must be an object", param="text.format.schema")
        spec: dict[str, Any] = {"name": _required_str(fmt_, "name", "text.format")}
        spec["schema"] = schema
        for key in ("strict", "description"):
            if fmt_.get(key) is not None:
                spec[key] = fmt_[key]
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidInput(
        f"text.format type {kind!r} is not supported (text, json_object or json_schema)",
        param="text.format",
    )


def response_id(query: Query) -> str:
    return f"resp_{query.pk.hex}"


def message_id(query: Query) -> str:
    return f"msg_{query.pk.hex}"


def query_id_of(response_id_value: str) -> str:
    """Return the query id a response id stands for; raise InvalidInput when malformed."""
    import uuid

    raw = response_id_value.removeprefix("resp_")
    try:
        return str(uuid.UUID(hex=raw))
    except ValueError:
        raise InvalidInput(
            f"{response_id_value!r} is not a response id", param="previous_response_id"
        ) from None


def _status(query: Query, samples: list[Sample]) -> str:
    if query.status == Query.Status.DONE:
        return "incomplete" if fmt.finish_reason(query, samples) == "length" else "completed"
    if query.status == Query.Status.FAILED:
        return "failed"
    if query.status == Query.Status.CANCELLED:
        return "cancelled"
    return "in_progress" if query.status == Query.Status.RUNNING else "queued"


def usage(query: Query) -> dict[str, Any]:
    return {
        "input_tokens": query.prompt_tokens,
        "input_tokens_details": {"cached_tokens": query.cached_prompt_tokens},
        "output_tokens": query.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": query.reasoning_tokens},
        "total_tokens": query.prompt_tokens + query.completion_tokens,
    }


def message_item(
    query: Query,
    text: str,
    status: str = "completed",
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_id(query),
        "status": status,
        "role": "assistant",
        "content": [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
        ],
    }


def function_call_id(query: Query, index: int) -> str:
    return f"fc_{query.pk.hex}_{index}"


def function_call_item(
    query: Query, index: int, call: dict[str, Any], status: str = "completed"
) -> dict[str, Any]:
    """A chat tool call as a Responses ``function_call`` output item."""
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": function_call_id(query, index),
        "call_id": call.get("id") or function_call_id(query, index),
        "name": function.get("name", ""),
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def chosen_sample(samples: list[Sample] | None) -> Sample | None:
    return next((s for s in samples or [] if s.chosen), None)


def text_logprobs(query: Query, sample: Sample | None) -> list[dict[str, Any]]:
    """The chosen sample's token log-probs when the request asked for them (Responses'
    ``Logprob`` has the chat entry's shape: token, bytes, logprob, top_logprobs)."""
    if sample is None or not (query.request_options or {}).get("logprobs"):
        return []
    return list(sample.logprobs or [])


def output_items(query: Query, samples: list[Sample] | None) -> list[dict[str, Any]]:
    """A finished query's ``output``: the answer as a message (when it has text or no tool
    calls), then one ``function_call`` item per tool call of the chosen sample."""
    sample = chosen_sample(samples)
    calls = (sample.tool_calls if sample is not None else None) or []
    items = []
    if query.answer or not calls:
        items.append(message_item(query, query.answer, logprobs=text_logprobs(query, sample)))
    items += [
        function_call_item(query, j, call, status=item_status(sample))
        for j, call in enumerate(calls)
    ]
    return items


def item_status(sample: Sample | None) -> str:
    """An output item's status: incomplete when its sample was cut by max_output_tokens."""
    return "incomplete" if fmt.sample_finish_reason(sample) == "length" else "completed"


def _text_echo(echo: dict[str, Any]) -> dict[str, Any]:
    text = dict(echo.get("text") or {})
    text.setdefault("format", {"type": "text"})
    if text["format"] is None:
        text["format"] = {"type": "text"}
    return text


def response_body(
    query: Query, samples: list[Sample] | None, echo: dict[str, Any], *, final: bool = True
) -> dict[str, Any]:
    """A query as a Responses ``response`` object (``echo``: request fields it repeats)."""
    samples = samples or []
    status = _status(query, samples) if final else "in_progress"
    configuration = query.configuration
    body: dict[str, Any] = {
        "id": response_id(query),
        "object": "response",
        "created_at": int(query.created_at.timestamp()),
        "status": status,
        "model": configuration.slug if configuration else "auto",
        "output": output_items(query, samples)
        if final and query.status == Query.Status.DONE
        else [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": usage(query) if final and query.is_finished else None,
        # OpenAI's defaults (true) unless the request said false.
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": echo.get("tools") or [],
        "text": _text_echo(echo),
        "truncation": "disabled",
        "store": echo.get("store") is not False,
        "metadata": echo.get("metadata") or {},
        "instructions": echo.get("instructions"),
        "previous_response_id": echo.get("previous_response_id"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "temperature": echo.get("temperature"),
        "top_p": echo.get("top_p"),
        "top_logprobs": echo.get("top_logprobs"),
        "service_tier": echo.get("service_tier"),
        "reasoning": echo.get("reasoning"),
        "user": echo.get("user"),
        "costpass": fmt.extension(query, samples if final else None),
    }
    if status == "completed" or status == "incomplete":
        body["completed_at"] = int(time.time())
    if status == "failed":
        body["error"] = {"code": "server_error", "message": query.error[:1000]}
    return body


def event(kind: str, sequence: int, **fields: Any) -> bytes:
    """One Responses stream event (``event:`` name and ``data:`` JSON with the same type)."""
    payload = {"type": kind, "sequence_number": sequence, **fields}
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
