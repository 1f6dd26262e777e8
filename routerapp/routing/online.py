"""Online adaptation: posterior logit offsets per task tag and configuration, cost factors, and
bounded Thompson exploration.

Each graded query updates, for its tag g and the configuration a that answered, two Gaussian
offsets added to the static logit: a tag-wide one (every configuration is harder / easier here) and
a (tag, config) one. The update is the Laplace / extended-Kalman step of a logistic observation,
split between the two offsets in proportion to their variances, so a handful of outcomes on a task
family the router never saw moves its decisions, while well-measured families barely move.

Exploration (only when asked for, e.g. in ``serve-jsonl``): with probability
``min(eps_max, eps0 / sqrt(1 + n_tag))`` the decision is taken on a Thompson sample of the offsets
instead of their means; the cap bounds the share of queries that can be spent on exploring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TagState:
    """Posterior and cost ledger of one task tag."""

    m_g: float
    v_g: float
    m: np.ndarray
    v: np.ndarray
    real: np.ndarray
    pred: np.ndarray
    n_obs: np.ndarray
    n_dec: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "m_g": self.m_g,
            "v_g": self.v_g,
            "m": self.m.tolist(),
            "v": self.v.tolist(),
            "real": self.real.tolist(),
            "pred": self.pred.tolist(),
            "n_obs": self.n_obs.tolist(),
            "n_dec": self.n_dec,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TagState:
        """Inverse of ``to_json``."""
        return cls(
            float(d["m_g"]),
            float(d["v_g"]),
            np.array(d["m"], dtype=float),
            np.array(d["v"], dtype=float),
            np.array(d["real"], dtype=float),
            np.array(d["pred"], dtype=float),
            np.array(d["n_obs"], dtype=float),
            int(d["n_dec"]),
        )


@dataclass
class OnlineState:
    """All tags' online state plus the exploration random generator."""

    n_configs: int
    sd_known: float = 0.2
    sd_unknown: float = 1.0
    sd_tag: float = 0.3
    sd_tag_unknown: float = 0.7
    eps_max: float = 0.1
    eps0: float = 0.5
    cost_k0: float = 5.0
    seed: int = 0
    tags: dict[str, TagState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _get(self, tag: str, known: bool) -> TagState:
        st = self.tags.get(tag)
        if st is None:
            a = self.n_configs
            sd = self.sd_known if known else self.sd_unknown
            sdg = self.sd_tag if known else self.sd_tag_unknown
            st = TagState(
                0.0, sdg**2, np.zeros(a), np.full(a, sd**2), np.zeros(a), np.zeros(a), np.zeros(a)
            )
            self.tags[tag] = st
        return st

    def offsets(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (mean, variance) of the logit offsets per config for ``tag`` (None if untouched)."""
        st = self.tags.get(tag)
        if st is None:
            return None
        return st.m_g + st.m, st.v_g + st.v

    def cost_factor(self, tag: str) -> np.ndarray | None:
        """Return the multiplicative correction of predicted cost per config (None if untouched)."""
        st = self.tags.get(tag)
        if st is None or st.n_obs.sum() == 0:
            return None
        k0 = self.cost_k0
        tot_n = st.n_obs.sum()
        mean_pred = st.pred.sum() / tot_n
        f_g = (st.real.sum() + k0 * mean_pred) / (st.pred.sum() + k0 * mean_pred)
        with np.errstate(invalid="ignore", divide="ignore"):
            mp = np.where(st.n_obs > 0, st.pred / np.maximum(st.n_obs, 1), mean_pred)
        return (st.real + k0 * f_g * mp) / (st.pred + k0 * mp)

    def exploring(self, tag: str, known: bool) -> bool:
        """Decide (randomly, bounded) whether this decision may explore; counts the decision."""
        st = self._get(tag, known)
        st.n_dec += 1
        eps = min(self.eps_max, self.eps0 / math.sqrt(1.0 + st.n_dec))
        return bool(self.rng.random() < eps)

    def sample_offsets(self, tag: str, known: bool) -> np.ndarray:
        """Return one Thompson draw of the per-config logit offsets for ``tag``."""
        st = self._get(tag, known)
        g = st.m_g + math.sqrt(st.v_g) * self.rng.standard_normal()
        return g + st.m + np.sqrt(st.v) * self.rng.standard_normal(self.n_configs)

    def update(
        self,
        tag: str,
        known: bool,
        a: int,
        z_static: float,
        y: float,
        cost: float | None,
        cost_pred: float,
    ) -> None:
        """Absorb one graded outcome ``y`` of config ``a`` whose static logit was ``z_static``."""
        st = self._get(tag, known)
        z = z_static + st.m_g + st.m[a]
        p = 0.5 * (1.0 + math.tanh(0.5 * z))
        curv = max(p * (1 - p), 1e-4)
        grad = y - p
        tot = st.v_g + st.v[a]
        denom = 1.0 + curv * tot
        st.m_g += st.v_g * grad / denom
        st.m[a] += st.v[a] * grad / denom
        st.v_g = max(st.v_g - st.v_g**2 * curv / denom, 1e-4)
        st.v[a] = max(st.v[a] - st.v[a] ** 2 * curv / denom, 1e-4)
        if cost is not None and math.isfinite(cost) and cost >= 0 and cost_pred > 0:
            st.real[a] += cost
            st.pred[a] += cost_pred
            st.n_obs[a] += 1

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (the random generator restarts from ``seed``)."""
        return {
            "n_configs": self.n_configs,
            "sd_known": self.sd_known,
            "sd_unknown": self.sd_unknown,
            "sd_tag": self.sd_tag,
            "sd_tag_unknown": self.sd_tag_unknown,
            "eps_max": self.eps_max,
            "eps0": self.eps0,
            "cost_k0": self.cost_k0,
            "seed": self.seed,
            "tags": {k: v.to_json() for k, v in self.tags.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OnlineState:
        """Inverse of ``to_json``."""
        tags = {k: TagState.from_json(v) for k, v in d.get("tags", {}).items()}
        kw = {
            k: d[k]
            for k in (
                "n_configs",
                "sd_known",
                "sd_unknown",
                "sd_tag",
                "sd_tag_unknown",
                "eps_max",
                "eps0",
                "cost_k0",
                "seed",
            )
        }
        return cls(**kw, tags=tags)
