"""Through the HTTP API: cached prompt tokens and reasoning tokens that a provider reports are
billed at their own prices (inline and in the Celery worker), the reservation covers the dearest
split, and a price import never rewrites what finished queries were billed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path

import httpx
import openai
import pytest
from django.core.management import call_command

from routerapp.models import ModelEndpoint, Query, Sample
from routerapp.services.pricing import prompt_token_bound, worst_case_tokens
from tests.routerapp.api.conftest import make_configuration, start_upstream, stop

pytestmark = [pytest.mark.django_db(transaction=True)]

MTOK = Decimal(1_000_000)
IN, OUT, CACHED, REASONING = Decimal("3"), Decimal("12"), Decimal("0.3"), Decimal("20")


@pytest.fixture(scope="module")
def reasoning_upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake upstream with a prompt cache and 5 hidden reasoning tokens per answer."""
    proc, url = start_upstream(
        tmp_path_factory.mktemp("reasoning-upstream"),
        extra_args=("--prompt-cache", "--reasoning-tokens", "5"),
    )
    yield url
    stop(proc)


def _priced(url: str, *, strategy: str, params: dict) -> None:
    configuration = make_configuration(
        url, name="thinker", strategy=strategy, strategy_name=f"{strategy}-t", params=params
    )
    ModelEndpoint.objects.filter(pk=configuration.endpoint_id).update(
        input_usd_per_mtok=IN,
        output_usd_per_mtok=OUT,
        cached_input_usd_per_mtok=CACHED,
        reasoning_usd_per_mtok=REASONING,
    )


def _expected(sample: Sample, prices: tuple[Decimal, Decimal, Decimal, Decimal]) -> Decimal:
    p_in, p_out, p_cached, p_reasoning = prices
    return (
        (sample.prompt_tokens - sample.cached_prompt_tokens) * p_in
        + sample.cached_prompt_tokens * p_cached
        + (sample.completion_tokens - sample.reasoning_tokens) * p_out
        + sample.reasoning_tokens * p_reasoning
    ) / MTOK


def test_inline_query_bills_cached_and_reasoning_tokens_and_keeps_its_price(  # type: ignore[no-untyped-def]
    live_server, reasoning_upstream_url, make_caller, tmp_path: Path
) -> None:
    _priced(reasoning_upstream_url, strategy="single", params={"max_tokens": 16})
    caller = make_caller("alpha")
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)
    messages = [{"role": "user", "content": "What is 2+2? Think first."}]
    first = client.chat.completions.create(model="auto", messages=messages)
    second = client.chat.completions.create(model="auto", messages=messages)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens > 0
    assert second.usage.completion_tokens_details.reasoning_tokens == 5
    assert second.usage.completion_tokens == 5 + 4  # hidden reasoning + "The answer is 4."
    queries = [Query.objects.get(pk=c.model_extra["costpass"]["query_id"]) for c in (first, second)]
    old = (IN, OUT, CACHED, REASONING)
    for query in queries:
        sample = query.samples.get()
        assert sample.cost_usd == _expected(sample, old) > 0
        assert query.cost_usd == sample.cost_usd
        assert query.reasoning_tokens == 5
        assert query.billed_prices["cached_input_usd_per_mtok"] == "0.300000"
        # The reservation was taken at the dearest split (every output token as reasoning).
        p_bound, c_bound = worst_case_tokens(
            query.configuration, prompt_token_bound(query.prompt, query.messages)
        )
        assert query.reserved_usd == (p_bound * IN + c_bound * REASONING) / MTOK
    assert queries[1].cost_usd < queries[0].cost_usd  # the cached prompt is cheaper
    billed = {q.pk: q.cost_usd for q in queries}

    # A new catalogue doubles every price; finished queries keep what they were billed.
    catalogue = tmp_path / "prices.json"
    catalogue.write_text(
        json.dumps(
            {
                "fake": {
                    "input_cost_per_token": 6e-06,
                    "output_cost_per_token": 2.4e-05,
                    "cache_read_input_token_cost": 6e-07,
                    "output_cost_per_reasoning_token": 4e-05,
                    "mode": "chat",
                }
            }
        )
    )
    call_command("import_prices", str(catalogue), "--apply", stdout=StringIO())
    for query in queries:
        query.refresh_from_db()
        assert query.cost_usd == billed[query.pk]
        assert query.billed_prices["input_usd_per_mtok"] == "3.000000"
    detail = httpx.get(
        f"{live_server.url}/api/v1/queries/{queries[0].pk}",
        headers={"Authorization": f"Bearer {caller.raw}"},
    ).json()
    assert Decimal(detail["cost_usd"]) == billed[queries[0].pk]
    assert detail["ledger"]["billed_prices"]["output_usd_per_mtok"] == "12.000000"
    third = client.chat.completions.create(model="auto", messages=messages)
    query = Query.objects.get(pk=third.model_extra["costpass"]["query_id"])
    new = (Decimal("6"), Decimal("24"), Decimal("0.6"), Decimal("40"))
    assert query.cost_usd == _expected(query.samples.get(), new)
    assert query.billed_prices["reasoning_usd_per_mtok"] == "40.000000"


@pytest.mark.worker
def test_worker_query_bills_every_sample_at_its_token_kinds(  # type: ignore[no-untyped-def]
    live_server, reasoning_upstream_url, make_caller, celery_worker_process
) -> None:
    _priced(reasoning_upstream_url, strategy="majority_vote", params={"n": 3, "max_tokens": 16})
    client = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=make_caller("alpha").raw, max_retries=0
    )
    completion = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Worker: what is 2+2?"}]
    )
    query = Query.objects.get(pk=completion.model_extra["costpass"]["query_id"])
    samples = list(query.samples.all())
    assert len(samples) == 3 and all(s.reasoning_tokens == 5 for s in samples)
    prices = (IN, OUT, CACHED, REASONING)
    assert all(s.cost_usd == _expected(s, prices) for s in samples)
    assert query.cost_usd == sum(s.cost_usd for s in samples)
    assert (
        query.reasoning_tokens == 15 == completion.usage.completion_tokens_details.reasoning_tokens
    )
    assert query.cached_prompt_tokens == sum(s.cached_prompt_tokens for s in samples)
