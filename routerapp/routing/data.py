"""Training data in matrix form: prompts x configurations.

Outcome tables are long (one row per prompt and configuration, possibly repeated for logged data);
the learners work on dense prompt x config matrices with a weight (number of observations) per
cell, zero where a configuration never ran on a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from routerapp.routing.types import Candidate


@dataclass
class TrainData:
    """Aggregated outcomes for P prompts and A candidates (A fixed by the candidate list)."""

    prompt_uids: list[str]
    tags: list[str]  # task tag per prompt ('' when none)
    texts: list[str]
    feats: np.ndarray  # (P, K) raw prompt features
    y: np.ndarray  # (P, A) mean correctness, 0 where unobserved
    w: np.ndarray  # (P, A) number of observations
    cost: np.ndarray  # (P, A) mean cost USD, NaN where unknown
    in_tok: np.ndarray  # (P, A) mean input tokens, NaN where unknown
    out_tok: np.ndarray  # (P, A) mean output tokens, NaN where unknown
    latency: np.ndarray  # (P, A) mean latency s, NaN where unknown
    candidates: list[Candidate]
    datasets: list[str]  # sorted distinct tags
    d_idx: np.ndarray  # (P,) index into datasets

    @property
    def n_prompts(self) -> int:
        """Return P."""
        return len(self.prompt_uids)

    def task_centres(self, n_datasets: int) -> np.ndarray:
        """Return the (D, K) mean prompt features of each task (zeros for a task without rows):
        features are centred within their task so a text model learns differences inside it."""
        centres = np.zeros((n_datasets, self.feats.shape[1]))
        for d in range(n_datasets):
            rows = self.d_idx == d
            if rows.any():
                centres[d] = self.feats[rows].mean(0)
        return centres

    def subset(self, rows: np.ndarray) -> TrainData:
        """Return the data restricted to prompt rows ``rows`` (datasets list kept as is)."""
        rows = np.asarray(rows)
        return TrainData(
            prompt_uids=[self.prompt_uids[i] for i in rows],
            tags=[self.tags[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            feats=self.feats[rows],
            y=self.y[rows],
            w=self.w[rows],
            cost=self.cost[rows],
            in_tok=self.in_tok[rows],
            out_tok=self.out_tok[rows],
            latency=self.latency[rows],
            candidates=self.candidates,
            datasets=self.datasets,
            d_idx=self.d_idx[rows],
        )


def build_matrices(
    outcomes: pd.DataFrame, prompts: pd.DataFrame, candidates: list[Candidate]
) -> tuple[list[str], list[str], list[str], dict[str, np.ndarray]]:
    """Aggregate a normalised outcome table into prompt x config matrices.

    Return (prompt_uids, tags, texts, {'y','w','cost','in_tok','out_tok','latency'}). Prompts come
    from the outcome table; text and tag from ``prompts`` when present there (the outcome's
    ``dataset`` column otherwise).
    """
    cid_index = {c.config_id: j for j, c in enumerate(candidates)}
    o = outcomes[outcomes["config_id"].isin(cid_index)]
    uids = pd.Index(pd.unique(o["prompt_uid"]))
    pi = uids.get_indexer(o["prompt_uid"])
    ai = o["config_id"].map(cid_index).to_numpy()
    p_n, a_n = len(uids), len(candidates)
    flat = pi * a_n + ai
    counts = np.bincount(flat, minlength=p_n * a_n).astype(np.float64)
    mats: dict[str, np.ndarray] = {"w": counts.reshape(p_n, a_n)}
    with np.errstate(invalid="ignore", divide="ignore"):
        for col, key in (
            ("correct", "y"),
            ("cost_usd", "cost"),
            ("input_tokens", "in_tok"),
            ("output_tokens", "out_tok"),
            ("latency_s", "latency"),
        ):
            v = o[col].to_numpy(dtype=np.float64)
            ok = np.isfinite(v)
            s = np.bincount(flat[ok], weights=v[ok], minlength=p_n * a_n)
            n = np.bincount(flat[ok], minlength=p_n * a_n)
            m = s / n
            if key == "y":
                m = np.where(n > 0, m, 0.0)
            mats[key] = m.reshape(p_n, a_n)
    # Tags and texts: prompts table wins, then the outcome table's dataset column.
    ptab = prompts.set_index("prompt_uid") if len(prompts) else None
    first_tag = o.drop_duplicates("prompt_uid").set_index("prompt_uid")["dataset"]
    tags = []
    texts = []
    for u in uids:
        tag = ""
        text = ""
        if ptab is not None and u in ptab.index:
            tag = str(ptab.at[u, "dataset"])
            text = str(ptab.at[u, "prompt"])
        if not tag:
            tag = str(first_tag.get(u, ""))
        tags.append(tag)
        texts.append(text)
    return list(map(str, uids)), tags, texts, mats
