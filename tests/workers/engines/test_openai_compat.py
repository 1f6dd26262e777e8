"""The openai_compat engine against a real llama-cpp-python server with the CPU model."""

import httpx
import pytest

from workers.engines import Prompt, SampleDone, SamplingConfig, TokenEvent, get_engine

pytestmark = pytest.mark.model

Q = Prompt.of(messages=[{"role": "user", "content": "What is 12 + 7? Reply with just the number."}])


def test_non_streamed_samples_use_server_usage(server_engine, llama_engine):
    res = server_engine.generate(Q, SamplingConfig(n=2, temperature=0, max_tokens=16))
    assert res.engine_requests == 2  # llama.cpp's servers ignore n: one request per sample
    assert [s.seed for s in res.samples] == [0, 1]
    for s in res.samples:
        assert s.count_method == "usage"
        # The server renders the same chat template: same prompt length as in-process.
        assert s.prompt_tokens == llama_engine.count_prompt_tokens(Q)
    assert res.prompt_tokens == 2 * llama_engine.count_prompt_tokens(Q)
    assert res.completion_tokens == sum(s.completion_tokens for s in res.samples)
    # Greedy over HTTP equals greedy in-process (same model, same defaults).
    local = llama_engine.generate(Q, SamplingConfig(n=1, temperature=0, max_tokens=16))
    assert res.samples[0].text == local.samples[0].text


def test_streamed_samples_with_logprobs(server_engine):
    stream = server_engine.stream(
        Q, SamplingConfig(n=2, temperature=0.8, max_tokens=8, top_logprobs=2, token_texts=True)
    )
    texts = {0: "", 1: ""}
    entries: dict[int, list[dict]] = {0: [], 1: []}
    with stream:
        for ev in stream:
            if isinstance(ev, TokenEvent):
                texts[ev.index] += ev.text
                assert ev.top_logprobs is not None and len(ev.top_logprobs) == 2
                # OpenAI's entries of this event's tokens travel with it (streamed logprobs).
                entries[ev.index] += ev.entries or []
            elif isinstance(ev, SampleDone):
                assert ev.sample.text == texts[ev.sample.index]
    res = stream.result()
    for s in res.samples:
        assert s.completion_tokens == len(s.token_logprobs) >= 1
        assert [e["token"] for e in entries[s.index]] == s.tokens
        assert [len(e["top_logprobs"]) for e in entries[s.index]] == [2] * len(s.tokens)
        assert s.count_method in ("logprobs", "estimate")  # prompt counted client-side


def test_abort_closes_the_stream_and_bills_what_was_generated(server_engine):
    p = Prompt.of(messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    stream = server_engine.stream(p, SamplingConfig(n=2, temperature=0.8, max_tokens=64))
    ended_before_abort: set[int] = set()
    aborted = False
    with stream:
        for ev in stream:
            if isinstance(ev, SampleDone) and not aborted:
                ended_before_abort.add(ev.sample.index)
            if isinstance(ev, TokenEvent) and not aborted and ev.text:
                stream.abort_all()
                aborted = True
    res = stream.result()
    # The server may interleave or serialise the two requests; whatever had not ended when
    # abort_all() was called must stop early and say so.
    cut = [s for s in res.samples if s.index not in ended_before_abort]
    assert cut, "abort_all() came after every sample had ended"
    assert all(s.finish_reason == "abort" for s in cut)
    assert all(s.completion_tokens < 64 for s in cut)
    assert res.completion_tokens == sum(s.completion_tokens for s in res.samples)
    # The server is free again right away: a new request completes normally.
    after = server_engine.generate(Q, SamplingConfig(max_tokens=4))
    assert after.samples[0].finish_reason in ("stop", "length")


def test_completions_api_and_tokenizer_endpoint(llama_server, llama_engine):
    eng = get_engine(
        "openai_compat",
        {
            "base_url": llama_server,
            "model": "m",
            "api": "completions",
            "extra_body": {"repeat_penalty": 1.0},
        },
    )
    raw = Prompt.of(prompt="1, 2, 3, 4,")
    n, method = eng.count_prompt_tokens_with_method(raw)
    assert (n, method) == (llama_engine.count_prompt_tokens(raw), "tokenize")
    res = eng.generate(raw, SamplingConfig(max_tokens=6, temperature=0))
    assert res.samples[0].prompt_tokens == n
    assert 1 <= res.samples[0].completion_tokens <= 6


def test_verifier_logprobs(server_engine):
    lps = server_engine.next_token_logprobs(
        Prompt.of(messages=[{"role": "user", "content": "Is 2 + 2 = 4? Reply yes or no."}]),
        ["yes", "no"],
    )
    assert set(lps) == {"yes", "no"}
    assert max(lps.values()) > float("-inf")
    assert server_engine.last_scoring_usage()[0] > 0


def test_server_errors_surface():
    eng = get_engine(
        "openai_compat", {"base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 2}
    )
    with pytest.raises((httpx.HTTPError, RuntimeError)):
        eng.generate(Q, SamplingConfig(max_tokens=2))
