"""Offline cascades over repeated samples: a cheap configuration first (majority@k1 on one
group of samples, e.g. one model or prompting), a stronger one (majority@k2 on another group)
only when the first stage's vote agreement is below a threshold.

Same conventions as :mod:`workers.simulation.repeated`: samples drawn without replacement
with a seeded generator per (prompt, configuration), every drawn sample billed (input from
``cost_usd_est`` minus its output share, plus output tokens at the output price), ties to the
answer drawn first. Agreement is the winner's share of the answered samples (0 when none
answered), as :func:`workers.strategies.cascade.stage_confidence` computes it live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.simulation.repeated import _norm, _stable_hash, _vote


@dataclass(frozen=True)
class CascadeSim:
    """Stage 1: majority@k1 on ``first`` samples; below ``threshold`` agreement, stage 2:
    majority@k2 on ``second`` samples (``first`` / ``second``: values of ``group_col``)."""

    first: str
    k1: int
    second: str
    k2: int
    threshold: float

    @property
    def name(self) -> str:
        return (
            f"cascade({self.first}:maj@{self.k1} -> {self.second}:maj@{self.k2},"
            f"agree>={self.threshold:g})"
        )


def _stage(
    rng: np.random.Generator,
    correct: np.ndarray,
    preds: Sequence[str | None],
    toks: np.ndarray,
    in_cost: np.ndarray | None,
    k: int,
    out_price: float,
) -> tuple[float, float, float, float, int]:
    """Return (correct, agreement, output tokens, cost, samples) of one majority@k draw."""
    k = min(k, len(correct))
    drawn = [int(i) for i in rng.choice(len(correct), size=k, replace=False)]
    local = [preds[i] for i in drawn]
    pick = _vote(list(range(k)), local, [0.0] * k)
    answered = [p for p in local if p is not None]
    agreement = 0.0
    if pick is not None and answered:
        agreement = sum(1 for p in answered if p == local[pick]) / len(answered)
    ok = float(correct[drawn[pick if pick is not None else 0]])
    out = float(sum(toks[i] for i in drawn))
    cost = out * out_price + (float(sum(in_cost[i] for i in drawn)) if in_cost is not None else 0)
    return ok, agreement, out, cost, k


StageData = dict[tuple[str, str], tuple[np.ndarray, list[str | None], np.ndarray, Any]]


def _stage_data(
    df: Any,
    group_col: str,
    output_usd_per_mtok: float | None,
    *,
    groups: Sequence[str] | None = None,
    prompts: set[str] | None = None,
) -> tuple[StageData, float]:
    """Per (group, prompt): the samples' correctness, normalised answers, output tokens and
    input cost (the cost column less the output tokens' price, or None), in sample order; and
    the output price per token. ``groups`` / ``prompts`` restrict what is read."""
    tok_col = "output_tokens_est" if "output_tokens_est" in df.columns else "output_tokens"
    cost_col = next((c for c in ("cost_usd_est", "cost_usd") if c in df.columns), None)
    if cost_col is not None and output_usd_per_mtok is None:
        raise ValueError(f"{cost_col} present: pass output_usd_per_mtok to split input cost")
    out_price = float(output_usd_per_mtok or 0) / 1e6
    if groups is not None:
        df = df[df[group_col].isin(list(groups))]
    data: StageData = {}
    for (group, pid), g in df.sort_values([group_col, "prompt_id", "sample_idx"]).groupby(
        [group_col, "prompt_id"], sort=True
    ):
        if prompts is not None and str(pid) not in prompts:
            continue
        toks = g[tok_col].astype(float).fillna(0).to_numpy()
        in_cost = None
        if cost_col is not None:
            in_cost = (g[cost_col].astype(float).to_numpy() - toks * out_price).clip(min=0)
        data[(str(group), str(pid))] = (
            g["correct"].astype(float).to_numpy(),
            [_norm(p) for p in g["pred"].tolist()],
            toks,
            in_cost,
        )
    return data, out_price


def simulate_cascades(
    samples: Any,
    cascades: Sequence[CascadeSim],
    *,
    seed: int = 0,
    n_draws: int = 1,
    output_usd_per_mtok: float | None = None,
    group_col: str = "strategy",
) -> Any:
    """Return one row per (prompt_id, cascade): mean ``correct``, ``samples``,
    ``output_tokens``, ``cost_usd`` and ``escalated`` (the share of draws that escalated)."""
    import pandas as pd

    data, out_price = _stage_data(samples, group_col, output_usd_per_mtok)
    prompts = sorted({pid for _, pid in data})
    rows = []
    for c in cascades:
        for pid in prompts:
            if (c.first, pid) not in data or (c.second, pid) not in data:
                continue
            rng = np.random.default_rng([seed, _stable_hash(c.name), _stable_hash(pid)])
            acc = {"correct": 0.0, "samples": 0.0, "output_tokens": 0.0, "cost_usd": 0.0,
                   "escalated": 0.0}  # fmt: skip
            for _ in range(n_draws):
                ok, agree, out, cost, n = _stage(rng, *data[(c.first, pid)], c.k1, out_price)
                if agree < c.threshold:
                    ok, _, out2, cost2, n2 = _stage(rng, *data[(c.second, pid)], c.k2, out_price)
                    out, cost, n = out + out2, cost + cost2, n + n2
                    acc["escalated"] += 1 / n_draws
                acc["correct"] += ok / n_draws
                acc["samples"] += n / n_draws
                acc["output_tokens"] += out / n_draws
                acc["cost_usd"] += cost / n_draws
            rows.append({"prompt_id": pid, "config": c.name, **acc})
    return pd.DataFrame(rows)


def cascade_fit_rows(
    samples: Any,
    first: str,
    k1: int,
    second: str,
    k2: int,
    *,
    prompts: Any = None,
    seed: int = 0,
    n_draws: int = 1,
    output_usd_per_mtok: float | None = None,
    group_col: str = "strategy",
) -> list[dict[str, Any]]:
    """Return rows for :func:`workers.strategies.cascade.fit_threshold`: per prompt (of
    ``prompts``, default all) and draw, the first stage's agreement, correctness and cost and the
    second stage's correctness and cost, both stages always simulated (as FrugalGPT fits on a
    labelled set where every stage ran)."""
    keep = None if prompts is None else {str(p) for p in prompts}
    data, out_price = _stage_data(
        samples, group_col, output_usd_per_mtok, groups=[first, second], prompts=keep
    )
    rows = []
    for pid in sorted({pid for _, pid in data}):
        if (first, pid) not in data or (second, pid) not in data:
            continue
        rng = np.random.default_rng(
            [seed, _stable_hash(f"fit:{first}:{second}"), _stable_hash(pid)]
        )
        for _ in range(n_draws):
            ok1, agree, _, cost1, _ = _stage(rng, *data[(first, pid)], k1, out_price)
            ok2, _, _, cost2, _ = _stage(rng, *data[(second, pid)], k2, out_price)
            rows.append({"prompt_id": pid, "confidence": agree, "first_correct": ok1,
                         "first_cost": cost1, "second_correct": ok2, "second_cost": cost2})  # fmt: skip
    return rows
