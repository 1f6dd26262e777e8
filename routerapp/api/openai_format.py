"""OpenAI's response and chunk shapes, built from a query (pure functions, no I/O).

A response is a valid `chat.completion` / `text_completion` (the official client parses it)
whose `usage` sums every sample's tokens (aborted, discarded and scorer calls included), plus a
`costpass` extension object with the decision, the real cost, the samples and the vote.
"""

from __future__ import annotations

import json
from typing import Any

from routerapp.models import Query, Sample

CHAT = "chat"
TEXT = "text"


def completion_id(query: Query, kind: str) -> str:
    return f"{'chatcmpl' if kind == CHAT else 'cmpl'}-{query.pk.hex}"


def poll_url(query: Query) -> str:
    return f"/api/v1/queries/{query.pk}"


def usage(query: Query) -> dict[str, Any]:
    return {
        "prompt_tokens": query.prompt_tokens,
        "completion_tokens": query.completion_tokens,
        "total_tokens": query.prompt_tokens + query.completion_tokens,
        # OpenAI's breakdowns: parts of the counts above, billed at their own prices.
        "prompt_tokens_details": {"cached_tokens": query.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": query.reasoning_tokens},
    }


def finish_reason(query: Query, samples: list[Sample]) -> str:
    """OpenAI's finish reason of the returned answer: the chosen sample's, 'stop' otherwise."""
    return sample_finish_reason(next((s for s in samples if s.chosen), None))


def sample_finish_reason(sample: Sample | None) -> str:
    # A call cut by max_tokens is "length", as OpenAI says: its arguments may not parse.
    if sample is not None and sample.finish_reason == "length":
        return "length"
    if sample is not None and sample.tool_calls:
        return "tool_calls"
    return "stop"


def _wants_logprobs(query: Query) -> bool:
    return bool((query.request_options or {}).get("logprobs"))


def _choice_samples(query: Query, samples: list[Sample]) -> list[Sample | None]:
    """The samples returned as choices: every sample for OpenAI's ``n`` (one-sample
    strategies draw n), else the chosen one (None when no sample was chosen)."""
    if int((query.request_options or {}).get("n", 1)) > 1:
        return [*sorted(samples, key=lambda s: s.index)]
    return [next((s for s in samples if s.chosen), None)]


def chat_logprobs(query: Query, sample: Sample | None) -> dict[str, Any] | None:
    if not _wants_logprobs(query) or sample is None:
        return None
    return {"content": sample.logprobs or [], "refusal": None}


def text_logprobs(query: Query, sample: Sample | None) -> dict[str, Any] | None:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    if not _wants_logprobs(query) or sample is None:
        return None
    return text_logprobs_of(sample.logprobs or [])


def text_logprobs_of(content: list[dict[str, Any]], start: int = 0) -> dict[str, Any]:
    """Chat log-prob entries in the legacy completions shape, offsets counted from ``start``
    (the length of the text before them)."""
    offsets, at = [], start
    for entry in content:
        offsets.append(at)
        at += len(entry["token"])
    return {
        "tokens": [e["token"] for e in content],
        "token_logprobs": [e["logprob"] for e in content],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in content
        ],
        "text_offset": offsets,
    }


