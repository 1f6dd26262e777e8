"""Evaluation harness: a router and its baselines scored the same way on a test outcome table.

Reported per policy: accuracy, mean USD per query, cost-of-pass, gap_closed (best single by train
CoP vs the min-CoP oracle), AIQ for the routers that have a lambda sweep, and the router's
calibration error. Baselines: best single (by train CoP and by train accuracy), random (exact
expectation of a uniform choice), a kNN router in RouterBench's style (mean outcome of the 10
nearest training prompts, no task tag, cost / p rule), the min-CoP oracle and the
cheapest-correct oracle. The zero router's AIQ is the hull of the single configurations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from routerapp.routing import metrics as M
from routerapp.routing.router import Router, fit_router, single_threaded
from routerapp.routing.tables import normalise_outcomes, normalise_prompts
from routerapp.routing.types import Constraints, TableError


def outcome_matrices(
    outcomes: pd.DataFrame, config_ids: list[str], prompt_uids: list[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (prompt_uids, cost, correct) matrices (NaN where missing) for ``config_ids``."""
    o = outcomes[outcomes["config_id"].isin(set(config_ids))]
    if prompt_uids is None:
        prompt_uids = list(pd.unique(o["prompt_uid"]))
    cost = o.pivot_table(index="prompt_uid", columns="config_id", values="cost_usd", aggfunc="mean")
    corr = o.pivot_table(index="prompt_uid", columns="config_id", values="correct", aggfunc="mean")
    cost = cost.reindex(index=prompt_uids, columns=config_ids)
    corr = corr.reindex(index=prompt_uids, columns=config_ids)
    return list(prompt_uids), cost.to_numpy(dtype=float), corr.to_numpy(dtype=float)


