"""OpenAI request bodies, validated against the official `openai` package's own types.

`POST /v1/chat/completions` and `/v1/completions` bodies are checked with pydantic against
`openai.types.chat.CompletionCreateParams` / `openai.types.CompletionCreateParams` (nested
objects included, unknown keys refused), so a field OpenAI adds is known the day the package
is upgraded. Then every field is sorted into one of:

- costpass's own fields (strategy, max_cost_usd, ...): router constraints;
- fields that change the answer (sampling, n, response_format, tools, logprobs, penalties,
  image / audio input): a :class:`~workers.strategies.request_options.RequestOptions`, which
  the router honours by choosing only configurations that can (services.request_fields);
- fields recorded on the query (user, metadata, store, safety_identifier);
- fields no configuration of this gateway can honour: a 400 naming them.

Nothing is dropped: an unknown field is a 400 naming it.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from openai.types import completion_create_params as text_params
from openai.types.chat import completion_create_params as chat_params
from pydantic import ConfigDict, TypeAdapter, ValidationError
from rest_framework.exceptions import ValidationError as DRFValidationError

from routerapp.api.serializers import ConstraintFields
from routerapp.errors import InvalidInput
from workers.strategies.request_options import RequestOptions

CHAT = "chat"
TEXT = "text"

_COSTPASS_FIELDS = frozenset(ConstraintFields().fields) - {"model"}
_CHAT_FIELDS = frozenset(typing.get_type_hints(chat_params.CompletionCreateParamsBase)) | {"stream"}
_TEXT_FIELDS = frozenset(typing.get_type_hints(text_params.CompletionCreateParamsBase)) | {"stream"}
# Sent to the endpoint as they are (OpenAI-compatible servers apply them); only engines that
# pass request fields through can honour them (request_options.ENGINE_FEATURES).
_PASSTHROUGH = (
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "parallel_tool_calls",
    "reasoning_effort",
    "verbosity",
    "prompt_cache_key",
    "prompt_cache_retention",
)
# Known fields this gateway cannot honour on any configuration, and why.
_REFUSED = {
    "audio": "audio output is not supported by this gateway",
    "prediction": "predicted outputs are not supported by this gateway",
    "web_search_options": "web search is not supported by this gateway",
    "functions": "functions is deprecated: send tools",
    "function_call": "function_call is deprecated: send tool_choice",
    "moderation": "moderation is not supported by this gateway",
    "prompt_cache_options": "prompt_cache_options is not supported by this gateway",
    "suffix": "suffix (insertion) is not supported by this gateway",
}
# Known fields that only describe the request: kept on the query.
_RECORDED = ("metadata", "store", "safety_identifier")
# Every other field of the two endpoints is honoured by parse_request / _options (sampling,
# n, logprobs, response_format, tools, the prompt) or checked there (service_tier,
# modalities, stream_options). A field the openai types gain is in none of these sets: it is
# refused by name until someone decides how to honour it (tests/.../test_openai_fields.py
# fails on the upgrade that brings it).
HONOURED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "user",
        "service_tier",
        "modalities",
        "echo",
        "best_of",
    }
)
CLASSIFIED = HONOURED | frozenset(_PASSTHROUGH) | frozenset(_REFUSED) | frozenset(_RECORDED)

# Validating against a one-tuple lets the config (unknown keys refused) reach the TypedDicts.
_forbid = ConfigDict(extra="forbid")
_CHAT_ADAPTER: TypeAdapter[Any] = TypeAdapter(
    tuple[chat_params.CompletionCreateParamsBase], config=_forbid
)
_TEXT_ADAPTER: TypeAdapter[Any] = TypeAdapter(
    tuple[text_params.CompletionCreateParamsBase], config=_forbid
)


@dataclass
class OpenAIRequest:
    """A validated OpenAI request, sorted for the pipeline (see the module docstring)."""

    kind: str
    constraints: dict[str, Any]
    options: RequestOptions
    messages: list[dict[str, Any]] | None = None
    prompt: str = ""
    stream: bool = False
    include_usage: bool = False
    user: str = ""
    recorded: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The prompt's text (what the rate limiter estimates)."""
        if self.messages is None:
            return self.prompt
        return " ".join(content_text(m.get("content")) for m in self.messages)


