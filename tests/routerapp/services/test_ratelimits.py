"""Per-key rate limits in Redis: a sliding one-minute window for requests and tokens."""

from __future__ import annotations

import pytest
from django.test import override_settings

from routerapp.errors import RateLimited
from routerapp.services.apikeys import api_key_create
from routerapp.services.ratelimits import rate_limit_admit, rate_limit_charge_tokens
from routerapp.services.streaming import redis_client
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db

# A minute boundary far from now, so these counters never meet those of a real request.
T0 = 4_000_000_000 - 4_000_000_000 % 60


@pytest.fixture(autouse=True)
def _clean_counters() -> None:
    client = redis_client()
    if client is not None:
        for key in client.scan_iter("costpass:rl:*"):
            client.delete(key)


def _key(**limits: int):  # type: ignore[no-untyped-def]
    key, _ = api_key_create(team=TeamFactory(), name="k", **limits)  # type: ignore[arg-type]
    return key


def test_requests_per_minute_slide_over_the_minute_boundary() -> None:
    key = _key(rate_limit_rpm=3)
    for _ in range(3):
        rate_limit_admit(key=key, now=T0 + 30)
    with pytest.raises(RateLimited) as err:
        rate_limit_admit(key=key, now=T0 + 30)
    assert err.value.status == 429 and "3 requests per minute" in err.value.message
    # This minute is full: wait for it to end.
    assert err.value.retry_after_s == 30
    # At the start of the next minute the last one still weighs fully...
    with pytest.raises(RateLimited) as err:
        rate_limit_admit(key=key, now=T0 + 60)
    # ...half-way through, half of it: 1.5 + 1 <= 3 admits one more, not two.
    rate_limit_admit(key=key, now=T0 + 90)
    with pytest.raises(RateLimited) as err:
        rate_limit_admit(key=key, now=T0 + 90)
    assert 1 <= err.value.retry_after_s <= 30
    # Two minutes on, the window is empty again.
    for _ in range(3):
        rate_limit_admit(key=key, now=T0 + 180)


def test_rejected_requests_do_not_count() -> None:
    key = _key(rate_limit_rpm=1)
    rate_limit_admit(key=key, now=T0 + 1)
    for _ in range(5):
        with pytest.raises(RateLimited):
            rate_limit_admit(key=key, now=T0 + 2)
    client = redis_client()
    assert int(client.get(f"costpass:rl:{key.pk}:req:{T0 // 60}")) == 1


def test_tokens_per_minute_are_charged_when_queries_finish() -> None:
    key = _key(rate_limit_tpm=1000)
    rate_limit_admit(key=key, prompt_tokens=100, now=T0 + 5)
    rate_limit_charge_tokens(key_id=key.pk, tokens=950, now=T0 + 6)
    with pytest.raises(RateLimited) as err:
        rate_limit_admit(key=key, prompt_tokens=100, now=T0 + 7)
    assert "950 of 1000 tokens per minute" in err.value.message
    rate_limit_admit(key=key, prompt_tokens=40, now=T0 + 7)  # fits in what is left
    with pytest.raises(RateLimited) as err:
        rate_limit_admit(key=key, prompt_tokens=5000, now=T0 + 8)
    assert "limit is 1000 tokens per minute" in err.value.message


def test_keys_without_limits_touch_nothing() -> None:
    key = _key()
    for _ in range(100):
        rate_limit_admit(key=key, now=T0)
    assert list(redis_client().scan_iter(f"costpass:rl:{key.pk}:*")) == []


def test_unreachable_store_admits() -> None:
    key = _key(rate_limit_rpm=1)
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        for _ in range(3):
            rate_limit_admit(key=key, now=T0)  # logged, not enforced


@override_settings(
    REDIS_URL="", CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
)
def test_embedded_default_counts_in_the_django_cache() -> None:
    key = _key(rate_limit_rpm=2)
    rate_limit_admit(key=key, now=T0)
    rate_limit_admit(key=key, now=T0)
    with pytest.raises(RateLimited):
        rate_limit_admit(key=key, now=T0)
