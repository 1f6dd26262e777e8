"""Tune adaptive consistency's stopping rule on some prompts, to be judged on others.

For each sample group (model / prompting) and cap k, every rule of a grid (Beta and Dirichlet
posteriors at several thresholds, ESC windows; windows and first stops) is simulated on the
``fit_prompts`` only, paired with majority@k on the same draws
(:func:`workers.simulation.repeated.simulate`). The rule kept is the one with the fewest mean
samples whose accuracy there is at most ``max_accuracy_drop`` below majority@k's (ties: the more
accurate, then the first in the grid). The caller then simulates it on prompts that were not
used here: the figures that count.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from workers.simulation.repeated import SimConfig, simulate


def default_grid(k: int) -> list[SimConfig]:
    """Beta 0.6-0.95 and Dirichlet 0.6-0.9 (windows 1 and 2), ESC (windows 2-4); first stop 2."""
    grid = []
    for window in (1, 2):
        if window > k:
            continue
        for th in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
            grid.append(SimConfig("adaptive_consistency", k, rule="beta", threshold=th,
                                  window=window, min_samples=min(2, k)))  # fmt: skip
        for th in (0.6, 0.7, 0.8, 0.9):
            grid.append(SimConfig("adaptive_consistency", k, rule="dirichlet", threshold=th,
                                  window=window, min_samples=min(2, k)))  # fmt: skip
    for window in (2, 3, 4):
        if window <= k:
            grid.append(SimConfig("adaptive_consistency", k, rule="esc", window=window,
                                  min_samples=min(2, k)))  # fmt: skip
    return grid


@dataclass(frozen=True)
class TunedRule:
    """The rule kept for one group at one k, with its and majority@k's figures on the fit set."""

    group: tuple[Any, ...]
    config: SimConfig
    fit_prompts: int
    fit_accuracy: float
    fit_samples: float
    fit_majority_accuracy: float


def tune_stopping_rule(
    samples: Any,
    k: int,
    *,
    fit_prompts: Collection[str],
    grid: Sequence[SimConfig] | None = None,
    max_accuracy_drop: float = 0.01,
    seed: int = 0,
    n_draws: int = 10,
    output_usd_per_mtok: float | None = None,
    group_cols: Sequence[str] = ("model", "strategy"),
) -> list[TunedRule]:
    """Return the tuned rule of each sample group (see the module docstring). Raise ValueError
    when ``fit_prompts`` selects no sample."""
    fit = {str(p) for p in fit_prompts}
    df = samples[samples["prompt_id"].astype(str).isin(fit)]
    if df.empty:
        raise ValueError("no sample belongs to fit_prompts")
    configs = [SimConfig("majority_vote", k), *(grid if grid is not None else default_grid(k))]
    sim = simulate(df, configs, seed=seed, n_draws=n_draws,
                   output_usd_per_mtok=output_usd_per_mtok, group_cols=group_cols)  # fmt: skip
    groups = [c for c in group_cols if c in sim.columns]
    order = {c.name: i for i, c in enumerate(configs)}
    by_name = {c.name: c for c in configs}
    out = []
    for key, g in sim.groupby(groups, sort=True) if groups else [((), sim)]:
        key = key if isinstance(key, tuple) else (key,)
        means = g.groupby("config")[["correct", "samples"]].mean()
        base = float(means.loc[configs[0].name, "correct"])
        ok = [
            (float(r.samples), -float(r.correct), order[str(name)], str(name))
            for name, r in means.iterrows()
            if str(name) != configs[0].name and float(r.correct) >= base - max_accuracy_drop - 1e-12
        ]
        name = min(ok)[3] if ok else configs[0].name
        out.append(
            TunedRule(
                group=key,
                config=by_name[name],
                fit_prompts=int(g["prompt_id"].nunique()),
                fit_accuracy=float(means.loc[name, "correct"]),
                fit_samples=float(means.loc[name, "samples"]),
                fit_majority_accuracy=base,
            )
        )
    return out
