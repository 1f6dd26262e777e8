"""Metric definitions (DESIGN.md "Metrics"); the same code feeds the CLI, the dashboards and bench/.

All functions work on an outcome matrix pair: ``cost`` and ``correct``, shape (prompts, configs),
NaN where a configuration has no outcome for a prompt.

- accuracy = mean correctness of the chosen outcomes; mean_cost = mean USD per query;
  cost-of-pass (CoP) = total USD / number correct (inf when nothing is correct).
- min-CoP oracle: the per-prompt choice minimising the *total* cost-of-pass, computed exactly by
  Dinkelbach's method: for t = current CoP pick, per prompt, argmin cost - t * correct; recompute
  t; stop when it no longer decreases (finite, exact for this 0-1 fractional program).
- gap_closed = (CoP_best_single - CoP_router) / (CoP_best_single - CoP_oracle), best single chosen
  on training data (NaN when the gap is zero).
- AIQ (RouterBench): area under the non-decreasing upper convex hull of (mean cost, accuracy)
  points, over the cost range of the single configurations, divided by that range. The point
  (0, 0) ("answer nothing") is always available, so mixtures with it are on the hull.
- ECE: expected calibration error with equal-width bins.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolicyFigures:
    """Figures of one set of per-prompt choices."""

    accuracy: float
    mean_cost: float
    cop: float
    n: int
    n_correct: float
    total_cost: float

    def as_dict(self) -> dict[str, float]:
        """Return a JSON-friendly dict (inf CoP becomes None)."""
        return {
            "accuracy": self.accuracy,
            "mean_cost": self.mean_cost,
            "cop": None if not math.isfinite(self.cop) else self.cop,  # type: ignore[dict-item]
            "n": self.n,
            "n_correct": self.n_correct,
            "total_cost": self.total_cost,
        }


def cost_of_pass(total_cost: float, n_correct: float) -> float:
    """Return total USD / number correct (inf when nothing is correct)."""
    return total_cost / n_correct if n_correct > 0 else math.inf


def fill_missing(cost: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return copies with missing outcomes replaced by the configuration's column mean.

    Suites keep only configurations with >= 99% test coverage; this makes the rare gap neutral.
    """
    c = cost.copy()
    r = correct.copy()
    for m in (c, r):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column with no outcome at all
            col = np.nanmean(m, axis=0) if m.size else np.zeros(m.shape[1])
        col = np.where(np.isfinite(col), col, 0.0)
        idx = np.where(np.isnan(m))
        m[idx] = col[idx[1]]
    return c, r


def policy_figures(cost: np.ndarray, correct: np.ndarray, choice: np.ndarray) -> PolicyFigures:
    """Return figures for ``choice`` (config index per prompt) on filled matrices."""
    rows = np.arange(len(choice))
    c = cost[rows, choice]
    r = correct[rows, choice]
    tc = float(c.sum())
    nc = float(r.sum())
    n = len(choice)
    return PolicyFigures(
        nc / n if n else math.nan, tc / n if n else math.nan, cost_of_pass(tc, nc), n, nc, tc
    )


def expected_figures(cost: np.ndarray, correct: np.ndarray, probs: np.ndarray) -> PolicyFigures:
    """Return expected figures of a randomised policy choosing config j with ``probs[i, j]``."""
    n = len(cost)
    tc = float(np.sum(probs * cost))
    nc = float(np.sum(probs * correct))
    return PolicyFigures(nc / n, tc / n, cost_of_pass(tc, nc), n, nc, tc)


def min_cop_oracle(
    cost: np.ndarray, correct: np.ndarray, max_iter: int = 1000
) -> tuple[np.ndarray, float]:
    """Return (choice, CoP) of the exact min-CoP oracle (Dinkelbach; see module docstring)."""
    n = len(cost)
    if n == 0:
        return np.zeros(0, dtype=int), math.inf
    # Start from the best single configuration (finite when any config solves anything).
    col_c = cost.sum(0)
    col_r = correct.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        singles = np.where(col_r > 0, col_c / np.where(col_r > 0, col_r, 1), np.inf)
    if not np.isfinite(singles).any():
        choice = np.argmin(cost, axis=1)
        return choice, math.inf
    t = float(singles.min())
    rows = np.arange(n)
    choice = np.full(n, int(np.argmin(singles)))
    for _ in range(max_iter):
        obj = cost - t * correct
        # Ties: prefer the cheaper configuration (does not change the optimum, keeps it stable).
        new = _argmin_tiebreak(obj, cost)
        tc = float(cost[rows, new].sum())
        nc = float(correct[rows, new].sum())
        t_new = cost_of_pass(tc, nc)
        if not t_new < t * (1 - 1e-12):
            if t_new <= t:
                choice = new
                t = t_new
            break
        choice, t = new, t_new
    return choice, t


