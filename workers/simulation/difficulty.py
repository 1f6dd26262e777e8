"""Offline ``difficulty_adaptive`` over repeated samples (DiffAdapt-style: a first pass decides
how much compute a prompt gets).

Per prompt and draw, one sample drawn without replacement (seeded) plays the *probe*; its
features are its length (output tokens), its mean token entropy (the ``entropy`` column when the
table has one, else 0: the classifier then learns from length and task alone) and the task tag
(the ``dataset`` column, else empty). The strategy's own classifier
(:class:`workers.strategies.difficulty.DifficultyClassifier`) turns them into p(probe right) and a
class; the class's configuration (a :class:`SimConfig`, or None: answer with the probe) is then
simulated by :func:`workers.simulation.repeated.simulate_prompt` on the prompt's *other* samples,
so the probe is never drawn twice. Every sample is billed: the probe plus the class's samples.

The classifier can be given, or fitted per sample group (model / prompting) on the probes of
``fit_prompts`` with :func:`workers.strategies.difficulty.fit_classifier`, the same fit the live
strategy gets from the query log. With ``tune_thresholds`` the easy / hard bars are then chosen on
those same prompts to minimise their simulated cost-of-pass (a grid over the fitted p's quantiles);
rows of ``fit_prompts`` are marked ``in_fit`` so that figures are read on the other prompts only.

Not simulated: the live probe is greedy (temperature 0) and capped at ``probe_tokens``; here it is
one of the table's sampled outputs, uncapped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.simulation.repeated import SimConfig, _norm, _stable_hash, simulate_prompt

CLASSES = ("easy", "normal", "hard")
_METRICS = ("correct", "samples", "output_tokens", "cost_usd")


@dataclass(frozen=True)
class DifficultySim:
    """A difficulty-adaptive configuration: one class strategy each (None: the probe answers)."""

    easy: SimConfig | None = None
    normal: SimConfig | None = None
    hard: SimConfig | None = None

    def of(self, label: str) -> SimConfig | None:
        cfg: SimConfig | None = getattr(self, label)
        return cfg

    @property
    def name(self) -> str:
        parts = [("probe" if c is None else c.name) for c in (self.easy, self.normal, self.hard)]
        return "difficulty_adaptive(" + "|".join(parts) + ")"


@dataclass
class _Prompt:
    key: tuple[Any, ...]
    task: str
    correct: np.ndarray
    preds: list[str | None]
    toks: np.ndarray
    entropy: np.ndarray
    in_cost: np.ndarray | None
    scores: np.ndarray | None


def _prompts(df: Any, keys: list[str], out_price: float, cost_col: str | None) -> list[_Prompt]:
    tok_col = "output_tokens_est" if "output_tokens_est" in df.columns else "output_tokens"
    out = []
    for key, g in df.sort_values(keys + ["sample_idx"]).groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        toks = g[tok_col].astype(float).fillna(0).to_numpy()
        in_cost = None
        if cost_col is not None:
            in_cost = (g[cost_col].astype(float).to_numpy() - toks * out_price).clip(min=0)
        out.append(
            _Prompt(
                key=key,
                task=str(g["dataset"].iloc[0]) if "dataset" in g.columns else "",
                correct=g["correct"].astype(float).to_numpy(),
                preds=[_norm(p) for p in g["pred"].tolist()],
                toks=toks,
                entropy=g["entropy"].astype(float).fillna(0).to_numpy()
                if "entropy" in g.columns
                else np.zeros(len(g)),
                in_cost=in_cost,
                scores=g["score"].astype(float).to_numpy() if "score" in g.columns else None,
            )
        )
    return out


def _draws(
    p: _Prompt, config: DifficultySim, *, seed: int, n_draws: int, out_price: float
) -> list[dict[str, Any]]:
    """Per draw: the probe's features and correctness and the outcome of every class."""
    prompt_hash = _stable_hash("|".join(map(str, p.key)))
    probe_rng = np.random.default_rng([seed, _stable_hash("difficulty:probe"), prompt_hash])
    class_rngs = {
        label: np.random.default_rng(
            [seed, _stable_hash(f"difficulty:{label}:{cfg.name}"), prompt_hash]
        )
        for label in CLASSES
        if (cfg := config.of(label)) is not None
    }
    n = len(p.correct)
    out = []
    for _ in range(n_draws):
        i = int(probe_rng.integers(n))
        probe_cost = float(p.toks[i]) * out_price + (
            float(p.in_cost[i]) if p.in_cost is not None else 0.0
        )
        probe = {"correct": float(p.correct[i]), "samples": 1.0,
                 "output_tokens": float(p.toks[i]), "cost_usd": probe_cost}  # fmt: skip
        rest = [j for j in range(n) if j != i]
        outcomes: dict[str, dict[str, float]] = {}
        for label in CLASSES:
            cfg = config.of(label)
            if cfg is None or not rest:
                outcomes[label] = dict(probe)
                continue
            res = simulate_prompt(
                cfg,
                p.correct[rest].tolist(),
                [p.preds[j] for j in rest],
                p.toks[rest].tolist(),
                p.in_cost[rest].tolist() if p.in_cost is not None else None,
                out_price,
                class_rngs[label],
                p.scores[rest].tolist() if p.scores is not None else None,
            )
            outcomes[label] = {
                "correct": res["correct"],
                "samples": 1.0 + res["samples"],
                "output_tokens": probe["output_tokens"] + res["output_tokens"],
                "cost_usd": probe_cost + res["cost_usd"],
            }
        out.append(
            {
                "entropy": float(p.entropy[i]),
                "length": int(p.toks[i]),
                "task": p.task,
                "probe_correct": bool(p.correct[i] > 0),
                "outcomes": outcomes,
            }
        )
    return out


