"""OpenAI's x-ratelimit-* headers on every response of a key with limits: answers, streams,
202s, errors and the 429 itself; the jobs API too."""

from __future__ import annotations

import httpx
import pytest

from routerapp.services.apikeys import api_key_create
from tests.routerapp.api.conftest import make_configuration

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = "/v1/chat/completions"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture
def http(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    caller = make_caller("alpha")
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        yield caller, client


def _reset_s(value: str) -> float:
    if value.endswith("ms"):
        return float(value[:-2]) / 1000
    minutes, _, seconds = value.rpartition("m")
    return float(minutes or 0) * 60 + float(seconds.rstrip("s"))


def test_requests_and_tokens_headers_count_down(http) -> None:  # type: ignore[no-untyped-def]
    caller, client = http
    _, raw = api_key_create(team=caller.team, name="lim", rate_limit_rpm=3, rate_limit_tpm=1000)
    auth = {"Authorization": f"Bearer {raw}"}
    first = client.post(CHAT, json=BODY, headers=auth)
    assert first.status_code == 200
    h = first.headers
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "2"
    assert h["x-ratelimit-limit-tokens"] == "1000"
    # The window had nothing yet; this request's prompt estimate is taken off.
    assert 950 < int(h["x-ratelimit-remaining-tokens"]) < 1000
    assert 60 < _reset_s(h["x-ratelimit-reset-requests"]) <= 120
    assert _reset_s(h["x-ratelimit-reset-tokens"]) == 0  # no finished query's tokens yet
    # Streams carry them too; the first query's real tokens are now charged.
    with client.stream("POST", CHAT, json={**BODY, "stream": True}, headers=auth) as r:
        assert r.headers["x-ratelimit-remaining-requests"] == "1"
        tokens_left = int(r.headers["x-ratelimit-remaining-tokens"])
        r.read()
    used = first.json()["usage"]["total_tokens"]
    assert tokens_left <= 1000 - used - 8
    # An error answer (here a 404: unknown model) still counts and reports.
    r = client.post(CHAT, json={**BODY, "model": "nope"}, headers=auth)
    assert r.status_code == 404 and r.headers["x-ratelimit-remaining-requests"] == "0"
    # The 429 says there is nothing left and when it resets.
    r = client.post(CHAT, json=BODY, headers=auth)
    assert r.status_code == 429
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert _reset_s(r.headers["x-ratelimit-reset-requests"]) > 0


def test_jobs_api_reports_them_and_unlimited_keys_send_none(http) -> None:  # type: ignore[no-untyped-def]
    caller, client = http
    _, raw = api_key_create(team=caller.team, name="jobs", rate_limit_rpm=5)
    r = client.post(
        "/api/v1/queries", json={"prompt": "2+2?"}, headers={"Authorization": f"Bearer {raw}"}
    )
    assert r.status_code == 202 and r.headers["x-ratelimit-remaining-requests"] == "4"
    assert "x-ratelimit-limit-tokens" not in r.headers  # no tokens-per-minute limit
    # A key without limits has no window to report.
    r = client.post(CHAT, json=BODY, headers=caller.auth)
    assert r.status_code == 200
    assert not [k for k in r.headers if k.startswith("x-ratelimit")]


def test_reset_durations_keep_their_fraction_and_never_read_60s() -> None:
    from routerapp.services.ratelimits import _duration

    assert _duration(0) == "0s" and _duration(0.02) == "20ms" and _duration(1.5) == "1.5s"
    assert _duration(360) == "6m0s"
    assert _duration(60.4) == "1m0.4s" and _reset_s(_duration(60.4)) > 60
    assert _duration(119.9996) == "2m0s"  # not 1m60s