def _argmin_tiebreak(obj: np.ndarray, cost: np.ndarray) -> np.ndarray:
    best = obj.min(1, keepdims=True)
    tie = np.isclose(obj, best, rtol=0, atol=1e-15 + 1e-12 * np.abs(best))
    return np.argmin(np.where(tie, cost, np.inf), axis=1)


def best_single(cost: np.ndarray, correct: np.ndarray, by: str = "cop") -> int:
    """Return the index of the best single configuration on these matrices (by 'cop' or 'accuracy').

    Ties on CoP go to the more accurate configuration; ties on accuracy to the cheaper one.
    """
    col_c = cost.sum(0)
    col_r = correct.sum(0)
    if by == "accuracy":
        order = np.lexsort((col_c, -col_r))
        return int(order[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        cop = np.where(col_r > 0, col_c / np.where(col_r > 0, col_r, 1), np.inf)
    order = np.lexsort((-col_r, cop))
    return int(order[0])


def gap_closed(cop_router: float, cop_best_single: float, cop_oracle: float) -> float:
    """Return (best - router) / (best - oracle); NaN when the gap is zero or undefined."""
    gap = cop_best_single - cop_oracle
    if not (math.isfinite(gap) and gap > 0 and math.isfinite(cop_router)):
        if math.isfinite(gap) and gap > 0 and not math.isfinite(cop_router):
            return -math.inf
        return math.nan
    return (cop_best_single - cop_router) / gap


def upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the non-decreasing upper concave hull of (cost, accuracy) points, sorted by cost.

    (0, 0) is included; after the most accurate point the hull stays flat.
    """
    pts = sorted(
        set(
            [(0.0, 0.0)]
            + [(float(c), float(a)) for c, a in points if math.isfinite(c) and math.isfinite(a)]
        )
    )
    # Non-decreasing: a point is dominated when a cheaper one is at least as accurate.
    frontier: list[tuple[float, float]] = []
    best = -math.inf
    for c, a in pts:
        if a > best:
            frontier.append((c, a))
            best = a
    hull: list[tuple[float, float]] = []
    for p in frontier:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or below the chord from hull[-2] to p.
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def hull_value(hull: list[tuple[float, float]], c: float) -> float:
    """Return the hull's accuracy at cost ``c`` (flat beyond its last point)."""
    if c >= hull[-1][0]:
        return hull[-1][1]
    for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
        if x1 <= c <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (c - x1) / (x2 - x1)
    return hull[0][1]


def aiq(points: list[tuple[float, float]], cost_lo: float, cost_hi: float) -> float:
    """Return the AIQ of (mean cost, accuracy) ``points`` over [cost_lo, cost_hi] (see module doc)."""
    hull = upper_hull(points)
    if not cost_hi > cost_lo:
        return hull_value(hull, cost_lo)
    xs = sorted({cost_lo, cost_hi} | {x for x, _ in hull if cost_lo < x < cost_hi})
    area = 0.0
    for x1, x2 in zip(xs, xs[1:], strict=False):
        area += 0.5 * (hull_value(hull, x1) + hull_value(hull, x2)) * (x2 - x1)
    return area / (cost_hi - cost_lo)


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10, weights: np.ndarray | None = None) -> float:
    """Return the expected calibration error of predictions ``p`` for outcomes ``y`` in [0, 1]."""
    p = np.asarray(p, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=float).ravel()
    ok = np.isfinite(p) & np.isfinite(y) & (w > 0)
    p, y, w = p[ok], y[ok], w[ok]
    if len(p) == 0:
        return math.nan
    b = np.minimum((p * bins).astype(int), bins - 1)
    tot = w.sum()
    err = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            wk = w[m]
            err += (
                wk.sum()
                / tot
                * abs(float(np.sum(wk * y[m]) / wk.sum() - np.sum(wk * p[m]) / wk.sum()))
            )
    return err
