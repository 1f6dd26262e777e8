"""Is a router at least as good as the best single configuration? A paired test that can tell.

The product activates a router version only when its evaluation supports "the router's
cost-of-pass is no higher than the best single configuration's" (DESIGN.md: never worse than one
fixed model). On a handful of prompts a point estimate cannot say that, so every comparison
carries a confidence interval:

- Paired: the router and the best single configuration are scored on the *same* prompts, each
  prompt contributing (cost, correct) for both. The interval is a percentile bootstrap over
  prompts (resampling whole prompts keeps the pairing) on the difference of the two cost-of-pass
  figures, ``CoP_router - CoP_single`` in USD per correct answer (negative = the router is
  cheaper per correct answer). Cost-of-pass is a ratio of sums, so the bootstrap recomputes both
  sums per resample rather than averaging per-prompt ratios.
- The floor passes when the upper end of the interval is <= ``margin`` x CoP_single (margin 0 by
  default: the data must support "router <= best single"). Identical choices give a zero-width
  interval at 0 and pass.
- Verdicts: ``better`` (upper end < 0), ``no_worse`` (upper end exactly 0: the router never
  loses on a resample), ``tie`` (the interval is exactly 0: same choices), ``worse`` (lower end
  > 0), ``undecided`` (the interval straddles 0: more prompts are needed).
- Sample size: the half-width shrinks like 1 / sqrt(n); :func:`prompts_needed` extrapolates from
  the observed interval how many prompts would make an interval around the observed difference
  exclude 0, which is how the product sizes its calibration.

Two ways to get the paired per-prompt outcomes: :func:`cross_validated_pairs` (K folds over
prompt ids: each prompt is routed by a router fitted without it and compared with the best single
configuration chosen without it, so every prompt of a small log counts), and :func:`held_out_pairs`
(a fitted router on a separate test table, as for a suite or a cold-start prior).

No Django here: the service layer calls these with outcome tables.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from routerapp.routing import metrics as M
from routerapp.routing.evaluation import outcome_matrices
from routerapp.routing.router import Router, fit_router
from routerapp.routing.tables import normalise_outcomes, normalise_prompts
from routerapp.routing.types import Candidate, Constraints, TableError

DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 2000


@dataclass(frozen=True)
class PairedOutcomes:
    """Per-prompt outcomes of the router and of the best single configuration, same prompts."""

    router_cost: np.ndarray
    router_correct: np.ndarray
    single_cost: np.ndarray
    single_correct: np.ndarray
    single_config: str
    router_choices: dict[str, int]

    def __post_init__(self) -> None:
        n = len(self.router_cost)
        if not (len(self.router_correct) == len(self.single_cost) == len(self.single_correct) == n):
            raise ValueError("paired outcomes need four arrays of the same length")


@dataclass(frozen=True)
class CopComparison:
    """A router against the best single configuration on the same prompts."""

    n_prompts: int
    router_cop: float | None
    single_cop: float | None
    single_config: str
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    n_bootstrap: int
    margin: float
    verdict: str
    passes: bool
    router_accuracy: float
    single_accuracy: float
    router_choices: dict[str, int]
    method: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (infinite figures become None)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d

    @property
    def relative_ci(self) -> tuple[float | None, float | None]:
        """Return the interval as a fraction of the single configuration's cost-of-pass."""
        if not self.single_cop or self.ci_low is None or self.ci_high is None:
            return None, None
        return self.ci_low / self.single_cop, self.ci_high / self.single_cop


