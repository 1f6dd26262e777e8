"""GET /metrics after real queries (inline in the web process and through a real Celery
worker): every counter agrees with the ledger, the scrape-time gauges with the budgets, and the
endpoint answers only a token or an allowed network."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from routerapp.models import BudgetPolicy, Query, Sample
from tests.routerapp.api.conftest import make_configuration

pytestmark = [pytest.mark.django_db(transaction=True)]

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def scrape(url: str, **headers: str) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    values: dict[tuple[str, frozenset], float] = defaultdict(float)
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] += sample.value
    return values


def total(values: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and wanted <= ls)


@pytest.mark.worker
def test_metrics_after_real_queries_agree_with_the_ledger(  # type: ignore[no-untyped-def]
    live_server, upstream_url, make_caller, celery_worker_process
) -> None:
    make_configuration(upstream_url, name="solo")  # single sample: served inline
    make_configuration(
        upstream_url,
        name="voter",
        strategy="majority_vote",
        strategy_name="maj3",
        params={"n": 3, "max_tokens": 16},
    )
    caller = make_caller("metrics-team")
    policy = BudgetPolicy.objects.create(
        team=caller.team, name="monthly", limit_usd=Decimal("5"), mode="hard_reject"
    )
    before = scrape(live_server.url)
    with httpx.Client(base_url=live_server.url, timeout=120, headers=caller.auth) as http:
        for model in ("solo", "voter", "voter"):
            r = http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION})
            assert r.status_code == 200, r.text
        query_id = r.json()["costpass"]["query_id"]
        assert http.get("/v1/nope").status_code == 404
        # As if a router had predicted it: feedback feeds the calibration counters.
        Query.objects.filter(pk=query_id).update(predicted_p_correct=0.8)
        r = http.post(f"/api/v1/queries/{query_id}/feedback", json={"correct": True})
        assert r.status_code == 200
    after = scrape(live_server.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    team = {"team": "metrics-team"}
    queries = Query.objects.filter(team=caller.team)
    samples = Sample.objects.filter(query__team=caller.team)
    assert queries.count() == 3
    assert delta("costpass_queries_total", **team, status="done") == 3
    assert delta("costpass_queries_total", **team, configuration="voter/maj3") == 2
    assert delta("costpass_samples_total", **team) == samples.count() == 7
    for kind, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        assert delta("costpass_tokens_total", **team, kind=kind) == sum(
            getattr(q, field) for q in queries
        )
    assert delta("costpass_tokens_total", **team, kind="aborted") == 0
    spend = sum(q.cost_usd for q in queries)
    assert spend > 0
    assert delta("costpass_spend_usd_total", **team) == pytest.approx(float(spend), rel=1e-9)
    assert (
        delta(
            "costpass_http_requests_total",
            **team,
            endpoint="v1/chat/completions",
            status="200",
            method="POST",
        )
        == 3
    )
    assert delta("costpass_http_requests_total", endpoint="unmatched", status="404") >= 1
    assert (
        delta("costpass_http_request_duration_seconds_count", endpoint="v1/chat/completions") == 3
    )
    assert delta("costpass_query_queue_wait_seconds_count", configuration="voter/maj3") == 2
    assert delta("costpass_router_decisions_total", reason="only") == 3
    calibration = {"configuration": "voter/maj3"}
    assert delta("costpass_calibration_graded_total", **calibration) == 1
    assert delta("costpass_calibration_correct_total", **calibration) == 1
    assert delta("costpass_calibration_predicted_p_correct_total", **calibration) == pytest.approx(
        0.8
    )
    # Budgets and reservations are read from the database at scrape time.
    window = {"policy": "monthly", "team": "metrics-team"}
    assert total(after, "costpass_budget_limit_usd", **window) == 5.0
    assert total(after, "costpass_budget_spent_usd", **window) == pytest.approx(float(spend))
    assert total(after, "costpass_budget_remaining_usd", **window) == pytest.approx(
        5.0 - float(spend)
    )
    assert total(after, "costpass_reservations_held_usd", **team) == 0
    assert ("costpass_celery_queue_depth", frozenset({("queue", "engine.openai_compat")})) in after
    assert policy.pk


def test_metrics_need_a_token_or_an_allowed_network(live_server, settings) -> None:  # type: ignore[no-untyped-def]
    settings.METRICS_TOKEN = "s3cret-token"
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    url = f"{live_server.url}/metrics"
    assert httpx.get(url).status_code == 403
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = httpx.get(url, headers={"Authorization": "Bearer s3cret-token"})
    assert r.status_code == 200 and "costpass_http_requests_total" in r.text
    assert r.headers["content-type"].startswith("text/plain")
    settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert httpx.get(url).status_code == 200
    settings.METRICS_ENABLED = False
    assert httpx.get(url).status_code == 404


def test_circuit_breaker_state_is_scraped(live_server, upstream_url) -> None:  # type: ignore[no-untyped-def]
    from routerapp.services.breakers import (
        breaker_policy,
        breaker_record,
        endpoint_targets,
        health_cache_clear,
    )

    endpoint = make_configuration(upstream_url, name="flaky").endpoint
    target = endpoint_targets(endpoint)[0]
    for _ in range(breaker_policy().failure_threshold):
        breaker_record(target=target, ok=False, error="boom")
    health_cache_clear()
    values = scrape(live_server.url)
    labels = {"target": target.key}
    assert total(values, "costpass_circuit_breaker_state", **labels, state="open") == 1
    assert total(values, "costpass_circuit_breaker_state", **labels, state="closed") == 0
    assert total(values, "costpass_circuit_breaker_failures", **labels) >= 1
    breaker_record(target=target, ok=True)
