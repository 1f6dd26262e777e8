"""Learning-source adapters: turn raw outcome tables and strategy simulations into the router's
outcome schema, and build routing suites from them (for training and for honest held-out checks).

- :func:`outcomes_from_raw`: rows in the format of ``../shared/data/dev_outcomes_single.parquet``
  (``source, prompt_uid, dataset, model, strategy, correct, input_tokens, output_tokens,
  output_tokens_est, cost_usd``) -> suite outcome rows, pricing rows without a real cost as
  ``input tokens x input price + output tokens x output price`` (prices per Mtok by model). Token
  counts fall back to the text length / 4 and, for prompts without text, to per-family proxies;
  output tokens to the median of the other models on that prompt, then to per-family defaults
  (the suites' ``token_proxies``).
- :func:`outcomes_from_strategy_simulation`: the DataFrame of ``workers.simulation.simulate``
  (repeated samples -> majority@k, best-of-n, short-m@k ...) -> outcome rows, one configuration per
  (model, simulated strategy).
- :func:`build_suite`: a 70/30 split of prompts by a stable hash of ``prompt_uid`` (as the suites
  in ../shared/suites), keeping configurations that cover at least 99% of the test prompts.
"""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from routerapp.routing.tables import Suite
from routerapp.routing.types import Candidate, TableError

INPUT_TOKENS_TEXTLESS = {"math_*_hard": 96.0, "gpqa_*": 194.0, "musr_*": 1000.0, "ifeval": 120.0}
OUTPUT_TOKENS_DEFAULT = {
    "math_*_hard": 261.0,
    "bbh_*": 5.0,
    "mmlu_pro": 5.0,
    "gpqa_*": 5.0,
    "musr_*": 5.0,
    "ifeval": 300.0,
}


def _by_pattern(table: dict[str, float], dataset: str, default: float) -> float:
    for pat, v in table.items():
        if fnmatch.fnmatch(dataset, pat):
            return v
    return default


