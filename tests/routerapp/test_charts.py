"""Plotly figure builders: pure functions from selector output to figure dicts."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from routerapp import charts


def _row(name: str, cop: str | None, graded: int = 10, unbounded: bool = False) -> dict:
    return {
        "configuration": name,
        "graded": graded,
        "correct": 3,
        "cost_of_pass": None if cop is None else Decimal(cop),
        "ci_low": None if cop is None else Decimal(cop) / 2,
        "ci_high": None if cop is None or unbounded else Decimal(cop) * 2,
        "ci_unbounded": unbounded,
    }


def test_cost_of_pass_bars_are_sorted_cheapest_first_and_skip_infinite() -> None:
    fig = charts.cost_of_pass_figure(
        {"configurations": [_row("b", "0.02"), _row("a", "0.001"), _row("z", None)]}
    )
    bar = fig["data"][0]
    assert bar["y"] == ["a (n=10)", "b (n=10)"]
    assert bar["x"] == [0.001, 0.02]
    assert bar["error_x"]["array"] == [0.001, 0.02] and bar["error_x"]["arrayminus"] == [
        0.0005,
        0.01,
    ]
    json.dumps(fig)  # JSON-ready


def test_spend_figure_has_a_line_and_a_limit_per_budget() -> None:
    days = [dt.date(2026, 3, 30) + dt.timedelta(days=i) for i in range(3)]
    fig = charts.spend_figure(
        {
            "days": days,
            "spend": [Decimal("0.1"), Decimal(0), Decimal("0.3")],
            "total": Decimal("0.4"),
            "budgets": [
                {"name": "m", "period": "month", "limit_usd": Decimal(1), "spent": [Decimal("0.1"), Decimal("0.1"), Decimal("0.3")], "mode": "Soft", "scope": "whole team"},
            ],
        }
    )  # fmt: skip
    names = [t["name"] for t in fig["data"]]
    assert names == ["Daily spend (left axis)", "m: spent this month", "m: limit $1/month"]
    assert fig["data"][2]["y"] == [1.0, 1.0, 1.0]
    assert fig["layout"]["yaxis"]["range"][0] == 0
    json.dumps(fig)


def test_decision_mix_keeps_seven_configurations_and_sums_the_rest() -> None:
    days = [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]
    series = {f"c{i}": [i, i] for i in range(10)}
    fig = charts.decision_mix_figure({"days": days, "series": series})
    names = [t["name"] for t in fig["data"]]
    assert names[:7] == ["c9", "c8", "c7", "c6", "c5", "c4", "c3"]
    assert names[7] == "other configurations (3)" and fig["data"][7]["y"] == [3, 3]


def test_evaluation_figure_names_policies_and_handles_empty() -> None:
    assert charts.evaluation_figure({}) is None
    fig = charts.evaluation_figure(
        {"policies": {"router": {"accuracy": 0.5, "mean_cost": 1e-5}, "oracle_min_cop": {"accuracy": 0.8, "mean_cost": 5e-6}}}
    )  # fmt: skip
    assert fig is not None
    assert [t["name"] for t in fig["data"]] == ["router", "oracle: min cost-of-pass"]


def test_money_labels_never_use_scientific_notation() -> None:
    assert charts._money(3.55e-06) == "$0.00000355"
    assert charts._money(12.5) == "$12.50"


def test_online_curve_figure_draws_the_curve_against_best_single_and_static() -> None:
    from routerapp.charts import online_curve_figure

    evaluation = {
        "policies": {"router": {"gap_closed": 0.2}},
        "online_curve": {"points": [50, 100, 140], "gap_closed": [0.1, 0.45, None],
                         "best_single_config": "m/greedy"},
    }  # fmt: skip
    fig = online_curve_figure(evaluation)
    assert fig is not None
    curve, single, static = fig["data"]
    assert curve["x"] == [50, 100, 140] and curve["y"] == [0.1, 0.45, None]
    assert single["y"] == [0.0, 0.0] and "m/greedy" in single["name"]
    assert static["y"] == [0.2, 0.2]
    assert online_curve_figure({"policies": {}}) is None
    assert online_curve_figure({"online_curve": {"points": [5], "gap_closed": [None]}}) is None
