"""The retry policy and the breaker's transitions (pure: no database, no network)."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import httpx
import pytest

from workers.engines.resilience import (
    BreakerPolicy,
    BreakerState,
    RetryPolicy,
    UpstreamError,
    error_of_response,
    retry_after_seconds,
)


def _response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, text="nope")


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds(_response(429, **{"Retry-After": "2.5"})) == 2.5
    assert retry_after_seconds(_response(429, **{"retry-after-ms": "1500"})) == 1.5
    date = "Sun, 29 Nov 2026 13:00:10 GMT"
    at = parsedate_to_datetime(date).timestamp()
    assert retry_after_seconds(_response(503, **{"Retry-After": date}), now=at - 4) == 4
    assert retry_after_seconds(_response(503)) is None


def test_which_failures_are_retried() -> None:
    policy = RetryPolicy(retry_after_max_s=5)
    assert policy.retryable(error_of_response(_response(503)))
    assert policy.retryable(error_of_response(_response(429, **{"Retry-After": "1"})))
    # A wait longer than we hold a request for: give up now, fall back elsewhere.
    assert not policy.retryable(error_of_response(_response(429, **{"Retry-After": "60"})))
    # The request is wrong: another try would fail the same way (and it is not transient).
    bad = error_of_response(_response(400))
    assert not bad.transient and not policy.retryable(bad)
    # Something was generated (a broken stream, a timeout after sending): never retried.
    assert not policy.retryable(UpstreamError("cut", partial=(10, 2, "ab")))
    assert policy.retryable(httpx.ConnectError("refused"))
    assert not policy.retryable(ValueError("a bug"))


def test_retries_wait_then_give_up_with_the_log() -> None:
    calls = []

    def fail() -> None:
        calls.append(1)
        raise error_of_response(_response(503))

    policy = RetryPolicy(max_retries=2, initial_s=0.01, max_wait_s=0.05, jitter_s=0.01)
    log: list[dict] = []
    with pytest.raises(UpstreamError) as err:
        policy.call(fail, log=log)
    assert len(calls) == 3 and len(log) == 2 == len(err.value.retries)
    assert all(r["status"] == 503 and 0.01 <= r["wait_s"] <= 0.05 for r in log)
    assert log[1]["wait_s"] >= 0.02  # exponential


def test_retry_after_is_the_wait() -> None:
    answers = [error_of_response(_response(429, **{"Retry-After": "0.05"}))]

    def once() -> str:
        if answers:
            raise answers.pop()
        return "ok"

    log: list[dict] = []
    assert RetryPolicy().call(once, log=log) == "ok"
    assert log == [{"error": log[0]["error"], "status": 429, "wait_s": 0.05}]


def test_breaker_opens_half_opens_and_closes() -> None:
    policy = BreakerPolicy(failure_threshold=2, cooldown_s=10, max_cooldown_s=25)
    s = BreakerState()
    s = policy.on_failure(s, 0.0, "boom")
    assert s.state == "closed" and s.failures == 1
    s = policy.on_success(s, 1.0)  # consecutive failures only
    assert s.is_clean
    s = policy.on_failure(policy.on_failure(s, 2.0), 3.0, "boom")
    assert s.state == "open" and s.open_until == 13.0
    assert policy.availability(s, 12.9) == "open" and policy.retry_in(s, 12.0) == 1.0
    assert policy.availability(s, 13.0) == "probe"
    # A request sent before it opened and coming back fine does not close it.
    assert policy.on_success(s, 5.0).state == "open"
    probing = policy.claim_probe(s, 13.0)
    assert policy.availability(probing, 13.5) == "open"  # one probe at a time
    # The probe fails: open again, twice as long.
    s = policy.on_failure(probing, 14.0, "still down")
    assert s.state == "open" and s.open_until == 34.0 and s.trips == 2
    # Capped cool-down.
    s = policy.on_failure(policy.claim_probe(s, 34.0), 34.0)
    assert s.open_until == 34.0 + 25
    # A successful probe closes it and forgets everything.
    assert policy.on_success(policy.claim_probe(s, 60.0), 60.5).is_clean
    # A probe that never reported back frees its claim.
    stuck = policy.claim_probe(s, 60.0)
    assert policy.availability(stuck, 60.0 + policy.probe_timeout_s) == "probe"
