"""Endpoints priced per GPU-hour (no token price): the worst case is reserved from the time
limit, the router's worst-case filter sees their price, and every path bills their engine
time, sample by sample (the rows sum to the query's cost and to what its budget paid)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.db.models import Sum

from routerapp.errors import Unprocessable
from routerapp.models import (
    BudgetUsage,
    Configuration,
    Query,
    Sample,
    Team,
)
from routerapp.services.queries import query_create, query_runs_inline
from routerapp.services.routing import RequestConstraints, decide
from tests.conftest import wait_for
from tests.factories import BudgetPolicyFactory
from tests.scripted_upstream import Upstream, scripted_configuration, start_scripted_upstream

GPU_PRICE = Decimal("3.6")  # USD per hour: 0.001 USD per engine second
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_scripted_upstream(tmp_path_factory.mktemp("scripted"), token_delay_ms=20)
    yield up
    up.stop()


def _configuration(
    base_url: str,
    name: str,
    strategy: str = "single",
    params: dict | None = None,
    fault: dict | None = None,
    gpu: Decimal | None = GPU_PRICE,
    token_prices: tuple[str, str] = ("0", "0"),
) -> Configuration:
    prices = (Decimal(token_prices[0]), Decimal(token_prices[1]))
    return scripted_configuration(
        base_url, name, strategy, params, fault=fault, prices=prices, gpu_usd_per_hour=gpu
    )


def _time_limit_cost() -> Decimal:
    return GPU_PRICE * settings.QUERY_HARD_TIME_LIMIT_S / 3600


@pytest.mark.django_db
def test_a_gpu_priced_query_reserves_its_time_limit_and_is_not_free_to_the_router() -> None:
    gpu = _configuration("http://127.0.0.1:9/v1", "gpu-box")
    team = Team.objects.create(name="alpha")
    query = query_create(
        team=team,
        messages=QUESTION,
        constraints=RequestConstraints(model="gpu-box"),
        defer_dispatch=True,
    )
    assert query.reserved_usd == _time_limit_cost() > 0
    # A GPU-hour price depends on time: such a query runs under the worker's time limit,
    # which is what bounds its reservation, never in the web process.
    assert not query_runs_inline(query)
    # max_cost_usd below its worst case: it no longer fits.
    with pytest.raises(Unprocessable):
        decide(
            prompt="2+2?",
            task="",
            constraints=RequestConstraints(model="gpu-box", max_cost_usd=Decimal("0.01")),
            prompt_tokens=100,
        )
    # Without a router the cheapest worst case serves: the token-priced one, not the GPU.
    _configuration("http://127.0.0.1:9/v1", "tokens-box", gpu=None, token_prices=("1", "2"))
    decision = decide(prompt="2+2?", task="", constraints=RequestConstraints(), prompt_tokens=100)
    assert decision.configuration.slug == "tokens-box"
    assert gpu.slug in {a["configuration"] for a in decision.alternatives}


def _rows_and_budget(query: Query, usage: BudgetUsage) -> None:
    rows = Sample.objects.filter(query=query).aggregate(usd=Sum("cost_usd"), ms=Sum("engine_ms"))
    assert query.cost_usd == rows["usd"] > 0
    assert query.engine_ms == rows["ms"] > 0
    # Each row is its engine time at the GPU price, rounded up to the stored precision.
    assert abs(query.cost_usd - GPU_PRICE * query.engine_ms / 3_600_000) < Decimal("1e-10")
    usage.refresh_from_db()
    assert usage.spent_usd == query.cost_usd and usage.reserved_usd == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_gpu_time_is_billed_when_done_and_when_failed(  # type: ignore[no-untyped-def]
    live_server, upstream, make_caller, celery_worker_process
) -> None:
    _configuration(upstream.url, "gpu-vote", "majority_vote", {"n": 2, "max_tokens": 32})
    _configuration(
        upstream.url, "gpu-drop", "majority_vote", {"n": 2, "max_tokens": 32},
        fault={"drop_after": 6, "seeds": [1]},
    )  # fmt: skip
    caller = make_caller("alpha")
    policy = BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("50"))
    statuses = []
    for model in ("gpu-vote", "gpu-drop"):
        r = httpx.post(
            f"{live_server.url}/api/v1/queries",
            json={"messages": QUESTION, "model": model},
            headers=caller.auth,
            timeout=30,
        )
        assert r.status_code == 202, r.text
        query = wait_for(
            lambda r=r: Query.objects.filter(pk=r.json()["id"], status__in=Query.FINISHED).first(),
            60,
        )
        statuses.append(query.status)
        assert query.reserved_usd == _time_limit_cost()
        # Two samples ran side by side: their shares add up to the request's time, not twice.
        assert query.engine_ms < 2 * max(s.latency_ms or 0 for s in query.samples.all())
        _rows_and_budget(query, BudgetUsage.objects.get(policy=policy))
        BudgetUsage.objects.filter(policy=policy).update(spent_usd=0)
        body = httpx.get(
            f"{live_server.url}/api/v1/queries/{query.pk}", headers=caller.auth, timeout=10
        ).json()
        assert body["ledger"]["engine_seconds"] == query.engine_ms / 1000
        assert body["ledger"]["priced_by"] == "gpu_hour"
    assert statuses == [Query.Status.DONE, Query.Status.FAILED]
