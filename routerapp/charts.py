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
        "margin": {"l": 70, "r": 20, "t": 20, "b": 50},
        # Below the plot, so a long legend never covers data.
        "legend": {"orientation": "h", "y": -0.18, "yanchor": "top", "x": 0},
        "xaxis": {
            "title": {"text": x_title},
            "gridcolor": GRID,
            "zeroline": False,
            "automargin": True,
        },
        "yaxis": {
            "title": {"text": y_title},
            "gridcolor": GRID,
            "zeroline": False,
            "automargin": True,
        },
        "hoverlabel": {"namelength": -1},
        "height": 360,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


# For tall charts: the legend sits above the plot, where the eye starts.
LEGEND_TOP = {"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0}
# A stack stays readable with this many colours; smaller shares are summed as "other".
MAX_STACK = 7


def _rows_height(n: int, per_row: int = 28) -> int:
    """Height of a horizontal bar chart with n categories: every label stays readable."""
    return max(260, per_row * n + 150)


def _log_axis(values: list[float], *, money: bool = False) -> dict[str, Any]:
    """A log axis when the values span more than ~1.5 decades, labelled at powers of ten."""
    vs = [v for v in values if v and v > 0]
    if not vs or max(vs) / min(vs) < 30:
        return {"type": "linear", "tickformat": "$.2~g" if money else ",~g"}
    return {"type": "log", "dtick": 1, "tickformat": "$.1~g" if money else ",~g"}


def _money(value: Any, digits: int = 3) -> str:
    """'$0.00000355': `digits` significant digits in plain notation (never 3.55e-06)."""
    v = float(value)
    if v == 0 or not math.isfinite(v):
        return "$0" if v == 0 else "∞"
    places = max(2, digits - 1 - math.floor(math.log10(abs(v))))
    return f"${v:,.{places}f}"


def _gap(hi: float | None, lo: float | None) -> float:
    """hi - lo for an error bar; 0 when either end is unknown."""
    return hi - lo if hi is not None and lo is not None else 0.0


def _top(values: list[Any]) -> float:
    """The top of a value axis that starts at exactly 0 (no float dust like 6e-18)."""
    vs = [float(v) for v in values if v is not None]
    top = max(vs, default=0.0)
    return top * 1.12 if top > 0 else 1.0


def _days(days: list[Any]) -> list[str]:
    return [d.isoformat() for d in days]


def spend_figure(data: dict[str, Any]) -> Figure:
    """Daily spend as bars; per budget its period-to-date spend (line) and limit (dashed)."""
    x = _days(data["days"])
    traces: list[dict[str, Any]] = [
        {
            "type": "bar",
            "name": "Daily spend (left axis)",
            "x": x,
            "y": [_f(v) for v in data["spend"]],
            "marker": {"color": "#c3cad3"},
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
                "yaxis": "y2",
                "line": {"color": c, "width": 2.5},
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
                "yaxis": "y2",
                "line": {"color": c, "width": 2, "dash": "dash"},
                "hovertemplate": "limit $%{y:.6g}<extra>" + b["name"] + "</extra>",
            }
        )
    return {
        "data": traces,
        "layout": _layout(
            x_title="",
            y_title="daily spend (bars)",
            barmode="overlay",
            yaxis={"tickformat": "$.2~g", "range": [0, _top(data["spend"])], "showgrid": False},
            yaxis2={
                "title": {"text": "spent in the budget's window (lines)"},
                "overlaying": "y",
                "side": "right",
                "gridcolor": GRID,
                "tickformat": "$.2~g",
                "range": [
                    0,
                    _top(
                        [v for b in data["budgets"] for v in b["spent"]]
                        + [b["limit_usd"] for b in data["budgets"]]
                    ),
                ],
                "automargin": True,
            },
            legend={"y": -0.16},
        ),
    }


def cost_of_pass_figure(data: dict[str, Any]) -> Figure:
    """Cost-of-pass per configuration, cheapest on top, with its 95 % interval (bars whose
    interval is unbounded above are hatched); configurations with nothing correct are in the
    table only."""
    rows = sorted(
        (r for r in data["configurations"] if r["cost_of_pass"] is not None),
        key=lambda r: float(r["cost_of_pass"]),
    )
    y = [f"{r['configuration']} (n={r['graded']})" for r in rows]
    x = [_f(r["cost_of_pass"]) for r in rows]
    plus = [_gap(_f(r["ci_high"]), v) for r, v in zip(rows, x, strict=True)]
    minus = [_gap(v, _f(r["ci_low"])) for r, v in zip(rows, x, strict=True)]
    text = [f"n={r['graded']}, {r['correct']} correct" for r in rows]
    trace = {
        "type": "bar",
        "orientation": "h",
        "name": "cost-of-pass",
        "x": x,
        "y": y,
        "text": text,
        "textposition": "none",
        "marker": {
            "color": [PALETTE[0]] * len(rows),
            "pattern": {"shape": ["/" if r["ci_unbounded"] else "" for r in rows]},
        },
        "error_x": {
            "type": "data",
            "symmetric": False,
            "array": plus,
            "arrayminus": minus,
            "color": INK,
            "thickness": 1.5,
        },
        "hovertemplate": "%{y}<br>$%{x:.6g} per correct answer<br>%{text}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            x_title="USD per correct answer, with its 95% interval",
            y_title="",
            showlegend=False,
            height=_rows_height(len(rows)),
            xaxis=_log_axis([v for v in x if v], money=True),
            yaxis={"autorange": "reversed"},
        ),
    }


