"""``adaptive_consistency``: self-consistency that stops sampling once the vote is decided.

Samples are drawn in windows of ``window`` (one engine request each, seeds continuing
where the previous window stopped, so the samples are a prefix of ``majority_vote``'s with
the same seed). After each window a stopping rule looks at the answers so far:

- ``beta`` (Aggarwal et al. 2023, "Let's Sample Step by Step: Adaptive-Consistency"): with
  the leader's count v1 and the runner-up's v2, the posterior probability that the leader's
  rate is the larger of the two, ``P(X > 1/2)`` for ``X ~ Beta(v1 + prior, v2 + prior)``;
  stop when it reaches ``threshold``.
- ``dirichlet`` (same paper): the probability, under ``Dirichlet(counts + prior)`` over the
  answers seen, that the leader has the largest rate (seeded Monte Carlo, deterministic).
- ``esc`` (Li et al. 2024, "Escape Sky-high Cost: Early-stopping Self-Consistency"): stop when
  every sample of the last window gave the same answer.

Under every rule sampling also stops when the leader's margin exceeds the samples left
(``decided``: majority@k could not pick another answer), and never before ``min_samples``
or after ``k``. The answer is the majority vote (ties: first seen) over every sample drawn.
The run's ``trace`` records each window's counts, leader, posterior and the stop reason.
Samples without an extractable answer are drawn and billed but do not vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from workers.strategies.base import (
    RunContext,
    SamplingParams,
    Strategy,
    first_usable,
    register_strategy,
)
from workers.strategies.voting import majority

RULES = ("beta", "dirichlet", "esc")
#: Monte-Carlo draws of the Dirichlet rule (fixed seed: the same counts give the same value).
DIRICHLET_DRAWS = 4096


def counts_of(keys: Sequence[str | None]) -> dict[str, int]:
    """Return answer -> count over ``keys`` (None, no answer, does not vote), first seen first."""
    counts: dict[str, int] = {}
    for k in keys:
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    return counts


def leader_of(counts: dict[str, int]) -> str | None:
    """The answer with the most votes; ties go to the one seen first (dict order)."""
    if not counts:
        return None
    return max(counts, key=lambda a: counts[a])  # max keeps the first of equal maxima


def beta_posterior(counts: dict[str, int], prior: float = 1.0) -> float:
    """Return P(leader's rate > runner-up's rate) = P(X > 1/2), X ~ Beta(v1+prior, v2+prior)."""
    top = sorted(counts.values(), reverse=True) + [0, 0]
    return _beta_tail(top[0], top[1], prior)


@lru_cache(maxsize=4096)
def _beta_tail(v1: int, v2: int, prior: float) -> float:
    from scipy.special import betainc

    return float(1.0 - betainc(v1 + prior, v2 + prior, 0.5))


def dirichlet_posterior(counts: dict[str, int], prior: float = 1.0) -> float:
    """Return P(the leader's rate is the largest) under Dirichlet(counts + prior).

    With a single answer seen, an "other" bucket with only the prior stands for every
    answer not seen yet (otherwise one vote would already be certain).
    """
    if not counts:
        return 0.0
    # Only the multiset of counts matters: the leader first, the rest in decreasing order.
    return _dirichlet_lead(tuple(sorted(counts.values(), reverse=True)), prior)


@lru_cache(maxsize=4096)
def _dirichlet_lead(values: tuple[int, ...], prior: float) -> float:
    if len(values) == 1:
        values = values + (0,)
    alpha = np.asarray(values, dtype=float) + prior
    rng = np.random.default_rng(0)
    draws = rng.dirichlet(alpha, size=DIRICHLET_DRAWS)
    # The leader is column 0 (first of equal counts, as leader_of).
    best = draws.max(axis=1)
    return float(np.mean(draws[:, 0] >= best))


@dataclass(frozen=True)
class StopDecision:
    """What the rule said after ``samples`` samples."""

    samples: int
    counts: dict[str, int]
    leader: str | None
    posterior: float | None
    stop: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_decision(
    keys: Sequence[str | None],
    *,
    k: int,
    rule: str,
    threshold: float,
    prior: float = 1.0,
    window: int = 1,
    min_samples: int = 1,
) -> StopDecision:
    """Decide whether to stop after the samples whose answers are ``keys`` (in draw order).

    Reasons: ``cap`` (k drawn), ``decided`` (the leader's margin exceeds the samples left),
    ``posterior`` (the rule's posterior reached ``threshold``), ``window_unanimous`` (ESC),
    ``continue``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown stopping rule {rule!r}; known: {', '.join(RULES)}")
    n = len(keys)
    counts = counts_of(keys)
    leader = leader_of(counts)
    posterior: float | None = None
    if rule == "beta":
        posterior = beta_posterior(counts, prior) if counts else 0.0
    elif rule == "dirichlet":
        posterior = dirichlet_posterior(counts, prior)

    def done(stop: bool, reason: str) -> StopDecision:
        return StopDecision(n, counts, leader, posterior, stop, reason)

    if n >= k:
        return done(True, "cap")
    ordered = sorted(counts.values(), reverse=True) + [0, 0]
    if ordered[0] - ordered[1] > k - n:
        return done(True, "decided")
    if n < min_samples or leader is None:
        return done(False, "continue")
    if rule == "esc":
        last = keys[-window:] if len(keys) >= window else []
        if last and all(x == last[0] and x is not None for x in last):
            return done(True, "window_unanimous")
        return done(False, "continue")
    assert posterior is not None
    if posterior >= threshold:
        return done(True, "posterior")
    return done(False, "continue")


class AdaptiveConsistencyParams(SamplingParams):
    k: int = Field(default=16, ge=1, le=64, description="most samples drawn")
    window: int = Field(default=2, ge=1, le=64, description="samples per engine request")
    min_samples: int = Field(default=2, ge=1, le=64, description="never stop before")
    rule: Literal["beta", "dirichlet", "esc"] = "beta"
    threshold: float = Field(default=0.95, gt=0.5, lt=1.0, description="posterior to stop")
    prior: float = Field(default=1.0, gt=0, le=100, description="Beta / Dirichlet pseudo-count")

    @model_validator(mode="after")
    def _sizes(self) -> AdaptiveConsistencyParams:
        if self.window > self.k:
            raise ValueError("window must be <= k")
        if self.min_samples > self.k:
            raise ValueError("min_samples must be <= k")
        if self.rule == "esc" and self.window < 2:
            raise ValueError("the esc rule needs window >= 2 (one sample is always unanimous)")
        return self


@register_strategy("adaptive_consistency")
class AdaptiveConsistency(Strategy):
    Params = AdaptiveConsistencyParams

    def planned_samples(self, params: Any) -> int:
        return params.k

    def execute(self, ctx: RunContext, params: Any, **extra: Any):
        decisions: list[StopDecision] = []
        drawn = 0
        reason = "cap"
        while drawn < params.k:
            n = min(params.window, params.k - drawn)
            ctx.sample(params.sampling(n, seed_offset=drawn))
            drawn += n
            if ctx.cancelled:
                reason = "cancelled"
                break
            keys = [c.answer_key if not c.aborted else None for c in ctx.candidates]
            decision = stop_decision(
                keys,
                k=params.k,
                rule=params.rule,
                threshold=params.threshold,
                prior=params.prior,
                window=params.window,
                min_samples=params.min_samples,
            )
            decisions.append(decision)
            if decision.stop:
                reason = decision.reason
                break
        ctx.trace.update(
            {
                "kind": "stopping",
                "rule": params.rule,
                "threshold": params.threshold,
                "k": params.k,
                "window": params.window,
                "samples": len(ctx.candidates),
                "reason": reason,
                "posterior": decisions[-1].posterior if decisions else None,
                "decisions": [d.to_dict() for d in decisions],
            }
        )
        voters = [c for c in ctx.candidates if not c.aborted]
        chosen, votes = majority(voters)
        if chosen is None:
            return first_usable(ctx.candidates), votes
        for c in voters:
            c.score = votes.get(c.answer_key, 0.0) if c.answer_key else None
        return chosen, votes