def _row(fig: M.PolicyFigures, best: float, oracle: float, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = fig.as_dict()
    g = M.gap_closed(fig.cop, best, oracle)
    d["gap_closed"] = None if math.isnan(g) else g
    d.update(extra)
    return d


def evaluate(
    router: Router,
    test_outcomes: pd.DataFrame,
    test_prompts: pd.DataFrame | None,
    train_outcomes: pd.DataFrame,
    train_prompts: pd.DataFrame | None = None,
    *,
    sweep_points: int = 25,
    online: bool = True,
    knn: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the metrics of ``router`` and of the baselines on ``test_outcomes``.

    ``train_outcomes`` picks the best single configurations (and, with ``train_prompts``, fits
    the kNN baseline). ``online`` also replays the test prompts in a seeded random order through
    decide(explore=True) -> observe(outcome of the chosen configuration) on a copy of the router.
    """
    with single_threaded():
        return _evaluate(
            router,
            test_outcomes,
            test_prompts,
            train_outcomes,
            train_prompts,
            sweep_points,
            online,
            knn,
            seed,
        )


def _evaluate(
    router: Router,
    test_outcomes: pd.DataFrame,
    test_prompts: pd.DataFrame | None,
    train_outcomes: pd.DataFrame,
    train_prompts: pd.DataFrame | None,
    sweep_points: int,
    online: bool,
    knn: bool,
    seed: int,
) -> dict[str, Any]:
    test_o = normalise_outcomes(test_outcomes, "test outcomes")
    train_o = normalise_outcomes(train_outcomes, "train outcomes")
    cids = router.config_ids
    uids, cost_raw, corr_raw = outcome_matrices(test_o, cids)
    if not uids:
        raise TableError("test outcomes: no rows for the router's candidates")
    cost, corr = M.fill_missing(cost_raw, corr_raw)
    texts, tags = _texts_and_tags(uids, test_o, test_prompts)

    # Reference points.
    _, tr_cost, tr_corr = outcome_matrices(train_o, cids)
    tr_cost, tr_corr = M.fill_missing(tr_cost, tr_corr)
    bs_cop = M.best_single(tr_cost, tr_corr, "cop")
    bs_acc = M.best_single(tr_cost, tr_corr, "accuracy")
    n = len(uids)
    oracle_choice, oracle_cop = M.min_cop_oracle(cost, corr)
    f_bs = M.policy_figures(cost, corr, np.full(n, bs_cop))
    best = f_bs.cop
    singles = [M.policy_figures(cost, corr, np.full(n, j)) for j in range(len(cids))]
    single_pts = [(f.mean_cost, f.accuracy) for f in singles]
    lo = min(c for c, _ in single_pts)
    hi = max(c for c, _ in single_pts)

    res: dict[str, Any] = {
        "n_prompts": n,
        "n_configs": len(cids),
        "cost_range": [lo, hi],
        "zero_router_aiq": M.aiq(single_pts, lo, hi),
        "policies": {},
    }
    pols = res["policies"]

    # Router, static.
    # Configurations without any test outcome cannot be scored: the router may not pick them.
    scored = frozenset(c for j, c in enumerate(cids) if np.isfinite(corr_raw[:, j]).any())
    cons = None if len(scored) == len(cids) else Constraints(allowed_config_ids=scored)
    choice, p, pc = router.decide_many(texts, tags, constraints=cons)
    f_r = M.policy_figures(cost, corr, choice)
    pts = [(f_r.mean_cost, f_r.accuracy)]
    for ch in router.sweep(texts, tags, sweep_points, cons):
        f = M.policy_figures(cost, corr, ch)
        pts.append((f.mean_cost, f.accuracy))
    obs = np.isfinite(corr_raw)
    rows = np.arange(n)
    pols["router"] = _row(
        f_r,
        best,
        oracle_cop,
        aiq=M.aiq(pts, lo, hi),
        ece_all=M.ece(p[obs], corr_raw[obs]),
        ece_chosen=M.ece(p[rows, choice], corr[rows, choice]),
        mean_pred_p_chosen=float(p[rows, choice].mean()),
        mean_pred_cost_chosen=float(pc[rows, choice].mean()),
        lambda_default=router.default_lambda,
        policy_mode=router.policy_mode,
        n_distinct_choices=int(len(np.unique(choice))),
    )
    if online:
        f_on, n_explored = _online_replay(
            router, texts, tags, cost, corr, seed, explore=True, constraints=cons
        )
        pols["router_online"] = _row(f_on, best, oracle_cop, n_explored=n_explored)

    # Baselines.
    pols["best_single_cop"] = _row(f_bs, best, oracle_cop, config_id=cids[bs_cop])
    pols["best_single_acc"] = _row(
        M.policy_figures(cost, corr, np.full(n, bs_acc)), best, oracle_cop, config_id=cids[bs_acc]
    )
    pols["random"] = _row(
        M.expected_figures(cost, corr, np.full(cost.shape, 1.0 / len(cids))), best, oracle_cop
    )
    if knn and train_prompts is not None:
        kr = fit_router(
            train_o,
            train_prompts,
            router.candidates,
            learner="knn",
            seed=seed,
            params={"folds": 0, "kappa": 0.0, "policy": "ratio", "unseen_rule": "ratio"},
            unknown_configs="drop",
        )
        kch, _, _ = kr.decide_many(texts, tags, constraints=cons)
        f_k = M.policy_figures(cost, corr, kch)
        kpts = [(f_k.mean_cost, f_k.accuracy)]
        for ch in kr.sweep(texts, tags, sweep_points, cons):
            f = M.policy_figures(cost, corr, ch)
            kpts.append((f.mean_cost, f.accuracy))
        pols["knn"] = _row(f_k, best, oracle_cop, aiq=M.aiq(kpts, lo, hi))
    pols["oracle_min_cop"] = _row(M.policy_figures(cost, corr, oracle_choice), best, oracle_cop)
    cheap = np.where(corr > 0, cost / np.where(corr > 0, corr, 1.0), np.inf)
    cc = np.where(np.isfinite(cheap).any(1), np.argmin(cheap, 1), np.argmin(cost, 1))
    pols["oracle_cheapest_correct"] = _row(M.policy_figures(cost, corr, cc), best, oracle_cop)
    return res


def replay_prefix_figures(
    router: Router,
    texts: list[str],
    tags: list[str],
    cost: np.ndarray,
    corr: np.ndarray,
    best_single: int,
    points: Sequence[int],
    *,
    seed: int = 0,
    explore: bool = True,
    constraints: Constraints | None = None,
) -> list[dict[str, Any]]:
    """Replay once in a seeded order; return figures over the first ``k`` queries for each k.

    Each dict: ``n, gap_closed, accuracy, cop, best_single_cop, oracle_cop, explored`` where the
    best single (index ``best_single``, chosen on train) and the min-CoP oracle are scored on the
    same first ``k`` prompts as the router's online choices. ``gap_closed`` is None when those
    prompts leave no gap (the best single is already the oracle).
    """
    order, choice, explored = _replay(router, texts, tags, cost, corr, seed, explore, constraints)
    out = []
    for k in points:
        k = int(min(max(k, 1), len(order)))
        idx = order[:k]
        c, y = cost[idx], corr[idx]
        f = M.policy_figures(c, y, choice[idx])
        fb = M.policy_figures(c, y, np.full(k, best_single))
        _, orc = M.min_cop_oracle(c, y)
        g = M.gap_closed(f.cop, fb.cop, orc)
        out.append(
            {
                "n": k,
                "gap_closed": None if math.isnan(g) else float(g),
                "accuracy": f.accuracy,
                "cop": f.cop if math.isfinite(f.cop) else None,
                "best_single_cop": fb.cop if math.isfinite(fb.cop) else None,
                "oracle_cop": orc if math.isfinite(orc) else None,
                "explored": int(explored[:k].sum()),
            }
        )
    return out


def online_curve(
    router: Router,
    test_outcomes: pd.DataFrame,
    test_prompts: pd.DataFrame | None,
    train_outcomes: pd.DataFrame,
    *,
    points: Sequence[int] = (50, 100, 200, 500),
    seeds: int = 3,
    explore: bool = True,
) -> dict[str, Any]:
    """Return the adaptation curve of ``router`` on a test table, as plain data (for plotting).

    The test prompts are replayed ``seeds`` times in seeded random orders through
    ``decide(explore=...)`` then ``observe`` of the chosen configuration's outcome, starting from
    the router's fitted state (its online state is not touched). For every ``k`` in ``points`` (at
    most the number of test prompts, plus the full length): gap_closed of the online choices over
    the first ``k`` graded queries against the best single configuration chosen on
    ``train_outcomes`` and the min-CoP oracle on the same ``k`` prompts. Returns ``{"n_prompts",
    "best_single_config", "points": [k...], "gap_closed": [mean over seeds or None],
    "accuracy": [...], "cop": [...], "by_seed": [[dict per point] per seed]}``.
    """
    test_o = normalise_outcomes(test_outcomes, "test outcomes")
    train_o = normalise_outcomes(train_outcomes, "train outcomes")
    cids = router.config_ids
    uids, cost_raw, corr_raw = outcome_matrices(test_o, cids)
    if not uids:
        raise TableError("test outcomes: no rows for the router's candidates")
    cost, corr = M.fill_missing(cost_raw, corr_raw)
    texts, tags = _texts_and_tags(uids, test_o, test_prompts)
    _, tr_cost, tr_corr = outcome_matrices(train_o, cids)
    tr_cost, tr_corr = M.fill_missing(tr_cost, tr_corr)
    bs = M.best_single(tr_cost, tr_corr, "cop")
    scored = frozenset(c for j, c in enumerate(cids) if np.isfinite(corr_raw[:, j]).any())
    cons = None if len(scored) == len(cids) else Constraints(allowed_config_ids=scored)
    pts = sorted({int(k) for k in points if 0 < k < len(uids)} | {len(uids)})
    with single_threaded():
        by_seed = [
            replay_prefix_figures(
                router, texts, tags, cost, corr, bs, pts, seed=s, explore=explore, constraints=cons
            )
            for s in range(max(1, seeds))
        ]

    def mean(key: str, i: int) -> float | None:
        v = [ps[i][key] for ps in by_seed if ps[i][key] is not None]
        return float(np.mean(v)) if v else None

    return {
        "n_prompts": len(uids),
        "best_single_config": cids[bs],
        "points": pts,
        "gap_closed": [mean("gap_closed", i) for i in range(len(pts))],
        "accuracy": [mean("accuracy", i) for i in range(len(pts))],
        "cop": [mean("cop", i) for i in range(len(pts))],
        "by_seed": by_seed,
    }


def _texts_and_tags(
    uids: list[str], test_o: pd.DataFrame, test_prompts: pd.DataFrame | None
) -> tuple[list[str], list[str]]:
    if test_prompts is not None:
        tp = normalise_prompts(test_prompts, "test prompts").set_index("prompt_uid")
        tp = tp[~tp.index.duplicated()]
    else:
        tp = pd.DataFrame(columns=["dataset", "prompt"])
    first_tag = test_o.drop_duplicates("prompt_uid").set_index("prompt_uid")["dataset"]
    texts = [str(tp.at[u, "prompt"]) if u in tp.index else "" for u in uids]
    tags = [
        (str(tp.at[u, "dataset"]) if u in tp.index else "") or str(first_tag.get(u, ""))
        for u in uids
    ]
    return texts, tags


def _replay(
    router: Router,
    texts: list[str],
    tags: list[str],
    cost: np.ndarray,
    corr: np.ndarray,
    seed: int,
    explore: bool,
    constraints: Constraints | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay on a copy of ``router``; return (order, choice per prompt, explored per position)."""
    r = Router.from_bytes(router.to_bytes())
    r.reset_online()
    r.online.rng = np.random.default_rng(seed)
    order = np.random.default_rng(seed).permutation(len(texts))
    choice = np.zeros(len(texts), dtype=int)
    explored = np.zeros(len(texts), dtype=bool)
    for pos, i in enumerate(order):
        d = r.decide(texts[i], tags[i], constraints, explore=explore)
        j = r.index[d.config_id]
        choice[i] = j
        explored[pos] = d.explored
        r.observe(texts[i], tags[i], d.config_id, float(corr[i, j]), float(cost[i, j]))
    return order, choice, explored


def _online_replay(
    router: Router,
    texts: list[str],
    tags: list[str],
    cost: np.ndarray,
    corr: np.ndarray,
    seed: int,
    *,
    explore: bool = True,
    constraints: Constraints | None = None,
) -> tuple[M.PolicyFigures, int]:
    """Replay prompts in a seeded order: decide, then observe the chosen outcome.

    Return the figures of the online choices and how many decisions explored.
    """
    _, choice, explored = _replay(router, texts, tags, cost, corr, seed, explore, constraints)
    return M.policy_figures(cost, corr, choice), int(explored.sum())
