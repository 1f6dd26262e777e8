"""Plotly figures for the dashboards, built from selector output by pure functions.

Each builder returns a JSON-ready figure dict ({"data": [...], "layout": {...}}) that the page
hands to the vendored plotly.js; no plotly Python objects, so building one costs microseconds
and the functions can be tested on plain data. Colours are the Okabe-Ito palette (distinct for
the common colour-vision deficiencies); every figure also has a table view in the template.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

PALETTE = [
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#8C6D31",  # brown (beyond Okabe-Ito, still dark enough on white)
]
INK = "#1f2933"
GRID = "#e4e7eb"

Figure = dict[str, Any]


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _f(x: Decimal | float | int | None) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _layout(*, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "font": {
            "family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
            "size": 13,
            "color": INK,
        },
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "margin": {"l": 70, "r": 20, "t": 30, "b": 60},
        "legend": {"orientation": "h", "y": 1.12, "x": 0},
        "xaxis": {"title": {"text": x_title}, "gridcolor": GRID, "zeroline": False},
        "yaxis": {"title": {"text": y_title}, "gridcolor": GRID, "zeroline": False},
        "hoverlabel": {"namelength": -1},
        "height": 360,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


def _days(days: list[Any]) -> list[str]:
    return [d.isoformat() for d in days]


def spend_figure(data: dict[str, Any]) -> Figure:
    """Daily spend as bars; per budget its period-to-date spend (line) and limit (dashed)."""
    x = _days(data["days"])
    traces: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": "Daily spend",
            "x": x,
            "y": [_f(v) for v in data["spend"]],
            "marker": {"color": "#9aa5b1"},
            "hovertemplate": "%{x}: $%{y:.6g}<extra>daily spend</extra>",
        }
    ]
    for i, b in enumerate(data["budgets"]):
        c = colour(i)
        period = "day" if b["period"] == "day" else "month"
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{b['name']}: spent this {period}",
                "x": x,
                "y": [_f(v) for v in b["spent"]],
                "line": {"color": c, "width": 2},
                "marker": {"size": 4},
                "hovertemplate": "%{x}: $%{y:.6g}<extra>" + b["name"] + "</extra>",
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{b['name']}: limit ${_f(b['limit_usd']):g}/{period}",
                "x": x,
                "y": [_f(b["limit_usd"])] * len(x),
                "line": {"color": c, "width": 2, "dash": "dash"},
                "hovertemplate": "limit $%{y:.6g}<extra>" + b["name"] + "</extra>",
            }
        )
    return {
        "data": traces,
        "layout": _layout(x_title="day (UTC)", y_title="USD", barmode="overlay"),
    }


def cost_of_pass_figure(data: dict[str, Any]) -> Figure:
    """Cost-of-pass per configuration with its 95 % interval (arrow-less error bars); bars whose
    interval is unbounded above are drawn hatched, configurations with nothing correct are
    listed in the table only."""
    rows = [r for r in data["configurations"] if r["cost_of_pass"] is not None]
    x = [r["configuration"] for r in rows]
    y = [_f(r["cost_of_pass"]) for r in rows]
    plus = [
        (_f(r["ci_high"]) - v) if r["ci_high"] is not None and v is not None else 0
        for r, v in zip(rows, y, strict=True)
    ]
    minus = [
        (v - _f(r["ci_low"])) if r["ci_low"] is not None and v is not None else 0
        for r, v in zip(rows, y, strict=True)
    ]
    text = [f"n={r['graded']}, {r['correct']} correct" for r in rows]
    trace = {
        "type": "bar",
        "name": "cost-of-pass",
        "x": x,
        "y": y,
        "text": text,
        "textposition": "inside",
        "insidetextanchor": "start",
        "marker": {
            "color": [colour(i) for i in range(len(rows))],
            "pattern": {"shape": ["/" if r["ci_unbounded"] else "" for r in rows]},
        },
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": plus,
            "arrayminus": minus,
            "color": INK,
        },
        "hovertemplate": "%{x}<br>$%{y:.6g} per correct answer<br>%{text}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            x_title="configuration", y_title="USD per correct answer", showlegend=False
        ),
    }


def cost_of_pass_heatmap(data: dict[str, Any]) -> Figure | None:
    """Cost-of-pass per (configuration, task) as a heatmap; None with fewer than two tasks."""
    cells = data["cells"]
    tasks = sorted({c["task"] for c in cells})
    configs = sorted({c["configuration"] for c in cells})
    if len(tasks) < 2:
        return None
    lookup = {(c["configuration"], c["task"]): c for c in cells}
    z, text = [], []
    for t in tasks:
        zr, tr = [], []
        for cfg in configs:
            c = lookup.get((cfg, t))
            zr.append(_f(c["cost_of_pass"]) if c else None)
            if c is None:
                tr.append("no graded queries")
            elif c["cost_of_pass"] is None:
                tr.append(f"none correct of {c['graded']}")
            else:
                tr.append(f"${float(c['cost_of_pass']):.3g} (n={c['graded']})")
        z.append(zr)
        text.append(tr)
    trace = {
        "type": "heatmap",
        "x": configs,
        "y": tasks,
        "z": z,
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": "Viridis",
        "reversescale": True,
        "colorbar": {"title": {"text": "USD / correct"}},
        "hovertemplate": "%{x} on %{y}: %{text}<extra></extra>",
        "hoverongaps": False,
    }
    return {
        "data": [trace],
        "layout": _layout(
            x_title="configuration", y_title="task", height=max(260, 40 * len(tasks) + 120)
        ),
    }


def frontier_figure(data: dict[str, Any]) -> Figure:
    """Accuracy vs mean cost per query: a point per configuration, the Pareto frontier through
    the non-dominated ones, the router's live point and the evaluated router / oracle points."""
    points = data["points"]
    by_name = {p["configuration"]: p for p in points}
    traces: list[dict[str, Any]] = []
    front = [by_name[n] for n in data["frontier"] if n in by_name]
    if front:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Pareto frontier",
                "x": [_f(p["mean_cost_usd"]) for p in front],
                "y": [p["accuracy"] for p in front],
                "line": {"color": "#9aa5b1", "width": 2, "dash": "dot", "shape": "hv"},
                "hoverinfo": "skip",
            }
        )
    for i, p in enumerate(points):
        on = p["configuration"] in data["frontier"]
        traces.append(
            {
                "type": "scatter",
                "mode": "markers+text",
                "name": p["configuration"],
                "x": [_f(p["mean_cost_usd"])],
                "y": [p["accuracy"]],
                "text": [p["configuration"]],
                "textposition": "top center",
                "marker": {
                    "size": 12 if on else 9,
                    "color": colour(i),
                    "line": {"color": INK, "width": 2 if on else 0},
                },
                "hovertemplate": (
                    f"{p['configuration']}<br>accuracy %{{y:.1%}}<br>$%{{x:.6g}} per query"
                    f"<br>n={p['graded']}<extra></extra>"
                ),
                "showlegend": False,
            }
        )
    live = data.get("router_live")
    if live:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"router (live, n={live['graded']})",
                "x": [_f(live["mean_cost_usd"])],
                "y": [live["accuracy"]],
                "marker": {
                    "symbol": "star",
                    "size": 18,
                    "color": "#D55E00",
                    "line": {"color": INK, "width": 1},
                },
            }
        )
    evaluation = data.get("evaluation")
    if evaluation:
        symbols = {"router": "diamond", "oracle_min_cop": "x", "best_single": "square"}
        for key, p in evaluation["points"].items():
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"{p['label']} (evaluation of {evaluation['version']})",
                    "x": [p["mean_cost_usd"]],
                    "y": [p["accuracy"]],
                    "marker": {
                        "symbol": symbols.get(key, "circle-open"),
                        "size": 13,
                        "color": INK if key != "router" else "#CC79A7",
                    },
                }
            )
    xs = [x for t in traces for x in t["x"] if x]
    log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 20
    return {
        "data": traces,
        "layout": _layout(
            x_title="mean USD per query" + (" (log scale)" if log_x else ""),
            y_title="accuracy (graded queries)",
            xaxis={"type": "log" if log_x else "linear"},
            yaxis={"range": [-0.03, 1.05], "tickformat": ".0%"},
            height=420,
        ),
    }


