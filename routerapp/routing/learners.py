"""Learners: predict p(correct) for every candidate configuration of a prompt.

Registry: ``@register_learner("slug")`` fills ``LEARNERS``; ``get_learner(slug)`` raises
UnknownLearnerError listing the known slugs. A learner is fitted on a :class:`TrainData` and
predicts, for raw prompt features and task tags, a probability and a logit standard error per
candidate (the error feeds the lower-confidence-bound policy and online exploration).

``meta-logit`` (default) is a two-level model:

1. Cell level, a crossed random-effects logistic regression on (config, task) counts::

       logit = b + gamma . desc(config) + omega[model] + psi[strategy family] + eps[config]
               + nu[task] + eta_m[model, task] + eta_f[family, task] + eta[config, task]

   Configurations share strength through their model, strategy family and descriptors (log price
   per Mtok when known, log sample count): this is what places a configuration or task with little
   or no data (the "meta" in meta-learned). Gaussian priors shrink every term toward zero.
2. Prompt level, within-task deviations from the cell logit, linear in task-centred prompt
   features and low rank, as in multidimensional IRT: ``S[config] . (B @ phi)``, a few latent
   skills read from the prompt, the first a difficulty shared by every configuration.

Prompts whose tag was never seen are mixed over the known tags by a text classifier, weighted by
how close the prompt is to the training prompts; what is left goes to a prior per configuration:
its mean logit over tasks with a standard error equal to its config-specific spread across tasks,
which the policy's lower confidence bound turns into caution, so a configuration that is cheap and
good on one task family but collapses on another is not trusted on a family it was not measured
on. The covariance of the logits across tasks also seeds the online posterior of a new tag.

Calibration: the prompt-level part is rescaled and a global intercept added, both fitted on
cross-fitted predictions (the router does the cross-fitting; see ``fit_calibration``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import minimize

from routerapp.routing.data import TrainData
from routerapp.routing.types import Candidate, UnknownLearnerError

LEARNERS: dict[str, type[Learner]] = {}


def register_learner(slug: str) -> Callable[[type[Learner]], type[Learner]]:
    """Register a Learner subclass under a stable slug (stored with every saved router)."""

    def deco(cls: type[Learner]) -> type[Learner]:
        if slug in LEARNERS:
            raise ValueError(f"learner slug {slug!r} registered twice")
        cls.slug = slug
        LEARNERS[slug] = cls
        return cls

    return deco


def get_learner(slug: str) -> type[Learner]:
    """Return the learner class for ``slug``; raise UnknownLearnerError listing known slugs."""
    try:
        return LEARNERS[slug]
    except KeyError:
        raise UnknownLearnerError(
            f"unknown learner {slug!r}; known: {', '.join(sorted(LEARNERS))}"
        ) from None


PHI_CLIP = 4.0  # standardised prompt features are clipped to +-4 (no wild extrapolation)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class Learner(ABC):
    """Interface every learner implements."""

    slug: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]]

    def __init__(
        self, candidates: list[Candidate], datasets: list[str], params: BaseModel | None = None
    ) -> None:
        self.candidates = candidates
        self.datasets = datasets
        self.d_index = {d: i for i, d in enumerate(datasets)}
        self.params = params if params is not None else self.Params()
        self.calib = (1.0, 0.0)  # (text scale, intercept) fitted on cross-fitted predictions

    @abstractmethod
    def fit(self, data: TrainData) -> None:
        """Fit on ``data`` (whose ``datasets`` equal ``self.datasets``)."""

    @abstractmethod
    def predict(self, feats: np.ndarray, tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (p, se): calibrated p(correct) and logit standard error, both (n, A)."""

    def calibration_parts(
        self, feats: np.ndarray, tags: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (base logit, prompt-level part), both (n, A), before calibration.

        The calibrated logit is ``base + scale * part + intercept`` (``self.calib``).
        """
        p, _ = self.predict(feats, tags)
        return _logit(p), np.zeros_like(p)

    @abstractmethod
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (json-able metadata, arrays) for saving."""

    @abstractmethod
    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what ``state`` returned."""


# --------------------------------------------------------------------------------------------------
# Descriptors


def config_descriptors(
    cands: list[Candidate],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Return (model_idx, family_idx, X, models, families) for the candidates.

    X columns: centred log price (0 when unknown), price-known flag, log2 sample count.
    """
    models = sorted({c.model for c in cands})
    fams = sorted({c.family for c in cands})
    mi = np.array([models.index(c.model) for c in cands])
    fi = np.array([fams.index(c.family) for c in cands])
    price = np.array(
        [
            (c.input_usd_per_mtok or 0.0) + 3 * (c.output_usd_per_mtok or 0.0)
            if (c.input_usd_per_mtok is not None or c.output_usd_per_mtok is not None)
            else np.nan
            for c in cands
        ]
    )
    known = np.isfinite(price) & (price > 0)
    lp = np.where(known, np.log(np.where(known, price, 1.0)), 0.0)
    if known.any():
        lp = np.where(known, lp - lp[known].mean(), 0.0)
    x = np.column_stack([lp, known.astype(float), np.log2([c.n_samples for c in cands])])
    return mi, fi, x, models, fams


# --------------------------------------------------------------------------------------------------
# Cell model


class CellModel:
    """Crossed random-effects logistic regression on (config, task) success counts (MAP fit)."""

    def __init__(self, sig: dict[str, float]) -> None:
        self.sig = sig
        self.theta = np.zeros((0, 0))
        self.var = np.zeros((0, 0))

    def fit(
        self, s: np.ndarray, n: np.ndarray, mi: np.ndarray, fi: np.ndarray, x: np.ndarray
    ) -> None:
        """Fit logits theta (A, D) and their approximate variances from successes/trials (A, D)."""
        a_n, d_n = s.shape
        m_n, f_n, q = int(mi.max()) + 1, int(fi.max()) + 1, x.shape[1]
        gm = np.zeros((a_n, m_n))
        gm[np.arange(a_n), mi] = 1.0
        gf = np.zeros((a_n, f_n))
        gf[np.arange(a_n), fi] = 1.0
        sizes = [1, q, m_n, f_n, a_n, d_n, m_n * d_n, f_n * d_n, a_n * d_n]
        names = ["b", "gamma", "omega", "psi", "eps", "nu", "eta_m", "eta_f", "eta"]
        offs = np.cumsum([0] + sizes)
        sig = self.sig
        prec = np.concatenate(
            [np.full(sz, 1.0 / sig[nm] ** 2) for nm, sz in zip(names, sizes, strict=True)]
        )
        tot = float(n.sum())
        rate = (s.sum() + 0.5) / (tot + 1.0)
        x0 = np.zeros(offs[-1])
        x0[0] = math.log(rate / (1 - rate))
        prior_mean = x0.copy()

        def unpack(v: np.ndarray) -> list[np.ndarray]:
            return [v[offs[i] : offs[i + 1]] for i in range(len(sizes))]

        def theta_of(v: np.ndarray) -> np.ndarray:
            b, g, om, ps, ep, nu, em, ef, et = unpack(v)
            row = b[0] + x @ g + om[mi] + ps[fi] + ep
            return (
                row[:, None]
                + nu[None, :]
                + em.reshape(m_n, d_n)[mi]
                + ef.reshape(f_n, d_n)[fi]
                + et.reshape(a_n, d_n)
            )

        def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
            th = theta_of(v)
            nll = float(np.sum(n * np.logaddexp(0.0, th) - s * th))
            r = n * _sigmoid(th) - s
            ra = r.sum(1)
            grad = np.concatenate(
                [
                    [r.sum()],
                    x.T @ ra,
                    np.bincount(mi, ra, m_n),
                    np.bincount(fi, ra, f_n),
                    ra,
                    r.sum(0),
                    (gm.T @ r).ravel(),
                    (gf.T @ r).ravel(),
                    r.ravel(),
                ]
            )
            dv = v - prior_mean
            return nll + 0.5 * float(np.sum(prec * dv * dv)), grad + prec * dv

        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
        th = theta_of(res.x)
        self.theta = th
        # Approximate posterior variance: the cell's own information plus a prior that is wide
        # when the configuration itself has little data (a new configuration is very uncertain).
        pq = _sigmoid(th) * (1 - _sigmoid(th))
        na = n.sum(1, keepdims=True)
        var_cfg = 1.0 / (na * pq + 1.0 / (sig["eps"] ** 2 + sig["omega"] ** 2))
        var_cell = 1.0 / (n * pq + 1.0 / (sig["eta"] ** 2 + sig["eta_f"] ** 2 + sig["eta_m"] ** 2))
        self.var = var_cell + var_cfg


# --------------------------------------------------------------------------------------------------
# Prompt-level model


def fit_prompt_model(
    phi: np.ndarray,
    off: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    tau_b: float,
    tau_s: float,
    rank: int = 4,
    maxiter: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """Return effective per-config weights W = S @ B, shape (A, K) (MAP fit, low rank).

    ``logit = off + (phi @ B.T) @ S.T``: ``rank`` latent skills read from the prompt (B) and each
    configuration's loading on them (S, prior mean (1, 0, ...): the first skill is a shared
    difficulty every configuration feels). Few parameters per configuration, so configurations
    with little data borrow the directions learned from the others.
    """
    p_n, k = phi.shape
    a_n = off.shape[1]
    r = max(1, min(rank, k))
    if k == 0 or p_n == 0:
        return np.zeros((a_n, k))
    obs = w > 0
    wy = w * y
    s0 = np.zeros((a_n, r))
    s0[:, 0] = 1.0

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        b = v[: r * k].reshape(r, k)
        sm = v[r * k :].reshape(a_n, r)
        u = phi @ b.T  # (P, r)
        lg = off + u @ sm.T
        nll = float(np.sum(np.where(obs, w * np.logaddexp(0.0, lg), 0.0) - wy * lg))
        res = np.where(obs, w * _sigmoid(lg), 0.0) - wy  # (P, A)
        g_s = res.T @ u + tau_s * (sm - s0)
        g_b = (res @ sm).T @ phi + tau_b * b
        pen = 0.5 * (tau_b * np.sum(b * b) + tau_s * np.sum((sm - s0) ** 2))
        return nll + pen, np.concatenate([g_b.ravel(), g_s.ravel()])

    rng = np.random.default_rng(seed)
    v0 = np.concatenate(
        [np.zeros(r * k), (s0 + 0.1 * rng.standard_normal((a_n, r)) * (np.arange(r) > 0)).ravel()]
    )
    v0[: r * k] = 0.01 * rng.standard_normal(r * k)
    res = minimize(fun, v0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter, "ftol": 1e-8})
    b = res.x[: r * k].reshape(r, k)
    sm = res.x[r * k :].reshape(a_n, r)
    return sm @ b


def fit_calibration(
    base: np.ndarray, part: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[float, float]:
    """Return (scale, intercept) minimising the log loss of ``sigmoid(base + scale*part + intercept)``.

    Fitted on cross-fitted predictions: the cell-level logits are well calibrated by construction
    (they are posterior means from counts), so only the prompt-level part is rescaled (to ~0 when
    it is noise) and a global intercept absorbs any shift. A weak pull toward (1, 0) keeps tiny
    tables sane.
    """
    ok = w > 0
    z, t, y, w = base[ok], part[ok], y[ok], w[ok]
    if len(z) < 20:
        return 1.0, 0.0

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        lg = z + v[0] * t + v[1]
        r = w * (_sigmoid(lg) - y)
        f = float(np.sum(w * np.logaddexp(0.0, lg) - w * y * lg)) + 0.5 * (
            (v[0] - 1) ** 2 + v[1] ** 2
        )
        return f, np.array([r @ t + (v[0] - 1), r.sum() + v[1]])

    res = minimize(
        fun, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.0, 3.0), (-2.0, 2.0)]
    )
    return float(res.x[0]), float(res.x[1])


