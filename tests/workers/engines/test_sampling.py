import numpy as np

from workers.engines.sampling import log_softmax, sample_token


def _logits(seed=0, n=1000):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3


def test_greedy_is_argmax_and_logprobs_are_exact():
    x = _logits()
    tok = sample_token(x, temperature=0, top_p=1.0, rng=np.random.default_rng(0), top_logprobs=5)
    assert tok.token == int(np.argmax(x))
    ref = np.log(np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum())
    assert abs(tok.logprob - ref[tok.token]) < 1e-9
    assert np.allclose(tok.top_logprobs, np.sort(ref)[::-1][:5])
    assert np.isclose(np.exp(log_softmax(x)).sum(), 1.0)


def test_same_rng_seed_same_tokens():
    x = _logits(1)
    a = [
        sample_token(x, temperature=0.8, top_p=0.9, rng=r).token
        for r in [np.random.default_rng(7)] * 1
    ]
    b = [
        sample_token(x, temperature=0.8, top_p=0.9, rng=r).token
        for r in [np.random.default_rng(7)] * 1
    ]
    assert a == b


def test_top_p_never_leaves_the_nucleus():
    x = _logits(2, 50)
    p = np.exp(x.astype(np.float64) / 0.7)
    p /= p.sum()
    order = np.argsort(-p)
    cum = np.cumsum(p[order])
    nucleus = set(order[: int(np.searchsorted(cum, 0.5)) + 1].tolist())
    rng = np.random.default_rng(0)
    seen = {sample_token(x, temperature=0.7, top_p=0.5, rng=rng).token for _ in range(400)}
    assert seen <= nucleus
    assert len(seen) == len(nucleus)  # every nucleus token is reachable


def test_sampling_matches_the_distribution():
    x = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    rng = np.random.default_rng(0)
    counts = np.bincount(
        [sample_token(x, temperature=1.0, top_p=1.0, rng=rng).token for _ in range(6000)],
        minlength=3,
    )
    assert np.allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.03)
