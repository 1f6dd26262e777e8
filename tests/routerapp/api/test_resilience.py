"""Fault tests: the official `openai` client against the live server, in front of scripted
upstreams that really fail (bench/faulty_upstream.py in their own processes: HTTP errors before
the first token, 429 with Retry-After, flapping, slow answers, cut streams) or are down (nothing
listens on the port). A query succeeds through retry or fallback whenever an allowed
configuration is healthy; every attempt's tokens are billed exactly once; the circuit breaker of
a failing endpoint opens, makes the router skip it, and closes after a successful probe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from routerapp.models import BudgetUsage, Deployment, ModelEndpoint, Query, Sample
from routerapp.services.breakers import (
    breaker_snapshot,
    endpoint_health,
    endpoint_targets,
    health_cache_clear,
)
from routerapp.services.streaming import redis_client
from tests.conftest import REPO
from tests.factories import BudgetPolicyFactory
from tests.routerapp.api.conftest import FAKE_REPLY, free_port, make_configuration
from tests.scripted_upstream import wait_listening

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
CHEAP_IN, CHEAP_OUT = Decimal("1.5"), Decimal("2.25")
DEAR_IN, DEAR_OUT = Decimal("3"), Decimal("4.5")


class Faulty:
    """One scripted upstream process and its fault switch."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        log = tmp / f"faulty-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "faulty_upstream.py"), "--port", str(self.port)],
            stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the process
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.port, self.proc, log)
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"

    def fault(self, **fault: object) -> None:
        httpx.post(
            self.root + "/_faults", json=fault or {"mode": "ok"}, timeout=5
        ).raise_for_status()

    def stats(self) -> dict[str, int]:
        return httpx.get(self.root + "/_stats", timeout=5).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Faulty, Faulty]]:
    tmp = tmp_path_factory.mktemp("faulty")
    a, b = Faulty(tmp), Faulty(tmp)
    yield a, b
    a.stop()
    b.stop()


def _clear_breakers() -> None:
    client = redis_client()
    if client is not None:
        for key in client.scan_iter("costpass:cb:*"):
            client.delete(key)
        for key in client.scan_iter("costpass:inflight:*"):
            client.delete(key)
    health_cache_clear()


@pytest.fixture
def setup(live_server, upstreams, make_caller, settings):  # type: ignore[no-untyped-def]
    """Two configurations: `cheap` (chosen first: the cheapest worst case) on upstream A and
    `dear` on upstream B; a budget; breakers that open after 2 failures for 2 s."""
    settings.HEALTH_CACHE_S = 0.0
    settings.BREAKER_FAILURES = 2
    a, b = upstreams
    a.fault()
    b.fault()
    _clear_breakers()
    settings.BREAKER_COOLDOWN_S = 2.0
    cheap = make_configuration(a.url, name="cheap", strategy_name="single-cheap")
    dear = make_configuration(b.url, name="dear", strategy_name="single-dear")
    ModelEndpoint.objects.filter(pk=dear.endpoint_id).update(
        input_usd_per_mtok=DEAR_IN, output_usd_per_mtok=DEAR_OUT
    )
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)
    yield client, a, b, cheap, dear
    _clear_breakers()


def _params(configuration, **changes):  # type: ignore[no-untyped-def]
    endpoint = configuration.endpoint
    endpoint.engine_params = {**endpoint.engine_params, **changes}
    endpoint.save()


def _price(p: int, c: int, pin: Decimal, pout: Decimal) -> Decimal:
    return (Decimal(p) * pin + Decimal(c) * pout) / Decimal(1_000_000)


def _ask(client: openai.OpenAI, **kw):  # type: ignore[no-untyped-def]
    completion = client.chat.completions.create(model="auto", messages=QUESTION, **kw)
    ext = completion.model_extra["costpass"]
    return completion, ext, Query.objects.get(pk=ext["query_id"])


