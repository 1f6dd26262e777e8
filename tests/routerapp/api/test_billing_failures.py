"""Money on the failure paths: a query whose endpoint breaks mid-stream bills every token
that was generated, in a Sample (or a scorer row), in its cost and in its budget, through
the worker (multi-sample strategies) and the web process's inline runner (one sample on a
remote endpoint). The upstream really streams, really drops connections, and records what
it generated (tests/scripted_upstream.py)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from django.db.models import Sum

from routerapp.models import (
    BudgetUsage,
    Configuration,
    Query,
    Sample,
    ScorerCall,
)
from tests.conftest import wait_for
from tests.factories import BudgetPolicyFactory
from tests.scripted_upstream import Upstream, scripted_configuration, start_scripted_upstream

pytestmark = [pytest.mark.django_db(transaction=True)]

PRICE_IN, PRICE_OUT = Decimal("1.5"), Decimal("2.25")
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_scripted_upstream(tmp_path_factory.mktemp("scripted"), token_delay_ms=10)
    yield up
    up.stop()


def _configuration(
    upstream: Upstream, name: str, strategy: str, params: dict, fault: dict | None = None
) -> Configuration:
    return scripted_configuration(
        upstream.url,
        name,
        strategy,
        params,
        fault=fault,
        prices=(PRICE_IN, PRICE_OUT),
        max_retries=0,
    )


def _price(prompt: int, completion: int) -> Decimal:
    return (Decimal(prompt) * PRICE_IN + Decimal(completion) * PRICE_OUT) / Decimal(1_000_000)


def _check_money(query: Query, policy_usage: BudgetUsage | None = None) -> None:
    """The query's cost is the sum of its rows' costs, which is what its budget was charged;
    nothing stays reserved."""
    samples = Sample.objects.filter(query=query).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens"), usd=Sum("cost_usd")
    )
    scorers = ScorerCall.objects.filter(query=query).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens"), usd=Sum("cost_usd")
    )
    rows_usd = (samples["usd"] or Decimal(0)) + (scorers["usd"] or Decimal(0))
    assert query.cost_usd == rows_usd > 0
    assert query.prompt_tokens == (samples["p"] or 0) + (scorers["p"] or 0)
    assert query.completion_tokens == (samples["c"] or 0) + (scorers["c"] or 0)
    assert query.cost_usd == _price(query.prompt_tokens, query.completion_tokens)
    if policy_usage is not None:
        policy_usage.refresh_from_db()
        assert policy_usage.spent_usd == query.cost_usd
        assert policy_usage.reserved_usd == 0


@pytest.mark.worker
def test_worker_query_with_a_dropped_sample_bills_every_sample(  # type: ignore[no-untyped-def]
    live_server, upstream, make_caller, celery_worker_process
) -> None:
    """majority of 3, sample 1's connection drops after 6 tokens: the query fails, and all
    three samples (the two aborted because of it, and the broken one) are billed."""
    _configuration(
        upstream, "maj-drop", "majority_vote", {"n": 3, "max_tokens": 32},
        fault={"drop_after": 6, "seeds": [1]},
    )  # fmt: skip
    caller = make_caller("alpha")
    policy = BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    before = len(upstream.stats())
    r = httpx.post(
        f"{live_server.url}/api/v1/queries",
        json={"messages": QUESTION, "model": "maj-drop"},
        headers=caller.auth,
        timeout=30,
    )
    assert r.status_code == 202, r.text
    query = wait_for(
        lambda: Query.objects.filter(pk=r.json()["id"], status__in=Query.FINISHED).first(), 60
    )
    assert query.status == Query.Status.FAILED
    samples = list(Sample.objects.filter(query=query).order_by("index"))
    # Samples 0 and 2 (aborted because of the failure) and the broken request's tokens.
    assert len(samples) == 3 and sum(s.aborted for s in samples) == 3
    assert [s.completion_tokens for s in samples if s.finish_reason == "error"] == [32]
    generated = upstream.generated(before)
    assert generated >= 6
    assert query.completion_tokens >= generated
    _check_money(query, BudgetUsage.objects.get(policy=policy))


@pytest.mark.worker
def test_worker_query_failing_after_a_verifier_call_bills_the_scorer(  # type: ignore[no-untyped-def]
    live_server, upstream, make_caller, celery_worker_process
) -> None:
    """best-of-2 with a verifier: the first verifier call succeeds, the second is refused;
    the failed query still bills the first call (a scorer row)."""
    _configuration(
        upstream, "bon-verify", "best_of_n",
        {"n": 2, "max_tokens": 8, "scorer": "verifier"},
        fault={"status": 500, "match_max_tokens": 1, "skip": 1},
    )  # fmt: skip
    caller = make_caller("alpha")
    r = httpx.post(
        f"{live_server.url}/api/v1/queries",
        json={"messages": QUESTION, "model": "bon-verify"},
        headers=caller.auth,
        timeout=30,
    )
    assert r.status_code == 202, r.text
    query = wait_for(
        lambda: Query.objects.filter(pk=r.json()["id"], status__in=Query.FINISHED).first(), 60
    )
    assert query.status == Query.Status.FAILED
    [scorer] = ScorerCall.objects.filter(query=query)
    assert scorer.prompt_tokens > 0 and scorer.completion_tokens == 1
    assert scorer.sample_index == 0
    assert query.scorer_calls == 1
    _check_money(query)


def test_inline_stream_that_drops_bills_its_tokens(  # type: ignore[no-untyped-def]
    live_server, upstream, make_caller
) -> None:
    """One sample on a remote endpoint runs in the web process: 12 streamed tokens, then
    the upstream drops the connection. The 502 in the stream names a real cost."""
    _configuration(upstream, "inline-drop", "single", {"max_tokens": 32}, fault={"drop_after": 12})
    caller = make_caller("alpha")
    policy = BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    body = {"model": "inline-drop", "messages": QUESTION, "stream": True}
    with httpx.stream(
        "POST", f"{live_server.url}/v1/chat/completions", json=body, headers=caller.auth,
        timeout=30,
    ) as r:  # fmt: skip
        query_id = r.headers["x-costpass-query-id"]
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    streamed = sum(1 for line in lines if '"content":"' in line and '"content":""' not in line)
    assert streamed == 12
    assert '"code":"upstream_error"' in lines[-1]
    query = Query.objects.get(pk=query_id)
    assert query.status == Query.Status.FAILED
    [sample] = Sample.objects.filter(query=query)
    assert sample.finish_reason == "error" and sample.completion_tokens == 32  # the bound
    assert f"were billed (${query.cost_usd.normalize():f})" in lines[-1]
    _check_money(query, BudgetUsage.objects.get(policy=policy))
