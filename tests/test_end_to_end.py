"""One query end to end: HTTP API -> database -> real broker -> real Celery worker process ->
real CPU model -> ledger priced from the endpoint -> HTTP API."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from routerapp.models import Query, Sample
from routerapp.services.apikeys import api_key_create
from tests.conftest import wait_for
from tests.factories import BudgetPolicyFactory, ConfigurationFactory, TeamFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.model]


def test_query_runs_on_the_real_model_and_is_priced(live_server, celery_worker_process) -> None:  # type: ignore[no-untyped-def]
    config = ConfigurationFactory()
    team = TeamFactory(name="e2e")
    budget = BudgetPolicyFactory(team=team, limit_usd=Decimal("5"))
    _, raw = api_key_create(team=team, name="e2e")
    auth = {"Authorization": f"Bearer {raw}"}
    with httpx.Client(base_url=live_server.url, headers=auth, timeout=30) as client:
        r = client.post(
            "/api/v1/queries",
            json={"prompt": "What is 3 + 4? Answer with a number.", "task": "arith"},
        )
        assert r.status_code == 202, r.text
        query_id = r.json()["id"]

        def finished() -> dict | None:
            body = client.get(f"/api/v1/queries/{query_id}").json()
            return body if body["status"] in ("done", "failed", "cancelled") else None

        body = wait_for(finished, timeout=180)
    assert body["status"] == "done", body.get("error")
    assert body["answer"].strip()
    ledger = body["ledger"]
    assert ledger["prompt_tokens"] > 5 and 0 < ledger["completion_tokens"] <= 24
    assert body["progress"] == {"samples_done": 1, "samples_planned": 1}
    # Cost = tokens x the endpoint's prices, exactly.
    expected = (
        Decimal(ledger["prompt_tokens"]) * config.endpoint.input_usd_per_mtok
        + Decimal(ledger["completion_tokens"]) * config.endpoint.output_usd_per_mtok
    ) / Decimal(1_000_000)
    assert Decimal(body["cost_usd"]) == expected
    assert body["latency_ms"] > 0
    query = Query.objects.get(pk=query_id)
    samples = list(Sample.objects.filter(query=query))
    assert len(samples) == 1 and samples[0].chosen
    assert samples[0].prompt_tokens + samples[0].completion_tokens == ledger["total_tokens"]
    # The reservation was replaced by the real cost.
    usage = budget.usage.get()
    assert usage.reserved_usd == 0
    assert usage.spent_usd == expected
