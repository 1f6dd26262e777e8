"""Difficulty that extrapolates: an item-response model of p(correct) for task families never seen.

For a tag the router has never seen there is no per-tag offset to learn from; what transfers is how
the *prompt* looks. This model is a two-parameter item-response model fitted across the training
families, with features that are NOT centred within a task (so the differences between families,
e.g. long chains of competition maths vs short multiple-choice, are part of what it learns)::

    logit p[prompt, config] = alpha[config] + sum_k s[config, k] * (b_k . phi(prompt))

``b_k . phi`` are a few latent skills read from the standardised prompt features (the LSA text
encoder and the hand-made markers of ``routing.features``), the first an easiness every
configuration feels (prior loading 1), the others skills some configurations have and others lack
(prior loading 0); ``alpha`` is each configuration's ability and ``s`` its discriminations. Each family weighs the same in the fit (a family of 7,000 prompts does not
drown one of 200), as the random-effects prior of a new family should. On a prompt that looks
hard the cheap configurations' p falls faster than the strong ones', so the cost / p choice moves
to a stronger configuration; on one that looks easy, to a cheaper one.

Settings chosen by leave-one-family-out (bench/router_transfer.py, bench/README.md): at least
:data:`MIN_FAMILIES` training families (trained on a single family it only learns that family's
wording: ZeroEval GSM8K -0.19 vs 0.00 for the family mean), ridge ``tau`` 10 (100 gave the same
decisions), and :data:`RANK` 1 (``RouterParams.irt_rank``): rank 2 raises static gap_closed (mean
+0.09 -> +0.12 over the 25 folds, > 0 on 7 instead of 5) but halves the families whose AIQ reaches
the zero router's (10 -> 5), so it is not the default; rank 3 goes below 0 on RouterDC ARC.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize

PHI_CLIP = 4.0  # as learners.PHI_CLIP: no wild extrapolation on a prompt unlike any seen
MIN_FAMILIES = 3
RANK = 1


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class DifficultyModel:
    """Rank-1 item-response model of p(correct) across families (see module docstring)."""

    def __init__(
        self,
        mu: np.ndarray,
        sd: np.ndarray,
        alpha: np.ndarray,
        b: np.ndarray,
        s: np.ndarray,
    ) -> None:
        self.mu = np.asarray(mu, dtype=float)
        self.sd = np.asarray(sd, dtype=float)
        self.alpha = np.asarray(alpha, dtype=float)
        self.b = np.asarray(b, dtype=float)
        self.s = np.asarray(s, dtype=float)

    @classmethod
    def fit(
        cls,
        feats: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        families: list[str],
        *,
        tau: float = 10.0,
        tau_s: float = 5.0,
        rank: int = RANK,
        maxiter: int = 300,
    ) -> DifficultyModel:
        """Fit on (P, K) raw features, (P, A) mean outcomes ``y`` with observation counts ``w``,
        and the family of each prompt (each family weighs the same). MAP with Gaussian priors:
        ``b`` ~ N(0, 1/tau), ``s`` ~ N((1, 0, ...), 1/tau_s)."""
        p_n, k = feats.shape
        a_n = y.shape[1]
        r = max(1, min(rank, k))
        mu = feats.mean(0) if p_n else np.zeros(k)
        sd = np.maximum(feats.std(0), 1e-6) if p_n else np.ones(k)
        phi = np.clip((feats - mu) / sd, -PHI_CLIP, PHI_CLIP)
        _, inv, cnt = np.unique(
            np.asarray(families, dtype=object), return_inverse=True, return_counts=True
        )
        pw = (p_n / max(len(cnt), 1)) / cnt[inv] if p_n else np.zeros(0)
        obs = w > 0
        wt = w * pw[:, None]
        wy = wt * y
        rate = (wy.sum(0) + 0.5) / (wt.sum(0) + 1.0)
        a0 = np.log(rate / (1 - rate))

        s0 = np.zeros((a_n, r))
        s0[:, 0] = 1.0

        def unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return v[:a_n], v[a_n : a_n + r * k].reshape(r, k), v[a_n + r * k :].reshape(a_n, r)

        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            a, b, s = unpack(v)
            u = phi @ b.T  # (P, r)
            lg = a[None, :] + u @ s.T
            nll = float(np.sum(np.where(obs, wt * np.logaddexp(0.0, lg), 0.0) - wy * lg))
            res = np.where(obs, wt * _sigmoid(lg), 0.0) - wy
            g_a = res.sum(0)
            g_s = res.T @ u + tau_s * (s - s0)
            g_b = (res @ s).T @ phi + tau * b
            pen = 0.5 * (tau * float(np.sum(b * b)) + tau_s * float(np.sum((s - s0) ** 2)))
            return nll + pen, np.concatenate([g_a, g_b.ravel(), g_s.ravel()])

        # Seeded start: a small random direction for b, and for the skills after the first a
        # small random loading (at exactly 0 their gradient would vanish).
        rng = np.random.default_rng(0)
        s_init = s0 + 0.1 * rng.standard_normal((a_n, r)) * (np.arange(r) > 0)
        v0 = np.concatenate([a0, 0.01 * rng.standard_normal(r * k), s_init.ravel()])
        res = minimize(fun, v0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
        a, b, s = unpack(res.x)
        return cls(mu, sd, a, b, s)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        """Return (n, A) logits of p(correct) for (n, K) raw prompt features."""
        phi = np.clip((feats - self.mu) / self.sd, -PHI_CLIP, PHI_CLIP)
        return self.alpha[None, :] + (phi @ self.b.T) @ self.s.T

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Return (n, A) p(correct) for (n, K) raw prompt features."""
        return _sigmoid(self.logits(feats))

    def state(self) -> dict[str, np.ndarray]:
        """Return the arrays that define the model (saved with the router)."""
        return {"mu": self.mu, "sd": self.sd, "alpha": self.alpha, "b": self.b, "s": self.s}

    @classmethod
    def from_state(cls, arrays: dict[str, Any]) -> DifficultyModel:
        """Inverse of ``state``."""
        return cls(arrays["mu"], arrays["sd"], arrays["alpha"], arrays["b"], arrays["s"])