def cost_of_pass_heatmap(data: dict[str, Any]) -> Figure | None:
    """Cost-of-pass per (configuration, task) as a heatmap; None with fewer than two tasks."""
    cells = data["cells"]
    tasks = sorted({c["task"] for c in cells})
    configs = sorted({c["configuration"] for c in cells})
    if len(tasks) < 2 or all(c["cost_of_pass"] is None for c in cells):
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
                tr.append(f"{_money(c['cost_of_pass'])} (n={c['graded']})")
        z.append(zr)
        text.append(tr)
    trace = {
        "type": "heatmap",
        "x": configs,
        "y": tasks,
        "z": z,
        "text": text,
        # Cell labels only while they fit; the hover and the table always have them.
        "texttemplate": "%{text}" if len(tasks) * len(configs) <= 40 else "",
        "colorscale": "Viridis",
        "reversescale": True,
        "colorbar": {"title": {"text": "USD / correct"}, "tickformat": "$.2~g"},
        "hovertemplate": "%{x} on %{y}: %{text}<extra></extra>",
        "hoverongaps": False,
    }
    return {
        "data": [trace],
        "layout": _layout(
            x_title="configuration",
            y_title="task",
            height=max(300, 32 * len(tasks) + 220),
            xaxis={"tickangle": -50},
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
                # Names on the frontier points only: the others are in the hover and the table.
                "mode": "markers+text" if on else "markers",
                "cliponaxis": False,
                "name": p["configuration"],
                "x": [_f(p["mean_cost_usd"])],
                "y": [p["accuracy"]],
                "text": [p["configuration"]],
                "textposition": "middle right",
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
    xaxis = _log_axis([x for t in traces for x in t["x"] if x], money=True)
    return {
        "data": traces,
        "layout": _layout(
            x_title="mean USD per query" + (" (log scale)" if xaxis["type"] == "log" else ""),
            y_title="accuracy (graded queries)",
            xaxis=xaxis,
            yaxis={"range": [-0.03, 1.05], "tickformat": ".0%"},
            height=480,
            margin={"r": 160},
        ),
    }


def latency_figure(rows: list[dict[str, Any]]) -> Figure:
    """p50 / p95 / p99 latency per configuration, fastest on top (log scale when wide)."""
    rows = sorted((r for r in rows if r["configuration"] != "all"), key=lambda r: r["p50_ms"] or 0)
    y = [r["configuration"] for r in rows]
    traces = []
    for key, label, c in (("p50_ms", "p50", 5), ("p95_ms", "p95", 0), ("p99_ms", "p99", 6)):
        traces.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": label,
                "x": [r[key] for r in rows],
                "y": y,
                "marker": {"color": PALETTE[c]},
                "hovertemplate": "%{y} " + label + ": %{x:,} ms<extra></extra>",
            }
        )
    xaxis = _log_axis([r[k] for r in rows for k in ("p50_ms", "p99_ms") if r[k]])
    return {
        "data": traces,
        "layout": _layout(
            x_title="latency, ms" + (" (log scale)" if xaxis["type"] == "log" else ""),
            y_title="",
            barmode="group",
            xaxis=xaxis,
            yaxis={"autorange": "reversed"},
            legend=LEGEND_TOP,
            margin={"t": 40},
            height=_rows_height(len(rows), per_row=40),
        ),
    }


