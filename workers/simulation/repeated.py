"""Offline strategy simulation from a table of repeated samples.

Input: one row per (prompt, sample) in the format of
``shared/data/dev_samples_repeated.parquet``: ``prompt_id``, ``sample_idx``, ``correct``
(0/1), ``pred`` (the extracted answer), an output-token column (``output_tokens_est`` or
``output_tokens``) and optionally ``cost_usd_est`` / ``cost_usd`` per sample, ``score``
(a scorer's value, for best-of-n) and ``strategy`` / ``model`` (kept as groups).

For each prompt and configuration, k samples are drawn without replacement with a fixed
seed (``n_draws`` independent draws, averaged), and the strategy is applied to them:

- ``majority_vote@k``: the most frequent normalised ``pred`` wins; ties go to the answer
  drawn first. Correct when the winning answer's samples are correct.
- ``best_of_n@k``: the drawn sample with the highest ``score`` (ties: first drawn); when
  the table has no ``score`` column, the shortest output (a length prior, documented
  stand-in) — ``scorer="oracle"`` gives pass@k.
- ``short_m_at_k``: samples are assumed to decode at the same speed, so they finish in
  order of length; the m shortest are kept and voted (ties to the shortest); every other
  sample is billed only up to the m-th shortest length (it was aborted then).
- ``first_finish@k``: short-m@k with m = 1.
- ``adaptive_consistency@k``: the drawn samples are taken in draw order, ``window`` at a
  time, and the strategy's own stopping rule
  (:func:`workers.strategies.adaptive_consistency.stop_decision`) decides after each window;
  only the samples taken are billed and voted. Its first samples are the same draws as
  ``majority_vote@k``'s (the same seeded draws), so the two are paired: any accuracy
  difference comes from stopping early.

Cost: each drawn sample bills its input once (one request per sample) and its output
tokens up to where it was stopped. With ``cost_usd_est`` present, a sample's input cost is
``cost - output_tokens * output_price`` (``output_usd_per_mtok`` must be given), so an
aborted sample costs its input plus the output tokens it generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

STRATEGIES = ("majority_vote", "best_of_n", "short_m_at_k", "first_finish", "adaptive_consistency")


@dataclass(frozen=True)
class SimConfig:
    """One simulated configuration: a strategy with its k (and m for short_m_at_k)."""

    strategy: str
    k: int
    m: int = 1
    scorer: str = "auto"
    #: adaptive_consistency: stopping rule, its posterior threshold, window and first stop.
    rule: str = "beta"
    threshold: float = 0.95
    window: int = 2
    min_samples: int = 2

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.k < 1 or self.m < 1 or self.m > self.k:
            raise ValueError("need 1 <= m <= k")
        if self.strategy == "adaptive_consistency":
            # The strategy's own params validate the stopping rule's settings.
            from workers.strategies.adaptive_consistency import AdaptiveConsistencyParams

            AdaptiveConsistencyParams(
                k=self.k,
                window=min(self.window, self.k),
                min_samples=min(self.min_samples, self.k),
                rule=self.rule,  # type: ignore[arg-type]
                threshold=self.threshold,
            )

    @property
    def name(self) -> str:
        if self.strategy == "short_m_at_k":
            return f"short_m_at_k@{self.k}:m{self.m}"
        if self.strategy == "best_of_n" and self.scorer != "auto":
            return f"best_of_n@{self.k}:{self.scorer}"
        if self.strategy == "adaptive_consistency":
            bar = "" if self.rule == "esc" else f"{self.threshold:g}"
            return f"adaptive_consistency@{self.k}:{self.rule}{bar}w{self.window}"
        return f"{self.strategy}@{self.k}"


def _norm(pred: Any) -> str | None:
    if pred is None or (isinstance(pred, float) and np.isnan(pred)):
        return None
    s = " ".join(str(pred).split())
    return s or None


def _vote(
    order: Sequence[int], preds: Sequence[str | None], lengths: Sequence[float]
) -> int | None:
    """Majority over ``order`` (positions into preds); ties -> first drawn. Returns a
    position of a sample with the winning answer, or None when no sample has one."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for pos in order:
        p = preds[pos]
        if p is None:
            continue
        counts[p] = counts.get(p, 0) + 1
        first.setdefault(p, pos)
    if not counts:
        return None
    rank = {pos: i for i, pos in enumerate(order)}
    best = min(counts, key=lambda a: (-counts[a], rank[first[a]]))
    return first[best]


def _vote_shortest(
    order: Sequence[int], preds: Sequence[str | None], lengths: Sequence[float]
) -> int | None:
    counts: dict[str, int] = {}
    shortest: dict[str, int] = {}
    for pos in sorted(order, key=lambda p: (lengths[p], list(order).index(p))):
        p = preds[pos]
        if p is None:
            continue
        counts[p] = counts.get(p, 0) + 1
        shortest.setdefault(p, pos)
    if not counts:
        return None
    best = min(counts, key=lambda a: (-counts[a], lengths[shortest[a]]))
    return shortest[best]


