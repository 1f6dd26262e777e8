"""The OpenAI-compatible API on queries that go through the task queue to a real Celery worker:
a multi-sample strategy (the chosen answer at once), the real CPU model token by token, the
synchronous wait running out (a timeout error that says where to poll), and a client that goes away (its query is
cancelled and billed for the tokens it generated)."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest
from django.test import override_settings

from routerapp.models import Query, Sample
from tests.conftest import wait_for
from tests.factories import ConfigurationFactory, EndpointFactory, StrategyConfigFactory
from tests.routerapp.api.conftest import (
    FAKE_PRICE_IN,
    FAKE_PRICE_OUT,
    FAKE_REPLY,
    make_configuration,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _client(live_server, caller) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)


def _price(prompt: int, completion: int, p_in: Decimal, p_out: Decimal) -> Decimal:
    return (Decimal(prompt) * p_in + Decimal(completion) * p_out) / Decimal(1_000_000)


@pytest.mark.worker
def test_majority_vote_through_the_worker_sync_and_stream(  # type: ignore[no-untyped-def]
    live_server, upstream_url, make_caller, celery_worker_process
) -> None:
    make_configuration(
        upstream_url,
        name="voter",
        strategy="majority_vote",
        strategy_name="maj3",
        params={"n": 3, "max_tokens": 16},
    )
    client = _client(live_server, make_caller("alpha"))
    completion = client.chat.completions.create(model="auto", messages=QUESTION)
    ext = completion.model_extra["costpass"]
    assert completion.choices[0].message.content == FAKE_REPLY
    assert ext["strategy"] == "majority_vote" and len(ext["samples"]) == 3
    assert ext["votes"] == {"4": 3}
    # usage sums the three samples (each bills its prompt on an HTTP engine).
    samples = ext["samples"]
    assert completion.usage.prompt_tokens == sum(s["prompt_tokens"] for s in samples)
    assert completion.usage.completion_tokens == sum(s["completion_tokens"] for s in samples) == 12
    assert Decimal(ext["cost_usd"]) == _price(
        completion.usage.prompt_tokens, 12, FAKE_PRICE_IN, FAKE_PRICE_OUT
    )
    stream = client.chat.completions.create(
        model="auto", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert contents == [FAKE_REPLY]  # the chosen answer at once, when the strategy is done
    assert chunks[-1].usage.completion_tokens == 12
    query = Query.objects.get(pk=chunks[-1].model_extra["costpass"]["query_id"])
    assert query.samples_done == 3 and query.cost_usd > 0


@pytest.mark.worker
@pytest.mark.model
def test_real_cpu_model_sync_and_token_by_token(  # type: ignore[no-untyped-def]
    live_server, make_caller, celery_worker_process
) -> None:
    config = ConfigurationFactory()  # SmolLM2 on llama.cpp, greedy, max 24 tokens
    client = _client(live_server, make_caller("alpha"))
    messages = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    completion = raw.parse()
    assert completion.choices[0].message.content.strip()
    expected = _price(
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        config.endpoint.input_usd_per_mtok,
        config.endpoint.output_usd_per_mtok,
    )
    assert Decimal(raw.headers["x-costpass-cost-usd"]) == expected > 0
    assert 0 < completion.usage.completion_tokens <= 24
    stream = client.chat.completions.create(model="auto", messages=messages, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(deltas) >= 3  # token by token from the worker, through Redis
    assert "".join(deltas) == completion.choices[0].message.content  # greedy: same text
    final = chunks[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.usage.completion_tokens == completion.usage.completion_tokens
    assert Decimal(final.model_extra["costpass"]["cost_usd"]) == expected


@pytest.mark.worker
@pytest.mark.model
@pytest.mark.slow
def test_client_going_away_cancels_and_bills_what_was_generated(  # type: ignore[no-untyped-def]
    live_server, make_caller, celery_worker_process
) -> None:
    strategy = StrategyConfigFactory(name="long", params={"temperature": 0.0, "max_tokens": 400})
    ConfigurationFactory(endpoint=EndpointFactory(), strategy=strategy)
    caller = make_caller("alpha")
    body = {
        "model": "smollm2-135m/long",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{live_server.url}/v1/chat/completions", json=body, headers=caller.auth, timeout=60
    ) as r:
        query_id = r.headers["x-costpass-query-id"]
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                seen += 1
            if seen >= 6:
                break  # the client goes away mid-answer
    query = wait_for(
        lambda: Query.objects.filter(pk=query_id, status__in=Query.FINISHED).first(), timeout=60
    )
    assert query.status == Query.Status.CANCELLED
    assert 5 <= query.completion_tokens < 400
    sample = Sample.objects.get(query=query)
    assert sample.aborted and sample.completion_tokens == query.completion_tokens
    assert query.cost_usd > 0


def test_sync_wait_running_out_is_a_timeout_error_with_where_to_poll(  # type: ignore[no-untyped-def]
    live_server, make_caller
) -> None:
    """Never a completion without choices (SDK code doing r.choices[0] would crash): an
    OpenAI-shaped timeout error carrying the query id, that the SDK does not retry."""
    config = ConfigurationFactory()
    config.endpoint.queue = "test.parked"  # no worker reads it: the query stays queued
    config.endpoint.save()
    caller = make_caller("alpha")
    try:
        with (
            override_settings(SYNC_WAIT_S=1.0),
            httpx.Client(base_url=live_server.url, headers=caller.auth, timeout=30) as http,
        ):
            started = time.monotonic()
            r = http.post("/v1/chat/completions", json={"model": "auto", "messages": QUESTION})
            assert 0.9 < time.monotonic() - started < 10
            assert r.status_code == 504, r.text
            assert r.headers["x-should-retry"] == "false"
            error = r.json()["error"]
            assert error["type"] == "timeout" and error["code"] == "query_timeout"
            poll = error["poll_url"]
            assert r.headers["Location"] == poll == f"/api/v1/queries/{error['query_id']}"
            assert "still running" in error["message"] and "choices" not in r.json()
            assert http.get(poll).json()["status"] == "queued"
            # Streaming: the same wait, then an error event that says where to poll.
            with http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "auto", "messages": QUESTION, "stream": True},
            ) as s:
                lines = [line for line in s.iter_lines() if line.startswith("data: ")]
            assert '"code": "query_timeout"' in lines[-1] or '"code":"query_timeout"' in lines[-1]
            assert "/api/v1/queries/" in lines[-1]
        # The openai client raises (and does not retry: one query, not several).
        before = Query.objects.count()
        with override_settings(SYNC_WAIT_S=0.5), pytest.raises(openai.APIStatusError) as raised:
            _client(live_server, caller).with_options(max_retries=2).chat.completions.create(
                model="auto", messages=QUESTION
            )
        assert raised.value.status_code == 504
        assert raised.value.body["query_id"]  # type: ignore[index]
        assert Query.objects.count() == before + 1
    finally:
        from workers.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge("test.parked")
