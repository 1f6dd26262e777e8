"""Streams deliver as they go where the strategy allows, as OpenAI does: OpenAI's ``n`` on a
one-sample strategy streams each choice's tokens as they arrive, by choice index, log-probs
travel with their tokens, and tool-call arguments with their pieces (the upstream here takes
150 ms a token, so a stream that waited for the end would show it). Every streamed token is
billed."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import openai
import pytest

from routerapp.models import Query, Sample
from tests.routerapp.api.conftest import FAKE_REPLY, make_configuration
from tests.routerapp.api.test_responses_tools import FUNCTION_CALL_EVENTS

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def client(live_server, slow_upstream_url, make_caller) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    make_configuration(
        slow_upstream_url,
        name="slow",
        strategy_name="single-slow",
        params={"max_tokens": 64},
        supports_logprobs=True,
        supports_tools=True,
    )
    caller = make_caller("alpha")
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)


def _billed(query_id: str) -> Query:
    query = Query.objects.select_related("configuration__endpoint").get(pk=query_id)
    samples = list(Sample.objects.filter(query=query))
    assert query.completion_tokens == sum(s.completion_tokens for s in samples) > 0
    endpoint = query.configuration.endpoint  # type: ignore[union-attr]
    expected = (
        Decimal(query.prompt_tokens) * endpoint.input_usd_per_mtok
        + Decimal(query.completion_tokens) * endpoint.output_usd_per_mtok
    ) / Decimal(1_000_000)
    assert query.cost_usd == expected == sum(s.cost_usd for s in samples) > 0
    return query


def test_n_choices_stream_token_by_token(client: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: dict[int, list[float]] = {0: [], 1: []}
    texts: dict[int, str] = {0: "", 1: ""}
    usage = query_id = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals[choice.index].append(time.monotonic() - started)
                texts[choice.index] += choice.delta.content
        if chunk.usage is not None:
            usage, query_id = chunk.usage, chunk.model_extra["costpass"]["query_id"]
    finished = time.monotonic() - started
    assert texts == {0: FAKE_REPLY, 1: FAKE_REPLY}
    for index in (0, 1):
        # One chunk per token (4), the first long before the end (0.6 s of tokens).
        assert len(arrivals[index]) == 4, arrivals
        assert finished - arrivals[index][0] > 0.3, (arrivals, finished)
    assert usage is not None and query_id is not None
    query = _billed(query_id)
    assert usage.completion_tokens == query.completion_tokens == 8


def test_logprobs_stream_with_each_token(client: openai.OpenAI) -> None:
    """Each content chunk carries the log-probs of its own tokens as it arrives (not all at
    the end), for one sample and for each of n choices."""
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        n=2,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    chunks: dict[int, list[tuple[float, str, list[str]]]] = {0: [], 1: []}
    query_id = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                tokens = [t.token for t in choice.logprobs.content]
                assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
                chunks[choice.index].append(
                    (time.monotonic() - started, choice.delta.content, tokens)
                )
        if "costpass" in (chunk.model_extra or {}):
            query_id = chunk.model_extra["costpass"]["query_id"]
    finished = time.monotonic() - started
    for index in (0, 1):
        assert [text for _, text, _ in chunks[index]] == ["The", " answer", " is", " 4."]
        assert all([text] == tokens for _, text, tokens in chunks[index])  # its own token
        assert finished - chunks[index][0][0] > 0.3, (chunks, finished)
    assert query_id is not None
    query = _billed(query_id)
    assert query.completion_tokens == 8
    # The same on the legacy completions endpoint: tokens and offsets per chunk.
    text_chunks = [
        c.choices[0]
        for c in client.completions.create(
            model="auto", prompt="2+2?", logprobs=1, stream=True, max_tokens=3
        )
        if c.choices and c.choices[0].text
    ]
    assert [c.logprobs.tokens for c in text_chunks] == [["The"], [" answer"], [" is"]]
    assert [c.logprobs.text_offset for c in text_chunks] == [[0], [3], [10]]


def test_responses_stream_text_deltas_carry_their_logprobs(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model="auto",
            input="What is 2+2?",
            include=["message.output_text.logprobs"],
            top_logprobs=1,
            stream=True,
        )
    )
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [d.delta for d in deltas] == ["The", " answer", " is", " 4."]
    assert [[lp.token for lp in d.logprobs] for d in deltas] == [[d.delta] for d in deltas]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [lp.token for lp in done.logprobs] == ["The", " answer", " is", " 4."]
    final = events[-1].response
    assert final.output[0].content[0].logprobs[3].token == " 4."
    _billed(final.model_extra["costpass"]["query_id"])


ADD_TOOL = {
    "name": "add",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}


def test_tool_call_arguments_stream_as_they_come(client: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        tools=[{"type": "function", "function": ADD_TOOL}],
        stream=True,
    )
    pieces: list[tuple[float, str]] = []
    names, reasons = [], []
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names.append(call.function.name)
                pieces.append((time.monotonic() - started, call.function.arguments or ""))
            reasons.append(choice.finish_reason)
    finished = time.monotonic() - started
    assert len(pieces) == 2 and names[0] == "add"  # the upstream's two pieces, not one block
    assert json.loads("".join(p for _, p in pieces)) == {"a": 4, "b": 4}
    assert finished - pieces[0][0] > 0.1, (pieces, finished)
    assert [r for r in reasons if r] == ["tool_calls"]
    # The Responses API: the function_call item opens with the first piece, then its deltas.
    started = time.monotonic()
    events = []
    for event in client.responses.create(
        model="auto", input="What is 2+2?", tools=[{"type": "function", **ADD_TOOL}], stream=True
    ):
        events.append((time.monotonic() - started, event))
    kinds = [e.type for _, e in events]
    assert kinds == FUNCTION_CALL_EVENTS
    assert events[-1][0] - events[3][0] > 0.1  # the first piece came before the end
    done = events[5][1]
    assert json.loads(done.arguments) == {"a": 4, "b": 4} and done.item_id == events[2][1].item.id
    final = events[-1][1].response
    assert final.output[0].arguments == done.arguments
    _billed(final.model_extra["costpass"]["query_id"])