def simulate_prompt(
    config: SimConfig,
    correct: Sequence[float],
    preds: Sequence[str | None],
    out_tokens: Sequence[float],
    in_cost: Sequence[float] | None,
    out_price_per_token: float,
    rng: np.random.Generator,
    scores: Sequence[float] | None = None,
) -> dict[str, float]:
    """Simulate one draw of ``config`` on one prompt's samples.

    Return ``correct`` (0/1), ``output_tokens`` (billed, aborted ones included),
    ``samples`` (drawn) and ``cost_usd``.
    """
    n = len(correct)
    k = min(config.k, n)
    drawn = [int(i) for i in rng.choice(n, size=k, replace=False)]
    lengths = [float(out_tokens[i]) for i in drawn]
    billed = list(lengths)
    local_preds = [preds[i] for i in drawn]
    order = list(range(k))
    if config.strategy == "majority_vote":
        pick = _vote(order, local_preds, lengths)
    elif config.strategy == "adaptive_consistency":
        taken = _adaptive_prefix(config, local_preds)
        billed = lengths[:taken]
        pick = _vote(order[:taken], local_preds, lengths)
        k = taken
    elif config.strategy == "best_of_n":
        scorer = config.scorer
        if scorer == "auto":
            scorer = "score" if scores is not None else "shortest"
        if scorer == "oracle":
            pick = next((p for p in order if correct[drawn[p]] > 0), 0)
        elif scorer == "score":
            if scores is None:
                raise ValueError("scorer='score' needs a score column")
            pick = min(order, key=lambda p: (-float(scores[drawn[p]]), p))
        else:
            pick = min(order, key=lambda p: (lengths[p], p))
    else:
        m = 1 if config.strategy == "first_finish" else min(config.m, k)
        by_len = sorted(order, key=lambda p: (lengths[p], p))
        kept = by_len[:m]
        cutoff = lengths[kept[-1]]
        # Every sample still running when the m-th finished was aborted at that length.
        billed = [min(length, cutoff) for length in lengths]
        pick = _vote_shortest(kept, local_preds, lengths) if m > 1 else kept[0]
        if pick is None:
            pick = kept[0]
    if pick is None:
        pick = 0
    ok = float(correct[drawn[pick]])
    out_total = float(sum(billed))
    cost = out_total * out_price_per_token
    if in_cost is not None:
        cost += float(sum(in_cost[i] for i in drawn[:k]))  # the samples started
    return {"correct": ok, "output_tokens": out_total, "samples": float(k), "cost_usd": cost}


def _adaptive_prefix(config: SimConfig, preds: Sequence[str | None]) -> int:
    """Return how many of the drawn samples (in draw order) adaptive consistency takes."""
    from workers.strategies.adaptive_consistency import stop_decision

    k = len(preds)
    taken = 0
    while taken < k:
        taken = min(k, taken + config.window)
        decision = stop_decision(
            preds[:taken],
            k=k,
            rule=config.rule,
            threshold=config.threshold,
            window=config.window,
            min_samples=config.min_samples,
        )
        if decision.stop:
            break
    return taken


def simulate(
    samples: Any,
    configs: Iterable[SimConfig],
    *,
    seed: int = 0,
    n_draws: int = 1,
    output_usd_per_mtok: float | Decimal | None = None,
    group_cols: Sequence[str] = ("model", "strategy"),
) -> Any:
    """Return a DataFrame with one row per (group, prompt_id, config): mean ``correct``,
    ``output_tokens``, ``cost_usd`` over ``n_draws`` seeded draws.

    ``samples`` is a pandas DataFrame in the format described in the module docstring.
    Without ``output_usd_per_mtok``, ``cost_usd`` counts output tokens only at price 0
    unless a cost column exists, in which case the price is required.
    """
    import pandas as pd

    df = samples
    tok_col = "output_tokens_est" if "output_tokens_est" in df.columns else "output_tokens"
    cost_col = next((c for c in ("cost_usd_est", "cost_usd") if c in df.columns), None)
    if cost_col is not None and output_usd_per_mtok is None:
        raise ValueError(f"{cost_col} present: pass output_usd_per_mtok to split input cost")
    out_price = float(output_usd_per_mtok or 0) / 1e6
    groups = [c for c in group_cols if c in df.columns]
    configs = list(configs)
    rows: list[dict[str, Any]] = []
    keys = groups + ["prompt_id"]
    for key, g in df.sort_values(keys + ["sample_idx"]).groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        correct = g["correct"].astype(float).to_numpy()
        preds = [_norm(p) for p in g["pred"].tolist()]
        toks = g[tok_col].astype(float).fillna(0).to_numpy()
        in_cost = None
        if cost_col is not None:
            in_cost = (g[cost_col].astype(float).to_numpy() - toks * out_price).clip(min=0)
        scores = g["score"].astype(float).to_numpy() if "score" in g.columns else None
        for cfg in configs:
            # One generator per (prompt, config): results do not depend on row order of
            # other prompts or on which other configs are simulated.
            # Adaptive consistency draws exactly majority@k's samples (paired comparison).
            stream = (
                f"majority_vote@{cfg.k}" if cfg.strategy == "adaptive_consistency" else cfg.name
            )
            rng = np.random.default_rng(
                [seed, _stable_hash(stream), _stable_hash("|".join(map(str, key)))]
            )
            acc = {"correct": 0.0, "output_tokens": 0.0, "samples": 0.0, "cost_usd": 0.0}
            for _ in range(n_draws):
                res = simulate_prompt(cfg, correct, preds, toks, in_cost, out_price, rng, scores)
                for name in acc:
                    acc[name] += res[name] / n_draws
            row = dict(zip(keys, key, strict=True))
            row.update({"config": cfg.name, "sim_strategy": cfg.strategy, "k": cfg.k, "m": cfg.m})
            row.update(acc)
            rows.append(row)
    return pd.DataFrame(rows)


def _stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (Python's ``hash`` is salted per process)."""
    import zlib

    return zlib.crc32(text.encode("utf-8"))