def tokens_figure(rows: list[dict[str, Any]]) -> Figure:
    """Mean prompt and completion tokens per query, stacked, per configuration."""
    y = [r["configuration"] for r in rows]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "name": "prompt tokens (every sample reads the prompt)",
                "x": [round(r["mean_prompt_tokens"], 1) for r in rows],
                "y": y,
                "marker": {"color": PALETTE[5]},
            },
            {
                "type": "bar",
                "orientation": "h",
                "name": "completion tokens (all samples)",
                "x": [round(r["mean_completion_tokens"], 1) for r in rows],
                "y": y,
                "marker": {"color": PALETTE[0]},
            },
        ],
        "layout": _layout(
            x_title="tokens per query (mean)",
            y_title="",
            barmode="stack",
            yaxis={"autorange": "reversed"},
            legend=LEGEND_TOP,
            margin={"t": 40},
            height=_rows_height(len(rows)),
        ),
    }


def decision_mix_figure(data: dict[str, Any]) -> Figure:
    """Live queries per day stacked by the configuration that served them: the MAX_STACK
    busiest configurations, the rest summed as "other configurations" (the table has each)."""
    x = _days(data["days"])
    ranked = sorted(data["series"].items(), key=lambda kv: -sum(kv[1]))
    shown = ranked[:MAX_STACK]
    rest = ranked[MAX_STACK:]
    if rest:
        other = [sum(v[i] for _, v in rest) for i in range(len(x))]
        shown.append((f"other configurations ({len(rest)})", other))
    peak = max((sum(day) for day in zip(*(c for _, c in shown), strict=True)), default=0)
    traces = [
        {
            "type": "bar",
            "name": name,
            "x": x,
            "y": counts,
            "marker": {"color": colour(i) if not name.startswith("other ") else "#c3cad3"},
            "hovertemplate": "%{x}: %{y} queries<extra>" + name + "</extra>",
        }
        for i, (name, counts) in enumerate(shown)
    ]
    return {
        "data": traces,
        "layout": _layout(
            x_title="",
            y_title="live queries per day",
            barmode="stack",
            yaxis={"tickformat": ",d", "rangemode": "tozero", **({"dtick": 1} if peak < 8 else {})},
            # Legend top to bottom in the order of the stack, beside the plot.
            legend={
                "orientation": "v",
                "x": 1.02,
                "y": 1,
                "yanchor": "top",
                "traceorder": "reversed",
            },
            height=400,
        ),
    }


POLICY_NAMES = {
    "router": "router",
    "router_online": "router, replayed online",
    "best_single_cop": "best single (cost-of-pass)",
    "best_single_acc": "best single (accuracy)",
    "knn": "kNN router",
    "random": "random",
    "oracle_min_cop": "oracle: min cost-of-pass",
    "oracle_cheapest_correct": "oracle: cheapest correct",
}