def hash_unit(uid: str) -> float:
    """Return a stable number in [0, 1) for ``uid`` (md5; the same in every process)."""
    return int(hashlib.md5(uid.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def outcomes_from_raw(
    raw: pd.DataFrame, prices: pd.DataFrame, prompts: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Return suite-schema outcome rows for raw per-(prompt, model, strategy) rows.

    Rows whose model has no price and no real cost are dropped. Raise TableError on missing columns.
    """
    need = ("prompt_uid", "dataset", "model", "strategy", "correct")
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise TableError(f"raw outcomes: missing column(s) {', '.join(missing)}")
    df = raw.copy()
    for col in ("input_tokens", "output_tokens", "output_tokens_est", "cost_usd"):
        if col not in df.columns:
            df[col] = np.nan
    lengths = pd.Series(dtype=float)
    if prompts is not None and len(prompts):
        lengths = (
            prompts.drop_duplicates("prompt_uid")
            .set_index("prompt_uid")["prompt"]
            .fillna("")
            .str.len()
        )
    plen = df["prompt_uid"].map(lengths).fillna(0.0).to_numpy(dtype=float)
    ds = df["dataset"].astype(str).to_numpy()
    proxy_in = np.array([_by_pattern(INPUT_TOKENS_TEXTLESS, d, 150.0) for d in ds])
    in_tok = df["input_tokens"].to_numpy(dtype=float)
    in_tok = np.where(np.isfinite(in_tok), in_tok, np.where(plen > 0, plen / 4.0 + 10.0, proxy_in))
    out_tok = df["output_tokens"].to_numpy(dtype=float)
    est = df["output_tokens_est"].to_numpy(dtype=float)
    out_tok = np.where(np.isfinite(out_tok), out_tok, est)
    med = pd.Series(out_tok).groupby(df["prompt_uid"].to_numpy()).transform("median").to_numpy()
    dflt = np.array([_by_pattern(OUTPUT_TOKENS_DEFAULT, d, 200.0) for d in ds])
    out_tok = np.where(np.isfinite(out_tok), out_tok, np.where(np.isfinite(med), med, dflt))
    pr = prices.drop_duplicates("model").set_index("model")
    pin = df["model"].map(pr["input_usd_per_mtok"]).to_numpy(dtype=float)
    pout = df["model"].map(pr["output_usd_per_mtok"]).to_numpy(dtype=float)
    real = df["cost_usd"].to_numpy(dtype=float)
    cost = np.where(np.isfinite(real), real, (in_tok * pin + out_tok * pout) / 1e6)
    out = pd.DataFrame(
        {
            "prompt_uid": df["prompt_uid"].astype(str).to_numpy(),
            "dataset": ds,
            "config_id": (df["model"].astype(str) + "|" + df["strategy"].astype(str)).to_numpy(),
            "model": df["model"].astype(str).to_numpy(),
            "strategy": df["strategy"].astype(str).to_numpy(),
            "correct": df["correct"].to_numpy(dtype=float),
            "cost_usd": cost,
            "input_tokens": in_tok,
            "output_tokens": out_tok,
        }
    )
    return out[np.isfinite(out["cost_usd"]) & np.isfinite(out["correct"])].reset_index(drop=True)


def outcomes_from_strategy_simulation(
    sim: pd.DataFrame, *, dataset: str | None = None, uid_prefix: str = ""
) -> pd.DataFrame:
    """Return outcome rows for the output of ``workers.simulation.simulate``.

    ``config_id`` is ``model|config[:base strategy]`` (e.g. ``gpt-4|majority_vote@5:cot_sample``).
    """
    need = ("prompt_id", "config", "correct", "cost_usd")
    missing = [c for c in need if c not in sim.columns]
    if missing:
        raise TableError(f"simulation: missing column(s) {', '.join(missing)}")
    model = (
        sim["model"].astype(str) if "model" in sim.columns else pd.Series("model", index=sim.index)
    )
    strat = sim["config"].astype(str)
    if "strategy" in sim.columns:
        strat = strat + ":" + sim["strategy"].astype(str)
    ds = (
        sim["dataset"].astype(str)
        if "dataset" in sim.columns
        else pd.Series(dataset or "", index=sim.index)
    )
    return pd.DataFrame(
        {
            "prompt_uid": uid_prefix + sim["prompt_id"].astype(str),
            "dataset": ds if dataset is None else dataset,
            "config_id": model + "|" + strat,
            "model": model,
            "strategy": strat,
            "correct": sim["correct"].astype(float),
            "cost_usd": sim["cost_usd"].astype(float),
            "input_tokens": np.nan,
            "output_tokens": sim["output_tokens"].astype(float)
            if "output_tokens" in sim.columns
            else np.nan,
        }
    ).reset_index(drop=True)


def build_suite(
    outcomes: pd.DataFrame,
    prompts: pd.DataFrame | None,
    *,
    train_range: tuple[float, float] = (0.0, 0.7),
    min_test_coverage: float = 0.99,
    test_datasets: list[str] | None = None,
    train_datasets: list[str] | None = None,
    path: str | Path = "<memory>",
) -> Suite:
    """Return an in-memory Suite split by prompt hash (train in ``train_range``, test elsewhere).

    ``train_datasets`` / ``test_datasets`` restrict each side to some task tags (for
    leave-one-family-out checks). Candidates: configurations present in train that cover at least
    ``min_test_coverage`` of the test prompts; test prompts missing any candidate are dropped.
    """
    o = outcomes
    h = o["prompt_uid"].map(hash_unit)
    in_train = (h >= train_range[0]) & (h < train_range[1])
    tr = o[in_train]
    te = o[~in_train]
    if train_datasets is not None:
        tr = tr[tr["dataset"].isin(train_datasets)]
    if test_datasets is not None:
        te = te[te["dataset"].isin(test_datasets)]
    if tr.empty or te.empty:
        raise TableError("build_suite: empty train or test side")
    n_test = te["prompt_uid"].nunique()
    cov = te.groupby("config_id")["prompt_uid"].nunique() / n_test
    keep = sorted(set(cov[cov >= min_test_coverage].index) & set(tr["config_id"].unique()))
    if not keep:
        raise TableError("build_suite: no configuration covers the test prompts")
    tr = tr[tr["config_id"].isin(keep)]
    te = te[te["config_id"].isin(keep)]
    full = te.groupby("prompt_uid")["config_id"].nunique()
    te = te[te["prompt_uid"].isin(full[full == len(keep)].index)]
    first = o.drop_duplicates("config_id").set_index("config_id")

    def model_strategy(cid: str) -> tuple[str, str]:
        if "model" in first.columns and "strategy" in first.columns:
            return str(first.at[cid, "model"]), str(first.at[cid, "strategy"])
        model, _, strategy = cid.partition("|")  # suite config ids are model|strategy
        return model, strategy or "single"

    cands = [Candidate(c, *model_strategy(c)) for c in keep]

    def prompt_rows(side: pd.DataFrame) -> pd.DataFrame:
        base = side.drop_duplicates("prompt_uid")[["prompt_uid", "dataset"]]
        if prompts is not None and len(prompts):
            text = prompts.drop_duplicates("prompt_uid").set_index("prompt_uid")["prompt"]
            return base.assign(
                prompt=base["prompt_uid"].map(text).fillna("").astype(str).to_numpy()
            )
        return base.assign(prompt="")

    return Suite(
        Path(str(path)),
        cands,
        tr.reset_index(drop=True),
        prompt_rows(tr).reset_index(drop=True),
        te.reset_index(drop=True),
        prompt_rows(te).reset_index(drop=True),
    )


def write_suite(suite: Suite, path: str | Path) -> Path:
    """Write ``suite`` in the ../shared/suites layout (candidates.csv + four parquet files)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        [
            {"config_id": c.config_id, "model": c.model, "strategy": c.strategy}
            for c in suite.candidates
        ]
    ).to_csv(d / "candidates.csv", index=False)
    suite.train_outcomes.to_parquet(d / "train_outcomes.parquet", index=False)
    suite.train_prompts.to_parquet(d / "train_prompts.parquet", index=False)
    if suite.test_outcomes is not None:
        suite.test_outcomes.to_parquet(d / "test_outcomes.parquet", index=False)
    if suite.test_prompts is not None:
        suite.test_prompts.to_parquet(d / "test_prompts.parquet", index=False)
    return d
