"""Expected USD (and latency) of one query per configuration.

Log-linear per configuration: ``log cost = alpha[config, task] + b[config] . phi`` where phi are
the prompt features centred within the task and scaled (length, markers, LSA embedding: long
questions and e.g. chemistry get longer chains of thought), fitted by ridge regression, with a
smearing factor so the mean of the prediction matches the mean cost. On mmlu-pro-dev this lifts the
correlation of predicted and real cost of gemini-1.5-flash from 0.55 (length only) to 0.78, which
matters as much as p(correct) for cost-of-pass.

Cells (config, task) without data borrow a task factor from the other configurations (a task whose
prompts are three times longer costs about three times as much everywhere). A configuration with no
cost data at all is priced from its descriptors: USD per Mtok x (input tokens + expected output
tokens) x samples, else the median configuration's cost per sample times its sample count.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from routerapp.routing.data import TrainData
from routerapp.routing.learners import PHI_CLIP
from routerapp.routing.types import Candidate

_FLOOR = 1e-9  # USD; cost floor for the log model
_K0 = 5.0  # pseudo-observations pulling a thin cell toward its two-way (config x task) estimate


class CostModel:
    """Predict cost (USD) and latency (s, NaN when unknown) per prompt and configuration."""

    ridge: float = 10.0

    def fit(self, data: TrainData, candidates: list[Candidate], datasets: list[str]) -> CostModel:
        """Fit from the training matrices; return self."""
        a_n, d_n = len(candidates), len(datasets)
        self.d_index = {d: i for i, d in enumerate(datasets)}
        chars = np.array([len(t) for t in data.texts], dtype=float)
        ok = np.isfinite(data.cost) & (data.w > 0)
        # Free configurations (cost 0) are floored so log cost stays finite.
        lc = np.where(ok, np.log(np.maximum(np.where(ok, data.cost, 1.0), _FLOOR)), 0.0)
        k = data.feats.shape[1]
        # Feature space: centred within task, scaled globally.
        self.center = data.task_centres(d_n)
        self.glob_center = data.feats.mean(0) if len(data.feats) else np.zeros(k)
        cen = data.feats - self.center[data.d_idx]
        self.scale = np.maximum(cen.std(0), 1e-6) if len(cen) else np.ones(k)
        phi = np.clip(cen / self.scale, -PHI_CLIP, PHI_CLIP)
        # Cell means of log cost, two-way fill (log cost = a[config] + t[task]) for empty cells.
        s = np.zeros((a_n, d_n))
        n = np.zeros((a_n, d_n))
        for d in range(d_n):
            rows = data.d_idx == d
            s[:, d] = lc[rows].sum(0)
            n[:, d] = ok[rows].sum(0)
        la = np.where(n > 0, s / np.maximum(n, 1), np.nan)
        a = np.full(a_n, np.nan)
        t = np.zeros(d_n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: configs without cost
            for _ in range(20):
                a = np.nanmean(la - t[None, :], axis=1)
                t = np.nanmean(la - np.nan_to_num(a)[:, None], axis=0)
                t = np.where(np.isfinite(t), t, 0.0)
        self.has_cost = np.isfinite(a)
        prior = np.log(self._descriptor_prior(data, candidates, datasets, chars))  # (A, D)
        two_way = np.where(self.has_cost[:, None], np.nan_to_num(a)[:, None] + t[None, :], prior)
        self.alpha = np.where(n > 0, (s + _K0 * two_way) / (n + _K0), two_way)
        # Per-config ridge on the within-task features, then a smearing factor.
        self.b = np.zeros((a_n, k))
        self.smear = np.ones(a_n)
        reg = self.ridge * np.eye(k)
        for j in range(a_n):
            m = ok[:, j]
            if m.sum() < 20:
                continue
            resid = lc[m, j] - self.alpha[j, data.d_idx[m]]
            x = phi[m]
            self.b[j] = np.linalg.solve(x.T @ x + reg, x.T @ resid)
            fitted = self.alpha[j, data.d_idx[m]] + x @ self.b[j]
            self.smear[j] = float(np.mean(data.cost[m, j]) / np.mean(np.exp(fitted)))
        known = self.has_cost & (ok.sum(0) >= 20)
        if known.any():  # configurations without enough data take the average slope and smear
            self.b[~known] = self.b[known].mean(0)
            self.smear[~self.has_cost] = float(np.median(self.smear[known]))
        # Unknown tag: size-weighted mean over tasks, features centred on the global mean.
        dw = np.bincount(data.d_idx, minlength=d_n).astype(float) + 1e-9
        dw /= dw.sum()
        self.unk_alpha = self.alpha @ dw
        # Latency (rarely recorded): per-config mean, NaN when never seen.
        lat_ok = np.isfinite(data.latency) & (data.w > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.latency = np.where(
                lat_ok.any(0), np.where(lat_ok, data.latency, 0.0).sum(0) / lat_ok.sum(0), np.nan
            )
        return self

    def _descriptor_prior(
        self, data: TrainData, candidates: list[Candidate], datasets: list[str], chars: np.ndarray
    ) -> np.ndarray:
        a_n, d_n = len(candidates), len(datasets)
        out = np.full((a_n, d_n), np.nan)
        # Expected tokens per task from whatever the tables record (else length / 4 and 256 out).
        in_tok = np.zeros(d_n)
        out_tok = np.zeros(d_n)
        for d in range(d_n):
            rows = data.d_idx == d
            it = data.in_tok[rows]
            ot = data.out_tok[rows]
            in_tok[d] = (
                np.nanmedian(it)
                if np.isfinite(it).any()
                else (chars[rows].mean() / 4 + 20 if rows.any() else 100.0)
            )
            out_tok[d] = np.nanmedian(ot) if np.isfinite(ot).any() else 256.0
        known = np.asarray((np.isfinite(data.cost) & (data.w > 0)).any(axis=0), dtype=bool)
        for j, c in enumerate(candidates):
            k = c.n_samples
            if c.input_usd_per_mtok is not None or c.output_usd_per_mtok is not None:
                pin = c.input_usd_per_mtok or 0.0
                pout = c.output_usd_per_mtok if c.output_usd_per_mtok is not None else pin
                otk = np.minimum(out_tok, c.max_tokens) if c.max_tokens else out_tok
                out[j] = k * (in_tok * pin + otk * pout) / 1e6
        # No price: median cost of known configurations per sample, times this one's samples.
        if known.any():
            per_sample = []
            for j, c in enumerate(candidates):
                if known[j]:
                    v = data.cost[:, j]
                    per_sample.append(np.nanmean(v[data.w[:, j] > 0]) / c.n_samples)
            base = float(np.median(per_sample))
        else:
            base = 1e-4
        for j, c in enumerate(candidates):
            if np.isnan(out[j]).all():
                out[j] = base * c.n_samples
        return out

    def predict(self, feats: np.ndarray, tags: list[str]) -> np.ndarray:
        """Return expected USD (n, A) for prompts with raw features ``feats`` and task ``tags``."""
        didx = np.array([self.d_index.get(t, -1) for t in tags])
        known = didx >= 0
        cen = np.where(known[:, None], self.center[np.maximum(didx, 0)], self.glob_center[None, :])
        phi = np.clip((feats - cen) / self.scale, -PHI_CLIP, PHI_CLIP)
        base = np.where(
            known[:, None], self.alpha[:, np.maximum(didx, 0)].T, self.unk_alpha[None, :]
        )
        part = phi @ self.b.T
        if not known.all():
            # On a tag never seen, per-config slopes learned on other families can reorder the
            # configurations' costs arbitrarily; keep their training cost ratios and let the
            # prompt move all of them by one shared factor (longer prompt, dearer everywhere).
            part[~known] = part[~known].mean(1, keepdims=True)
        return np.exp(base + part) * self.smear[None, :]

    _ARRAYS = (
        "alpha",
        "b",
        "smear",
        "center",
        "glob_center",
        "scale",
        "unk_alpha",
        "latency",
        "has_cost",
    )

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (metadata, arrays)."""
        return {"datasets": list(self.d_index)}, {
            f"cost_{k}": np.asarray(getattr(self, k)) for k in self._ARRAYS
        }

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> CostModel:
        """Rebuild from ``state``."""
        m = cls()
        m.d_index = {d: i for i, d in enumerate(meta["datasets"])}
        for k in cls._ARRAYS:
            setattr(m, k, np.asarray(arrays[f"cost_{k}"]))
        return m