def evaluation_figure(evaluation: dict[str, Any]) -> Figure | None:
    """The cost-accuracy plane of a router version's evaluation: each policy (the router, its
    baselines, the oracles) as a point named in the legend (points often coincide)."""
    policies = evaluation.get("policies") if isinstance(evaluation, dict) else None
    if not isinstance(policies, dict) or not policies:
        return None
    traces: list[dict[str, Any]] = []
    order = [k for k in POLICY_NAMES if k in policies] + sorted(
        k for k in policies if k not in POLICY_NAMES
    )
    for i, key in enumerate(order):
        p = policies[key]
        if not isinstance(p, dict) or p.get("mean_cost") is None or p.get("accuracy") is None:
            continue
        name = POLICY_NAMES.get(key, key.replace("_", " "))
        if p.get("config_id"):
            name = f"{name}: {p['config_id']}"
        is_router = key.startswith("router")
        symbol = "star" if is_router else ("x" if key.startswith("oracle") else "circle")
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": name,
                "x": [_f(p["mean_cost"])],
                "y": [_f(p["accuracy"])],
                "marker": {
                    "size": 18 if key == "router" else 12,
                    "symbol": symbol,
                    "color": "#D55E00" if key == "router" else colour(i),
                    "line": {"color": INK, "width": 1},
                    "opacity": 0.9,
                },
                "hovertemplate": name + "<br>accuracy %{y:.1%}<br>$%{x:.6g} per query"
                "<extra></extra>",
            }
        )
    if not traces:
        return None
    xaxis = _log_axis([x for t in traces for x in t["x"] if x], money=True)
    return {
        "data": traces,
        "layout": _layout(
            x_title="mean USD per query on the held-out prompts",
            y_title="accuracy",
            xaxis=xaxis,
            yaxis={"tickformat": ".0%", "range": [-0.03, 1.05]},
            legend={"orientation": "v", "x": 1.02, "y": 1, "yanchor": "top"},
            height=380,
        ),
    }


def spend_by_group_figure(rows: list[dict[str, Any]], label: str, empty_key: str) -> Figure:
    """Horizontal bars of spend per end user or tag (dearest on top), hover with queries."""
    rows = list(reversed(rows))
    names = [r["key"] or empty_key for r in rows]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "name": "USD",
                "x": [_f(r["cost_usd"]) for r in rows],
                "y": names,
                "customdata": [r["queries"] for r in rows],
                "marker": {"color": colour(0)},
                "hovertemplate": "%{y}: $%{x:.6g} over %{customdata} queries<extra></extra>",
            }
        ],
        "layout": _layout(
            x_title="USD in the period",
            y_title=label,
            height=_rows_height(len(rows)),
            xaxis={"tickformat": "$.2~g", "range": [0, _top([r["cost_usd"] for r in rows])]},
            yaxis={"type": "category"},
            showlegend=False,
        ),
    }


def online_curve_figure(evaluation: dict[str, Any]) -> Figure | None:
    """The adaptation curve of a router version (evaluation["online_curve"]): gap closed by the
    router learning online over the first k graded held-out queries, against 0 (the best single
    configuration) and the static router's gap closed on all of them."""
    curve = evaluation.get("online_curve") if isinstance(evaluation, dict) else None
    if not isinstance(curve, dict) or not curve.get("points"):
        return None
    xs = [int(k) for k in curve["points"]]
    ys = [_f(v) for v in curve.get("gap_closed", [])]
    if not any(y is not None for y in ys):
        return None
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "router learning online",
            "x": xs,
            "y": ys,
            "line": {"color": "#D55E00", "width": 2},
            "marker": {"size": 8},
            "hovertemplate": "after %{x} graded queries<br>gap closed %{y:.0%}<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": f"best single configuration ({curve.get('best_single_config', '')})",
            "x": [xs[0], xs[-1]],
            "y": [0.0, 0.0],
            "line": {"color": INK, "dash": "dash", "width": 1},
            "hoverinfo": "skip",
        },
    ]
    static = ((evaluation.get("policies") or {}).get("router") or {}).get("gap_closed")
    if static is not None and math.isfinite(float(static)):
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "static router (all held-out prompts)",
                "x": [xs[0], xs[-1]],
                "y": [float(static), float(static)],
                "line": {"color": colour(2), "dash": "dot", "width": 1},
                "hoverinfo": "skip",
            }
        )
    return {
        "data": traces,
        "layout": _layout(
            x_title="graded queries of the held-out prompts, replayed online",
            y_title="gap closed (0 = best single, 1 = oracle)",
            yaxis={"tickformat": ".0%"},
            legend={"orientation": "h", "y": -0.25},
            height=320,
        ),
    }