def _cop(cost: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Cost-of-pass along the last axis (inf where nothing is correct)."""
    tc = cost.sum(-1)
    nc = correct.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(nc > 0, tc / np.where(nc > 0, nc, 1.0), np.inf)


def _diff(r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """CoP difference; both infinite (nothing correct either way) counts as no difference."""
    with np.errstate(invalid="ignore"):
        d = r - s
    return np.where(np.isinf(r) & np.isinf(s), 0.0, d)


def compare(
    pairs: PairedOutcomes,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    margin: float = 0.0,
    seed: int = 0,
    method: str = "",
) -> CopComparison:
    """Return the paired bootstrap comparison of ``pairs`` (see the module docstring).

    Raise ValueError for a confidence outside (0, 1), a negative margin or too few resamples.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if n_bootstrap < 100:
        raise ValueError(f"n_bootstrap must be >= 100, got {n_bootstrap}")
    rc, rk = np.asarray(pairs.router_cost, float), np.asarray(pairs.router_correct, float)
    sc, sk = np.asarray(pairs.single_cost, float), np.asarray(pairs.single_correct, float)
    n = len(rc)
    r_cop = float(_cop(rc, rk)) if n else math.inf
    s_cop = float(_cop(sc, sk)) if n else math.inf
    diff = float(_diff(np.array(r_cop), np.array(s_cop))) if n else math.nan
    lo = hi = math.nan
    if n:
        rng = np.random.default_rng(seed)
        diffs = []
        for start in range(0, n_bootstrap, 256):  # chunks keep memory at 256 x n
            b = min(256, n_bootstrap - start)
            idx = rng.integers(0, n, size=(b, n))
            diffs.append(_diff(_cop(rc[idx], rk[idx]), _cop(sc[idx], sk[idx])))
        d = np.concatenate(diffs)
        alpha = (1.0 - confidence) / 2.0
        # 'lower'/'higher' pick actual resampled values, so infinite ones stay infinite.
        lo = float(np.quantile(d, alpha, method="lower"))
        hi = float(np.quantile(d, 1.0 - alpha, method="higher"))
    tolerance = margin * s_cop if math.isfinite(s_cop) else 0.0
    if not n or math.isnan(hi):
        verdict, passes = "undecided", False
    elif lo == 0.0 and hi == 0.0:
        verdict, passes = "tie", True
    elif hi < 0.0:
        verdict, passes = "better", True
    elif hi == 0.0:
        verdict, passes = "no_worse", True
    elif lo > 0.0:
        verdict, passes = "worse", hi <= tolerance
    else:
        verdict, passes = "undecided", hi <= tolerance
    return CopComparison(
        n_prompts=n,
        router_cop=r_cop,
        single_cop=s_cop,
        single_config=pairs.single_config,
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        margin=margin,
        verdict=verdict,
        passes=bool(passes),
        router_accuracy=float(rk.mean()) if n else math.nan,
        single_accuracy=float(sk.mean()) if n else math.nan,
        router_choices=dict(pairs.router_choices),
        method=method,
    )


def prompts_needed(comparison: CopComparison, *, cap: int = 100_000) -> int:
    """Return about how many prompts would make the interval exclude 0 (``cap`` when it never
    would: a zero observed difference, or no interval yet).

    The half-width of a bootstrap interval shrinks like 1 / sqrt(n), so with half-width h on n
    prompts and observed difference d, about n * (h / |d|)^2 prompts put d one half-width from 0.
    A decided comparison needs no more than it has.
    """
    n = comparison.n_prompts
    if comparison.passes or comparison.verdict == "worse":
        return n
    d, lo, hi = comparison.diff, comparison.ci_low, comparison.ci_high
    if not n or d is None or lo is None or hi is None:
        return cap
    if not (math.isfinite(d) and math.isfinite(lo) and math.isfinite(hi)) or d == 0.0:
        return cap
    half = (hi - lo) / 2.0
    return int(min(cap, max(n + 1, math.ceil(n * (half / abs(d)) ** 2))))


def _tags_texts(
    uids: list[str], outcomes: pd.DataFrame, prompts: pd.DataFrame | None
) -> tuple[list[str], list[str]]:
    if prompts is not None and len(prompts):
        tp = normalise_prompts(prompts).drop_duplicates("prompt_uid").set_index("prompt_uid")
    else:
        tp = pd.DataFrame(columns=["dataset", "prompt"])
    first_tag = outcomes.drop_duplicates("prompt_uid").set_index("prompt_uid")["dataset"]
    texts = [str(tp.at[u, "prompt"]) if u in tp.index else "" for u in uids]
    tags = [
        (str(tp.at[u, "dataset"]) if u in tp.index else "") or str(first_tag.get(u, ""))
        for u in uids
    ]
    return texts, tags


def complete_prompts(outcomes: pd.DataFrame, config_ids: list[str]) -> list[str]:
    """Return the prompt ids that have an outcome for every one of ``config_ids`` (only those
    can score any choice without imputing; live traffic has one configuration per prompt)."""
    o = outcomes[outcomes["config_id"].isin(set(config_ids))]
    counts = o.groupby("prompt_uid")["config_id"].nunique()
    return sorted(counts[counts == len(set(config_ids))].index.astype(str))


def _pairs_on(
    router: Router,
    test: pd.DataFrame,
    prompts: pd.DataFrame | None,
    train: pd.DataFrame,
    uids: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, list[str]]:
    cids = router.config_ids
    uids, cost, corr = outcome_matrices(test, cids, uids)
    _, tr_cost, tr_corr = outcome_matrices(train, cids)
    tr_cost, tr_corr = M.fill_missing(tr_cost, tr_corr)
    best = M.best_single(tr_cost, tr_corr, "cop")
    texts, tags = _tags_texts(uids, test, prompts)
    # Only configurations with an outcome on every scored prompt may be chosen (no imputing).
    scored = [c for j, c in enumerate(cids) if np.isfinite(corr[:, j]).all()]
    if cids[best] not in scored:
        raise TableError(f"the best single configuration {cids[best]} has no test outcomes")
    cons = None if len(scored) == len(cids) else Constraints(allowed_config_ids=frozenset(scored))
    choice, _, _ = router.decide_many(texts, tags, constraints=cons)
    rows = np.arange(len(uids))
    return (
        cost[rows, choice],
        corr[rows, choice],
        cost[:, best],
        corr[:, best],
        cids[best],
        [cids[j] for j in choice],
    )


def held_out_pairs(
    router: Router,
    test_outcomes: pd.DataFrame,
    test_prompts: pd.DataFrame | None,
    train_outcomes: pd.DataFrame,
) -> PairedOutcomes:
    """Return the paired outcomes of a fitted router on a test table, against the best single
    configuration chosen (by cost-of-pass) on the training table. Only test prompts with an
    outcome for every candidate that has test outcomes are scored.

    Raise TableError when no test prompt can be scored.
    """
    test = normalise_outcomes(test_outcomes, "test outcomes")
    train = normalise_outcomes(train_outcomes, "train outcomes")
    cids = router.config_ids
    present = [c for c in cids if c in set(test["config_id"])]
    uids = complete_prompts(test, present)
    if not uids:
        raise TableError("test outcomes: no prompt has an outcome for every configuration")
    rc, rk, sc, sk, single, chosen = _pairs_on(router, test, test_prompts, train, uids)
    return PairedOutcomes(rc, rk, sc, sk, single, _count(chosen))


def _count(chosen: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in chosen:
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _fold(uid: str, folds: int) -> int:
    return int(hashlib.md5(uid.encode()).hexdigest()[:8], 16) % folds


def cross_validated_pairs(
    outcomes: pd.DataFrame,
    prompts: pd.DataFrame | None,
    candidates: pd.DataFrame | list[Candidate],
    *,
    learner: str = "meta-logit",
    folds: int = 5,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    fit: Callable[..., Router] = fit_router,
    progress: Callable[[float], None] | None = None,
) -> PairedOutcomes:
    """Return paired outcomes on every complete prompt of ``outcomes`` by K-fold cross-fitting.

    Prompts are assigned to folds by a hash of their id (stable as the log grows). In each fold a
    router is fitted on the other folds' rows (incomplete prompts included: live traffic teaches
    too) and decides the fold's complete prompts; the best single configuration is chosen on the
    other folds' complete prompts. Raise TableError when fewer than ``folds`` prompts are
    complete or a fold leaves nothing to train on.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    out = normalise_outcomes(outcomes)
    cands = candidates
    cids = (
        [c.config_id for c in cands]
        if isinstance(cands, list)
        else [str(c) for c in cands["config_id"]]
    )
    present = [c for c in cids if c in set(out["config_id"])]
    complete = complete_prompts(out, present)
    if len(complete) < folds:
        raise TableError(
            f"{len(complete)} prompts have an outcome for every configuration; at least "
            f"{folds} are needed to compare the router with the best single configuration"
        )
    fold_of = {u: _fold(u, folds) for u in out["prompt_uid"].unique()}
    parts: list[tuple[np.ndarray, ...]] = []
    chosen: list[str] = []
    singles: list[str] = []
    complete_set = set(complete)
    for k in range(folds):
        test_uids = [u for u in complete if fold_of[u] == k]
        if not test_uids:
            continue
        in_test = out["prompt_uid"].map(fold_of) == k
        train = out[~in_test]
        train_complete = train[train["prompt_uid"].isin(complete_set)]
        if train_complete.empty:
            raise TableError("a fold leaves no complete prompt to choose the best single on")
        router = fit(train, prompts, cands, learner=learner, seed=seed, params=params)
        # Candidates without rows in this fold's training data are still placed by the
        # learner; the scored set is the same for the router and the single configuration.
        test = out[in_test & out["prompt_uid"].isin(set(test_uids))]
        rc, rk, sc, sk, single, ch = _pairs_on(router, test, prompts, train_complete, test_uids)
        parts.append((rc, rk, sc, sk))
        chosen.extend(ch)
        singles.append(single)
        if progress is not None:
            progress((k + 1) / folds)
    cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
    # The single configuration can differ between folds; report the most frequent one.
    single = max(set(singles), key=singles.count)
    return PairedOutcomes(cat[0], cat[1], cat[2], cat[3], single, _count(chosen))


def best_single_config(outcomes: pd.DataFrame, config_ids: list[str]) -> str | None:
    """Return the configuration with the lowest cost-of-pass on the complete prompts (None when
    no prompt has every configuration's outcome): what serves while no router may."""
    out = normalise_outcomes(outcomes)
    present = [c for c in config_ids if c in set(out["config_id"])]
    uids = complete_prompts(out, present)
    if not uids:
        return None
    _, cost, corr = outcome_matrices(out, present, uids)
    return present[M.best_single(cost, corr, "cop")]