def latency_figure(rows: list[dict[str, Any]]) -> Figure:
    """p50 / p95 / p99 latency per configuration as grouped bars (log scale when wide)."""
    rows = [r for r in rows if r["configuration"] != "all"]
    x = [r["configuration"] for r in rows]
    traces = []
    for i, (key, label) in enumerate((("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))):
        traces.append(
            {
                "type": "bar",
                "name": label,
                "x": x,
                "y": [r[key] for r in rows],
                "marker": {"color": PALETTE[[5, 0, 6][i]]},
                "hovertemplate": "%{x} " + label + ": %{y:,} ms<extra></extra>",
            }
        )
    ys = [r["p99_ms"] for r in rows if r["p99_ms"]] + [r["p50_ms"] for r in rows if r["p50_ms"]]
    log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 50
    return {
        "data": traces,
        "layout": _layout(
            x_title="configuration",
            y_title="latency, ms" + (" (log scale)" if log_y else ""),
            barmode="group",
            yaxis={"type": "log" if log_y else "linear"},
        ),
    }


def tokens_figure(rows: list[dict[str, Any]]) -> Figure:
    """Mean prompt and completion tokens per query, stacked, per configuration."""
    x = [r["configuration"] for r in rows]
    return {
        "data": [
            {
                "type": "bar",
                "name": "prompt tokens",
                "x": x,
                "y": [round(r["mean_prompt_tokens"], 1) for r in rows],
                "marker": {"color": PALETTE[5]},
            },
            {
                "type": "bar",
                "name": "completion tokens (all samples)",
                "x": x,
                "y": [round(r["mean_completion_tokens"], 1) for r in rows],
                "marker": {"color": PALETTE[0]},
            },
        ],
        "layout": _layout(
            x_title="configuration", y_title="tokens per query (mean)", barmode="stack"
        ),
    }


def decision_mix_figure(data: dict[str, Any]) -> Figure:
    """Live queries per day stacked by the configuration that served them."""
    x = _days(data["days"])
    traces = [
        {
            "type": "bar",
            "name": name,
            "x": x,
            "y": counts,
            "marker": {"color": colour(i)},
            "hovertemplate": "%{x}: %{y} queries<extra>" + name + "</extra>",
        }
        for i, (name, counts) in enumerate(data["series"].items())
    ]
    return {
        "data": traces,
        "layout": _layout(x_title="day (UTC)", y_title="queries", barmode="stack"),
    }


def evaluation_figure(evaluation: dict[str, Any]) -> Figure | None:
    """The cost-accuracy plane of a router version's evaluation: each policy (router, its
    baselines and oracles) as a point, with the upper hull of the baselines when present."""
    policies = evaluation.get("policies") if isinstance(evaluation, dict) else None
    if not isinstance(policies, dict) or not policies:
        return None
    traces: list[dict[str, Any]] = []
    for i, (name, p) in enumerate(sorted(policies.items())):
        if not isinstance(p, dict) or p.get("mean_cost") is None or p.get("accuracy") is None:
            continue
        is_router = name.startswith("router")
        traces.append(
            {
                "type": "scatter",
                "mode": "markers+text",
                "name": name,
                "x": [_f(p["mean_cost"])],
                "y": [_f(p["accuracy"])],
                "text": [name],
                "textposition": "top center",
                "marker": {
                    "size": 16 if is_router else 10,
                    "symbol": "star"
                    if is_router
                    else ("x" if name.startswith("oracle") else "circle"),
                    "color": "#D55E00" if is_router else colour(i),
                },
                "hovertemplate": name
                + "<br>accuracy %{y:.1%}<br>$%{x:.6g} per query<extra></extra>",
            }
        )
    singles = evaluation.get("singles")
    if isinstance(singles, list) and singles:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "single configurations",
                "x": [_f(s.get("mean_cost")) for s in singles],
                "y": [_f(s.get("accuracy")) for s in singles],
                "text": [s.get("config_id", "") for s in singles],
                "marker": {"size": 7, "color": "#9aa5b1"},
                "hovertemplate": "%{text}<br>accuracy %{y:.1%}<br>$%{x:.6g}<extra></extra>",
            }
        )
    if not traces:
        return None
    return {
        "data": traces,
        "layout": _layout(
            x_title="mean USD per query",
            y_title="accuracy",
            yaxis={"tickformat": ".0%"},
            showlegend=False,
            height=380,
        ),
    }
