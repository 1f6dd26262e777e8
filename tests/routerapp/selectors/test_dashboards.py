"""Dashboard selectors read the daily rollup; on a small random log they must give the same
figures as aggregates computed directly from the log (exact money, counts; latency percentiles
within half a histogram bucket)."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from decimal import Decimal

import pytest

from routerapp.models import ApiKey, BudgetPolicy, Query, QueryDailyRollup, RouterVersion
from routerapp.selectors import dashboards as D
from routerapp.services.rollups import rollup_rebuild
from tests.factories import (
    ConfigurationFactory,
    EndpointFactory,
    StrategyConfigFactory,
    TeamFactory,
)

pytestmark = pytest.mark.django_db

DAY0 = dt.date(2026, 3, 28)  # spans a month boundary: monthly budget windows reset on Apr 1
DAYS = 6


def _key(team, name):  # type: ignore[no-untyped-def]
    return ApiKey.objects.create(
        team=team, name=name, prefix=f"p{team.pk}{name}", hashed_key=f"h{team.pk}{name}"
    )


@pytest.fixture
def log():  # type: ignore[no-untyped-def]
    """Two teams, three configurations (two models, two strategies), tasks, keys, every kind
    and status, over six days."""
    rng = random.Random(7)
    small = EndpointFactory(name="small")
    big = EndpointFactory(name="big", input_usd_per_mtok=Decimal("1"))
    greedy = StrategyConfigFactory(name="greedy", strategy="single")
    vote = StrategyConfigFactory(name="vote5", strategy="majority_vote", params={"k": 5})
    configs = [
        ConfigurationFactory(endpoint=small, strategy=greedy),
        ConfigurationFactory(endpoint=small, strategy=vote),
        ConfigurationFactory(endpoint=big, strategy=greedy),
    ]
    team, other = TeamFactory(name="alpha"), TeamFactory(name="beta")
    keys = [_key(team, "k1"), _key(team, "k2"), None]
    version = RouterVersion.objects.create(name="v1", learner="x", status="ready")
    statuses = ["done"] * 8 + ["failed", "cancelled", "queued", "running"]
    created = []
    for i in range(420):
        t = team if i % 7 else other
        q = Query(
            team=t,
            api_key=rng.choice(keys) if t == team else None,
            source=rng.choice(["api", "ui", "benchmark", "chat"]),
            prompt=f"p{i}",
            task=rng.choice(["", "math", "mcq"]),
            status=rng.choice(statuses),
            configuration=rng.choice(configs),
            router_version=version if rng.random() < 0.5 else None,
            cost_usd=Decimal(rng.randint(0, 10**7)) / Decimal(10**12) * rng.choice([1, 10, 100]),
            prompt_tokens=rng.randint(5, 300),
            completion_tokens=rng.randint(0, 900),
            samples_done=rng.randint(0, 5),
            latency_ms=rng.choice([None, 0, 1, rng.randint(2, 50), rng.randint(50, 90_000)]),
            graded_correct=rng.choice([None, True, False, True]),
        )
        created.append(
            (
                q,
                dt.datetime.combine(
                    DAY0 + dt.timedelta(days=rng.randrange(DAYS)),
                    dt.time(rng.randrange(24), rng.randrange(60)),
                    tzinfo=dt.UTC,
                ),
            )
        )
    Query.objects.bulk_create([q for q, _ in created])
    for q, when in created:
        Query.objects.filter(pk=q.pk).update(created_at=when)
    rollup_rebuild()
    return {"team": team, "other": other, "configs": configs, "keys": keys}


def _filters(**kw) -> D.DashboardFilters:  # type: ignore[no-untyped-def]
    return D.DashboardFilters(start=DAY0, end=DAY0 + dt.timedelta(days=DAYS - 1), **kw)


def _direct(team, f: D.DashboardFilters):  # type: ignore[no-untyped-def]
    """The finished queries a dashboard with filters `f` covers, straight from the log."""
    qs = Query.objects.filter(
        team=team,
        status__in=Query.FINISHED,
        created_at__gte=dt.datetime.combine(f.start, dt.time.min, tzinfo=dt.UTC),
        created_at__lt=dt.datetime.combine(
            f.end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC
        ),
    ).select_related("configuration__endpoint", "configuration__strategy")
    if f.model:
        qs = qs.filter(configuration__endpoint__name=f.model)
    if f.strategy:
        qs = qs.filter(configuration__strategy__strategy=f.strategy)
    if f.configuration:
        qs = qs.filter(configuration__slug=f.configuration)
    if f.task:
        qs = qs.filter(task="" if f.task == D.NO_TASK else f.task)
    if f.api_key is not None:
        qs = qs.filter(api_key_id=f.api_key)
    if f.traffic == D.Traffic.LIVE:
        qs = qs.exclude(source="benchmark")
    elif f.traffic == D.Traffic.BENCHMARK:
        qs = qs.filter(source="benchmark")
    return list(qs)


def _nearest_rank(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[max(1, math.ceil(q * len(values))) - 1]


FILTER_CASES = [
    {},
    {"model": "small"},
    {"strategy": "majority_vote"},
    {"configuration": "big/greedy"},
    {"task": "math"},
    {"task": D.NO_TASK},
    {"traffic": D.Traffic.LIVE},
    {"traffic": D.Traffic.BENCHMARK, "task": "mcq"},
]


@pytest.mark.parametrize("kw", FILTER_CASES)
def test_summary_and_cost_of_pass_match_the_log(log, kw) -> None:  # type: ignore[no-untyped-def]
    f = _filters(**kw)
    rows = _direct(log["team"], f)
    assert rows, "the fixture must cover every filter case"
    summary = D.dashboard_summary(team=log["team"], filters=f)
    assert summary["queries"] == len(rows)
    assert summary["cost_usd"] == sum((q.cost_usd for q in rows), Decimal(0))
    graded = [q for q in rows if q.graded_correct is not None]
    assert summary["graded"] == len(graded)
    assert summary["correct"] == sum(q.graded_correct for q in graded)

    cop = D.cost_of_pass_by_configuration(team=log["team"], filters=f)
    cells = defaultdict(list)
    for q in graded:
        cells[(q.configuration.slug, q.task or "(none)")].append(q)
    got = {(c["configuration"], c["task"]): c for c in cop["cells"]}
    assert set(got) == set(cells)
    for k, qs in cells.items():
        total = sum((q.cost_usd for q in qs), Decimal(0))
        correct = sum(q.graded_correct for q in qs)
        assert got[k]["graded"] == len(qs) and got[k]["correct"] == correct
        assert got[k]["total_cost_usd"] == total
        assert got[k]["cost_of_pass"] == (total / correct if correct else None)
    by_config = {r["configuration"]: r for r in cop["configurations"]}
    for slug in {k[0] for k in cells}:
        qs = [q for q in graded if q.configuration.slug == slug]
        correct = sum(q.graded_correct for q in qs)
        total = sum((q.cost_usd for q in qs), Decimal(0))
        assert by_config[slug]["accuracy"] == pytest.approx(correct / len(qs))
        assert by_config[slug]["mean_cost_usd"] == total / len(qs)


@pytest.mark.parametrize("kw", FILTER_CASES[:5])
def test_latency_tokens_and_mix_match_the_log(log, kw) -> None:  # type: ignore[no-untyped-def]
    f = _filters(**kw)
    rows = _direct(log["team"], f)
    lat = {r["configuration"]: r for r in D.latency_by_configuration(team=log["team"], filters=f)}
    by_config = defaultdict(list)
    for q in rows:
        if q.latency_ms is not None:
            by_config[q.configuration.slug].append(q.latency_ms)
    assert {k for k in lat if k != "all"} == set(by_config)
    for slug, values in by_config.items():
        assert lat[slug]["n"] == len(values)
        assert lat[slug]["mean_ms"] == pytest.approx(sum(values) / len(values))
        for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            exact = _nearest_rank(values, q)
            # Within half a bucket (2^(1/16) - 1 = 4.4 %), plus integer rounding.
            assert abs(lat[slug][key] - exact) <= 0.0443 * exact + 1, (slug, key, exact)

    tokens = {r["configuration"]: r for r in D.tokens_by_configuration(team=log["team"], filters=f)}
    for slug in {q.configuration.slug for q in rows}:
        qs = [q for q in rows if q.configuration.slug == slug]
        assert tokens[slug]["queries"] == len(qs)
        assert tokens[slug]["mean_completion_tokens"] == pytest.approx(
            sum(q.completion_tokens for q in qs) / len(qs)
        )

    mix = D.decision_mix(team=log["team"], filters=f)
    live = [q for q in rows if q.source != "benchmark"]
    assert mix["total"] == len(live)
    assert mix["routed_total"] == sum(q.router_version_id is not None for q in live)
    for slug, counts in mix["series"].items():
        for day, n in zip(mix["days"], counts, strict=True):
            assert n == sum(
                1 for q in live if q.configuration.slug == slug and q.created_at.date() == day
            )


def test_api_key_filter_and_team_scoping(log) -> None:  # type: ignore[no-untyped-def]
    key = log["keys"][0]
    f = _filters(api_key=key.pk)
    rows = _direct(log["team"], f)
    assert rows and all(q.api_key_id == key.pk for q in rows)
    assert D.dashboard_summary(team=log["team"], filters=f)["queries"] == len(rows)
    # The other team sees only its own queries.
    other = D.dashboard_summary(team=log["other"], filters=_filters())
    assert other["queries"] == len(_direct(log["other"], _filters()))
    assert other["queries"] < D.dashboard_summary(team=log["team"], filters=_filters())["queries"]


def test_spend_against_budgets_resets_each_window(log) -> None:  # type: ignore[no-untyped-def]
    team, key = log["team"], log["keys"][1]
    BudgetPolicy.objects.create(
        team=team, name="monthly", period="month", limit_usd=Decimal("0.01")
    )
    BudgetPolicy.objects.create(
        team=team, name="key daily", period="day", limit_usd=Decimal("0.001"), api_key=key
    )
    # From Mar 30: the monthly window started before the period (Mar 28 and 29 count).
    f = D.DashboardFilters(
        start=DAY0 + dt.timedelta(days=2), end=DAY0 + dt.timedelta(days=DAYS - 1)
    )
    data = D.spend_over_time(team=team, filters=f)
    everything = _direct(team, D.DashboardFilters(start=DAY0, end=f.end))
    assert len(data["days"]) == DAYS - 2
    for day, spent in zip(data["days"], data["spend"], strict=True):
        assert spent == sum(
            (q.cost_usd for q in everything if q.created_at.date() == day), Decimal(0)
        )
    monthly = next(b for b in data["budgets"] if b["name"] == "monthly")
    daily = next(b for b in data["budgets"] if b["name"] == "key daily")
    assert daily["scope"] == "key k2"
    for day, m_spent, d_spent in zip(data["days"], monthly["spent"], daily["spent"], strict=True):
        window = day.replace(day=1)
        assert m_spent == sum(
            (q.cost_usd for q in everything if window <= q.created_at.date() <= day), Decimal(0)
        )
        assert d_spent == sum(
            (
                q.cost_usd
                for q in everything
                if q.created_at.date() == day and q.api_key_id == key.pk
            ),
            Decimal(0),
        )
    apr1 = data["days"].index(dt.date(2026, 4, 1))
    assert monthly["spent"][apr1] == data["spend"][apr1]


def test_frontier_router_point_and_evaluation(log) -> None:  # type: ignore[no-untyped-def]
    RouterVersion.objects.filter(name="v1").update(
        is_active=True,
        evaluation={
            "policies": {
                "router": {"accuracy": 0.7, "mean_cost": 1e-5, "cop": 1.4e-5},
                "oracle_min_cop": {"accuracy": 0.9, "mean_cost": 5e-6, "cop": 5.5e-6},
            }
        },
    )
    f = _filters()
    data = D.accuracy_vs_cost(team=log["team"], filters=f)
    pts = {p["configuration"]: p for p in data["points"]}
    assert set(data["frontier"]) <= set(pts) and data["frontier"]
    for name in data["frontier"]:  # nothing on the frontier is dominated
        p = pts[name]
        assert not any(
            o["mean_cost_usd"] <= p["mean_cost_usd"]
            and o["accuracy"] >= p["accuracy"]
            and (o["mean_cost_usd"] < p["mean_cost_usd"] or o["accuracy"] > p["accuracy"])
            for o in pts.values()
        )
    routed = [
        q
        for q in _direct(log["team"], f)
        if q.router_version_id and q.source != "benchmark" and q.graded_correct is not None
    ]
    assert data["router_live"]["graded"] == len(routed)
    assert data["router_live"]["correct"] == sum(q.graded_correct for q in routed)
    assert data["evaluation"]["points"]["oracle_min_cop"]["accuracy"] == 0.9


def test_pareto_frontier() -> None:
    pts = [("a", 1.0, 0.5), ("b", 2.0, 0.4), ("c", 2.0, 0.8), ("d", 0.5, 0.2), ("e", 3.0, 0.8)]
    assert D.pareto_frontier(pts) == ["d", "a", "c"]


def test_fieller_interval_with_constant_cost_is_cost_over_accuracy_interval() -> None:
    # Constant cost c: s_cc = s_cy = 0, so the interval is c / (p +- z se(p)).
    n, correct, c = 50, 30, 0.002
    p = correct / n
    se = math.sqrt(p * (1 - p) / (n - 1))
    lo, hi = D.ratio_ci(n=n, sum_c=c * n, sum_c2=c * c * n, sum_y=correct, sum_cy=c * correct)
    assert lo == pytest.approx(c / (p + D.Z95 * se))
    assert hi == pytest.approx(c / (p - D.Z95 * se))
    assert lo < c / p < hi


def test_fieller_interval_is_unbounded_when_accuracy_is_not_above_zero() -> None:
    lo, hi = D.ratio_ci(n=10, sum_c=0.01, sum_c2=0.00001, sum_y=1, sum_cy=0.001)
    assert hi == math.inf and 0 <= lo <= 0.01
    assert D.ratio_ci(n=1, sum_c=0.01, sum_c2=0.0001, sum_y=1, sum_cy=0.01) is None


def test_empty_team_gives_empty_figures() -> None:
    team = TeamFactory(name="empty")
    f = _filters()
    assert D.dashboard_summary(team=team, filters=f)["queries"] == 0
    assert D.cost_of_pass_by_configuration(team=team, filters=f) == {
        "configurations": [],
        "cells": [],
    }
    assert D.latency_by_configuration(team=team, filters=f) == []
    assert D.decision_mix(team=team, filters=f)["total"] == 0
    assert QueryDailyRollup.objects.filter(team=team).count() == 0