def extension(query: Query, samples: list[Sample] | None) -> dict[str, Any]:
    """The `costpass` object: what was chosen and why, what it cost, every sample, the vote."""
    configuration = query.configuration
    data: dict[str, Any] = {
        "query_id": str(query.pk),
        "status": query.status,
        "configuration": configuration.slug if configuration else None,
        "model": configuration.endpoint.name if configuration else None,
        "strategy": configuration.strategy.strategy if configuration else None,
        "strategy_config": configuration.strategy.name if configuration else None,
        "router_version": query.router_version_id,
        "decision_reason": (query.decision or {}).get("reason", ""),
        "p_correct": query.predicted_p_correct,
        "predicted_cost_usd": None
        if query.predicted_cost_usd is None
        else str(query.predicted_cost_usd),
        "reserved_usd": str(query.reserved_usd),
        "cost_usd": str(query.cost_usd),
        "billed_prices": query.billed_prices or None,
        "latency_ms": query.latency_ms,
        "engine_requests": query.engine_requests,
        "engine_seconds": query.engine_ms / 1000,
        "scorer_calls": query.scorer_calls,
        "extracted_answer": query.extracted_answer or None,
        "votes": query.votes,
        "budget_flags": query.budget_flags or [],
        "tags": query.tags or [],
        "poll_url": poll_url(query),
        # Every (configuration, target) tried, in order: fallbacks and their retries.
        "attempts": [
            {k: v for k, v in a.items() if k != "target_key"} for a in query.attempts or []
        ],
    }
    if samples is not None:
        data["samples_planned"] = query.samples_planned
        data["samples"] = [
            {
                "index": s.index,
                "text": s.text,
                "extracted_answer": s.extracted_answer or None,
                "score": s.score,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "cached_prompt_tokens": s.cached_prompt_tokens,
                "reasoning_tokens": s.reasoning_tokens,
                "finish_reason": s.finish_reason,
                "aborted": s.aborted,
                "chosen": s.chosen,
                "latency_ms": s.latency_ms,
                "engine_ms": s.engine_ms,
                "cost_usd": str(s.cost_usd),
            }
            for s in samples
        ]
    return data


def response_model(query: Query) -> str:
    """The `model` field: the configuration that served (what `auto` resolved to)."""
    return query.configuration.slug if query.configuration else "auto"


def completion_body(query: Query, samples: list[Sample], kind: str) -> dict[str, Any]:
    """A finished query as a `chat.completion` or `text_completion` object: one choice (the
    chosen sample: the strategy's answer), or with OpenAI's ``n`` one choice per sample."""
    chosen = _choice_samples(query, samples)
    choices: list[dict[str, Any]] = []
    for i, sample in enumerate(chosen):
        # One choice: the strategy's answer (it may post-process the sample's text).
        text = query.answer if len(chosen) == 1 or sample is None else sample.text
        reason = sample_finish_reason(sample)
        if kind == CHAT:
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if sample is not None and sample.tool_calls:
                message["tool_calls"] = sample.tool_calls
                message["content"] = text or None
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": chat_logprobs(query, sample),
                    "finish_reason": reason,
                }
            )
        else:
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "logprobs": text_logprobs(query, sample),
                    "finish_reason": reason,
                }
            )
    return {
        "id": completion_id(query, kind),
        "object": "chat.completion" if kind == CHAT else "text_completion",
        "created": int(query.created_at.timestamp()),
        "model": response_model(query),
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(query),
        "costpass": extension(query, samples),
    }


def timeout_body(query: Query, waited_s: float) -> dict[str, Any]:
    """OpenAI's error shape for a query that outlived the synchronous wait: it goes on, and
    the error says where to poll for its result (never a completion without choices)."""
    return {
        "error": {
            "message": (
                f"the query is still running after {waited_s:g}s; it continues and is billed "
                f"as usual: poll GET {poll_url(query)} for its result"
            ),
            "type": "timeout",
            "param": None,
            "code": "query_timeout",
            "query_id": str(query.pk),
            "poll_url": poll_url(query),
        },
        "costpass": extension(query, None),
    }


def chunk(
    query: Query,
    kind: str,
    *,
    content: str | None = None,
    role: bool = False,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
    choices: bool = True,
    index: int = 0,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
    call_deltas: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk` (or streamed `text_completion`): ``tool_calls`` are whole
    calls, ``call_deltas`` the streamed pieces of calls (each with its ``index``)."""
    body: dict[str, Any] = {
        "id": completion_id(query, kind),
        "object": "chat.completion.chunk" if kind == CHAT else "text_completion",
        "created": int(query.created_at.timestamp()),
        "model": response_model(query),
        "system_fingerprint": None,
    }
    if not choices:
        body["choices"] = []
    elif kind == CHAT:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if content is not None:
            delta["content"] = content
        if tool_calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
        elif call_deltas:
            delta["tool_calls"] = call_deltas
        body["choices"] = [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        ]
    else:
        body["choices"] = [
            {"index": index, "text": content or "", "logprobs": logprobs, "finish_reason": reason}
        ]
    if extra:
        body.update(extra)
    return body


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying `data`."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_KEEPALIVE = b": keep-alive\n\n"
SSE_DONE = b"data: [DONE]\n\n"