def content_text(content: Any) -> str:
    """Return the text of a message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "") if p.get("type") == "text" else str(p.get("refusal") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "refusal")
        )
    return ""


def check_tool_turns(messages: list[dict[str, Any]], *, param: str) -> None:
    """Raise InvalidInput (OpenAI's 400, before anything runs or is billed) when a tool
    result answers no earlier call, or a tool call is not answered before the conversation
    goes on (every upstream refuses both)."""
    pending: list[str] = []
    for m in messages:
        if m.get("role") == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                raise InvalidInput(
                    f"no tool call found for the tool output with call id {call_id!r}",
                    param=param,
                )
            pending.remove(call_id)
            continue
        if pending:
            raise InvalidInput(
                f"no tool output found for the tool call {pending[0]!r}", param=param
            )
        pending = [str(c.get("id")) for c in m.get("tool_calls") or []]
    if pending:
        raise InvalidInput(f"no tool output found for the tool call {pending[0]!r}", param=param)


def parse_request(data: Any, kind: str) -> OpenAIRequest:
    """Validate an OpenAI request body; raise InvalidInput (a 400) naming the bad field."""
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object", param=None)
    known = _CHAT_FIELDS if kind == CHAT else _TEXT_FIELDS
    for name in data:
        if name not in known and name not in _COSTPASS_FIELDS:
            raise InvalidInput(
                f"unknown parameter: {name!r} is not a field of this endpoint",
                param=name,
                code="unknown_parameter",
            )
    ours = {k: v for k, v in data.items() if k in _COSTPASS_FIELDS}
    theirs = {k: v for k, v in data.items() if k not in _COSTPASS_FIELDS and k != "stream"}
    theirs.setdefault("model", "auto")
    if theirs["model"] in (None, ""):
        theirs["model"] = "auto"
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidInput("stream must be a boolean", param="stream")
    adapter = _CHAT_ADAPTER if kind == CHAT else _TEXT_ADAPTER
    try:
        (body,) = adapter.validate_python((theirs,))
        body = _materialize(body, ())
    except _PathError as exc:
        raise _invalid(exc.error, exc.path) from None
    except ValidationError as exc:
        raise _invalid(exc, ()) from None
    constraints = _constraints({**ours, "model": body["model"]})
    for name in sorted(body):
        if name not in CLASSIFIED and body[name] is not None:
            raise InvalidInput(
                f"{name!r} is not supported by this gateway yet",
                param=name,
                code="unsupported_parameter",
            )
    if (body.get("stream_options") or {}).get("include_obfuscation"):
        raise InvalidInput(
            "stream obfuscation is not supported by this gateway: send include_obfuscation false",
            param="stream_options.include_obfuscation",
            code="unsupported_parameter",
        )
    for name, why in _REFUSED.items():
        if body.get(name) is not None:
            raise InvalidInput(why, param=name, code="unsupported_parameter")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise InvalidInput(
            "only service_tier 'auto' or 'default' is supported", param="service_tier"
        )
    modalities = body.get("modalities")
    if modalities is not None and list(modalities) != ["text"]:
        raise InvalidInput("only text output is supported", param="modalities")
    request = OpenAIRequest(
        kind=kind,
        constraints=constraints,
        options=_options(body, kind),
        stream=bool(stream),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        user=str(body.get("user") or body.get("safety_identifier") or ""),
        recorded={k: body[k] for k in _RECORDED if body.get(k) is not None},
    )
    if kind == CHAT:
        request.messages, images, audio = _messages(body["messages"])
        history = any(m.get("role") == "tool" or m.get("tool_calls") for m in request.messages)
        if history:
            check_tool_turns(request.messages, param="messages")
        if images or audio or history:
            request.options = request.options.model_copy(
                update={"images": images, "audio": audio, "tool_history": history}
            )
    else:
        request.prompt = _prompt(body.get("prompt"))
    return request


def _constraints(data: dict[str, Any]) -> dict[str, Any]:
    form = ConstraintFields(data=data)
    try:
        form.is_valid(raise_exception=True)
    except DRFValidationError:
        name, problems = next(iter(form.errors.items()))
        message = problems[0] if isinstance(problems, list) and problems else problems
        raise InvalidInput(f"{name}: {message}", param=name) from None
    return dict(form.validated_data)


def _options(body: dict[str, Any], kind: str) -> RequestOptions:
    data: dict[str, Any] = {}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            data[name] = body[name]
    if body.get("top_p") is not None and body["top_p"] <= 0:
        raise InvalidInput("top_p must be greater than 0 and at most 1", param="top_p")
    if body.get("seed") is not None:
        # Engines take a non-negative 31-bit base seed; any integer maps to one, reproducibly.
        data["seed"] = int(body["seed"]) % 2**31
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else list(stop)
        if len(stop) > 4 or any(not s for s in stop):
            raise InvalidInput("stop must be up to 4 non-empty strings", param="stop")
        data["stop"] = stop
    limits = [body.get(n) for n in ("max_tokens", "max_completion_tokens")]
    given = [int(v) for v in limits if v is not None]
    if given:
        data["max_tokens"] = min(given)
    if body.get("n") is not None:
        data["n"] = body["n"]
    if kind == CHAT:
        if body.get("logprobs"):
            data["logprobs"] = True
        if body.get("top_logprobs") is not None:
            if not body.get("logprobs"):
                raise InvalidInput("top_logprobs needs logprobs: true", param="top_logprobs")
            data["top_logprobs"] = body["top_logprobs"]
        fmt = body.get("response_format")
        if fmt is not None and fmt.get("type") != "text":
            data["response_format"] = dict(fmt)
        for i, tool in enumerate(body.get("tools") or []):
            # A custom tool's call (free-form input) has no place in the tool calls engines
            # return, votes compare and the Responses API sends back: refused, not mangled.
            if tool.get("type") != "function":
                raise InvalidInput(
                    f"tools of type {tool.get('type')!r} are not supported by this gateway "
                    "(function tools only)",
                    param=f"tools[{i}].type",
                    code="unsupported_parameter",
                )
        if body.get("tools"):
            data["tools"] = [dict(t) for t in body["tools"]]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "custom":
            raise InvalidInput(
                "custom tools are not supported by this gateway (function tools only)",
                param="tool_choice",
                code="unsupported_parameter",
            )
        if choice is not None:
            data["tool_choice"] = choice
    else:
        if body.get("logprobs") is not None:
            data["logprobs"] = True
            data["top_logprobs"] = body["logprobs"]
        if body.get("echo"):
            raise InvalidInput("echo is not supported by this gateway", param="echo")
        if (body.get("best_of") or 1) > 1:
            raise InvalidInput(
                "best_of is not supported: choose a best_of_n strategy (strategy field)",
                param="best_of",
            )
    passthrough = {}
    for name in _PASSTHROUGH:
        value = body.get(name)
        if name == "parallel_tool_calls":
            # OpenAI's default is true; false limits the answer to one call (with tools).
            if value is False and body.get("tools"):
                passthrough[name] = False
            continue
        if value is None or value == 0 or value == {}:
            continue  # OpenAI's default: nothing to honour
        passthrough[name] = value
    if passthrough:
        data["passthrough"] = passthrough
    try:
        return RequestOptions(**data)
    except ValidationError as exc:
        raise _invalid(exc, ()) from None


def _messages(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool, bool]:
    """Return the messages to store and send, and whether they hold image / audio parts."""
    images = audio = False
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        m = dict(message)
        for name in ("audio", "function_call"):  # an assistant turn's audio / legacy call
            if m.get(name) is not None:
                raise InvalidInput(
                    f"messages[{i}].{name} is not supported by this gateway"
                    + (": send tool_calls" if name == "function_call" else ""),
                    param=f"messages[{i}].{name}",
                    code="unsupported_parameter",
                )
        refusal = m.pop("refusal", None)
        if refusal:  # an assistant turn that refused: its refusal is what it said
            if m.get("content"):
                raise InvalidInput(
                    f"messages[{i}] has both content and refusal; send one",
                    param=f"messages[{i}].refusal",
                )
            m["content"] = refusal
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type")
                if kind == "image_url":
                    images = True
                elif kind == "input_audio":
                    audio = True
                elif kind == "file":
                    raise InvalidInput(
                        "file content parts are not supported by this gateway",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_parameter",
                    )
                parts.append(dict(part))
            if all(p.get("type") in ("text", "refusal") for p in parts):
                m["content"] = content_text(parts)
            else:
                m["content"] = parts
        out.append(m)
    return out, images, audio


def _prompt(raw: Any) -> str:
    if isinstance(raw, list):
        if len(raw) != 1 or not isinstance(raw[0], str):
            raise InvalidInput(
                "batched or token prompts are not supported: send one prompt per request",
                param="prompt",
            )
        raw = raw[0]
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("prompt must be a non-empty string", param="prompt")
    return raw


class _PathError(Exception):
    def __init__(self, error: ValidationError, path: tuple[Any, ...]):
        self.error = error
        self.path = path


def _materialize(value: Any, path: tuple[Any, ...]) -> Any:
    """Turn pydantic's lazy iterables (the openai types use Iterable[...]) into lists,
    validating them now; a failure carries the path of the iterable it came from."""
    if isinstance(value, Iterator):  # pydantic's lazy ValidatorIterator
        items: list[Any] = []
        try:
            for item in value:
                items.append(_materialize(item, (*path, len(items))))
        except ValidationError as exc:
            raise _PathError(exc, path) from None
        return items
    if isinstance(value, dict):
        return {k: _materialize(v, (*path, k)) for k, v in value.items()}
    return value


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list", "tuple"})


def _param(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part[:1].isupper() or "[" in part or part in _TYPE_TAGS:  # a union member's name
            continue
        else:
            name += f".{part}" if name else part
    return name


def _invalid(exc: ValidationError, path: tuple[Any, ...]) -> InvalidInput:
    """The 400 of a validation error: the most specific problem, named by its path."""
    errors = exc.errors()
    # Union members that failed on their discriminator (role / type) were not the one meant.
    members: dict[str, list[Any]] = {}
    for e in errors:
        member = next((p for p in e["loc"] if isinstance(p, str) and p[:1].isupper()), "")
        members.setdefault(member, []).append(e)
    meant = [
        errs
        for errs in members.values()
        if not any(
            e["type"] == "literal_error" and e["loc"] and e["loc"][-1] in ("role", "type")
            for e in errs
        )
    ]
    chosen = meant[0][0] if meant else errors[0]
    loc = (*path, *chosen["loc"])
    param = _param(loc[1:] if loc and loc[0] == 0 else loc)
    if chosen["type"] == "extra_forbidden":
        return InvalidInput(f"unknown parameter: {param!r}", param=param, code="unknown_parameter")
    if not meant:
        allowed = sorted(
            {str(e.get("ctx", {}).get("expected", "")) for e in errors if "ctx" in e} - {""}
        )
        return InvalidInput(
            f"{param}: must be one of {', '.join(allowed)}", param=param, code="invalid_value"
        )
    return InvalidInput(f"{param}: {chosen['msg']}", param=param, code="invalid_value")
