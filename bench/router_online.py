"""Online adaptation on task families never seen in training (issue 14, the online half): the
earlier exploration rule against the current one on the same fitted routers, in one sitting.

For each outcome source of ``routing.transfer.SOURCES`` (``--data``, default ../shared/data; read
in place) and each of its families (``--family`` restricts them): fit the router on the other
families once (as ``bench/router_transfer.py``), then replay the held-out family's test prompts in
``--seeds`` seeded orders through ``decide(explore=True)`` -> ``observe`` of the chosen outcome,
once per online rule:

- ``earlier``: ``explore_rule="eps"``, the rule before this change (a Thompson draw of the tag's
  offsets on up to 30 % of a new tag's first decisions);
- ``current``: the defaults (``explore_rule="settle"``: probe the most probable challenger only
  while the ranking is unsettled, within a budget, and only when it is worth its expected loss
  over the tag's horizon).

Reported per family and rule: online gap_closed, the adaptation curve @50 / @100 / @200 / @500,
how many decisions explored; and, per family, the *hindsight single*: gap_closed of the best
single configuration of the held-out family itself (chosen with hindsight of its test outcomes),
the most that family-level learning can reach (the oracle's remaining gain is per prompt).
Writes ``--json`` (default bench/results/router_online.json) and prints a markdown table.

    nice -n 10 .venv/bin/python bench/router_online.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerapp.routing import metrics as M  # noqa: E402
from routerapp.routing import transfer as T  # noqa: E402
from routerapp.routing.evaluation import outcome_matrices  # noqa: E402
from routerapp.routing.online import OnlineParams  # noqa: E402
from routerapp.routing.router import Router, fit_router  # noqa: E402

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared"
RULES = {"earlier": {"explore_rule": "eps"}, "current": {}}


def _g(x: Any) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.2f}"


def _hindsight(suite: Any, ids: list[str]) -> float | None:
    _, cost, corr = outcome_matrices(suite.test_outcomes, ids)
    cost, corr = M.fill_missing(cost, corr)
    _, tc, ty = outcome_matrices(suite.train_outcomes, ids)
    tc, ty = M.fill_missing(tc, ty)
    n = len(cost)
    best = M.policy_figures(cost, corr, np.full(n, M.best_single(tc, ty))).cop
    hs = M.policy_figures(cost, corr, np.full(n, M.best_single(cost, corr))).cop
    _, orc = M.min_cop_oracle(cost, corr)
    g = M.gap_closed(hs, best, orc)
    return None if math.isnan(g) else float(g)


def main() -> int:
    """Fit once per held-out family, replay each online rule, print and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--source", action="append", default=None, choices=sorted(T.SOURCES))
    ap.add_argument("--family", action="append", default=None, help="source:family (repeatable)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=HERE.parent / "results" / "router_online.json")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no outcome tables at {args.data}; nothing to do")
        return 0
    t0 = time.perf_counter()
    print(
        "| source | held-out family | test prompts | hindsight single | online earlier -> current "
        "| @50 | @100 | @200 | @500 | explored earlier -> current |"
    )
    print("|---" * 10 + "|")
    rows: list[dict[str, Any]] = []
    for name in args.source or list(T.SOURCES):
        o, p = T.load_source(args.data, name)
        for fam, suite in T.lofo_suites(o, p, name=name):
            if args.family and f"{name}:{fam}" not in args.family:
                continue
            fitted = fit_router(suite.train_outcomes, suite.train_prompts, suite.candidates)
            blob = fitted.to_bytes()
            row: dict[str, Any] = {
                "source": name,
                "held_out": fam,
                "n_test": int(suite.test_outcomes["prompt_uid"].nunique()),
                "hindsight_single": _hindsight(suite, fitted.config_ids),
                "static": {"gap_closed": 0.0, "aiq": 0.0},
                "aiq_zero": 0.0,
            }
            for rule, change in RULES.items():
                r = Router.from_bytes(blob)
                r.params.online = OnlineParams(**{**r.params.online.model_dump(), **change})
                row[rule] = T._online_figures(r, suite, args.seeds, T.CURVE_POINTS)
            e, c = row["earlier"], row["current"]
            print(
                f"| {name} | {fam} | {row['n_test']} | {_g(row['hindsight_single'])} | "
                f"{_g(e['gap_closed'])} -> {_g(c['gap_closed'])} | "
                + " | ".join(
                    f"{_g(e['curve'].get(str(k)))} -> {_g(c['curve'].get(str(k)))}"
                    for k in T.CURVE_POINTS
                )
                + f" | {e['explored']:.0f} -> {c['explored']:.0f} |",
                flush=True,
            )
            rows.append(row)
    summary = {}
    for rule in RULES:
        s = T.summarise([{**r, "online": r[rule]} for r in rows])
        summary[rule] = {
            k: s[k] for k in ("n_families", "online", *(f"curve_{k}" for k in T.CURVE_POINTS))
        }
        v = s["online"]
        print(
            f"{rule}: online median {v['median']:+.2f}, mean {v['mean']:+.2f}, min {v['min']:+.2f}; "
            "curve mean "
            + " / ".join(_g((s.get(f"curve_{k}") or {}).get("mean")) for k in T.CURVE_POINTS)
        )
    hs = [r["hindsight_single"] for r in rows if r["hindsight_single"] is not None]
    summary["hindsight_single"] = {
        "median": float(np.median(hs)) if hs else None,
        "mean": float(np.mean(hs)) if hs else None,
    }
    elapsed = time.perf_counter() - t0
    print(
        f"hindsight single: median {_g(summary['hindsight_single']['median'])}, mean {_g(summary['hindsight_single']['mean'])}; total {elapsed:.0f}s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cmd = "bench/router_online.py --seeds " + str(args.seeds)
    cmd += "".join(f" --source {s}" for s in args.source or [])
    cmd += "".join(f" --family {f}" for f in args.family or [])
    args.json.write_text(
        json.dumps(
            {"command": cmd, "rows": rows, "summary": summary, "seconds": elapsed},
            indent=1,
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
