"""The daily rollup: recomputing a query's group (what the worker does when a query finishes or
is graded) gives the same rows as a rebuild from the log, any number of times, in any order."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from routerapp.models import Query, QueryDailyConfigRollup, QueryDailyRollup
from routerapp.services import rollups as R
from tests.factories import ConfigurationFactory, StrategyConfigFactory, TeamFactory

pytestmark = pytest.mark.django_db

FIELDS = [f for f in R.ROLLUP_FIELDS if f != "graded_cost_sq"]


def _snapshot() -> dict:
    out = {}
    for r in QueryDailyRollup.objects.all():
        key = (r.day, r.team_id, r.configuration_id, r.task, r.api_key_id, r.kind)
        assert key not in out, "one row per group"
        out[key] = r
    for r in QueryDailyConfigRollup.objects.all():
        key = (r.day, r.team_id, r.configuration_id, "*", "*", r.kind)
        assert key not in out, "one row per group"
        out[key] = r
    return out


def _assert_coarse_is_sum_of_fine(rows: dict) -> None:
    fine = [r for k, r in rows.items() if k[3] != "*"]
    coarse = {k: r for k, r in rows.items() if k[3] == "*"}
    assert len(coarse) == len({(r.day, r.team_id, r.configuration_id, r.kind) for r in fine})
    for (day, team, config, _, _, kind), c in coarse.items():
        parts = [
            r for r in fine
            if (r.day, r.team_id, r.configuration_id, r.kind) == (day, team, config, kind)
        ]  # fmt: skip
        assert c.queries == sum(r.queries for r in parts)
        assert c.cost_usd == sum((r.cost_usd for r in parts), Decimal(0))
        assert c.correct == sum(r.correct for r in parts)
        hist: dict[str, int] = {}
        for r in parts:
            for k, v in r.latency_hist.items():
                hist[k] = hist.get(k, 0) + v
        assert c.latency_hist == hist


def _make_log(n: int = 150) -> list[Query]:
    rng = random.Random(3)
    team = TeamFactory(name="roll")
    configs = [
        ConfigurationFactory(),
        ConfigurationFactory(strategy=StrategyConfigFactory(name="vote", strategy="majority_vote")),
    ]
    queries = []
    for i in range(n):
        q = Query.objects.create(
            team=team,
            prompt=f"q{i}",
            source=rng.choice(["api", "benchmark", "ui"]),
            task=rng.choice(["", "a"]),
            status=rng.choice(["done", "done", "failed", "cancelled", "queued"]),
            configuration=rng.choice(configs),
            cost_usd=Decimal(rng.randint(0, 999_999)) / Decimal(10**12),
            latency_ms=rng.randint(0, 20_000),
            graded_correct=rng.choice([None, True, False]),
        )
        when = dt.datetime(2026, 5, 1, tzinfo=dt.UTC) + dt.timedelta(hours=rng.randrange(72))
        Query.objects.filter(pk=q.pk).update(created_at=when)
        queries.append(q)
    return queries


def test_refreshing_each_query_equals_a_rebuild_and_is_idempotent() -> None:
    queries = _make_log()
    R.rollup_rebuild()
    rebuilt = _snapshot()
    assert rebuilt
    _assert_coarse_is_sum_of_fine(rebuilt)
    QueryDailyRollup.objects.all().delete()
    QueryDailyConfigRollup.objects.all().delete()
    order = list(queries) * 2
    random.Random(1).shuffle(order)
    for q in order:
        R.rollup_refresh_for_query(query_id=q.pk)
    refreshed = _snapshot()
    assert set(refreshed) == set(rebuilt)
    for key, row in rebuilt.items():
        for f in FIELDS:
            assert getattr(refreshed[key], f) == getattr(row, f), (key, f)
        assert refreshed[key].graded_cost_sq == pytest.approx(row.graded_cost_sq, rel=1e-12)
    # Totals equal the log's finished queries exactly.
    finished = [Query.objects.get(pk=q.pk) for q in queries]
    finished = [q for q in finished if q.status in Query.FINISHED]
    fine = [r for k, r in refreshed.items() if k[3] != "*"]
    assert sum(r.queries for r in fine) == len(finished)
    assert sum((r.cost_usd for r in fine), Decimal(0)) == sum(
        (q.cost_usd for q in finished), Decimal(0)
    )


def test_a_group_that_empties_loses_its_row() -> None:
    q = _make_log(1)[0]
    Query.objects.filter(pk=q.pk).update(status="done")
    assert R.rollup_refresh_for_query(query_id=q.pk) is not None
    Query.objects.filter(pk=q.pk).update(status="running")
    assert QueryDailyConfigRollup.objects.get().queries == 1
    assert R.rollup_refresh_for_query(query_id=q.pk) is None
    assert not QueryDailyRollup.objects.exists()
    assert not QueryDailyConfigRollup.objects.exists()


def test_query_finish_refreshes_the_rollup(django_capture_on_commit_callbacks, settings) -> None:  # type: ignore[no-untyped-def]
    """execution._finish (via query_fail here) refreshes after commit (synchronous mode)."""
    from routerapp.services.execution import query_fail

    settings.ROLLUP_DEBOUNCE_S = 0

    q = Query.objects.create(
        team=TeamFactory(name="hook"),
        prompt="x",
        configuration=ConfigurationFactory(),
        status="running",
        task="t",
    )
    with django_capture_on_commit_callbacks(execute=True):
        query_fail(query_id=str(q.pk), error="boom")
    row = QueryDailyRollup.objects.get(team=q.team)
    assert (row.queries, row.failed, row.task, row.kind) == (1, 1, "t", "direct")
    assert row.latency_n == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_refreshes_are_debounced_through_the_worker(celery_worker_process, settings) -> None:  # type: ignore[no-untyped-def]
    """With a debounce window, finishing queries only schedules one refresh per group on the
    default queue (nothing is re-read in the finishing process); the worker then brings the
    row up to date with every query of the window."""
    from django.core.cache import cache

    from routerapp.services.execution import query_fail
    from tests.conftest import wait_for

    settings.ROLLUP_DEBOUNCE_S = 1.0
    cache.clear()
    team = TeamFactory(name="debounce")
    config = ConfigurationFactory()
    queries = [
        Query.objects.create(
            team=team, prompt="x", configuration=config, status="running", task="t"
        )
        for _ in range(3)
    ]
    for q in queries:
        query_fail(query_id=str(q.pk), error="boom")
    assert not QueryDailyRollup.objects.filter(team=team).exists()  # not refreshed inline
    row = wait_for(
        lambda: QueryDailyRollup.objects.filter(team=team, queries=3).first(), timeout=60
    )
    assert row.failed == 3


def test_latency_buckets_and_quantiles() -> None:
    assert R.latency_bucket(0) == 0 and R.latency_bucket(1) == 1
    previous = 0
    for ms in range(0, 200_000, 7):
        b = R.latency_bucket(ms)
        assert b >= previous
        previous = b
        assert R.BOUNDS[b] <= ms < R.BOUNDS[b + 1]
        assert abs(R.bucket_value(b) - ms) <= 0.0443 * ms + 1
    values = list(range(1, 1001))
    hist: dict[int, int] = {}
    for v in values:
        hist[R.latency_bucket(v)] = hist.get(R.latency_bucket(v), 0) + 1
    assert abs(R.latency_quantile(hist, 0.5) - 500) <= 23
    assert abs(R.latency_quantile(hist, 0.99) - 990) <= 44
    assert R.latency_quantile({}, 0.5) is None
