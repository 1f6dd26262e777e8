"""Online adaptation: a Gaussian posterior over each task tag's per-configuration logit offsets,
cost factors, and bounded Thompson exploration.

For every tag the offsets added to the static logits are a vector ``delta ~ N(mu, P)`` over the
configurations. The prior covariance is where meta-learning pays off online:

- a tag seen in training starts from the posterior variance of its fitted logits (plus a small
  shared ``sd_tag`` for drift): new outcomes are weighed against all the training data it had;
- a tag never seen starts from how configurations co-vary *across the training tags* (the
  covariance of the fitted (config x tag) logits) plus a small independent part. An outcome of one
  configuration therefore moves the others that behaved like it on other tasks: two failures of a
  cheap model on a new, harder family also lower the estimate of its siblings, while models that
  were robust everywhere move less.

Each graded outcome is absorbed with the Laplace (extended Kalman) step of a logistic observation:
``P <- P - v P e e' P / (1 + v P_aa)``, ``mu <- mu + P_old e (y - p) / (1 + v P_aa)``.

Exploration (only when asked for, e.g. ``serve-jsonl``). On a known tag: with probability
``min(eps_max, eps0 / sqrt(1 + decisions on the tag))`` the decision uses a Thompson draw of the
offsets. On a new tag (``explore_rule="settle"``): ``n_draws`` posterior draws give each
configuration's probability of being the best choice; while the greedy choice's probability is
below ``settle`` the decision probes the alternative whose ranking is most uncertain (the most
probable challenger), within a budget of ``explore_b0 + explore_frac * decisions`` probes on the
tag, and only when what the probe may find is worth what it is expected to lose. Both are read
on the linearised cost-of-pass ``cost - R * p`` (R: the greedy choice's own cost / p) relative
to the greedy cost: the mean gain of the challenger over the draws where it wins, times
``probe_value`` times the decisions the tag has had (the horizon: a tag is expected to last about
as long again), must reach its mean loss on this query. Once the ranking is settled exploration
stops; on a young tag only a cheap probe passes, so small families pay little.
``explore_rule="eps"`` keeps the earlier rule on new tags. Defaults chosen by leave-one-family-out
on 14 public families (bench/README.md): settle 0.5, budget 3 + 5 %, probe_value 0.02.

Not kept (measured, bench/README.md): a prompt-level logistic model of the new tag's outcomes on
the prompt features (shared difficulty weights in this posterior) and agreement among samples as
a soft label (``update(weight=...)`` absorbs one; the bench uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass
class TagState:
    """Posterior and cost ledger of one task tag."""

    mu: np.ndarray
    cov: np.ndarray
    real: np.ndarray
    pred: np.ndarray
    n_obs: np.ndarray
    n_dec: int = 0
    n_probe: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "mu": self.mu.tolist(),
            "cov": self.cov.tolist(),
            "real": self.real.tolist(),
            "pred": self.pred.tolist(),
            "n_obs": self.n_obs.tolist(),
            "n_dec": self.n_dec,
            "n_probe": self.n_probe,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TagState:
        """Inverse of ``to_json``."""
        return cls(
            np.array(d["mu"], dtype=float),
            np.array(d["cov"], dtype=float),
            np.array(d["real"], dtype=float),
            np.array(d["pred"], dtype=float),
            np.array(d["n_obs"], dtype=float),
            int(d["n_dec"]),
            int(d.get("n_probe", 0)),
        )


class OnlineParams(BaseModel):
    """Online adaptation settings (see routing.online)."""

    model_config = ConfigDict(extra="forbid")

    sd_known: float = 0.0
    sd_tag: float = 0.1
    sd_unknown: float = 0.3
    sd_tag_unknown: float = 0.5
    eps_max: float = 0.1
    eps0: float = 0.5
    eps_max_unknown: float = 0.3
    eps0_unknown: float = 1.0
    cost_k0: float = 5.0
    # Exploration on a new tag (see the module docstring).
    explore_rule: Literal["settle", "eps"] = "settle"
    n_draws: int = 32
    settle: float = 0.5
    explore_b0: float = 3.0
    explore_frac: float = 0.05
    probe_value: float = 0.02


@dataclass
class OnlineState:
    """All tags' online state plus the exploration random generator."""

    n_configs: int
    params: OnlineParams = field(default_factory=lambda: OnlineParams())
    seed: int = 0
    tag_cov: np.ndarray | None = None  # (A, A) covariance of config logits across training tags
    tag_var: dict[str, np.ndarray] = field(default_factory=dict)  # posterior var of each known tag
    tags: dict[str, TagState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def prior_cov(self, tag: str, known: bool) -> np.ndarray:
        """Return the prior covariance of a tag's offsets (see module docstring)."""
        a = self.n_configs
        ones = np.ones((a, a))
        if known:
            # The static logits' own posterior variance: further outcomes of a tag seen in
            # training are simply more data, weighed against how much training already had.
            var = self.tag_var.get(tag)
            diag = np.zeros(a) if var is None or len(var) != a else np.asarray(var, dtype=float)
            return np.diag(diag + self.params.sd_known**2) + self.params.sd_tag**2 * ones
        base = self.params.sd_unknown**2 * np.eye(a) + self.params.sd_tag_unknown**2 * ones
        if self.tag_cov is not None and self.tag_cov.shape == (a, a):
            base = base + self.tag_cov
        return base

    def _get(self, tag: str, known: bool) -> TagState:
        st = self.tags.get(tag)
        if st is None:
            a = self.n_configs
            st = TagState(
                np.zeros(a), self.prior_cov(tag, known), np.zeros(a), np.zeros(a), np.zeros(a)
            )
            self.tags[tag] = st
        return st

    def offsets(self, tag: str) -> np.ndarray | None:
        """Return the posterior mean offsets per config for ``tag`` (None if untouched)."""
        st = self.tags.get(tag)
        return None if st is None else st.mu

    def n_observed(self, tag: str) -> int:
        """Return how many outcomes were observed for ``tag``."""
        st = self.tags.get(tag)
        return 0 if st is None else int(st.n_obs.sum())

    def cost_factor(self, tag: str, known: bool) -> np.ndarray | None:
        """Return the multiplicative correction of predicted cost per config (None if untouched).

        On a known tag only one factor shared by all configurations is learned: a per-config
        factor there is mostly winner's curse (a configuration is chosen where its cost was
        underestimated, so it looks dearer afterwards) and made routerdc flip-flop.
        """
        st = self.tags.get(tag)
        if st is None or st.n_obs.sum() == 0:
            return None
        k0 = self.params.cost_k0
        tot_n = st.n_obs.sum()
        mean_pred = st.pred.sum() / tot_n
        f_g = (st.real.sum() + k0 * mean_pred) / (st.pred.sum() + k0 * mean_pred)
        if known:
            return np.full(self.n_configs, f_g)
        mp = np.where(st.n_obs > 0, st.pred / np.maximum(st.n_obs, 1), mean_pred)
        den = st.pred + k0 * mp
        safe = np.where(den > 0, den, 1.0)
        return np.where((st.n_obs > 0) & (den > 0), (st.real + k0 * f_g * mp) / safe, f_g)

    def exploring(self, tag: str, known: bool) -> bool:
        """Decide (randomly, bounded) whether this decision may explore; counts the decision."""
        st = self._get(tag, known)
        st.n_dec += 1
        cap, eps0 = (
            (self.params.eps_max, self.params.eps0)
            if known
            else (self.params.eps_max_unknown, self.params.eps0_unknown)
        )
        eps = min(cap, eps0 / math.sqrt(1.0 + st.n_dec))
        return bool(self.rng.random() < eps)

    def sample_offsets(self, tag: str, known: bool) -> np.ndarray:
        """Return one Thompson draw of the per-config logit offsets for ``tag``."""
        return self.sample_many(tag, known, 1)[0]

    def sample_many(self, tag: str, known: bool, n: int) -> np.ndarray:
        """Return (n, A) posterior draws of the per-config logit offsets for ``tag``."""
        st = self._get(tag, known)
        a = self.n_configs
        try:
            chol = np.linalg.cholesky(st.cov + 1e-9 * np.eye(a))
        except np.linalg.LinAlgError:
            chol = np.diag(np.sqrt(np.clip(np.diag(st.cov), 0.0, None)))
        return st.mu[None, :] + self.rng.standard_normal((n, a)) @ chol.T

    def probe_allowed(self, tag: str) -> bool:
        """Count a decision on a new tag; return whether its probe budget has room left."""
        st = self._get(tag, False)
        st.n_dec += 1
        return st.n_probe < self.params.explore_b0 + self.params.explore_frac * st.n_dec

    def count_probe(self, tag: str) -> None:
        """Record that a decision on ``tag`` probed a configuration other than the greedy one."""
        self._get(tag, False).n_probe += 1

    def update(
        self,
        tag: str,
        known: bool,
        a: int,
        z_static: float,
        y: float,
        cost: float | None,
        cost_pred: float,
        weight: float = 1.0,
    ) -> None:
        """Absorb one graded outcome ``y`` of config ``a`` whose static logit was ``z_static``.

        ``weight`` < 1 absorbs a soft label (e.g. agreement among samples) as that share of an
        outcome (the Laplace step of a weighted log-likelihood); it leaves the cost ledger alone.
        """
        st = self._get(tag, known)
        z = z_static + st.mu[a]
        p = 0.5 * (1.0 + math.tanh(0.5 * z))
        v = weight * max(p * (1 - p), 1e-4)
        col = st.cov[:, a].copy()
        denom = 1.0 + v * col[a]
        st.mu = st.mu + col * (weight * (y - p) / denom)
        st.cov = st.cov - np.outer(col, col) * (v / denom)
        if weight < 1.0:
            return  # a soft label says nothing about what the query cost
        if cost is not None and math.isfinite(cost) and cost >= 0 and cost_pred > 0:
            st.real[a] += cost
            st.pred[a] += cost_pred
            st.n_obs[a] += 1

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (the random generator restarts from ``seed``)."""
        return {
            "n_configs": self.n_configs,
            "params": self.params.model_dump(),
            "seed": self.seed,
            "tag_cov": None if self.tag_cov is None else self.tag_cov.tolist(),
            "tag_var": {k: np.asarray(v).tolist() for k, v in self.tag_var.items()},
            "tags": {k: v.to_json() for k, v in self.tags.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OnlineState:
        """Inverse of ``to_json``."""
        tags = {k: TagState.from_json(v) for k, v in d.get("tags", {}).items()}
        # Older models stored the settings flat, beside n_configs.
        params = d.get("params") or {k: d[k] for k in OnlineParams.model_fields if k in d}
        cov = d.get("tag_cov")
        tag_var = {k: np.array(v, dtype=float) for k, v in d.get("tag_var", {}).items()}
        return cls(
            n_configs=d["n_configs"],
            params=OnlineParams(**params),
            seed=d.get("seed", 0),
            tag_cov=None if cov is None else np.array(cov, dtype=float),
            tag_var=tag_var,
            tags=tags,
        )
