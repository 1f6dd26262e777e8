"""Drop-in compatibility: every OpenAI request field, driven with the official `openai` client
against the live server and a scripted upstream that really honours it (bench/fake_upstream.py:
replies that disagree by seed, stop, max_tokens, n, JSON mode, tool calls, logprobs). Each field
either changes the answer as asked, or is refused with a 400 naming it; a field only some
endpoints honour is routed to those. Every token-generating path finds its tokens billed.

Configurations: `plain` (cheapest; no JSON mode, tools, logprobs or images) and `capable`
(everything but audio). With no router version the cheapest allowed configuration serves, so
a request lands on `capable` only when it needs to.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from routerapp.models import Query, Sample
from tests.routerapp.api.conftest import FAKE_PRICE_IN, FAKE_PRICE_OUT, make_configuration

pytestmark = [pytest.mark.django_db(transaction=True)]

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
PLAIN_IN, PLAIN_OUT = Decimal("0.1"), Decimal("0.2")
CAPABLE = {
    "supports_json_mode": True,
    "supports_json_schema": True,
    "supports_tools": True,
    "supports_logprobs": True,
    "supports_images": True,
}
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


@pytest.fixture
def client(live_server, scripted_upstream_url, make_caller) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    make_configuration(
        scripted_upstream_url,
        name="plain",
        strategy_name="single-plain",
        params={"max_tokens": 64},
        supports_logprobs=False,
        input_usd_per_mtok=PLAIN_IN,
        output_usd_per_mtok=PLAIN_OUT,
    )
    make_configuration(
        scripted_upstream_url,
        name="capable",
        strategy_name="single-capable",
        params={"max_tokens": 64},
        **CAPABLE,
    )
    make_configuration(
        scripted_upstream_url,
        name="capable",
        strategy="majority_vote",
        strategy_name="vote3",
        params={"n": 3, "temperature": 0.7, "max_tokens": 64, "seed": 0},
        **CAPABLE,
    )
    caller = make_caller("alpha")
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)


def _ext(response: Any) -> dict[str, Any]:
    return response.model_extra["costpass"]  # type: ignore[no-any-return]


def _billed(response: Any) -> Query:
    """Assert every generated token of the query is in its samples, its usage and its cost."""
    query = Query.objects.select_related("configuration__endpoint").get(
        pk=_ext(response)["query_id"]
    )
    samples = list(Sample.objects.filter(query=query))
    assert samples, "a query that generated tokens has samples"
    assert query.completion_tokens == sum(s.completion_tokens for s in samples) > 0
    assert query.prompt_tokens == sum(s.prompt_tokens for s in samples) > 0
    endpoint = query.configuration.endpoint  # type: ignore[union-attr]
    expected = (
        Decimal(query.prompt_tokens) * endpoint.input_usd_per_mtok
        + Decimal(query.completion_tokens) * endpoint.output_usd_per_mtok
    ) / Decimal(1_000_000)
    assert query.cost_usd == expected == sum(s.cost_usd for s in samples)
    assert response.usage.completion_tokens == query.completion_tokens
    assert response.usage.prompt_tokens == query.prompt_tokens
    return query


def _refused(call: Any, param: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as raised:
        call()
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert raised.value.status_code == 400
    return raised.value


def test_sampling_fields_change_the_answer(client) -> None:  # type: ignore[no-untyped-def]
    chat = client.chat.completions
    base = chat.create(model="auto", messages=QUESTION)
    assert base.choices[0].message.content == "The answer is 4."
    assert base.model == "plain/single-plain"  # the cheapest: nothing special was asked
    # max_tokens / max_completion_tokens cut the answer (and the reservation).
    short = chat.create(model="auto", messages=QUESTION, max_tokens=2)
    assert short.choices[0].message.content == "The answer"
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert (
        chat.create(model="auto", messages=QUESTION, max_completion_tokens=3)
        .choices[0]
        .message.content
        == "The answer is"
    )
    q_short, q_base = _billed(short), _billed(base)
    assert q_short.reserved_usd < q_base.reserved_usd
    # stop ends the answer before the stop string.
    stopped = chat.create(model="auto", messages=QUESTION, stop=[" is", "zz"])
    assert stopped.choices[0].message.content == "The answer"
    assert stopped.choices[0].finish_reason == "stop"
    # temperature and seed pick the sample: reply (seed + i) % 3 of [4, 4, 5] when sampling.
    assert (
        chat.create(model="auto", messages=QUESTION, temperature=1.0, seed=2)
        .choices[0]
        .message.content
        == "The answer is 5."
    )
    assert (
        chat.create(model="auto", messages=QUESTION, temperature=1.0, seed=3)
        .choices[0]
        .message.content
        == "The answer is 4."
    )
    assert (
        chat.create(model="auto", messages=QUESTION, temperature=0.0, seed=2)
        .choices[0]
        .message.content
        == "The answer is 4."
    )
    # top_p: a small nucleus holds only the likeliest reply.
    assert (
        chat.create(model="auto", messages=QUESTION, temperature=1.0, seed=2, top_p=0.1)
        .choices[0]
        .message.content
        == "The answer is 4."
    )
    # The same fields on the legacy completions endpoint.
    text = client.completions.create(model="auto", prompt="2+2?", max_tokens=2, stop=["zz"])
    assert text.choices[0].text == "The answer" and text.choices[0].finish_reason == "length"
    _billed(text)


def test_n_returns_n_choices_all_billed(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, n=3, temperature=1.0, seed=1
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == [
        "The answer is 4.",
        "The answer is 5.",
        "The answer is 4.",
    ]
    query = _billed(r)
    assert query.samples_done == 3 and query.completion_tokens == 12
    # A voting configuration draws several samples to return one: it cannot honour n.
    _refused(
        lambda: client.chat.completions.create(
            model="auto", messages=QUESTION, n=2, extra_body={"strategy": "majority_vote"}
        ),
        "n",
    )
    # Streaming n: every choice comes back, by index.
    stream = client.chat.completions.create(
        model="auto", messages=QUESTION, n=2, temperature=1.0, seed=1, stream=True
    )
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: "The answer is 4.", 1: "The answer is 5."}


def test_json_mode_routes_to_an_endpoint_that_has_it(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, response_format={"type": "json_object"}
    )
    assert r.model == "capable/single-capable"  # routed around `plain`
    assert json.loads(r.choices[0].message.content) == {"answer": 4, "text": "The answer is 4."}
    _billed(r)
    schema = {
        "type": "object",
        "properties": {"result": {"type": "integer"}, "even": {"type": "boolean"}},
        "required": ["result", "even"],
    }
    r = client.chat.completions.create(
        model="auto",
        messages=QUESTION,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "sum", "schema": schema, "strict": True},
        },
    )
    assert json.loads(r.choices[0].message.content) == {"result": 4, "even": True}
    # Asking `plain` by name for JSON: nothing allowed can honour it.
    error = _refused(
        lambda: client.chat.completions.create(
            model="plain", messages=QUESTION, response_format={"type": "json_object"}
        ),
        "response_format",
    )
    assert "no JSON mode" in str(error)
    # response_format text is what every endpoint does.
    r = client.chat.completions.create(
        model="plain", messages=QUESTION, response_format={"type": "text"}
    )
    assert r.choices[0].message.content == "The answer is 4."


def test_tools_and_tool_choice_pass_through(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model="auto", messages=QUESTION, tools=[ADD_TOOL])
    choice = r.choices[0]
    assert r.model == "capable/single-capable"
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 4, "b": 4}
    _billed(r)
    # tool_choice "none": the model answers in text.
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, tools=[ADD_TOOL], tool_choice="none"
    )
    assert (
        r.choices[0].message.content == "The answer is 4." and not r.choices[0].message.tool_calls
    )
    # The agent loop's next turn: the tool result goes back (tool-call history).
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "4"},
    ]
    r = client.chat.completions.create(
        model="auto", messages=history, tools=[ADD_TOOL], tool_choice="none"
    )
    assert r.choices[0].message.content == "The answer is 4."
    stored = Query.objects.get(pk=_ext(r)["query_id"]).messages
    assert stored[1]["tool_calls"][0]["id"] == call.id and stored[2]["tool_call_id"] == call.id
    _refused(lambda: client.chat.completions.create(model="plain", messages=history), "messages")
    _refused(
        lambda: client.chat.completions.create(model="plain", messages=QUESTION, tools=[ADD_TOOL]),
        "tools",
    )
    # Streamed: OpenAI's tool-call deltas.
    stream = client.chat.completions.create(
        model="auto", messages=QUESTION, tools=[ADD_TOOL], stream=True
    )
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "add"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"a": 4, "b": 4}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_logprobs_return_the_chosen_samples_tokens(client) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, logprobs=True, top_logprobs=2
    )
    assert r.model == "capable/single-capable"  # `plain` returns no log-probs
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(t.logprob < 0 and len(t.top_logprobs) == 2 for t in content)
    assert content[0].top_logprobs[0].token == content[0].token
    _billed(r)
    # Without logprobs there are none.
    r = client.chat.completions.create(model="auto", messages=QUESTION)
    assert r.choices[0].logprobs is None
    # Legacy completions: logprobs=k.
    text = client.completions.create(model="auto", prompt="2+2?", logprobs=2)
    lp = text.choices[0].logprobs
    assert "".join(lp.tokens) == text.choices[0].text and len(lp.top_logprobs[0]) == 2
    _refused(
        lambda: client.chat.completions.create(model="plain", messages=QUESTION, logprobs=True),
        "logprobs",
    )


def test_image_and_audio_parts_route_or_refuse(client) -> None:  # type: ignore[no-untyped-def]
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is 2+2?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    r = client.chat.completions.create(model="auto", messages=image)
    assert r.model == "capable/single-capable"
    stored = Query.objects.get(pk=_ext(r)["query_id"]).messages
    assert stored[0]["content"][1]["type"] == "image_url"  # sent on, not flattened away
    _refused(lambda: client.chat.completions.create(model="plain", messages=image), "messages")
    audio = [
        {
            "role": "user",
            "content": [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}],
        }
    ]
    _refused(lambda: client.chat.completions.create(model="auto", messages=audio), "messages")


def test_unknown_and_unsupported_fields_are_refused_by_name(client) -> None:  # type: ignore[no-untyped-def]
    chat = client.chat.completions
    _refused(
        lambda: chat.create(model="auto", messages=QUESTION, extra_body={"frobnicate": 1}),
        "frobnicate",
    )
    _refused(
        lambda: chat.create(
            model="auto", messages=[{"role": "user", "content": "hi", "colour": "red"}]
        ),
        "messages[0].colour",
    )
    _refused(
        lambda: chat.create(
            model="auto", messages=QUESTION, audio={"voice": "alloy", "format": "mp3"}
        ),
        "audio",
    )
    _refused(lambda: chat.create(model="auto", messages=QUESTION, top_logprobs=2), "top_logprobs")
    _refused(lambda: chat.create(model="auto", messages=QUESTION, temperature=3.0), "temperature")
    # Penalties pass through to OpenAI-compatible servers (both endpoints here are).
    r = chat.create(model="plain", messages=QUESTION, frequency_penalty=0.5, user="u-1")
    query = Query.objects.get(pk=_ext(r)["query_id"])
    assert query.request_options["passthrough"] == {"frequency_penalty": 0.5}
    assert query.end_user == "u-1"
    assert Query.objects.filter(team=query.team).count() == 1  # refusals wrote nothing


def test_fields_found_dropped_by_the_audit_are_honoured_or_refused(client) -> None:  # type: ignore[no-untyped-def]
    """parallel_tool_calls false reaches the endpoint; stream obfuscation, an assistant turn's
    audio and a legacy function_call in history are refused by name; a refusal in history is
    sent as what the assistant said."""
    chat = client.chat.completions
    r = chat.create(model="auto", messages=QUESTION, tools=[ADD_TOOL], parallel_tool_calls=False)
    query = Query.objects.get(pk=_ext(r)["query_id"])
    assert query.request_options["passthrough"] == {"parallel_tool_calls": False}
    _billed(r)
    _refused(
        lambda: chat.create(
            model="auto",
            messages=QUESTION,
            stream=True,
            stream_options={"include_obfuscation": True},
        ),
        "stream_options.include_obfuscation",
    )
    _refused(
        lambda: chat.create(
            model="auto",
            messages=[*QUESTION, {"role": "assistant", "audio": {"id": "audio_1"}}],
        ),
        "messages[1].audio",
    )
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "refusal": "I cannot say."},
        {"role": "user", "content": "Please?"},
    ]
    r = chat.create(model="auto", messages=history)
    stored = Query.objects.get(pk=_ext(r)["query_id"]).messages
    assert stored[1] == {"role": "assistant", "content": "I cannot say."}


@pytest.mark.worker
def test_voting_compares_canonical_json_and_tool_calls(  # type: ignore[no-untyped-def]
    client, celery_worker_process
) -> None:
    """Samples format the same JSON differently (spacing, key order) and disagree on the
    value (4, 4, 5): the vote counts canonical JSON, so 4 wins 2 to 1."""
    r = client.chat.completions.create(
        model="auto",
        messages=QUESTION,
        response_format={"type": "json_object"},
        extra_body={"strategy": "majority_vote"},
    )
    ext = _ext(r)
    assert ext["configuration"] == "capable/vote3"
    texts = [s["text"] for s in ext["samples"]]
    assert len(set(texts)) == 3  # three different texts...
    assert sorted(ext["votes"].values()) == [1.0, 2.0]  # ...two equal objects
    assert json.loads(r.choices[0].message.content)["answer"] == 4
    _billed(r)
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, tools=[ADD_TOOL], extra_body={"strategy": "majority_vote"}
    )
    assert sorted(_ext(r)["votes"].values()) == [1.0, 2.0]
    call = r.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"a": 4, "b": 4}
    assert r.choices[0].finish_reason == "tool_calls"
    _billed(r)
    # The Responses API votes the same way: function tools and text.format become the same
    # request fields, the winning call a function_call item; every sample billed.
    tool = {"type": "function", **ADD_TOOL["function"]}
    resp = client.responses.create(
        model="auto", input="What is 2+2?", tools=[tool], extra_body={"strategy": "majority_vote"}
    )
    assert resp.model == "capable/vote3" and sorted(_ext(resp)["votes"].values()) == [1.0, 2.0]
    assert [o.type for o in resp.output] == ["function_call"]
    assert json.loads(resp.output[0].arguments) == {"a": 4, "b": 4}
    voted = Query.objects.get(pk=_ext(resp)["query_id"])
    assert (
        resp.usage.output_tokens
        == voted.completion_tokens
        == sum(s.completion_tokens for s in Sample.objects.filter(query=voted))
    )
    assert voted.samples_done == 3 and Decimal(_ext(resp)["cost_usd"]) == voted.cost_usd > 0
    # Sampling fields bound every sample of a multi-sample configuration (and its reservation).
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, max_tokens=2, extra_body={"strategy": "majority_vote"}
    )
    assert all(s["completion_tokens"] <= 2 for s in _ext(r)["samples"])
    bounded = _billed(r)
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, extra_body={"strategy": "majority_vote"}
    )
    assert bounded.reserved_usd < _billed(r).reserved_usd
    assert Decimal(_ext(r)["cost_usd"]) > 0 and FAKE_PRICE_IN and FAKE_PRICE_OUT


@pytest.mark.worker
@pytest.mark.model
def test_the_cpu_model_honours_json_schema_and_logprobs_through_the_worker(  # type: ignore[no-untyped-def]
    live_server, make_caller, celery_worker_process
) -> None:
    """SmolLM2 on llama.cpp: a json_schema is enforced by a grammar, and logprobs come back
    with the chosen sample's tokens; both billed from the worker."""
    from tests.factories import ConfigurationFactory

    config = ConfigurationFactory()  # SmolLM2 on llama.cpp, greedy, max 24 tokens
    config.endpoint.supports_json_schema = True
    config.endpoint.save()
    client = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=make_caller("alpha").raw, max_retries=0
    )
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="auto",
        messages=QUESTION,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"answer"} and isinstance(value["answer"], int)
    _billed(r)
    r = client.chat.completions.create(
        model="auto", messages=QUESTION, max_tokens=6, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and len(content[0].top_logprobs) == 2
    assert content[0].top_logprobs[0].token == content[0].token  # greedy
    _billed(r)
    # Streamed from the worker (over Redis): each chunk carries its own tokens' log-probs,
    # and together they are the non-streamed answer's (greedy: the same tokens).
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=QUESTION,
            max_tokens=6,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = [
        c.choices[0].logprobs.content for c in chunks if c.choices and c.choices[0].logprobs
    ]
    assert sum(1 for entries in streamed if entries) >= 2  # not one block at the end
    assert [t.token for entries in streamed for t in entries] == [t.token for t in content]
    assert chunks[-1].usage.completion_tokens == len(content)
    # JSON mode was not flagged on this endpoint: refused, by name.
    _refused(
        lambda: client.chat.completions.create(
            model="auto", messages=QUESTION, response_format={"type": "json_object"}
        ),
        "response_format",
    )


def test_responses_api_sampling_fields_go_through_the_same_pipeline(client) -> None:  # type: ignore[no-untyped-def]
    r = client.responses.create(model="auto", input="What is 2+2?", max_output_tokens=2)
    assert r.output_text == "The answer"
    r = client.responses.create(model="auto", input="What is 2+2?", temperature=1.0, user="u-9")
    query = Query.objects.get(pk=r.model_extra["costpass"]["query_id"])
    assert query.end_user == "u-9"
    assert query.request_options == {
        "temperature": 1.0,
        # What the response repeats, kept for its retrieval.
        "recorded": {"response": {"temperature": 1.0, "user": "u-9"}},
    }
