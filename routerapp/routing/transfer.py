"""Transfer to unseen task families: leave-one-family-out (LOFO) evaluation and its data sources.

A *family* is a group of task tags that a new kind of traffic would bring all at once (GSM8K, the
law questions of MMLU-Pro, the three MuSR tasks...). LOFO trains on every other family of one
outcome source and scores the held-out family, whose tags the router has never seen, with the same
metric code as everything else (``routing.metrics``): static gap_closed, the online replay
(decide(explore=True) -> observe the chosen outcome, seeded orders), the adaptation curve over
the first 50 / 100 / 200 / 500 graded queries (``evaluation.online_curve``), AIQ against the zero
router (the hull of the single configurations), accuracy and cost-of-pass, and the baselines:
the best single configuration chosen on the training families (the floor), kNN, random and the
min-CoP oracle.

Sources: a suite directory (``../shared/suites`` layout; its train and test splits are pooled and
re-split by family), a named source of the public outcome table (:data:`SOURCES`, read from a
``dev_outcomes_single.parquet`` directory given by the caller; nothing is copied), or an external
source fetched from GitHub by the caller (``routing.external.EXTERNAL``, spelled ``NAME=DIR``:
:func:`load_external`).

    rows = lofo(outcomes, prompts, name="zeroeval", seeds=3)   # one plain dict per family
    summary = summarise(rows)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routerapp.routing import metrics as M
from routerapp.routing.evaluation import evaluate, outcome_matrices, replay_prefix_figures
from routerapp.routing.external import get_external, prices_for
from routerapp.routing.router import Router, RouterParams, fit_router, single_threaded
from routerapp.routing.simulation import build_suite, hash_unit, outcomes_from_raw
from routerapp.routing.tables import Suite, load_suite
from routerapp.routing.types import TableError, family_of

CURVE_POINTS = (50, 100, 200, 500)
__all__ = [
    "CURVE_POINTS",
    "SOURCES",
    "family_of",
    "load_external",
    "load_source",
    "lofo",
    "parse_external",
    "summarise",
]


@dataclass(frozen=True)
class Source:
    """How to cut one public outcome source into task tags (and so families)."""

    prefix: str  # rows whose ``source`` starts with this
    cap: float | None = None  # share of the prompts of big tasks kept (balance; hash based)
    big: tuple[str, ...] = ("mmlu_pro", "mmlu", "cmmlu")
    tag: Callable[[pd.DataFrame], pd.Series] | None = None  # new task tag per row


_MMLU_PRO_GROUPS = {
    "math": "math",
    "physics": "science",
    "chemistry": "science",
    "engineering": "science",
    "computer science": "cs",
    "law": "law",
    "history": "humanities",
    "philosophy": "humanities",
    "economics": "social",
    "psychology": "social",
    "business": "social",
    "biology": "bio",
    "health": "bio",
    "other": "other",
}


def _mmlu_pro_tag(df: pd.DataFrame) -> pd.Series:
    grp = df["subset"].map(_MMLU_PRO_GROUPS).fillna("other")
    return grp + "/mmlu_pro"


SOURCES: dict[str, Source] = {
    # Held-out-style sources (never used to tune the router).
    "zeroeval": Source("zeroeval"),
    "openllm-v2": Source("openllm", 0.15),
    "routerdc-7": Source("routerdc", 0.3),
    # Dev sources (the dev suites are cut from them; hyperparameters were chosen on these).
    "routerbench": Source("routerbench"),
    "mmlu-pro-subjects": Source("mmlu_pro_tiger", 0.3, ("mmlu_pro",), _mmlu_pro_tag),
}
DEV_SOURCES = ("routerbench", "mmlu-pro-subjects")


def load_source(data_dir: str | Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (outcomes, prompts) of source ``name`` built from ``data_dir`` (the public tables).

    Raise TableError for an unknown name or a directory without the tables.
    """
    if name not in SOURCES:
        raise TableError(f"unknown outcome source {name!r}; known: {', '.join(sorted(SOURCES))}")
    d = Path(data_dir)
    need = ("dev_outcomes_single.parquet", "dev_prompts.parquet", "prices.csv")
    missing = [f for f in need if not (d / f).is_file()]
    if missing:
        raise TableError(f"{d}: missing {', '.join(missing)}")
    raw, prompts, prices = _read_raw(d)
    src = SOURCES[name]
    r = raw[raw["source"].str.startswith(src.prefix)]
    if src.cap is not None:
        big = r["dataset"].isin(list(src.big))
        keep = r["prompt_uid"].map(lambda u: hash_unit("sub:" + u)) < src.cap
        r = r[~big | keep]
    if src.tag is not None:
        r = r.assign(dataset=src.tag(r).to_numpy())
    o = outcomes_from_raw(r, prices, prompts)
    p = prompts[prompts["prompt_uid"].isin(set(o["prompt_uid"]))]
    if src.tag is not None:
        tag = o.drop_duplicates("prompt_uid").set_index("prompt_uid")["dataset"]
        p = p.assign(dataset=p["prompt_uid"].map(tag).to_numpy())
    return o, p


