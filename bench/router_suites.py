"""Router vs baselines on the dev suites, plus generalisation checks on suites it was not tuned on.

1. Dev suites (``--suites``, default ../shared/suites): fit on train, score on test with the same
   definitions as the product (routing.metrics): CoP of the router (static and online replay),
   best single by train CoP and by train accuracy, random, kNN (RouterBench style), the min-CoP
   oracle; gap_closed, AIQ (router, kNN and the zero router, i.e. the hull of the singles) and the
   router's calibration error.
2. Held-out-style suites built the same way (70/30 prompt-hash split, cost = list price x tokens)
   from sources of ``--data`` (default ../shared/data) that no dev suite uses and that were never
   used to tune the router: ZeroEval (GSM8K + CRUXEval-O), Open LLM Leaderboard v2 (GPQA, MuSR,
   IFEval without text; MMLU-Pro), RouterDC (9 tasks, 7 models). ``tag ceiling`` is the best
   per-task single choice picked on the *test* split: what a router using only the task tag could
   reach at best.
3. Leave-one-family-out: train on every other task family of a source, test on the held-out one,
   whose tag the router has never seen (static: cautious transfer; online: decide -> observe the
   chosen outcome, seeded order, mean of 3 seeds).

    .venv/bin/python bench/router_suites.py [--suites DIR] [--data DIR] [--skip-lofo]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerapp.routing import evaluate, fit_router  # noqa: E402
from routerapp.routing import metrics as M  # noqa: E402
from routerapp.routing.evaluation import _online_replay, outcome_matrices  # noqa: E402
from routerapp.routing.router import single_threaded  # noqa: E402
from routerapp.routing.simulation import build_suite, hash_unit, outcomes_from_raw  # noqa: E402
from routerapp.routing.tables import Suite, load_suite  # noqa: E402

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared"

# Source -> (row filter prefix, share of the big MMLU-style tasks kept so tasks stay balanced).
SOURCES = {
    "zeroeval": ("zeroeval", None),
    "openllm-v2": ("openllm", 0.15),
    "routerdc-7": ("routerdc", 0.3),
}


def _f(x: float | None, kind: str = "e") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3e}" if kind == "e" else f"{x:+.2f}" if kind == "g" else f"{x:.3f}"


def _tag_ceiling(suite: Suite, ids: list[str]) -> float:
    """Gap closed by the best per-tag single choice chosen on the test split (hindsight)."""
    assert suite.test_outcomes is not None
    uids, cost, corr = outcome_matrices(suite.test_outcomes, ids)
    cost, corr = M.fill_missing(cost, corr)
    _, tr_c, tr_r = outcome_matrices(suite.train_outcomes, ids)
    tr_c, tr_r = M.fill_missing(tr_c, tr_r)
    tag = suite.test_outcomes.drop_duplicates("prompt_uid").set_index("prompt_uid")["dataset"]
    g = np.array([tag[u] for u in uids])
    groups = sorted(set(g))
    cs = np.array([cost[g == k].sum(0) for k in groups])
    rs = np.array([corr[g == k].sum(0) for k in groups])
    pick, _ = M.min_cop_oracle(cs, rs)
    choice = np.array([pick[groups.index(x)] for x in g])
    best = M.policy_figures(cost, corr, np.full(len(g), M.best_single(tr_c, tr_r))).cop
    _, orc = M.min_cop_oracle(cost, corr)
    return M.gap_closed(M.policy_figures(cost, corr, choice).cop, best, orc)


def run_suite(name: str, suite: Suite, *, ceiling: bool = False) -> dict[str, object]:
    """Fit, evaluate and print one suite; return its summary row."""
    t0 = time.perf_counter()
    router = fit_router(suite.train_outcomes, suite.train_prompts, suite.candidates)
    fit_s = time.perf_counter() - t0
    res = evaluate(
        router, suite.test_outcomes, suite.test_prompts, suite.train_outcomes, suite.train_prompts
    )
    pol = res["policies"]
    print(
        f"\n### {name}: {res['n_prompts']} test prompts x {res['n_configs']} configs "
        f"(train {router.fit_info['n_prompts']} prompts, fit {fit_s:.1f}s, policy {router.policy_mode})"
    )
    print("| policy | accuracy | USD/query | CoP | gap_closed | AIQ |")
    print("|---|---|---|---|---|---|")
    for key in (
        "router",
        "router_online",
        "best_single_cop",
        "best_single_acc",
        "random",
        "knn",
        "oracle_min_cop",
    ):
        row = pol.get(key)
        if row is None:
            continue
        print(
            f"| {key} | {_f(row['accuracy'], 'f')} | {_f(row['mean_cost'])} | {_f(row['cop'])} | "
            f"{_f(row['gap_closed'], 'g')} | {_f(row.get('aiq'), 'f')} |"
        )
    r = pol["router"]
    print(
        f"zero-router AIQ {_f(res['zero_router_aiq'], 'f')}; router ECE {_f(r['ece_all'], 'f')} (all pairs), "
        f"{_f(r['ece_chosen'], 'f')} (chosen); best single = {pol['best_single_cop']['config_id']}"
    )
    out = {
        "suite": name,
        "router": r["cop"],
        "online": pol["router_online"]["cop"],
        "best": pol["best_single_cop"]["cop"],
        "knn": pol["knn"]["cop"],
        "oracle": pol["oracle_min_cop"]["cop"],
        "gap": r["gap_closed"],
        "gap_online": pol["router_online"]["gap_closed"],
        "gap_knn": pol["knn"]["gap_closed"],
        "aiq": r["aiq"],
        "aiq_knn": pol["knn"]["aiq"],
        "aiq_zero": res["zero_router_aiq"],
        "ece": r["ece_all"],
        "fit_s": fit_s,
    }
    if ceiling:
        out["ceiling"] = _tag_ceiling(suite, router.config_ids)
    return out


def _source_outcomes(data: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    raw = pd.read_parquet(data / "dev_outcomes_single.parquet")
    prompts = pd.read_parquet(data / "dev_prompts.parquet")
    prices = pd.read_csv(data / "prices.csv")
    out = {}
    for name, (prefix, cap) in SOURCES.items():
        r = raw[raw["source"].str.startswith(prefix)]
        if cap is not None:
            big = r["dataset"].isin(["mmlu_pro", "mmlu", "cmmlu"])
            keep = (
                r["prompt_uid"].map(lambda u: hash_unit("sub:" + u)) < cap
            )  # independent of the split
            r = r[~big | keep]
        o = outcomes_from_raw(r, prices, prompts)
        p = prompts[prompts["prompt_uid"].isin(set(o["prompt_uid"]))]
        out[name] = (o, p)
    return out


def _family(tag: str) -> str:
    return tag.split("_")[0].split("-")[0]


def lofo(name: str, o: pd.DataFrame, p: pd.DataFrame, seeds: int = 3) -> list[dict[str, object]]:
    """Leave each task family out in turn; print and return static / online / kNN gap_closed."""
    tags = sorted(o["dataset"].unique())
    rows = []
    for fam in sorted({_family(t) for t in tags}):
        held = [t for t in tags if _family(t) == fam]
        rest = [t for t in tags if _family(t) != fam]
        if not rest:
            continue
        suite = build_suite(o, p, train_datasets=rest, test_datasets=held)
        router = fit_router(suite.train_outcomes, suite.train_prompts, suite.candidates)
        res = evaluate(
            router,
            suite.test_outcomes,
            suite.test_prompts,
            suite.train_outcomes,
            suite.train_prompts,
            online=False,
        )
        pol = res["policies"]
        ids = router.config_ids
        uids, cost, corr = outcome_matrices(suite.test_outcomes, ids)
        cost, corr = M.fill_missing(cost, corr)
        tp = suite.test_prompts.set_index("prompt_uid")
        texts = [str(tp.at[u, "prompt"]) for u in uids]
        tg = [str(tp.at[u, "dataset"]) for u in uids]
        best, orc = pol["best_single_cop"]["cop"], pol["oracle_min_cop"]["cop"]
        online = []
        with single_threaded():
            for sd in range(seeds):
                router.seed = sd
                f, _ = _online_replay(router, texts, tg, cost, corr, sd)
                online.append(M.gap_closed(f.cop, best, orc))
        row = {
            "source": name,
            "held_out": fam,
            "n_test": res["n_prompts"],
            "static": pol["router"]["gap_closed"],
            "online": float(np.mean(online)),
            "knn": pol["knn"]["gap_closed"],
        }
        print(
            f"| {name} | {fam} | {row['n_test']} | {_f(row['static'], 'g')} | {_f(row['online'], 'g')} | "
            f"{_f(row['knn'], 'g')} |",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> int:
    """Run every part and print markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--suites", type=Path, default=SHARED / "suites")
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--only", action="append", default=None, help="dev suite name (repeatable)")
    ap.add_argument("--skip-heldout", action="store_true")
    ap.add_argument("--skip-lofo", action="store_true")
    args = ap.parse_args()
    t_all = time.perf_counter()
    summary = []
    if args.suites.is_dir():
        names = args.only or sorted(
            p.name for p in args.suites.iterdir() if (p / "candidates.csv").exists()
        )
        print("## 1. Dev suites")
        for name in names:
            summary.append(run_suite(name, load_suite(args.suites / name, need_test=True)))
    else:
        print(f"(no suites directory at {args.suites}; skipping the dev suites)")
    heldout = []
    sources = {}
    if args.data.is_dir() and not (args.skip_heldout and args.skip_lofo):
        sources = _source_outcomes(args.data)
    if sources and not args.skip_heldout:
        print("\n## 2. Held-out-style suites (never used for tuning)")
        for name, (o, p) in sources.items():
            heldout.append(run_suite(name, build_suite(o, p), ceiling=True))
    for title, rows in (("dev suites", summary), ("held-out-style suites", heldout)):
        if not rows:
            continue
        print(f"\n## Summary: {title}")
        print(
            "| suite | router CoP | online CoP | best single CoP | kNN CoP | oracle CoP | gap_closed "
            "| online | kNN | "
            + ("tag ceiling | " if "ceiling" in rows[0] else "")
            + "AIQ router / kNN / zero | ECE | fit s |"
        )
        print("|---" * (12 + ("ceiling" in rows[0])) + "|")
        for r in rows:
            print(
                f"| {r['suite']} | {_f(r['router'])} | {_f(r['online'])} | {_f(r['best'])} | {_f(r['knn'])} | "
                f"{_f(r['oracle'])} | {_f(r['gap'], 'g')} | {_f(r['gap_online'], 'g')} | {_f(r['gap_knn'], 'g')} | "
                + (f"{_f(r['ceiling'], 'g')} | " if "ceiling" in r else "")
                + f"{_f(r['aiq'], 'f')} / {_f(r['aiq_knn'], 'f')} / {_f(r['aiq_zero'], 'f')} | "
                f"{_f(r['ece'], 'f')} | {r['fit_s']:.1f} |"
            )
    if sources and not args.skip_lofo:
        print("\n## 3. Leave-one-family-out (held-out tag never seen in training): gap_closed")
        print("| source | held-out family | test prompts | static | online (3 seeds) | kNN |")
        print("|---|---|---|---|---|---|")
        rows = []
        for name, (o, p) in sources.items():
            rows += lofo(name, o, p)
        df = pd.DataFrame(rows)
        med = df[["static", "online", "knn"]].replace([np.inf, -np.inf], np.nan).median()
        mean = df[["static", "online", "knn"]].replace([np.inf, -np.inf], np.nan).mean()
        print(
            f"| all | median | | {_f(med['static'], 'g')} | {_f(med['online'], 'g')} | {_f(med['knn'], 'g')} |"
        )
        print(
            f"| all | mean | | {_f(mean['static'], 'g')} | {_f(mean['online'], 'g')} | {_f(mean['knn'], 'g')} |"
        )
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
