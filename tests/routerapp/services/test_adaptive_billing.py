"""Adaptive strategies run by the worker's service on the real CPU model: every sample and
every scorer call each of them generated is in the query's ledger, priced."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum

from routerapp.models import Query, Sample
from routerapp.services.execution import query_run
from routerapp.services.pricing import worst_case_cost
from routerapp.services.streaming import NullSink
from tests.factories import (
    ConfigurationFactory,
    EndpointFactory,
    StrategyConfigFactory,
    TeamFactory,
)
from tests.prm_standin import PRMHandler, serve_prm
from workers.ledger import Prices, cost_of_tokens

pytestmark = [pytest.mark.django_db, pytest.mark.model]

QUESTION = "What is 5 + 4? Reply with just the number."


def run_query(strategy: str, params: dict[str, Any], *, name: str) -> Query:
    """Create a query on a (CPU endpoint, strategy) configuration and run it in-process."""
    endpoint = EndpointFactory()
    config = ConfigurationFactory(
        endpoint=endpoint,
        strategy=StrategyConfigFactory(name=name, strategy=strategy, params=params),
    )
    query = Query.objects.create(
        team=TeamFactory(),
        prompt=QUESTION,
        answer_kind="math",
        gold="9",
        configuration=config,
        reserved_usd=worst_case_cost(config, 64),
    )
    status = query_run(query_id=str(query.pk), events=NullSink())
    query.refresh_from_db()
    assert status == Query.Status.DONE, query.error
    return query


def assert_fully_billed(query: Query) -> None:
    """Samples + scorer calls = the query's tokens = its cost; nothing generated is missing."""
    samples = Sample.objects.filter(query=query)
    sums = samples.aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens"), usd=Sum("cost_usd")
    )
    assert samples.count() == query.samples_done > 0
    assert query.prompt_tokens == sums["p"] + query.scorer_prompt_tokens
    assert query.completion_tokens == sums["c"] + query.scorer_completion_tokens
    endpoint = query.configuration.endpoint
    prices = Prices(endpoint.input_usd_per_mtok, endpoint.output_usd_per_mtok)
    scorer_usd = cost_of_tokens(query.scorer_prompt_tokens, query.scorer_completion_tokens, prices)
    assert query.cost_usd == sums["usd"] + scorer_usd
    assert query.cost_usd == cost_of_tokens(query.prompt_tokens, query.completion_tokens, prices)
    assert Decimal(0) < query.cost_usd <= query.reserved_usd


def test_adaptive_consistency_bills_every_sample_it_drew_and_keeps_its_stopping_trace():
    query = run_query(
        "adaptive_consistency",
        {"k": 8, "window": 2, "threshold": 0.9, "temperature": 0.1, "max_tokens": 8, "seed": 11},
        name="ada-8",
    )
    assert_fully_billed(query)
    trace = query.trace
    assert trace["kind"] == "stopping" and trace["samples"] == query.samples_done < 8
    assert trace["reason"] in ("posterior", "decided")
    assert query.graded_correct is True


def test_cascade_bills_both_stages_each_at_its_endpoints_prices():
    from routerapp.errors import Unprocessable
    from routerapp.services.routing import RequestConstraints, decide

    cheap = EndpointFactory()  # the configuration's own endpoint
    strong = EndpointFactory(
        name="smollm2-strong", input_usd_per_mtok=Decimal("1.5"), output_usd_per_mtok=Decimal("6")
    )
    params = {
        "stages": [
            {"strategy": "single", "params": {"max_tokens": 8}},
            {
                "endpoint": strong.name,
                "strategy": "majority_vote",
                "params": {"n": 2, "max_tokens": 8},
            },
        ],
        "escalate_on": "confidence",
        "threshold": 0.9999,  # the greedy first stage is never that sure: always escalates
    }
    query = run_query("cascade", params, name="cascade-2")
    samples = list(Sample.objects.filter(query=query).order_by("index"))
    assert len(samples) == query.samples_done == 3
    by_price = {
        0: Prices(cheap.input_usd_per_mtok, cheap.output_usd_per_mtok),
        1: Prices(strong.input_usd_per_mtok, strong.output_usd_per_mtok),
        2: Prices(strong.input_usd_per_mtok, strong.output_usd_per_mtok),
    }
    for s in samples:
        assert s.cost_usd == cost_of_tokens(s.prompt_tokens, s.completion_tokens, by_price[s.index])
    assert query.cost_usd == sum(s.cost_usd for s in samples)
    assert query.prompt_tokens == sum(s.prompt_tokens for s in samples)
    assert query.completion_tokens == sum(s.completion_tokens for s in samples)
    assert query.cost_usd <= query.reserved_usd
    # The reservation (64 prompt tokens) priced each stage at its endpoint's prices.
    config = query.configuration
    assert query.reserved_usd == cost_of_tokens(64, 8, by_price[0]) + cost_of_tokens(
        2 * 64, 2 * 8, by_price[1]
    )
    assert query.billed_prices["stages"][strong.name]["output_usd_per_mtok"] == "6.000000"
    trace = query.trace
    assert trace["kind"] == "cascade" and trace["escalated"]
    assert [s["samples"] for s in trace["stages"]] == [[0], [1, 2]]
    # A cascade whose stage endpoint is switched off is not offered by the router.
    strong.enabled = False
    strong.save()
    with pytest.raises(Unprocessable, match="no enabled configuration"):
        decide(prompt="1+1?", task="", constraints=RequestConstraints(), prompt_tokens=10)
    other = ConfigurationFactory(endpoint=cheap)
    decision = decide(prompt="1+1?", task="", constraints=RequestConstraints(), prompt_tokens=10)
    assert decision.configuration == other != config


@pytest.fixture
def prm_url() -> Iterator[str]:
    with serve_prm() as url:
        yield url


def test_step_search_bills_every_step_and_every_prm_call(prm_url: str) -> None:
    params = {"method": "beam", "max_steps": 2, "step_tokens": 8, "max_tokens": 24,
              "beam_width": 2, "expand": 2, "scorer": "prm", "prm_url": prm_url}  # fmt: skip
    query = run_query("step_search", params, name="beam-prm")
    assert_fully_billed(query)
    assert query.scorer_calls == len(PRMHandler.requests) == query.samples_done
    assert query.scorer_prompt_tokens > 0 and query.scorer_completion_tokens == 0
    trace = query.trace
    assert trace["kind"] == "search" and trace["scorer"] == "prm"
    assert trace["scorer_calls"] == query.scorer_calls
    assert query.answer.endswith(trace["best"]["text"][-40:])
