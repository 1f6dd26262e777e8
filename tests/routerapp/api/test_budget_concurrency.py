"""The concurrency proof of budget reservation: 50 requests at once, from 50 threads, through
real HTTP to a production server of 4 worker processes, against the real database, under a hard
budget that covers 10. At most the budget is spent (reserved + settled), no request is lost,
and every rejected one got a 402 naming the budget."""

from __future__ import annotations

import threading
from decimal import Decimal

import httpx
import pytest

from routerapp.models import BudgetUsage, Query
from routerapp.services.pricing import prompt_token_bound, worst_case_cost
from tests.factories import BudgetPolicyFactory, ConfigurationFactory
from tests.routerapp.api.conftest import make_configuration, start_gunicorn, stop

pytestmark = pytest.mark.django_db(transaction=True)

N = 50
COVERED = 10
PROMPT = "What is 2+2?"
# Queries of the jobs-API proof go to a queue no worker reads (this test runs none).
PARKED_QUEUE = "test.parked"


def _fire(url: str, path: str, body: dict, auth: dict) -> list[httpx.Response]:
    """Send N requests at the same instant from N threads; return every response."""
    barrier = threading.Barrier(N)
    responses: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * N

    def one(i: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
            barrier.wait()
            try:
                responses[i] = http.post(path, json=body)
            except httpx.HTTPError as exc:
                responses[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not lost, f"requests without an answer: {lost[:3]}"
    return responses  # type: ignore[return-value]


def _purge_parked() -> None:
    from workers.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(PARKED_QUEUE)


def test_fifty_parallel_jobs_under_a_budget_for_ten(tmp_path, make_caller) -> None:  # type: ignore[no-untyped-def]
    config = ConfigurationFactory()
    config.endpoint.queue = PARKED_QUEUE
    config.endpoint.save()
    caller = make_caller("alpha")
    per_query = worst_case_cost(config, prompt_token_bound(PROMPT, None))
    limit = per_query * COVERED
    policy = BudgetPolicyFactory(team=caller.team, name="ten-queries", limit_usd=limit)
    server = start_gunicorn(tmp_path, {}, workers=4, threads=16)
    try:
        responses = _fire(server.url, "/api/v1/queries", {"prompt": PROMPT}, caller.auth)
    finally:
        stop(server.proc)
        _purge_parked()
    accepted = [r for r in responses if r.status_code == 202]
    rejected = [r for r in responses if r.status_code == 402]
    assert len(accepted) + len(rejected) == N, {r.status_code for r in responses}
    assert len(accepted) == COVERED
    for r in rejected:
        error = r.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert "budget 'ten-queries'" in error["message"]
        assert f"limit ${limit.normalize():f}" in error["message"]
    usage = BudgetUsage.objects.get(policy=policy)
    print(
        f"\nconcurrency proof (jobs API, 4 processes): {N} requests, limit ${limit} "
        f"({COVERED} x ${per_query}): {len(accepted)} x 202, {len(rejected)} x 402, "
        f"reserved ${usage.reserved_usd}, spent ${usage.spent_usd}"
    )
    assert usage.spent_usd + usage.reserved_usd <= limit
    assert usage.reserved_usd == per_query * COVERED
    # None lost: every accepted request is a query holding its reservation, and only those.
    queries = Query.objects.filter(team=caller.team)
    assert sorted(str(q.pk) for q in queries) == sorted(r.json()["id"] for r in accepted)
    assert sum(q.reserved_usd for q in queries) == usage.reserved_usd


def test_fifty_parallel_chat_calls_settle_within_the_budget(  # type: ignore[no-untyped-def]
    tmp_path, make_caller, upstream_url
) -> None:
    """Through the OpenAI endpoint, served inline: queries reserve, run and settle while
    others reserve. The budget is never exceeded and every response is a 200 or a 402."""
    config = make_configuration(upstream_url)
    caller = make_caller("alpha")
    messages = [{"role": "user", "content": PROMPT}]
    per_query = worst_case_cost(config, prompt_token_bound("", messages))
    limit = per_query * COVERED
    policy = BudgetPolicyFactory(team=caller.team, name="ten-chats", limit_usd=limit)
    server = start_gunicorn(tmp_path, {}, workers=4, threads=16)
    try:
        responses = _fire(
            server.url,
            "/v1/chat/completions",
            {"model": "auto", "messages": messages},
            caller.auth,
        )
    finally:
        stop(server.proc)
    ok = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code == 402]
    assert len(ok) + len(rejected) == N, {r.status_code for r in responses}
    assert len(ok) >= COVERED  # real costs are below the worst case: room frees up
    assert all("budget 'ten-chats'" in r.json()["error"]["message"] for r in rejected)
    usage = BudgetUsage.objects.get(policy=policy)
    print(
        f"\nconcurrency proof (chat, inline, 4 processes): {N} requests, limit ${limit} "
        f"({COVERED} x ${per_query} worst case): {len(ok)} x 200, {len(rejected)} x 402, "
        f"reserved ${usage.reserved_usd}, spent ${usage.spent_usd}"
    )
    assert usage.reserved_usd == 0  # every query settled
    assert usage.spent_usd <= limit
    queries = list(Query.objects.filter(team=caller.team))
    assert len(queries) == len(ok)
    assert sum(q.cost_usd for q in queries) == usage.spent_usd
    assert usage.spent_usd == sum(Decimal(r.headers["x-costpass-cost-usd"]) for r in ok)
