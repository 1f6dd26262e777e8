"""The Responses API (POST /v1/responses) on top of the chat pipeline: a request's ``input``,
``instructions`` and ``previous_response_id`` become chat messages; a query becomes a
``response`` object (``output`` items, ``usage`` in input/output tokens, the ``costpass``
extension) or the stream of typed events the official client parses. Pure functions.

What the chat pipeline cannot honour yet is refused with a 400 naming the field (function
tools and their call items, structured ``text.format``, image / file / audio parts, reasoning,
background mode and the other fields listed in UNSUPPORTED), never dropped.
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
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning",
    "service_tier",
    "top_logprobs",
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


def input_messages(value: Any) -> list[dict[str, str]]:
    """Return the chat messages of a Responses ``input`` (a string or a list of items)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidInput("input must be a non-empty string or list of items", param="input")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInput(f"input[{i}] must be an object", param=f"input[{i}]")
        kind = item.get("type", "message")
        if kind != "message":
            raise InvalidInput(
                f"input[{i}]: items of type {kind!r} are not supported (messages only)",
                param=f"input[{i}]",
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


def message_item(query: Query, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": message_id(query),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


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
        "output": [message_item(query, query.answer)]
        if final and query.status == Query.Status.DONE
        else [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": usage(query) if final and query.is_finished else None,
        "parallel_tool_calls": bool(echo.get("parallel_tool_calls", True)),
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "store": bool(echo.get("store", True)),
        "metadata": echo.get("metadata") or {},
        "instructions": echo.get("instructions"),
        "previous_response_id": echo.get("previous_response_id"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "temperature": echo.get("temperature"),
        "top_p": echo.get("top_p"),
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
