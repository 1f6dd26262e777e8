"""The vllm engine (in-process AsyncLLM); runs only where vLLM and a CUDA GPU exist."""

import importlib.util
import os

import pytest

from workers.engines import Prompt, SamplingConfig, TokenEvent, get_engine

pytestmark = pytest.mark.gpu


def _has_gpu() -> bool:
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


requires_gpu = pytest.mark.skipif(not _has_gpu(), reason="needs vLLM and a CUDA GPU")

MODEL = os.environ.get("COSTPASS_VLLM_TEST_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def vllm_engine():
    return get_engine(
        "vllm", {"model": MODEL, "max_model_len": 2048, "gpu_memory_utilization": 0.3}
    )


Q = Prompt.of(messages=[{"role": "user", "content": "Write a long story about a dragon."}])


@requires_gpu
def test_n_samples_seeds_and_ledger(vllm_engine):
    cfg = SamplingConfig(n=4, temperature=0.8, max_tokens=16, seed=3, top_logprobs=2)
    a = vllm_engine.generate(Q, cfg)
    b = vllm_engine.generate(Q, cfg)
    assert [s.text for s in a.samples] == [s.text for s in b.samples]
    assert a.engine_requests == 1 and a.prompt_tokens == vllm_engine.count_prompt_tokens(Q)
    assert a.completion_tokens == sum(s.completion_tokens for s in a.samples)
    for s in a.samples:
        assert len(s.token_ids) == s.completion_tokens == len(s.token_logprobs)
        assert all(len(t) == 2 for t in s.top_logprobs)


@requires_gpu
def test_abort_stops_a_sample(vllm_engine):
    stream = vllm_engine.stream(Q, SamplingConfig(n=2, temperature=0.8, max_tokens=256, seed=1))
    with stream:
        for ev in stream:
            if isinstance(ev, TokenEvent) and ev.index == 0:
                stream.abort(0)
    res = stream.result()
    assert res.samples[0].finish_reason == "abort"
    assert res.samples[0].completion_tokens < 256
