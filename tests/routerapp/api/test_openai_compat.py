"""The official `openai` client, unchanged, against the live server: model="auto", sync and
streaming, chat and text completions, the models list. The upstream is a real OpenAI-compatible
HTTP server in its own process (one sample on it is served inline by the web process)."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest

from routerapp.models import BudgetUsage, Query, Sample
from tests.factories import BudgetPolicyFactory
from tests.routerapp.api.conftest import (
    FAKE_PRICE_IN,
    FAKE_PRICE_OUT,
    FAKE_REPLY,
    make_configuration,
)

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _price(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return (
        Decimal(prompt_tokens) * FAKE_PRICE_IN + Decimal(completion_tokens) * FAKE_PRICE_OUT
    ) / Decimal(1_000_000)


@pytest.fixture
def client(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0) as c:
        yield c


def test_sync_chat_with_model_auto(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
    completion = raw.parse()
    assert completion.choices[0].message.content == FAKE_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.object == "chat.completion"
    assert completion.model == "fake/single-fake"
    ext = completion.model_extra["costpass"]
    query = Query.objects.get(pk=ext["query_id"])
    samples = list(Sample.objects.filter(query=query))
    # usage sums every sample's tokens; the cost is those tokens times the endpoint's prices.
    assert completion.usage.prompt_tokens == sum(s.prompt_tokens for s in samples) > 0
    assert completion.usage.completion_tokens == sum(s.completion_tokens for s in samples) == 4
    expected = _price(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert Decimal(ext["cost_usd"]) == expected == query.cost_usd > 0
    assert Decimal(raw.headers["x-costpass-cost-usd"]) == expected
    assert ext["configuration"] == "fake/single-fake" and ext["strategy"] == "single"
    assert ext["status"] == "done" and ext["samples"][0]["chosen"] is True
    assert Decimal(ext["reserved_usd"]) > expected  # the worst case was reserved first
    assert query.source == Query.Source.CHAT and query.status == Query.Status.DONE
    # The reservation was replaced by the real cost.
    usage = BudgetUsage.objects.get(policy__name="monthly")
    assert usage.reserved_usd == 0 and usage.spent_usd == expected


def test_stream_chat_token_by_token_ends_with_the_real_cost(
    live_server,
    slow_upstream_url,
    make_caller,  # type: ignore[no-untyped-def]
) -> None:
    make_configuration(slow_upstream_url, name="slow")
    caller = make_caller("alpha")
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)
    stream = client.chat.completions.create(
        model="slow",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    # One chunk per upstream token, not the whole answer at once.
    assert deltas == ["The", " answer", " is", " 4."]
    assert "".join(deltas) == FAKE_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    query = Query.objects.get(pk=last.model_extra["costpass"]["query_id"])
    assert last.usage.total_tokens == query.prompt_tokens + query.completion_tokens
    cost = Decimal(last.model_extra["costpass"]["cost_usd"])
    # A streamed request is never recorded at $0.
    assert cost == query.cost_usd == _price(query.prompt_tokens, query.completion_tokens) > 0
    assert query.status == Query.Status.DONE and query.answer == FAKE_REPLY


def test_stream_without_include_usage_has_no_empty_choices_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="auto", messages=QUESTION, stream=True))
    # A naive `chunk.choices[0]` loop must work: every chunk has a choice.
    assert all(c.choices for c in chunks)
    # The finish chunk still carries the usage and the cost.
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 4
    assert Decimal(chunks[-1].model_extra["costpass"]["cost_usd"]) > 0


def test_text_completions_sync_and_stream(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="auto", prompt="2+2=")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == FAKE_REPLY
    assert completion.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="auto", prompt=["2+2="], stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == FAKE_REPLY
    assert chunks[-1].usage.total_tokens > 4


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto"
    assert "fake/single-fake" in ids and "fake" in ids
    model = client.models.retrieve("fake/single-fake")
    assert model.model_extra["costpass"]["strategy"] == "single"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"


def test_model_name_configuration_id_and_strategy_are_honoured(
    client: openai.OpenAI, upstream_url: str
) -> None:
    make_configuration(upstream_url, name="other")
    by_config = client.chat.completions.create(model="other/single-fake", messages=QUESTION)
    assert by_config.model_extra["costpass"]["configuration"] == "other/single-fake"
    by_name = client.chat.completions.create(model="other", messages=QUESTION)
    assert by_name.model_extra["costpass"]["model"] == "other"
    only = client.chat.completions.create(
        model="auto", messages=QUESTION, extra_body={"allowed_models": ["other"], "task": "arith"}
    )
    assert only.model_extra["costpass"]["model"] == "other"
    assert Query.objects.get(pk=only.model_extra["costpass"]["query_id"]).task == "arith"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="auto", messages=QUESTION, extra_body={"strategy": "no_such_strategy"}
        )
    assert err.value.body["param"] == "strategy"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=QUESTION)


def test_raw_sse_wire_format(live_server, upstream_url, make_caller) -> None:  # type: ignore[no-untyped-def]
    """The bytes on the wire: `data: {json}` events, a usage event, `data: [DONE]` last."""
    make_configuration(upstream_url)
    caller = make_caller("alpha")
    body = {
        "model": "auto",
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{live_server.url}/v1/chat/completions", json=body, headers=caller.auth, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 4