# --------------------------------------------------------------------------------------------------
# Meta-logit learner


class MetaLogitParams(BaseModel):
    """Hyperparameters of the meta-logit learner (logit scale; tau are prior precisions)."""

    model_config = ConfigDict(extra="forbid")

    sig_b: float = 10.0
    sig_gamma: float = 1.0
    sig_omega: float = 1.5
    sig_psi: float = 1.0
    sig_eps: float = 1.0
    sig_nu: float = 2.0
    sig_eta_m: float = 1.0
    sig_eta_f: float = 0.7
    sig_eta: float = 0.5
    tau_b: float = 10.0
    tau_s: float = 10.0
    rank: int = 4
    use_text: bool = True
    ood_sample: int = 2000


@register_learner("meta-logit")
class MetaLogitLearner(Learner):
    """Cell-level random effects plus a prompt-level IRT-style correction (see module docs)."""

    Params = MetaLogitParams

    def fit(self, data: TrainData) -> None:
        """Fit both levels and the unknown-tag machinery on ``data``."""
        prm: MetaLogitParams = self.params  # type: ignore[assignment]
        a_n, d_n = len(self.candidates), len(self.datasets)
        mi, fi, x, _, _ = config_descriptors(self.candidates)
        s = np.zeros((a_n, d_n))
        n = np.zeros((a_n, d_n))
        for d in range(d_n):
            rows = data.d_idx == d
            n[:, d] = data.w[rows].sum(0)
            s[:, d] = (data.w[rows] * data.y[rows]).sum(0)
        sig = {k[4:]: v for k, v in prm.model_dump().items() if k.startswith("sig_")}
        cell = CellModel(sig)
        cell.fit(s, n, mi, fi, x)
        self.theta = cell.theta  # (A, D)
        self.var = cell.var
        # Unknown tags: size-weighted mean over tags; the uncertainty that matters for choosing is
        # the config-specific part of the spread (config x tag interaction), so a specialist that
        # is great on one family and poor on another is trusted less on a new one.
        dw = n.sum(0) + 1e-9
        dw = dw / dw.sum()
        mean = self.theta @ dw
        dev = self.theta - mean[:, None]
        inter = dev - (dev.T @ np.full(a_n, 1.0 / a_n))[None, :]  # remove each tag's shared shift
        self.unk_mean = mean
        self.unk_se = np.sqrt((inter**2) @ dw + self.var @ dw)
        self.tag_cov = (dev * dw[None, :]) @ dev.T  # (A, A) covariance across tags
        # Prompt level.
        k = data.feats.shape[1]
        self.center = data.task_centres(d_n)
        cen = data.feats - self.center[data.d_idx]
        self.scale = np.maximum(cen.std(0), 1e-6) if len(cen) else np.ones(k)
        self.weights = np.zeros((a_n, k))
        if prm.use_text and len(cen) > 10:
            phi = np.clip(cen / self.scale, -PHI_CLIP, PHI_CLIP)
            off = self.theta[:, data.d_idx].T
            self.weights = fit_prompt_model(
                phi, off, data.y, data.w, prm.tau_b, prm.tau_s, prm.rank
            )
        # Unknown-tag machinery: tag classifier and closeness to the training prompts.
        self.emb_dim = _emb_dim(data)
        self._fit_tag_classifier(data)
        self._fit_ood(data)

    def _fit_tag_classifier(self, data: TrainData) -> None:
        k = data.feats.shape[1]
        self.glob_mean = data.feats.mean(0) if len(data.feats) else np.zeros(k)
        self.glob_scale = np.maximum(data.feats.std(0), 1e-6) if len(data.feats) else np.ones(k)
        has_text = np.array([bool(t) for t in data.texts])
        d_n = len(self.datasets)
        self.clf_coef = np.zeros((d_n, k))
        self.clf_icpt = np.zeros(d_n)
        if d_n >= 2 and has_text.sum() >= 20 and len(np.unique(data.d_idx[has_text])) >= 2:
            from sklearn.linear_model import LogisticRegression

            xs = (data.feats[has_text] - self.glob_mean) / self.glob_scale
            clf = LogisticRegression(C=1.0, max_iter=300)
            clf.fit(xs, data.d_idx[has_text])
            coef = np.zeros((d_n, k))
            icpt = np.full(d_n, -30.0)
            cls = clf.classes_
            if len(cls) == 2:
                coef[cls[1]] = clf.coef_[0]
                icpt[cls[1]] = clf.intercept_[0]
                icpt[cls[0]] = 0.0
            else:
                coef[cls] = clf.coef_
                icpt[cls] = clf.intercept_
            self.clf_coef, self.clf_icpt = coef, icpt
        else:
            counts = np.bincount(data.d_idx, minlength=d_n) + 1e-9
            self.clf_icpt = np.log(counts / counts.sum())

    def _fit_ood(self, data: TrainData) -> None:
        prm: MetaLogitParams = self.params  # type: ignore[assignment]
        e = data.feats[:, : self.emb_dim]
        norms = np.linalg.norm(e, axis=1)
        ok = norms > 0
        rng = np.random.default_rng(0)
        idx = np.flatnonzero(ok)
        if len(idx) > prm.ood_sample:
            idx = rng.choice(idx, prm.ood_sample, replace=False)
        bank = e[idx] / norms[idx, None] if len(idx) else np.zeros((0, self.emb_dim))
        self.ood_bank = bank.astype(
            np.float32
        )  # only a nearest-neighbour similarity: float32 is plenty
        if len(self.ood_bank) >= 10:
            sims = self.ood_bank @ self.ood_bank.T
            np.fill_diagonal(sims, -1.0)
            nn = sims.max(1)
            self.ood_ref = float(max(np.percentile(nn, 10), 1e-3))
        else:
            self.ood_ref = 1.0

    def closeness(self, feats: np.ndarray) -> np.ndarray:
        """Return r in [0, 1] per prompt: 1 when as close to training prompts as typical ones are."""
        e = feats[:, : self.emb_dim]
        norms = np.linalg.norm(e, axis=1)
        out = np.zeros(len(feats))
        if len(self.ood_bank) == 0:
            return out
        ok = norms > 0
        if ok.any():
            sims = (e[ok] / norms[ok, None]) @ self.ood_bank.T
            mx = sims.max(1)
            lo = 0.5 * self.ood_ref
            out[ok] = np.clip((mx - lo) / (self.ood_ref - lo), 0.0, 1.0)
        return out

    def _components(
        self, feats: np.ndarray, tags: list[str], calibrated: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (p, se, base logit, prompt-level part); p calibrated when asked."""
        n, a_n = len(feats), len(self.candidates)
        scale, icpt = self.calib if calibrated else (1.0, 0.0)
        has_text = (
            feats[:, self.emb_dim] > 0 if feats.shape[1] > self.emb_dim else np.zeros(n, bool)
        )
        didx = np.array([self.d_index.get(t, -1) for t in tags])
        known = didx >= 0
        r = np.ones(n)
        if has_text.any() and len(self.ood_bank):
            r[has_text] = self.closeness(feats[has_text])
        p = np.zeros((n, a_n))
        se = np.zeros((n, a_n))
        base = np.zeros((n, a_n))
        part = np.zeros((n, a_n))
        if known.any():
            d = didx[known]
            rt = np.where(has_text[known], r[known], 1.0)[:, None]
            # Task-centred features, clipped so a prompt unlike the training ones (a 10-character
            # question in a task of 2,000-character prompts) cannot extrapolate the linear part;
            # the part also fades as the prompt gets far from every training prompt (rt).
            phi = np.clip((feats[known] - self.center[d]) / self.scale, -PHI_CLIP, PHI_CLIP)
            base[known] = self.theta[:, d].T
            part[known] = rt * (phi @ self.weights.T)
            p[known] = _sigmoid(base[known] + scale * part[known] + icpt)
            se[known] = np.sqrt(self.var[:, d].T)
        unk = ~known
        if unk.any():
            q = np.where(has_text[unk], r[unk], 0.0)
            xs = (feats[unk] - self.glob_mean) / self.glob_scale
            lg = xs @ self.clf_coef.T + self.clf_icpt
            lg -= lg.max(1, keepdims=True)
            pi = np.exp(lg)
            pi /= pi.sum(1, keepdims=True)
            # Mixture over known tags (prob space). The within-tag text part is left out: it was
            # learned inside other families and extrapolates poorly to a new one.
            pk = pi @ _sigmoid(self.theta.T + icpt)
            sek = np.sqrt(np.einsum("nd,da->na", pi, self.var.T))
            pu = _sigmoid(self.unk_mean[None, :] + icpt)
            qc = q[:, None]
            p[unk] = qc * pk + (1 - qc) * pu
            se[unk] = qc * sek + (1 - qc) * self.unk_se[None, :]
            base[unk] = _logit(p[unk]) - icpt
        return p, se, base, part

    def predict(self, feats: np.ndarray, tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return calibrated p (n, A) and logit standard errors (n, A)."""
        p, se, _, _ = self._components(feats, tags, calibrated=True)
        return p, se

    def calibration_parts(
        self, feats: np.ndarray, tags: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (base logit, prompt-level part) before calibration."""
        _, _, base, part = self._components(feats, tags, calibrated=False)
        return base, part

    _ARRAYS = (
        "theta",
        "var",
        "unk_mean",
        "unk_se",
        "tag_cov",
        "center",
        "scale",
        "weights",
        "glob_mean",
        "glob_scale",
        "clf_coef",
        "clf_icpt",
        "ood_bank",
    )

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (metadata, arrays)."""
        meta = {"emb_dim": self.emb_dim, "ood_ref": self.ood_ref}
        return meta, {k: getattr(self, k) for k in self._ARRAYS}

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore from ``state``."""
        self.emb_dim = int(meta["emb_dim"])
        self.ood_ref = float(meta["ood_ref"])
        for k in self._ARRAYS:
            setattr(self, k, np.asarray(arrays[k]))


def _emb_dim(data: TrainData) -> int:
    from routerapp.routing.features import HANDCRAFTED_NAMES

    return data.feats.shape[1] - len(HANDCRAFTED_NAMES)


# --------------------------------------------------------------------------------------------------
# kNN baseline (RouterBench style): mean outcome of the k nearest training prompts by embedding.


class KnnParams(BaseModel):
    """Hyperparameters of the kNN learner."""

    model_config = ConfigDict(extra="forbid")

    k: int = 10


@register_learner("knn")
class KnnLearner(Learner):
    """p(correct) = mean outcome of the k most similar training prompts (cosine on embeddings).

    Ignores task tags, as RouterBench's kNN router does. Used as a baseline.
    """

    Params = KnnParams

    def fit(self, data: TrainData) -> None:
        """Store unit embeddings and outcomes."""
        self.emb_dim = _emb_dim(data)
        e = data.feats[:, : self.emb_dim]
        nrm = np.linalg.norm(e, axis=1, keepdims=True)
        self.bank = np.where(nrm > 0, e / np.where(nrm > 0, nrm, 1.0), 0.0)
        self.wy = data.w * data.y
        self.w = data.w
        self.prior = (self.wy.sum(0) + 0.5) / (self.w.sum(0) + 1.0)

    def predict(self, feats: np.ndarray, tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return neighbour-mean p and a count-based standard error."""
        k = min(self.params.k, len(self.bank))  # type: ignore[attr-defined]
        e = feats[:, : self.emb_dim]
        nrm = np.linalg.norm(e, axis=1, keepdims=True)
        q = np.where(nrm > 0, e / np.where(nrm > 0, nrm, 1.0), 0.0)
        sims = q @ self.bank.T
        top = (
            np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if k < len(self.bank)
            else np.tile(np.arange(len(self.bank)), (len(q), 1))
        )
        num = self.wy[top].sum(1)
        den = self.w[top].sum(1)
        p = np.where(den > 0, num / np.maximum(den, 1e-12), self.prior[None, :])
        se = 1.0 / np.sqrt(np.maximum(den, 1.0) * 0.25)
        return p, se

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (metadata, arrays)."""
        return {"emb_dim": self.emb_dim}, {
            "bank": self.bank,
            "wy": self.wy,
            "w": self.w,
            "prior": self.prior,
        }

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore from ``state``."""
        self.emb_dim = int(meta["emb_dim"])
        for k in ("bank", "wy", "w", "prior"):
            setattr(self, k, np.asarray(arrays[k]))