def parse_external(spec: str) -> tuple[str, Path] | None:
    """Return (name, directory) for an external source spelled ``NAME=DIR``, else None.

    Raise TableError when NAME is not a registered external source.
    """
    if "=" not in spec:
        return None
    name, _, path = spec.partition("=")
    get_external(name)
    return name, Path(path)


def load_external(
    name: str, path: str | Path, data_dir: str | Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (outcomes, prompts) of external source ``name`` read from ``path`` (its fetched
    files), priced by ``data_dir/prices.csv`` when given (``external.prices_for``) and pooled
    with its ``pool_with`` source of ``data_dir`` when it declares one and ``data_dir`` has the
    tables. Raise TableError for an unknown name or a directory without the source's files.
    """
    src = get_external(name)
    d = None if data_dir is None else Path(data_dir)
    raw, prompts = src.read(Path(path))
    o = outcomes_from_raw(raw, prices_for(d), prompts)
    if o.empty:
        raise TableError(f"{name}: no priced rows (no model of {path} has a price)")
    p = prompts[prompts["prompt_uid"].isin(set(o["prompt_uid"]))]
    if (
        src.pool_with is not None
        and d is not None
        and (d / "dev_outcomes_single.parquet").is_file()
    ):
        o2, p2 = load_source(d, src.pool_with)
        o = pd.concat([o2, o], ignore_index=True)
        p = pd.concat([p2, p], ignore_index=True).drop_duplicates("prompt_uid")
    return o.reset_index(drop=True), p.reset_index(drop=True)


_RAW_CACHE: dict[Path, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = {}


def _read_raw(d: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    key = d.resolve()
    if key not in _RAW_CACHE:
        _RAW_CACHE.clear()
        _RAW_CACHE[key] = (
            pd.read_parquet(d / "dev_outcomes_single.parquet"),
            pd.read_parquet(d / "dev_prompts.parquet"),
            pd.read_csv(d / "prices.csv"),
        )
    return _RAW_CACHE[key]


def load_suite_pooled(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (outcomes, prompts) of a suite directory with its train and test splits pooled."""
    s = load_suite(path, need_test=True)
    assert s.test_outcomes is not None and s.test_prompts is not None
    o = pd.concat([s.train_outcomes, s.test_outcomes], ignore_index=True)
    p = pd.concat([s.train_prompts, s.test_prompts], ignore_index=True)
    return o, p.drop_duplicates("prompt_uid")


def families(outcomes: pd.DataFrame, family: Callable[[str], str] = family_of) -> list[str]:
    """Return the sorted families of an outcome table."""
    return sorted({family(str(t)) for t in outcomes["dataset"].unique()})


def _g(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def lofo_suites(
    outcomes: pd.DataFrame,
    prompts: pd.DataFrame | None,
    *,
    name: str = "",
    family: Callable[[str], str] = family_of,
    only: Sequence[str] | None = None,
) -> Iterator[tuple[str, Suite]]:
    """Yield (held-out family, suite) for each family in turn: train = the other families'
    prompts on the 70 % side of the prompt-hash split, test = the held-out family's prompts on
    the 30 % side (``simulation.build_suite``), so no prompt is on both sides. ``only``
    restricts the held-out families; a family too small to split is skipped. Raise TableError
    when the table has fewer than two families."""
    tags = sorted(str(t) for t in outcomes["dataset"].unique())
    fams = sorted({family(t) for t in tags})
    if len(fams) < 2:
        raise TableError(
            f"{name or 'outcomes'}: leave-one-family-out needs at least two task families, "
            f"found {', '.join(fams) or 'none'}"
        )
    for fam in fams:
        if only is not None and fam not in only:
            continue
        held = [t for t in tags if family(t) == fam]
        rest = [t for t in tags if family(t) != fam]
        try:
            yield fam, build_suite(outcomes, prompts, train_datasets=rest, test_datasets=held)
        except TableError:
            continue


def lofo(
    outcomes: pd.DataFrame,
    prompts: pd.DataFrame | None,
    *,
    name: str = "",
    family: Callable[[str], str] = family_of,
    only: Sequence[str] | None = None,
    params: RouterParams | dict[str, Any] | None = None,
    seeds: int = 3,
    online: bool = True,
    curve_points: Sequence[int] = CURVE_POINTS,
    knn: bool = True,
    compare_ratio_rule: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Leave each family out in turn; return one plain dict of figures per held-out family.

    Train = the other families' prompts on the 70 % side of the prompt-hash split, test = the
    held-out family's prompts on the 30 % side (``simulation.build_suite``), so no prompt is on
    both sides. ``only`` restricts the held-out families; ``on_row`` is called as each row is done.
    Raise TableError when the table has fewer than two families.
    """
    rows = []
    for fam, suite in lofo_suites(outcomes, prompts, name=name, family=family, only=only):
        row = transfer_row(
            suite,
            name=name,
            held_out=fam,
            params=params,
            seeds=seeds,
            online=online,
            curve_points=curve_points,
            knn=knn,
            compare_ratio_rule=compare_ratio_rule,
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def transfer_row(
    suite: Any,
    *,
    name: str,
    held_out: str,
    params: RouterParams | dict[str, Any] | None = None,
    seeds: int = 3,
    online: bool = True,
    curve_points: Sequence[int] = CURVE_POINTS,
    knn: bool = True,
    compare_ratio_rule: bool = False,
) -> dict[str, Any]:
    """Fit on ``suite``'s train side and return the figures on its (unseen-family) test side.

    ``compare_ratio_rule`` also scores the same fitted router with the earlier unseen-tag rule
    (``unseen_rule="ratio"``: cost / p on the learner's text-classifier mixture), static only.
    """
    t0 = time.perf_counter()
    router = fit_router(suite.train_outcomes, suite.train_prompts, suite.candidates, params=params)
    fit_s = time.perf_counter() - t0
    res = evaluate(
        router,
        suite.test_outcomes,
        suite.test_prompts,
        suite.train_outcomes,
        suite.train_prompts,
        online=False,
        knn=knn,
    )
    pol = res["policies"]
    r = pol["router"]
    bs = pol["best_single_cop"]
    row: dict[str, Any] = {
        "source": name,
        "held_out": held_out,
        "n_test": res["n_prompts"],
        "n_train": router.fit_info["n_prompts"],
        "n_configs": res["n_configs"],
        "fit_s": fit_s,
        "static": {
            "gap_closed": r["gap_closed"],
            "accuracy": r["accuracy"],
            "cop": r["cop"],
            "aiq": r["aiq"],
            "n_distinct_choices": r["n_distinct_choices"],
        },
        "aiq_zero": res["zero_router_aiq"],
        "best_single_train": {
            "config_id": bs["config_id"],
            "accuracy": bs["accuracy"],
            "cop": bs["cop"],
        },
        "random": {"gap_closed": pol["random"]["gap_closed"], "cop": pol["random"]["cop"]},
        "oracle": {
            "accuracy": pol["oracle_min_cop"]["accuracy"],
            "cop": pol["oracle_min_cop"]["cop"],
        },
    }
    if "knn" in pol:
        row["knn"] = {
            "gap_closed": pol["knn"]["gap_closed"],
            "accuracy": pol["knn"]["accuracy"],
            "cop": pol["knn"]["cop"],
            "aiq": pol["knn"]["aiq"],
        }
    if online:
        row["online"] = _online_figures(router, suite, seeds, curve_points)
    if compare_ratio_rule:
        old = Router.from_bytes(router.to_bytes())
        old.params.unseen_rule = "ratio"
        ro = evaluate(
            old,
            suite.test_outcomes,
            suite.test_prompts,
            suite.train_outcomes,
            None,
            online=False,
            knn=False,
        )["policies"]["router"]
        row["static_ratio_rule"] = {
            "gap_closed": ro["gap_closed"],
            "accuracy": ro["accuracy"],
            "cop": ro["cop"],
            "aiq": ro["aiq"],
        }
    return row


def _online_figures(
    router: Router, suite: Any, seeds: int, curve_points: Sequence[int]
) -> dict[str, Any]:
    ids = router.config_ids
    uids, cost, corr = outcome_matrices(suite.test_outcomes, ids)
    cost, corr = M.fill_missing(cost, corr)
    _, tr_c, tr_r = outcome_matrices(suite.train_outcomes, ids)
    tr_c, tr_r = M.fill_missing(tr_c, tr_r)
    bs = M.best_single(tr_c, tr_r)
    tp = suite.test_prompts.drop_duplicates("prompt_uid").set_index("prompt_uid")
    texts = [str(tp.at[u, "prompt"]) if u in tp.index else "" for u in uids]
    tags = [str(tp.at[u, "dataset"]) if u in tp.index else "" for u in uids]
    pts = [int(k) for k in curve_points if k <= len(uids)] + [len(uids)]
    with single_threaded():
        per_seed = [
            replay_prefix_figures(router, texts, tags, cost, corr, bs, pts, seed=s)
            for s in range(max(1, seeds))
        ]
    full = [ps[-1] for ps in per_seed]
    out: dict[str, Any] = {
        "seeds": len(per_seed),
        "gap_closed": _mean([f["gap_closed"] for f in full]),
        "gap_closed_by_seed": [f["gap_closed"] for f in full],
        "accuracy": _mean([f["accuracy"] for f in full]),
        "cop": _mean([f["cop"] for f in full]),
        "explored": _mean([f["explored"] for f in full]),
        "curve": {
            str(k): _mean([ps[i]["gap_closed"] for ps in per_seed]) for i, k in enumerate(pts[:-1])
        },
    }
    return out


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return medians / means / minima of the main figures and how many families meet the floor.

    Floor: static gap_closed >= 0 and static AIQ >= the zero router's (1e-9 slack).
    """

    def col(get: Callable[[dict[str, Any]], Any]) -> np.ndarray:
        v = []
        for r in rows:
            try:
                x = get(r)
            except (KeyError, TypeError):
                x = None
            v.append(np.nan if x is None or not math.isfinite(x) else float(x))
        return np.array(v, dtype=float)

    cols = {
        "static": col(lambda r: r["static"]["gap_closed"]),
        "online": col(lambda r: r["online"]["gap_closed"]),
        "knn": col(lambda r: r["knn"]["gap_closed"]),
    }
    for k in CURVE_POINTS:

        def at(r: dict[str, Any], key: str = str(k)) -> Any:
            return r["online"]["curve"][key]

        cols[f"curve_{k}"] = col(at)
    out: dict[str, Any] = {"n_families": len(rows)}
    for name, v in cols.items():
        ok = v[np.isfinite(v)]
        out[name] = (
            {"median": float(np.median(ok)), "mean": float(ok.mean()), "min": float(ok.min())}
            if len(ok)
            else None
        )
    gaps = cols["static"]
    aiq_ok = [
        r["static"]["aiq"] is not None and r["static"]["aiq"] >= r["aiq_zero"] - 1e-9 for r in rows
    ]
    gap_ok = [not (g < 0) for g in gaps]  # NaN (no gap to close) meets the floor
    out["floor_met"] = int(sum(a and g for a, g in zip(aiq_ok, gap_ok, strict=True)))
    out["floor_gap_met"] = int(sum(gap_ok))
    out["floor_aiq_met"] = int(sum(aiq_ok))
    return out
