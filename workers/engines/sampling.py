"""Token sampling and log-probs from raw logits with numpy.

Used by in-process engines that get logits from the backend (llama.cpp): computing the
log-softmax here is about 100x cheaper than llama-cpp-python's built-in ``logprobs=``.

Sampling is exact: temperature scaling, then the top-p nucleus (the smallest set of most
likely tokens whose mass reaches ``top_p``, ties broken by token id), then inverse-CDF
sampling with one uniform draw from the sample's own ``numpy.random.Generator``.
``temperature == 0`` is greedy (the lowest token id wins a tie).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Size of the first partial sort for top-p; the nucleus almost always fits, and when it
# does not we fall back to a full sort, so the result is exact either way.
_NUCLEUS_GUESS = 256


@dataclass(frozen=True)
class SampledToken:
    token: int
    logprob: float
    top_logprobs: tuple[float, ...] | None
    top_ids: tuple[int, ...] | None = None


def sample_token(
    logits: npt.NDArray[np.float32],
    *,
    temperature: float,
    top_p: float,
    rng: np.random.Generator,
    top_logprobs: int = 0,
) -> SampledToken:
    """Sample one token from a row of raw logits.

    Return the token, its log-prob under the model's distribution (temperature 1, no
    top-p) and, when ``top_logprobs > 0``, the ``top_logprobs`` largest log-probs in
    descending order. The generator is advanced by exactly one draw when sampling
    (none when greedy), so a sample's draws depend only on its own seed.
    """
    z = logits.astype(np.float64, copy=True)
    z -= z.max()
    log_z = float(np.log(np.exp(z).sum()))
    token = int(np.argmax(z)) if temperature == 0 else _sample_scaled(z / temperature, top_p, rng)
    top: tuple[float, ...] | None = None
    ids: tuple[int, ...] | None = None
    if top_logprobs > 0:
        k = min(top_logprobs, z.shape[0])
        part = np.argpartition(z, -k)[-k:]
        part = part[np.argsort(-z[part], kind="stable")]
        top = tuple(float(z[i]) - log_z for i in part)
        ids = tuple(int(i) for i in part)
    return SampledToken(token=token, logprob=float(z[token]) - log_z, top_logprobs=top, top_ids=ids)


def _sample_scaled(zt: npt.NDArray[np.float64], top_p: float, rng: np.random.Generator) -> int:
    weights = np.exp(zt - zt.max())
    total = float(weights.sum())
    u = float(rng.random())
    if top_p >= 1.0:
        cdf = np.cumsum(weights)
        return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1))
    order = _descending(weights, min(_NUCLEUS_GUESS, weights.shape[0]))
    cum = np.cumsum(weights[order])
    if cum[-1] < top_p * total and order.shape[0] < weights.shape[0]:
        order = _descending(weights, weights.shape[0])
        cum = np.cumsum(weights[order])
    # Smallest prefix whose mass reaches top_p (at least one token).
    cut = int(np.searchsorted(cum, top_p * total, side="left")) + 1
    cut = min(max(cut, 1), order.shape[0])
    kept = cum[:cut]
    pick = int(np.searchsorted(kept, u * kept[-1], side="right"))
    return int(order[min(pick, cut - 1)])


def _descending(weights: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.intp]:
    """Return the indices of the ``k`` largest weights, largest first, ties by index."""
    if k < weights.shape[0]:
        part = np.argpartition(-weights, k - 1)[:k]
    else:
        part = np.arange(weights.shape[0])
    # lexsort: last key is primary -> sort by -weight, then by token id.
    order = np.lexsort((part, -weights[part]))
    return part[order]


def log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Return the log-softmax of a row of logits (float64)."""
    z = logits.astype(np.float64, copy=True)
    z -= z.max()
    return z - np.log(np.exp(z).sum())