def _tune(
    draws: Sequence[dict[str, Any]], ps: Sequence[float], clf: Any, grid: int = 12
) -> tuple[float, float]:
    """Return (hard_below, easy_above) minimising total cost / total correct over ``draws``."""
    qs = sorted({0.0, 1.0 + 1e-9, *np.quantile(ps, np.linspace(0, 1, grid + 1)).tolist()})
    best = (float("inf"), -1.0, clf.hard_below, clf.easy_above)
    for lo in qs:
        for hi in qs:
            if hi < lo:
                continue
            cost = correct = 0.0
            for d, p in zip(draws, ps, strict=True):
                label = "easy" if p >= hi else ("hard" if p < lo else "normal")
                cost += d["outcomes"][label]["cost_usd"]
                correct += d["outcomes"][label]["correct"]
            cop = cost / correct if correct else float("inf")
            if (cop, -correct) < (best[0], best[1]):
                best = (cop, -correct, lo, hi)
    lo, hi = best[2], best[3]
    return min(max(lo, 0.0), 1.0 - 1e-9), min(max(hi, lo, 1e-9), 1.0)


def simulate_difficulty(
    samples: Any,
    configs: Sequence[DifficultySim],
    *,
    classifier: Any | None = None,
    fit_prompts: Collection[str] = (),
    tune_thresholds: bool = False,
    seed: int = 0,
    n_draws: int = 1,
    output_usd_per_mtok: float | None = None,
    group_cols: Sequence[str] = ("model", "strategy"),
) -> Any:
    """Return one row per (group, prompt_id, configuration): mean ``correct``, ``samples``,
    ``output_tokens``, ``cost_usd`` over ``n_draws`` draws (the probe included), the share of
    draws in each class (``easy`` / ``normal`` / ``hard``), ``probe_correct``, ``in_fit``.

    ``classifier``: a ``DifficultyClassifier`` for every group, or a mapping from the group's
    key (a tuple of ``group_cols`` values) to one; without it, one is fitted per group on the
    probes of ``fit_prompts`` (the hand-set prior when that is empty). Raise ValueError when a
    cost column is present without ``output_usd_per_mtok``, or when the fit fails.
    """
    import pandas as pd

    from workers.strategies.difficulty import DifficultyClassifier, fit_classifier

    df = samples
    cost_col = next((c for c in ("cost_usd_est", "cost_usd") if c in df.columns), None)
    if cost_col is not None and output_usd_per_mtok is None:
        raise ValueError(f"{cost_col} present: pass output_usd_per_mtok to split input cost")
    out_price = float(output_usd_per_mtok or 0) / 1e6
    groups = [c for c in group_cols if c in df.columns]
    keys = groups + ["prompt_id"]
    prompts = _prompts(df, keys, out_price, cost_col)
    fit_set = {str(x) for x in fit_prompts}
    rows: list[dict[str, Any]] = []
    for config in configs:
        draws = {
            p.key: _draws(p, config, seed=seed, n_draws=n_draws, out_price=out_price)
            for p in prompts
        }
        by_group: dict[tuple[Any, ...], list[_Prompt]] = {}
        for p in prompts:
            by_group.setdefault(p.key[:-1], []).append(p)
        for gkey, members in by_group.items():
            if isinstance(classifier, Mapping):
                clf = classifier[gkey]
            elif classifier is not None:
                clf = classifier
            elif fit_set:
                fit_rows = [d for p in members if str(p.key[-1]) in fit_set for d in draws[p.key]]
                clf = fit_classifier(fit_rows)
            else:
                clf = DifficultyClassifier()
            if tune_thresholds and fit_set:
                fit_draws = [d for p in members if str(p.key[-1]) in fit_set for d in draws[p.key]]
                ps = [clf.p_right(d["entropy"], d["length"], d["task"]) for d in fit_draws]
                lo, hi = _tune(fit_draws, ps, clf)
                clf = clf.model_copy(update={"hard_below": lo, "easy_above": hi})
            for p in members:
                acc = dict.fromkeys(_METRICS, 0.0) | dict.fromkeys(CLASSES, 0.0)
                acc["probe_correct"] = 0.0
                for d in draws[p.key]:
                    label = clf.classify(clf.p_right(d["entropy"], d["length"], d["task"]))
                    for m in _METRICS:
                        acc[m] += d["outcomes"][label][m] / n_draws
                    acc[label] += 1 / n_draws
                    acc["probe_correct"] += float(d["probe_correct"]) / n_draws
                row: dict[str, Any] = dict(zip(keys, p.key, strict=True))
                row.update({"config": config.name, "sim_strategy": "difficulty_adaptive"})
                row.update(acc)
                row["in_fit"] = str(p.key[-1]) in fit_set
                row["easy_above"], row["hard_below"] = clf.easy_above, clf.hard_below
                rows.append(row)
    return pd.DataFrame(rows)
