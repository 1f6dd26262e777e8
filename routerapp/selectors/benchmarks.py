"""Reads of benchmark runs and their per-configuration results."""

from __future__ import annotations

import statistics
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet

from routerapp.errors import NotFound
from routerapp.models import BenchmarkRun, Query, Team


def benchmark_runs_for_team(*, team: Team) -> QuerySet[BenchmarkRun]:
    return BenchmarkRun.objects.filter(team=team).prefetch_related("configurations")


def benchmark_run_get_for_team(*, team: Team, run_id: int | str) -> BenchmarkRun:
    """Return the team's run; raise NotFound for another team's or an unknown id."""
    try:
        pk = int(run_id)
    except (TypeError, ValueError):
        raise NotFound(f"no benchmark run {run_id!r}") from None
    run = BenchmarkRun.objects.filter(team=team, pk=pk).first()
    if run is None:
        raise NotFound(f"no benchmark run {run_id!r}")
    return run


def benchmark_run_table(run: BenchmarkRun) -> list[dict[str, Any]]:
    """Return one row per configuration: graded queries, accuracy, mean cost, cost-of-pass
    (total USD / number correct; None when nothing was correct), p50 latency, mean tokens."""
    rows: dict[str, dict[str, Any]] = {}
    queries = run.queries.filter(status=Query.Status.DONE).values_list(
        "configuration__slug",
        "graded_correct",
        "cost_usd",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
    )
    for slug, correct, cost, latency, p_tok, c_tok in queries:
        row = rows.setdefault(
            slug,
            {
                "configuration": slug,
                "n": 0,
                "correct": 0,
                "cost": Decimal(0),
                "latencies": [],
                "tokens": 0,
            },
        )
        row["n"] += 1
        row["correct"] += int(bool(correct))
        row["cost"] += cost
        row["tokens"] += p_tok + c_tok
        if latency is not None:
            row["latencies"].append(latency)
    table = []
    for slug in sorted(rows):
        row = rows[slug]
        n, correct, cost = row["n"], row["correct"], row["cost"]
        table.append(
            {
                "configuration": slug,
                "n": n,
                "correct": correct,
                "accuracy": correct / n,
                "total_cost_usd": str(cost),
                "mean_cost_usd": str(cost / n),
                "cost_of_pass": None if correct == 0 else str(cost / correct),
                "p50_latency_ms": statistics.median(row["latencies"]) if row["latencies"] else None,
                "mean_tokens": row["tokens"] / n,
            }
        )
    return table
