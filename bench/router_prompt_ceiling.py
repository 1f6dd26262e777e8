"""How much could a prompt-level model learned on a new family gain at best? (issue 14, online.)

For each leave-one-family-out fold of ``routing.transfer.SOURCES`` (``--data``, default
../shared/data, read in place): take the held-out family's test prompts with *every*
configuration's outcome (full information, which online feedback never gives), and route them by
a per-configuration logistic regression on the router's prompt features (LSA + markers, encoder
fitted on the training families' prompts, standardised), cross-validated in 5 folds inside the
family, choosing min cost / p. gap_closed against the best single configuration chosen on the
training families and the min-CoP oracle, as everywhere; beside it the *hindsight single* (the
family's own best single configuration), which family-level learning reaches at best. If the
full-information per-prompt model does not beat the hindsight single, a prompt-level model learned
online from one outcome per query cannot either.

    nice -n 10 .venv/bin/python bench/router_prompt_ceiling.py   # bench/results/router_prompt_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerapp.routing import metrics as M  # noqa: E402
from routerapp.routing import transfer as T  # noqa: E402
from routerapp.routing.evaluation import outcome_matrices  # noqa: E402
from routerapp.routing.features import PromptFeaturizer  # noqa: E402
from routerapp.routing.router import single_threaded  # noqa: E402

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared"
CS = (0.01, 0.1, 1.0)


def _fold_row(suite: Any) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    ids = [c.config_id for c in suite.candidates]
    uids, cost, corr = outcome_matrices(suite.test_outcomes, ids)
    cost, corr = M.fill_missing(cost, corr)
    _, tc, ty = outcome_matrices(suite.train_outcomes, ids)
    tc, ty = M.fill_missing(tc, ty)
    bs = M.best_single(tc, ty)
    feat = PromptFeaturizer(dim=64, seed=0).fit(suite.train_prompts["prompt"].astype(str).tolist())
    tp = suite.test_prompts.drop_duplicates("prompt_uid").set_index("prompt_uid")
    x = feat.transform([str(tp.at[u, "prompt"]) if u in tp.index else "" for u in uids])
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    n, a_n = corr.shape
    fold = np.random.default_rng(0).permutation(n) % 5
    best = M.policy_figures(cost, corr, np.full(n, bs)).cop
    _, orc = M.min_cop_oracle(cost, corr)
    out: dict[str, Any] = {"n_test": n, "n_configs": a_n}
    for c in CS:
        ch = np.zeros(n, dtype=int)
        for f in range(5):
            tr, te = fold != f, fold == f
            p = np.zeros((int(te.sum()), a_n))
            for j in range(a_n):
                y = corr[tr, j] > 0.5
                if y.all() or not y.any():
                    p[:, j] = y.mean()
                else:
                    lr = LogisticRegression(C=c, max_iter=300).fit(x[tr], y)
                    p[:, j] = lr.predict_proba(x[te])[:, 1]
            ch[te] = np.argmin(cost[te] / np.clip(p, 1e-3, 1.0), 1)
        g = M.gap_closed(M.policy_figures(cost, corr, ch).cop, best, orc)
        out[f"prompt_logistic_C{c}"] = None if math.isnan(g) else float(g)
    hs = M.policy_figures(cost, corr, np.full(n, M.best_single(cost, corr))).cop
    g = M.gap_closed(hs, best, orc)
    out["hindsight_single"] = None if math.isnan(g) else float(g)
    return out


def main() -> int:
    """Run every fold and print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--source", action="append", default=None, choices=sorted(T.SOURCES))
    ap.add_argument(
        "--json", type=Path, default=HERE.parent / "results" / "router_prompt_ceiling.json"
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"no outcome tables at {args.data}; nothing to do")
        return 0
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()
    print(
        "| source | held-out family | test prompts | hindsight single | "
        + " | ".join(f"prompt logistic C={c}" for c in CS)
        + " |"
    )
    print("|---" * (4 + len(CS)) + "|")
    rows = []
    for name in args.source or list(T.SOURCES):
        o, p = T.load_source(args.data, name)
        for fam, suite in T.lofo_suites(o, p, name=name):
            with single_threaded():
                row = {"source": name, "held_out": fam, **_fold_row(suite)}
            rows.append(row)
            print(
                f"| {name} | {fam} | {row['n_test']} | {_g(row['hindsight_single'])} | "
                + " | ".join(_g(row[f"prompt_logistic_C{c}"]) for c in CS)
                + " |",
                flush=True,
            )
    summary = {}
    for k in ["hindsight_single", *(f"prompt_logistic_C{c}" for c in CS)]:
        v = [r[k] for r in rows if r[k] is not None]
        summary[k] = {"median": float(np.median(v)), "mean": float(np.mean(v))} if v else None
        if v:
            print(f"{k}: median {np.median(v):+.2f}, mean {np.mean(v):+.2f}")
    elapsed = time.perf_counter() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "command": "bench/router_prompt_ceiling.py"
                + "".join(f" --source {s}" for s in args.source or []),
                "rows": rows,
                "summary": summary,
                "seconds": elapsed,
            },
            indent=1,
            default=float,
        )
    )
    return 0


def _g(x: Any) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.2f}"


if __name__ == "__main__":
    sys.exit(main())
