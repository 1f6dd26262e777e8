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


def test_difficulty_adaptive_bills_probe_and_class_and_its_classifier_refits_on_the_log():
    from routerapp.models import AuditLog, StrategyConfig
    from routerapp.services.difficulty import difficulty_classifiers_refit, probe_rows

    params = {
        "probe_tokens": 8,
        "classifier": {"intercept": -20},  # every prompt is hard: probe + short-1@3
        "hard": {"strategy": "short_m_at_k", "params": {"k": 3, "m": 1, "max_tokens": 8}},
    }
    query = run_query("difficulty_adaptive", params, name="diff")
    assert_fully_billed(query)
    assert query.samples_done == 4 and query.trace["class"] == "hard"
    # The log: graded probes whose low entropy went with right answers.
    sc = StrategyConfig.objects.get(name="diff")
    for i in range(40):
        right = i % 2 == 0
        Query.objects.create(
            team=query.team, prompt=f"p{i}", configuration=query.configuration, status="done",
            gold="9", answer_kind="math", extracted_answer="9", graded_correct=True,
            trace={"kind": "difficulty", "features": {"entropy": 0.1 if right else 1.5,
                   "length": 8, "task": ""}, "probe_answer": "9" if right else "4", "ran": "x"},
        )  # fmt: skip
    rows = probe_rows(strategy_config=sc)
    assert len(rows) == 41 and sum(r["probe_correct"] for r in rows) >= 20
    assert difficulty_classifiers_refit() == {"diff": "refit on 41 probes"}
    sc.refresh_from_db()
    fitted = sc.params["classifier"]
    assert fitted["fitted_on"] == 41 and fitted["w_entropy"] < 0
    assert (
        AuditLog.objects.filter(object_repr__contains="diff").exists() or AuditLog.objects.exists()
    )
