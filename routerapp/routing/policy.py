"""Policy: which allowed configuration to pick given predicted p(correct) and cost.

- ``ratio``: argmin cost / p (cost-of-pass of the prompt; p = 0 is never chosen unless nothing
  else is allowed).
- ``lambda``: argmax p - cost / lambda (willingness to pay lambda USD per correct answer). Over a
  set of prompts, the choice minimising *total* USD / number correct is exactly this rule with
  lambda equal to the optimal cost-of-pass (Dinkelbach), so the router's default lambda is the
  cost-of-pass it reaches on cross-fitted training predictions; sweeping lambda traces the
  cost/accuracy frontier.

Both use a lower confidence bound ``p_lcb = sigmoid(logit p - kappa * se)``, so a configuration the
router knows little about (a new one, or an unseen task family) must look clearly better to win.
"""

from __future__ import annotations

import math

import numpy as np

from routerapp.routing.types import Candidate, Constraints, NoAllowedCandidateError


def lcb(p: np.ndarray, se: np.ndarray, kappa: float) -> np.ndarray:
    """Return sigmoid(logit(p) - kappa * se) elementwise."""
    if kappa == 0:
        return p
    pc = np.clip(p, 1e-9, 1 - 1e-9)
    z = np.log(pc / (1 - pc)) - kappa * se
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def static_mask(candidates: list[Candidate], constraints: Constraints | None) -> np.ndarray:
    """Return the (A,) mask of candidates allowed by id / model constraints."""
    a_n = len(candidates)
    mask = np.ones(a_n, dtype=bool)
    if constraints is None:
        return mask
    if constraints.allowed_config_ids is not None:
        mask &= np.array([c.config_id in constraints.allowed_config_ids for c in candidates])
    if constraints.allowed_models is not None:
        mask &= np.array([c.model in constraints.allowed_models for c in candidates])
    return mask


def allowed(
    candidates: list[Candidate],
    p: np.ndarray,
    cost: np.ndarray,
    latency: np.ndarray,
    constraints: Constraints | None,
) -> np.ndarray:
    """Return the allowed mask, same shape as ``p`` ((A,) or (n, A)).

    Raise NoAllowedCandidateError (for a single prompt) when nothing is allowed; for a batch, rows
    with nothing allowed are all False and the caller decides.
    """
    base = static_mask(candidates, constraints)
    mask = np.broadcast_to(base, p.shape).copy()
    if constraints is not None:
        if constraints.max_cost_usd is not None:
            mask &= cost <= constraints.max_cost_usd
        if constraints.max_latency_s is not None:
            lat = np.broadcast_to(latency, p.shape)
            mask &= ~(np.isfinite(lat) & (lat > constraints.max_latency_s))
        if constraints.min_accuracy is not None:
            mask &= p >= constraints.min_accuracy
    if p.ndim == 1 and not mask.any():
        raise NoAllowedCandidateError(_why(base, constraints))
    return mask


def _why(base: np.ndarray, constraints: Constraints | None) -> str:
    if not base.any():
        return "no candidate matches allowed_config_ids / allowed_models"
    parts = []
    if constraints is not None:
        if constraints.max_cost_usd is not None:
            parts.append(f"max_cost_usd={constraints.max_cost_usd:g}")
        if constraints.max_latency_s is not None:
            parts.append(f"max_latency_s={constraints.max_latency_s:g}")
        if constraints.min_accuracy is not None:
            parts.append(f"min_accuracy={constraints.min_accuracy:g}")
    return "no allowed candidate satisfies " + (", ".join(parts) or "the constraints")


def objective(p: np.ndarray, cost: np.ndarray, lam: float | None) -> np.ndarray:
    """Return the score to minimise: cost / p (lam None) or cost / lam - p."""
    if lam is None:
        with np.errstate(divide="ignore"):
            return np.where(p > 0, cost / np.maximum(p, 1e-300), np.inf)
    if not lam > 0:
        raise ValueError("lambda must be > 0")
    if math.isinf(lam):
        return -p + 1e-12 * cost  # most accurate, cheapest among ties
    return cost / lam - p


def choose(p: np.ndarray, cost: np.ndarray, mask: np.ndarray, lam: float | None) -> np.ndarray:
    """Return the index of the best allowed config per row ((n, A) -> (n,), (A,) -> scalar array).

    Rows with nothing allowed fall back to the cheapest configuration overall.
    """
    obj = objective(p, cost, lam)
    # Among equal objectives (e.g. all p = 0), prefer the cheaper one.
    obj = np.where(mask, obj, np.inf)
    best = np.argmin(obj + 0.0, axis=-1)
    if p.ndim == 2:
        none = ~mask.any(1)
        if none.any():
            best[none] = np.argmin(cost[none], axis=1)
        inf_rows = ~np.isfinite(np.take_along_axis(obj, best[:, None], 1)[:, 0]) & ~none
        if inf_rows.any():  # every allowed p is 0 under ratio: cheapest allowed
            c = np.where(mask[inf_rows], cost[inf_rows], np.inf)
            best[inf_rows] = np.argmin(c, axis=1)
    elif not np.isfinite(obj[best]):
        best = np.argmin(np.where(mask, cost, np.inf))
    return best
