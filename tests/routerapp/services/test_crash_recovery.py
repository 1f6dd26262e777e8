"""Money stays exact when processes die and messages are lost (services.execution, the reaper,
the query task), tried on the real stack: a real Celery worker, the real Redis and Postgres, a
real OpenAI-compatible upstream (bench/fake_upstream.py). Faults are real: a worker's pool
child is SIGKILLed, a private redis-server is killed and restarted empty, the worker's
database connections are terminated by the server.

Each test checks the ledger invariants of every query it made: terminal, cost = sum of its
samples' costs = what its budget was charged, reservation released, hard budget within its
limit, cost within what was reserved."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from routerapp.models import (
    BudgetPolicy,
    BudgetUsage,
    Configuration,
    ModelEndpoint,
    Query,
    Sample,
    StrategyConfig,
    Team,
)
from routerapp.services.budgets import budget_reserve
from routerapp.services.execution import queries_reap_stale
from routerapp.services.pricing import endpoint_prices, prompt_token_bound, worst_case_cost
from routerapp.services.queries import query_create
from routerapp.services.routing import RequestConstraints
from routerapp.services.streaming import RedisSink, redis_client
from tests.conftest import wait_for
from tests.routerapp.api.conftest import start_upstream
from tests.stack import children as process_children
from tests.stack import start_redis, start_worker
from workers.celery import app
from workers.ledger import cost_of_tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

OUT_PRICE = Decimal("2.25")  # USD per million output tokens; input is free, so costs are exact
UNIT = OUT_PRICE / Decimal(1_000_000)  # one output token
PROMPT = "What is 2+2?"
# Settings of the workers these tests start: a heartbeat and a stale window the test can wait.
FAST_RECOVERY = {
    "COSTPASS_QUERY_HEARTBEAT_S": "0.3",
    "COSTPASS_QUERY_STALE_S": "2",
    "COSTPASS_QUERY_REDISPATCH_S": "2",
    "COSTPASS_REAP_INTERVAL_S": "1",
}


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake upstream, 250 ms between tokens: a strategy is mid-run long enough to kill."""
    proc, url = start_upstream(tmp_path_factory.mktemp("slow-up"), token_delay_ms=250)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def fast_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_upstream(tmp_path_factory.mktemp("fast-up"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _configuration(base_url: str, *, name: str, n: int, max_tokens: int, queue: str = ""):  # type: ignore[no-untyped-def]
    endpoint = ModelEndpoint.objects.create(
        name=name,
        engine=ModelEndpoint.Engine.OPENAI_COMPAT,
        engine_params={"base_url": base_url, "model": "fake", "tokenize": "none"},
        input_usd_per_mtok=Decimal(0),
        output_usd_per_mtok=OUT_PRICE,
        queue=queue,
    )
    strategy = StrategyConfig.objects.create(
        name=f"{name}-s",
        strategy="majority_vote" if n > 1 else "single",
        params={"n": n, "max_tokens": max_tokens} if n > 1 else {"max_tokens": max_tokens},
    )
    return Configuration.objects.create(endpoint=endpoint, strategy=strategy, slug=f"{name}/s")


def _assert_ledger_exact(queries: list[Query]) -> None:
    """Every query terminal; cost = sum of its samples = what its budgets were charged; no
    reservation left; no hard budget over its limit; cost within what was reserved."""
    charged = Decimal(0)
    for query in queries:
        query.refresh_from_db()
        assert query.is_finished, (query.pk, query.status)
        samples = Sample.objects.filter(query=query).aggregate(usd=Sum("cost_usd"))["usd"]
        assert query.cost_usd == (samples or Decimal(0)), query.pk
        assert query.cost_usd <= query.reserved_usd, (query.pk, query.cost_usd, query.reserved_usd)
        charged += query.cost_usd
    for usage in BudgetUsage.objects.select_related("policy"):
        assert usage.reserved_usd == 0, usage
        assert usage.spent_usd == charged, (usage.spent_usd, charged)
        if usage.policy.is_hard:
            assert usage.spent_usd <= usage.policy.limit_usd


def _dead_run(configuration: Configuration, *, limit_units: int, written: int, streamed: int):  # type: ignore[no-untyped-def]
    """The state a worker killed mid-strategy leaves: a query running attempt 1 with a stale
    heartbeat, its reservation held, sample ``written`` written (it finished first), samples
    0..3 started on the event channel and sample ``streamed`` mid-way through its text."""
    team = Team.objects.create(name=f"team-{configuration.slug}")
    BudgetPolicy.objects.create(
        team=team, name="hard", limit_usd=limit_units * UNIT, mode=BudgetPolicy.Mode.HARD_REJECT
    )
    worst = worst_case_cost(configuration, prompt_token_bound(PROMPT, None))
    assert worst == 12 * UNIT  # 4 samples x 3 tokens, the prompt is free
    reservation = budget_reserve(team=team, api_key=None, amount=worst)
    query = Query.objects.create(
        team=team,
        prompt=PROMPT,
        configuration=configuration,
        status=Query.Status.RUNNING,
        started_at=timezone.now() - dt.timedelta(minutes=1),
        heartbeat_at=timezone.now() - dt.timedelta(minutes=1),
        runs=1,
        samples_planned=4,
        reserved_usd=reservation.amount,
        budget_windows=reservation.usage_ids,
    )
    prices = endpoint_prices(configuration.endpoint)
    Sample.objects.create(
        query=query,
        index=written,
        text="The answer is",
        prompt_tokens=20,
        completion_tokens=3,
        finish_reason="length",
        count_method="usage",
        cost_usd=cost_of_tokens(20, 3, prices),
    )
    sink = RedisSink(query.pk, redis_client())
    for index in range(4):
        sink.start(index)
    sink.token(streamed, "The")
    sink.sample(written)
    sink.flush()
    return query


def _redeliver(query: Query) -> None:
    app.send_task(
        "costpass.query_execute",
        args=[str(query.pk)],
        queue="engine.openai_compat",
        ignore_result=True,
    )


def test_redelivered_query_keeps_the_dead_runs_samples_and_reserves_its_rerun(
    fast_upstream: str, celery_worker_process: object
) -> None:
    """Sample 1 of the dead run finished before sample 0: the rerun must not number its
    samples from a row count (it overwrote that row), and what the dead run was generating
    is billed at an upper bound that says which."""
    configuration = _configuration(fast_upstream, name="redeliver", n=4, max_tokens=3)
    query = _dead_run(configuration, limit_units=1000, written=1, streamed=0)
    first = Sample.objects.get(query=query, index=1)
    _redeliver(query)
    wait_for(lambda: Query.objects.get(pk=query.pk).is_finished, timeout=60)
    query.refresh_from_db()
    assert query.status == "done" and query.runs == 2
    kept = Sample.objects.get(query=query, index=1)
    assert (kept.pk, kept.prompt_tokens, kept.count_method) == (first.pk, 20, "usage")
    lost = {s.index: s for s in Sample.objects.filter(query=query, finish_reason="lost")}
    assert sorted(lost) == [0, 2, 3]
    assert lost[0].count_method == "stream_bound" and lost[0].completion_tokens == 3
    assert lost[2].count_method == lost[3].count_method == "reservation_share"
    assert all(s.aborted for s in lost.values())
    rerun = Sample.objects.filter(query=query, index__gte=4)
    assert sorted(s.index for s in rerun) == [4, 5, 6, 7]
    # The dead run is billed 12 tokens, the rerun 12: the reservation grew to cover both.
    assert query.cost_usd == 24 * UNIT and query.reserved_usd == 24 * UNIT
    _assert_ledger_exact([query])


def test_rerun_a_hard_budget_cannot_cover_is_refused_and_the_dead_run_billed(
    fast_upstream: str, celery_worker_process: object
) -> None:
    """Rerunning in full would spend 12 + 3 tokens' worth under a budget of 13.5: the rerun
    is refused (402 semantics) instead of passing the worst case that was reserved."""
    configuration = _configuration(fast_upstream, name="tight", n=4, max_tokens=3)
    query = _dead_run(configuration, limit_units=13, written=0, streamed=1)
    BudgetPolicy.objects.filter(team=query.team).update(limit_usd=Decimal("13.5") * UNIT)
    _redeliver(query)
    wait_for(lambda: Query.objects.get(pk=query.pk).is_finished, timeout=60)
    query.refresh_from_db()
    assert query.status == "failed", query.status
    assert "refused" in query.error and "budget 'hard'" in query.error
    assert query.cost_usd == 12 * UNIT  # 3 written + 3 streamed (bound) + 2 x 3 reserved share
    assert Sample.objects.filter(query=query).count() == 4
    _assert_ledger_exact([query])


def _test_db_name() -> str:
    return str(connection.settings_dict["NAME"])


def test_sigkilled_worker_child_mid_strategy_is_billed_and_rerun(
    slow_upstream: str, tmp_path: Path
) -> None:
    """A prefork worker's child is SIGKILLed while four samples stream: the samples it was
    generating are billed at their streamed bound, the query is run again within a topped-up
    reservation and finishes; nothing is billed twice, no budget overspent."""
    queue = "faults.kill"
    configuration = _configuration(slow_upstream, name="killed", n=4, max_tokens=4, queue=queue)
    team = Team.objects.create(name="killed")
    BudgetPolicy.objects.create(team=team, name="hard", limit_usd=Decimal("1"))
    worker = start_worker(
        tmp_path,
        db_name=_test_db_name(),
        queues=queue,
        env=FAST_RECOVERY,
        pool="prefork",
        concurrency=1,
        name="kill",
    )
    try:
        query = query_create(
            team=team,
            prompt=PROMPT,
            constraints=RequestConstraints(configuration=configuration.slug),
        )
        client = redis_client()
        key = f"costpass:query:{query.pk}:events"
        wait_for(lambda: any(f[b"k"] == b"token" for _, f in client.xrange(key)), timeout=60)
        children = worker.children()
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)
        # The pool requeues the task at once (reject_on_worker_lost); the new child sees the
        # query's heartbeat still fresh and leaves it. The reaper (here in the test process,
        # with the workers' windows) finds the heartbeat stale and queues it again.
        with _fast_recovery_settings():

            def finished() -> bool:
                queries_reap_stale()
                return Query.objects.get(pk=query.pk).is_finished

            wait_for(finished, timeout=90, interval=0.5)
    finally:
        worker.stop()
    query.refresh_from_db()
    assert query.status == "done", (query.status, query.error)
    assert query.runs == 2
    lost = Sample.objects.filter(query=query, finish_reason="lost")
    # Killed once a token was streamed: that sample is billed its streamed bound; one that
    # had been sent but had streamed nothing yet, its reservation share.
    methods = {s.count_method for s in lost}
    assert "stream_bound" in methods and methods <= {"stream_bound", "reservation_share"}
    assert Sample.objects.filter(query=query, index__gte=query.sample_offset).count() == 4
    assert query.sample_offset >= 4
    _assert_ledger_exact([query])


class _fast_recovery_settings:
    """The test process's reaper with the workers' fast recovery windows."""

    def __enter__(self) -> None:
        from django.test import override_settings

        self.override = override_settings(
            QUERY_HEARTBEAT_S=0.3, QUERY_STALE_S=2.0, QUERY_REDISPATCH_S=2.0
        )
        self.override.enable()

    def __exit__(self, *exc: object) -> None:
        self.override.disable()


def test_queued_queries_lost_with_a_restarted_redis_are_dispatched_again(
    fast_upstream: str, tmp_path: Path
) -> None:
    """Six queries are queued on a non-persistent Redis that is then killed and restarted
    empty: their messages are gone. The reaper (Celery beat in the worker) dispatches them
    again; all finish, their reservations settled."""
    redis = start_redis(tmp_path)
    # Its own queue: a single remote sample would otherwise be served inline by the web process.
    configuration = _configuration(
        fast_upstream, name="requeued", n=1, max_tokens=4, queue="engine.openai_compat"
    )
    team = Team.objects.create(name="requeued")
    BudgetPolicy.objects.create(team=team, name="hard", limit_usd=Decimal("1"))
    queries = [
        query_create(
            team=team,
            prompt=PROMPT,
            constraints=RequestConstraints(configuration=configuration.slug),
            defer_dispatch=True,
        )
        for _ in range(6)
    ]
    with app.connection_for_write(redis.url) as conn:
        for query in queries:
            app.send_task(
                "costpass.query_execute",
                args=[str(query.pk)],
                queue="engine.openai_compat",
                connection=conn,
                ignore_result=True,
            )
        assert conn.default_channel.client.llen("engine.openai_compat") == 6
    redis.restart()  # the messages are lost; the rows still say queued, reservations held
    assert BudgetUsage.objects.get().reserved_usd > 0
    env = {**FAST_RECOVERY, "CELERY_BROKER_URL": redis.url, "REDIS_URL": redis.url}
    worker = start_worker(
        tmp_path,
        db_name=_test_db_name(),
        queues="default,engine.openai_compat",
        env=env,
        beat=True,
        name="requeue",
    )
    try:
        wait_for(lambda: all(Query.objects.get(pk=q.pk).is_finished for q in queries), 60)
    finally:
        worker.stop()
        redis.kill()
    assert {Query.objects.get(pk=q.pk).status for q in queries} == {"done"}, [
        Query.objects.get(pk=q.pk).error for q in queries
    ]
    _assert_ledger_exact(queries)


def test_database_connections_dropped_under_load_lose_no_query(
    slow_upstream: str, tmp_path: Path
) -> None:
    """The server drops every connection of the worker (as a Postgres restart does) again
    and again while queries run and wait: each query still finishes, none stays queued or
    running, and the ledger is exact."""
    redis = start_redis(tmp_path)
    configuration = _configuration(slow_upstream, name="dbdrop", n=2, max_tokens=4)
    team = Team.objects.create(name="dbdrop")
    BudgetPolicy.objects.create(team=team, name="hard", limit_usd=Decimal("1"))
    env = {**FAST_RECOVERY, "CELERY_BROKER_URL": redis.url, "REDIS_URL": redis.url}
    worker = start_worker(
        tmp_path,
        db_name=_test_db_name(),
        queues="default,engine.openai_compat",
        env=env,
        beat=True,
        name="dbdrop",
    )
    queries = []
    try:
        with app.connection_for_write(redis.url) as conn:
            for _ in range(6):
                query = query_create(
                    team=team,
                    prompt=PROMPT,
                    constraints=RequestConstraints(configuration=configuration.slug),
                    defer_dispatch=True,
                )
                app.send_task(
                    "costpass.query_execute",
                    args=[str(query.pk)],
                    queue="engine.openai_compat",
                    connection=conn,
                    ignore_result=True,
                )
                queries.append(query)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            time.sleep(0.4)
        wait_for(lambda: all(Query.objects.get(pk=q.pk).is_finished for q in queries), 90)
    finally:
        worker.stop()
        redis.kill()
    statuses = [Query.objects.get(pk=q.pk).status for q in queries]
    assert statuses == ["done"] * 6, statuses
    _assert_ledger_exact(queries)


def test_sigkilled_web_process_mid_stream_fails_and_bills_its_inline_query(
    slow_upstream: str, tmp_path: Path
) -> None:
    """The gunicorn worker serving an inline chat stream (one sample on a remote endpoint,
    run by the web process itself) is SIGKILLed mid-answer: within the stale window the query
    is failed, the sample it was streaming billed at its reservation share (nothing durable
    recorded its tokens), and the reservation released; not left running for the reaper's
    old 16 minutes with its tokens unbilled."""
    from tests.routerapp.api.conftest import start_gunicorn, stop

    configuration = _configuration(slow_upstream, name="webkill", n=1, max_tokens=16)
    team = Team.objects.create(name="webkill")
    BudgetPolicy.objects.create(team=team, name="hard", limit_usd=Decimal("1"))
    from routerapp.services.apikeys import api_key_create

    _, raw = api_key_create(team=team, name="k")
    web = start_gunicorn(tmp_path, FAST_RECOVERY, workers=1)
    try:
        body = {
            "model": configuration.slug,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{web.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {raw}"},
            timeout=30,
        ) as response:
            query_id = response.headers["x-costpass-query-id"]
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    break  # the first token is out: the sample is mid-way
            (child,) = process_children(web.proc.pid)
            os.kill(child, signal.SIGKILL)
        assert Query.objects.get(pk=query_id).status == "running"
        with _fast_recovery_settings():

            def finished() -> bool:
                queries_reap_stale()
                return Query.objects.get(pk=query_id).is_finished

            wait_for(finished, timeout=30, interval=0.5)
    finally:
        stop(web.proc)
    query = Query.objects.get(pk=query_id)
    assert query.status == "failed" and "stopped without finishing" in query.error
    (sample,) = Sample.objects.filter(query=query)
    assert sample.count_method == "reservation_share" and sample.completion_tokens == 16
    assert query.cost_usd == 16 * UNIT > 0
    _assert_ledger_exact([query])
