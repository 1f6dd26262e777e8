"""Circuit breakers shared between processes, in both stores: Redis, and the database when
there is no Redis (the embedded default)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections

from routerapp.models import CircuitBreaker, Deployment
from routerapp.services import breakers
from routerapp.services.streaming import redis_client
from tests.factories import EndpointFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["redis", "database"])
def store(request, settings):  # type: ignore[no-untyped-def]
    settings.HEALTH_CACHE_S = 0.0
    settings.BREAKER_FAILURES = 2
    settings.BREAKER_COOLDOWN_S = 30.0
    if request.param == "database":
        settings.REDIS_URL = ""
    client = redis_client()
    if request.param == "redis":
        if client is None:
            pytest.skip("no Redis configured")
        for key in client.scan_iter("costpass:cb:*"):
            client.delete(key)
    breakers.health_cache_clear()
    yield request.param
    breakers.health_cache_clear()


def test_failures_open_the_breaker_for_every_process_and_a_probe_closes_it(store) -> None:  # type: ignore[no-untyped-def]
    endpoint = EndpointFactory(name="flaky", engine="openai_compat")
    [target] = breakers.endpoint_targets(endpoint)
    now = time.time()
    breakers.breaker_record(target=target, ok=False, error="HTTP 503", now=now)
    assert breakers.endpoint_available(endpoint, now)
    breakers.breaker_record(target=target, ok=False, error="HTTP 503", now=now)
    # What another process sees: the shared store, not this process's cache.
    breakers.health_cache_clear()
    assert not breakers.endpoint_available(endpoint, now + 1)
    assert not breakers.breaker_claim(target, now + 1)
    [health] = breakers.endpoint_health(endpoint, now + 1)
    assert health["state"] == "open" and health["failures"] == 2
    assert health["last_error"] == "HTTP 503" and 28 < health["retry_in_s"] <= 30
    if store == "database":
        row = CircuitBreaker.objects.get(target=target.key)
        assert row.state == "open" and row.failures == 2
    # After the cool-down exactly one of many concurrent callers wins the probe.
    later = now + 31
    wins: list[bool] = []

    def claim() -> None:
        try:
            wins.append(breakers.breaker_claim(target, later))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]
    assert breakers.endpoint_health(endpoint, later)[0]["state"] == "half_open"
    breakers.breaker_record(target=target, ok=True, now=later + 1)
    breakers.health_cache_clear()
    assert breakers.endpoint_health(endpoint, later + 1)[0]["state"] == "closed"
    assert breakers.breaker_claim(target, later + 1)


def test_an_endpoint_is_available_while_one_of_its_deployments_is(store) -> None:  # type: ignore[no-untyped-def]
    endpoint = EndpointFactory(name="pooled", engine="openai_compat")
    d1 = Deployment.objects.create(endpoint=endpoint, name="one", engine_params={"model": "x"})
    Deployment.objects.create(endpoint=endpoint, name="two", weight=2)
    t1, t2 = breakers.endpoint_targets(endpoint)
    assert t1.key == f"ep{endpoint.pk}.d{d1.pk}" and t1.engine_params["model"] == "x"
    assert t2.weight == 2 and t1.label == "pooled/one"
    now = time.time()
    for _ in range(2):
        breakers.breaker_record(target=t1, ok=False, error="down", now=now)
    assert breakers.endpoint_available(endpoint, now)
    # The open deployment is never picked.
    assert {breakers.target_pick(endpoint).key for _ in range(10)} == {t2.key}  # type: ignore[union-attr]
    for _ in range(2):
        breakers.breaker_record(target=t2, ok=False, error="down", now=now)
    assert not breakers.endpoint_available(endpoint, now)
    assert breakers.target_pick(endpoint) is None