def _billed_once(query: Query) -> None:
    """The query's totals are the sum of its samples; its budget was charged exactly that."""
    samples = list(Sample.objects.filter(query=query))
    assert query.prompt_tokens == sum(s.prompt_tokens for s in samples)
    assert query.completion_tokens == sum(s.completion_tokens for s in samples)
    assert query.cost_usd == sum((s.cost_usd for s in samples), Decimal(0))
    usage = BudgetUsage.objects.get(policy__name="monthly")
    assert usage.reserved_usd == 0
    assert usage.spent_usd == sum(
        (q.cost_usd for q in Query.objects.filter(team=query.team)), Decimal(0)
    )


def test_429_with_retry_after_is_retried_on_the_same_endpoint(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, _ = setup
    a.fault(mode="429", retry_after=0.6, count=1)
    started = time.monotonic()
    completion, ext, query = _ask(client)
    assert time.monotonic() - started >= 0.6  # Retry-After was honoured
    assert completion.choices[0].message.content == FAKE_REPLY
    assert ext["configuration"] == cheap.slug
    assert a.stats() == {"completions": 2, "embeddings": 0, "faults": 1}
    assert b.stats()["completions"] == 0
    [attempt] = ext["attempts"]
    assert attempt["outcome"] == "ok" and attempt["configuration"] == cheap.slug
    assert [(r["status"], r["wait_s"]) for r in attempt["retries"]] == [(429, 0.6)]
    # The 429 generated nothing: one sample, billed once, at the cheap endpoint's prices.
    [sample] = Sample.objects.filter(query=query)
    assert query.cost_usd == _price(
        sample.prompt_tokens, sample.completion_tokens, CHEAP_IN, CHEAP_OUT
    )
    assert completion.usage.completion_tokens == sample.completion_tokens == 4
    _billed_once(query)


def test_5xx_before_the_first_token_is_retried_with_backoff(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, _, cheap, _ = setup
    a.fault(mode="error", status=503, count=2)
    completion, ext, query = _ask(client)
    assert completion.choices[0].message.content == FAKE_REPLY
    [attempt] = ext["attempts"]
    assert [r["status"] for r in attempt["retries"]] == [503, 503]
    waits = [r["wait_s"] for r in attempt["retries"]]
    assert 0 < waits[0] <= 0.5 and waits[1] > 0  # exponential backoff with jitter
    assert a.stats()["completions"] == 3
    assert Sample.objects.filter(query=query).count() == 1
    _billed_once(query)


def test_upstream_down_falls_back_to_the_next_configuration(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, b, cheap, dear = setup
    _params(cheap, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    completion, ext, query = _ask(client)
    assert completion.choices[0].message.content == FAKE_REPLY
    # The answer says who served it, and the query records every attempt.
    assert completion.model == ext["configuration"] == dear.slug
    assert [(x["configuration"], x["outcome"]) for x in ext["attempts"]] == [
        (cheap.slug, "failed"),
        (dear.slug, "ok"),
    ]
    assert "ConnectError" in ext["attempts"][0]["error"]
    assert len(ext["attempts"][0]["retries"]) == 1
    assert query.attempts[1]["configuration"] == dear.slug
    assert query.configuration_id == dear.pk and query.status == Query.Status.DONE
    assert b.stats()["completions"] == 1
    # Nothing was generated by the refused connection: only dear's sample is billed.
    [sample] = Sample.objects.filter(query=query)
    assert query.cost_usd == _price(sample.prompt_tokens, 4, DEAR_IN, DEAR_OUT)
    _billed_once(query)


def test_slow_upstream_times_out_falls_back_and_the_sent_prompt_is_billed(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, dear = setup
    _params(cheap, timeout_s=1.0)
    a.fault(mode="slow", delay_s=3)
    completion, ext, query = _ask(client)
    assert completion.choices[0].message.content == FAKE_REPLY
    assert ext["configuration"] == dear.slug
    assert [x["outcome"] for x in ext["attempts"]] == ["failed", "ok"]
    # A timed-out request is not retried (the server may be generating it)...
    assert a.stats()["completions"] == 1 and ext["attempts"][0]["retries"] == []
    # ...and its prompt, which the slow server did process, is billed at its prices, with
    # max_tokens (the bound of what it may have generated before the timeout).
    aborted, served = Sample.objects.filter(query=query).order_by("index")
    assert aborted.aborted and aborted.prompt_tokens > 0 and aborted.completion_tokens == 16
    assert aborted.cost_usd == _price(aborted.prompt_tokens, 16, CHEAP_IN, CHEAP_OUT)
    assert served.chosen and served.cost_usd == _price(
        served.prompt_tokens, served.completion_tokens, DEAR_IN, DEAR_OUT
    )
    assert completion.usage.prompt_tokens == aborted.prompt_tokens + served.prompt_tokens
    _billed_once(query)


def test_flapping_upstream_is_served_by_retries_and_its_breaker_stays_closed(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, _ = setup
    a.fault(mode="flap", status=500)
    for _ in range(4):
        completion, ext, query = _ask(client)
        assert ext["configuration"] == cheap.slug
        assert len(ext["attempts"]) == 1 and len(ext["attempts"][0]["retries"]) == 1
        _billed_once(query)
    assert b.stats()["completions"] == 0
    assert [h["state"] for h in endpoint_health(cheap.endpoint)] == ["closed"]


def test_breaker_opens_the_router_skips_it_and_a_probe_closes_it(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, dear = setup
    _params(cheap, max_retries=0)
    a.fault(mode="error", status=502)
    for _ in range(2):  # two failures open the breaker; both queries fall back
        _, ext, query = _ask(client)
        assert [x["configuration"] for x in ext["attempts"]] == [cheap.slug, dear.slug]
        _billed_once(query)
    assert a.stats()["completions"] == 2
    [health] = endpoint_health(cheap.endpoint)
    assert health["state"] == "open" and health["failures"] == 2
    assert "502" in health["last_error"]
    # Open: the router does not choose the failing endpoint at all.
    _, ext, _ = _ask(client)
    assert [x["configuration"] for x in ext["attempts"]] == [dear.slug]
    assert ext["decision_reason"] and a.stats()["completions"] == 2
    # After the cool-down one probe goes through; it fails: open again, for twice as long.
    [target] = endpoint_targets(cheap.endpoint)
    time.sleep(max(0.0, breaker_snapshot()[target.key].open_until - time.time()) + 0.05)
    probed = time.time()
    _, ext, _ = _ask(client)
    assert [x["outcome"] for x in ext["attempts"]] == ["failed", "ok"]
    assert a.stats()["completions"] == 3
    state = breaker_snapshot()[target.key]
    assert state.trips == 2 and state.open_until >= probed + 4.0  # twice the first cool-down
    # The endpoint recovers; the next probe succeeds and closes the breaker.
    a.fault()
    time.sleep(max(0.0, state.open_until - time.time()) + 0.05)
    _, ext, query = _ask(client)
    assert [(x["configuration"], x["outcome"]) for x in ext["attempts"]] == [(cheap.slug, "ok")]
    [health] = endpoint_health(cheap.endpoint)
    assert health["state"] == "closed" and health["failures"] == 0
    _, ext, _ = _ask(client)
    assert ext["configuration"] == cheap.slug
    _billed_once(query)


def test_every_endpoint_open_is_503_with_retry_after(setup, live_server) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, dear = setup
    _params(cheap, max_retries=0)
    _params(dear, max_retries=0)
    a.fault(mode="error", status=500)
    b.fault(mode="error", status=500)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as err:
            _ask(client)
        assert err.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client)
    assert err.value.status_code == 503
    assert err.value.response.headers["Retry-After"] in {"1", "2", "3"}
    assert err.value.body["code"] == "endpoints_unavailable"
    # The two failed queries were billed nothing (no upstream generated anything) and their
    # reservations were released.
    usage = BudgetUsage.objects.get(policy__name="monthly")
    assert usage.reserved_usd == 0 and usage.spent_usd == 0


def test_a_stream_cut_after_its_first_tokens_is_not_retried_and_its_tokens_are_billed(
    setup,
) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, _ = setup
    a.fault(mode="drop", after_tokens=2)
    with httpx.stream(
        "POST",
        f"{client.base_url}chat/completions",
        json={"model": "auto", "messages": QUESTION, "stream": True},
        headers={"Authorization": f"Bearer {client.api_key}"},
        timeout=30,
    ) as response:
        query_id = response.headers["x-costpass-query-id"]
        events = [
            json.loads(line[5:])
            for line in response.iter_lines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"
        ]
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )
    assert text == "The answer"  # what the client saw before the cut
    assert events[-1]["error"]["code"] == "upstream_error"
    query = Query.objects.get(pk=query_id)
    assert query.status == Query.Status.FAILED
    # Tokens were sent to the client: no retry, no fallback.
    assert a.stats()["completions"] == 1 and b.stats()["completions"] == 0
    [sample] = Sample.objects.filter(query=query)
    # No usage came: the cut stream is billed its bound (the server may have gone on to
    # max_tokens, see workers.engines.openai_compat), never less than the 2 tokens seen.
    assert sample.aborted and sample.finish_reason == "error" and sample.prompt_tokens > 0
    assert sample.completion_tokens == 16  # max_tokens
    assert query.cost_usd == _price(sample.prompt_tokens, 16, CHEAP_IN, CHEAP_OUT) > 0
    assert events[-1]["costpass"]["cost_usd"] == str(query.cost_usd)
    _billed_once(query)


def test_deployments_fail_over_within_the_endpoint_and_balance_by_weight(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, dear = setup
    endpoint = cheap.endpoint
    down = Deployment.objects.create(
        endpoint=endpoint,
        name="down",
        engine_params={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0},
        weight=1,
    )
    Deployment.objects.create(endpoint=endpoint, name="b", engine_params={"base_url": b.url})
    # One deployment is down: its queries move to the other deployment of the same model.
    seen = set()
    for _ in range(6):
        _, ext, query = _ask(client)
        assert ext["configuration"] == cheap.slug
        assert ext["attempts"][-1]["target"] == "cheap/b"
        seen.update(x["target"] for x in ext["attempts"])
        _billed_once(query)
    assert "cheap/down" in seen
    # Weighted: 1 to 3 between upstreams A and B.
    down.engine_params = {"base_url": a.url}
    down.name = "a"
    down.save()
    Deployment.objects.filter(name="b").update(weight=3)
    _clear_breakers()
    before_a, before_b = a.stats()["completions"], b.stats()["completions"]
    for _ in range(60):
        _ask(client)
    to_a = a.stats()["completions"] - before_a
    to_b = b.stats()["completions"] - before_b
    assert to_a + to_b == 60
    assert 0.6 <= to_b / 60 <= 0.92


def test_least_busy_sends_to_the_deployment_with_fewest_requests_in_flight(setup) -> None:  # type: ignore[no-untyped-def]
    client, a, b, cheap, _ = setup
    endpoint = cheap.endpoint
    endpoint.balancing = "least_busy"
    endpoint.save()
    busy = Deployment.objects.create(endpoint=endpoint, name="a", engine_params={"base_url": a.url})
    Deployment.objects.create(endpoint=endpoint, name="b", engine_params={"base_url": b.url})
    client_redis = redis_client()
    if client_redis is None:
        pytest.skip("in-flight counts across processes need Redis")
    # Other web processes hold 3 requests on deployment a.
    client_redis.set(f"costpass:inflight:ep{endpoint.pk}.d{busy.pk}", 3)
    before = a.stats()["completions"]
    for _ in range(5):
        _, ext, _ = _ask(client)
        assert ext["attempts"][0]["target"] == "cheap/b"
    assert a.stats()["completions"] == before
    client_redis.set(f"costpass:inflight:ep{endpoint.pk}.d{busy.pk}", 0)
    targets = set()
    for _ in range(12):
        _, ext, _ = _ask(client)
        targets.add(ext["attempts"][0]["target"])
    assert targets == {"cheap/a", "cheap/b"}  # equally idle: both serve


@pytest.mark.worker
def test_a_worker_falls_back_and_bills_the_failed_attempts_samples(  # type: ignore[no-untyped-def]
    live_server, upstreams, make_caller, celery_worker_process
) -> None:
    """Three-sample votes run in the Celery worker: upstream A answers 503 to every request, so
    the worker falls back to the next configuration (B, another worker-pool-free HTTP endpoint);
    the query records both attempts and is billed B's three samples, exactly once (A's 503s
    generated nothing)."""
    a, b = upstreams
    a.fault()
    b.fault()
    _clear_breakers()
    vote = {"n": 3, "max_tokens": 16}
    cheap = make_configuration(
        a.url, name="vcheap", strategy="majority_vote", strategy_name="maj3-cheap", params=vote
    )
    dear = make_configuration(
        b.url, name="vdear", strategy="majority_vote", strategy_name="maj3-dear", params=vote
    )
    ModelEndpoint.objects.filter(pk=dear.endpoint_id).update(
        input_usd_per_mtok=DEAR_IN, output_usd_per_mtok=DEAR_OUT
    )
    _params(cheap, max_retries=0)
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)
    a.fault(mode="error", status=503)  # every request of the first attempt fails
    completion, ext, query = _ask(client)
    assert completion.choices[0].message.content == FAKE_REPLY
    assert ext["configuration"] == dear.slug and ext["strategy"] == "majority_vote"
    assert [(x["configuration"], x["outcome"]) for x in ext["attempts"]] == [
        (cheap.slug, "failed"),
        (dear.slug, "ok"),
    ]
    assert [x["configuration"] for x in query.attempts] == [cheap.slug, dear.slug]
    assert query.configuration_id == dear.pk and query.samples_planned == 3
    assert b.stats()["completions"] == 3 and a.stats()["completions"] >= 1
    samples = list(Sample.objects.filter(query=query).order_by("index"))
    served = [s for s in samples if not s.aborted]
    assert len(served) == 3 and all(
        s.cost_usd == _price(s.prompt_tokens, s.completion_tokens, DEAR_IN, DEAR_OUT)
        for s in served
    )
    assert sum(1 for s in samples if s.chosen) == 1
    _billed_once(query)


@pytest.mark.worker
def test_an_inline_query_falls_back_to_a_configuration_that_needs_a_worker(  # type: ignore[no-untyped-def]
    live_server, upstreams, make_caller, celery_worker_process
) -> None:
    """The web process serves a one-sample call itself; when its endpoint is down and the next
    alternative is a three-sample vote (a worker's job), the query is handed over to a worker
    and the synchronous caller still gets the answer."""
    a, b = upstreams
    a.fault()
    b.fault()
    _clear_breakers()
    cheap = make_configuration(a.url, name="icheap", strategy_name="single-icheap")
    vote = make_configuration(
        b.url,
        name="ivote",
        strategy="majority_vote",
        strategy_name="maj3-ivote",
        params={"n": 3, "max_tokens": 16},
    )
    _params(cheap, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=caller.raw, max_retries=0)
    completion, ext, query = _ask(client)
    assert completion.choices[0].message.content == FAKE_REPLY
    assert ext["configuration"] == vote.slug and ext["votes"] == {"4": 3}
    assert [(x["configuration"], x["outcome"]) for x in ext["attempts"]] == [
        (cheap.slug, "failed"),
        (vote.slug, "ok"),
    ]
    assert query.samples_planned == 3 and b.stats()["completions"] == 3
    _billed_once(query)
