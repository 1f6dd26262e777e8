"""Adaptive strategies run by the worker's service on the real CPU model: every sample and
every scorer call each of them generated is in the query's ledger, priced."""

from __future__ import annotations

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
