"""The in-process llama_cpp engine on the real CPU model (SmolLM2-135M, 1 thread)."""

import time

import pytest

from workers.engines import Prompt, SampleDone, SamplingConfig, TokenEvent, get_engine

pytestmark = pytest.mark.model

Q = Prompt.of(messages=[{"role": "user", "content": "What is 12 + 7? Reply with just the number."}])


def test_engine_is_cached_per_params(llama_engine):
    assert get_engine("llama_cpp", {"n_threads": 1, "n_ctx": 4096, "n_seq_max": 16}) is llama_engine


def test_prompt_tokens_match_llama_cpp_python(llama_engine):
    from llama_cpp import Llama

    llm = Llama(llama_engine.params.model_path, n_ctx=512, n_threads=1, verbose=False)
    out = llm.create_chat_completion(messages=list(Q.messages), max_tokens=1, temperature=0)
    assert llama_engine.count_prompt_tokens(Q) == out["usage"]["prompt_tokens"]
    assert (
        llama_engine.count_prompt_tokens(messages=list(Q.messages)) == out["usage"]["prompt_tokens"]
    )
    llm.close()


def test_greedy_matches_llama_cpp_python(llama_engine):
    from llama_cpp import Llama

    llm = Llama(llama_engine.params.model_path, n_ctx=512, n_threads=1, verbose=False)
    ref = llm.create_chat_completion(messages=list(Q.messages), max_tokens=16, temperature=0)
    llm.close()
    res = llama_engine.generate(Q, SamplingConfig(n=1, temperature=0, max_tokens=16))
    s = res.samples[0]
    assert s.text == ref["choices"][0]["message"]["content"]
    # Our count includes the end-of-generation token when the sample stopped.
    extra = 1 if s.finish_reason == "stop" else 0
    assert s.completion_tokens == ref["usage"]["completion_tokens"] + extra


def test_n_samples_counts_and_single_prompt_billing(llama_engine):
    cfg = SamplingConfig(n=4, temperature=0.9, max_tokens=12, seed=5, top_logprobs=3)
    res = llama_engine.generate(Q, cfg)
    p = llama_engine.count_prompt_tokens(Q)
    assert [s.index for s in res.samples] == [0, 1, 2, 3]
    assert [s.seed for s in res.samples] == [5, 6, 7, 8]
    assert res.engine_requests == 1 and res.prompt_tokens == p
    assert [s.prompt_tokens for s in res.samples] == [p, 0, 0, 0]
    assert res.completion_tokens == sum(s.completion_tokens for s in res.samples)
    for s in res.samples:
        assert 1 <= s.completion_tokens <= 12
        assert (
            len(s.token_ids) == len(s.token_logprobs) == len(s.top_logprobs) == s.completion_tokens
        )
        assert all(len(t) == 3 and t[0] >= t[1] >= t[2] for t in s.top_logprobs)
        assert s.finish_reason == ("length" if s.completion_tokens == 12 else "stop")
    assert len({s.text for s in res.samples}) > 1  # different seeds, different samples


def test_same_seed_same_result_and_no_leaked_state(llama_engine):
    cfg = SamplingConfig(n=3, temperature=0.8, max_tokens=10, seed=11)
    a = llama_engine.generate(Q, cfg)
    # A different query in between (aborted halfway) must leave nothing behind.
    other = llama_engine.stream(
        Prompt.of(prompt="Once upon a time"), SamplingConfig(n=2, max_tokens=20)
    )
    with other:
        for ev in other:
            if isinstance(ev, TokenEvent):
                other.abort_all()
    b = llama_engine.generate(Q, cfg)
    assert [s.text for s in a.samples] == [s.text for s in b.samples]
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]


def test_aborted_sample_stops_generating(llama_engine):
    long_prompt = Prompt.of(
        messages=[{"role": "user", "content": "Write a long story about a dragon."}]
    )
    cfg = SamplingConfig(n=3, temperature=0.8, max_tokens=40, seed=1)
    tokens_after_abort = 0
    stream = llama_engine.stream(long_prompt, cfg)
    with stream:
        for ev in stream:
            if isinstance(ev, TokenEvent) and ev.index == 1:
                tokens_after_abort += 1 if stream.samples[1].abort_requested else 0
                if len(stream.samples[1].tokens) == 3:
                    stream.abort(1)
    res = stream.result()
    s1 = res.samples[1]
    assert s1.finish_reason == "abort" and s1.aborted
    assert s1.completion_tokens == 3 and len(s1.token_ids) == 3
    assert tokens_after_abort == 0
    assert res.completion_tokens == sum(s.completion_tokens for s in res.samples)


def test_abort_saves_wall_time(llama_engine):
    p = Prompt.of(messages=[{"role": "user", "content": "Write a long story about a dragon."}])
    cfg = SamplingConfig(n=4, temperature=0.8, max_tokens=48, seed=2)
    t = time.perf_counter()
    full = llama_engine.generate(p, cfg)
    t_full = time.perf_counter() - t
    stream = llama_engine.stream(p, cfg)
    t = time.perf_counter()
    with stream:
        for ev in stream:
            if isinstance(ev, TokenEvent) and len(stream.samples[0].tokens) >= 8:
                stream.abort_all()
    t_abort = time.perf_counter() - t
    res = stream.result()
    assert res.completion_tokens <= 4 * 8 < full.completion_tokens
    assert t_abort < t_full * 0.6


def test_stop_strings_and_raw_prompts(llama_engine):
    res = llama_engine.generate(
        Prompt.of(prompt="1, 2, 3, 4,"), SamplingConfig(n=1, max_tokens=20, stop=(" 7",))
    )
    s = res.samples[0]
    assert " 7" not in s.text
    if s.finish_reason == "stop":
        assert s.completion_tokens < 20


def test_streamed_text_equals_final_text(llama_engine):
    stream = llama_engine.stream(Q, SamplingConfig(n=2, temperature=0.7, max_tokens=12, seed=3))
    texts = {0: "", 1: ""}
    done = {}
    with stream:
        for ev in stream:
            if isinstance(ev, TokenEvent):
                texts[ev.index] += ev.text
            elif isinstance(ev, SampleDone):
                done[ev.sample.index] = ev.sample.text
    assert texts == done


def test_scoring_call(llama_engine):
    ask = Prompt.of(messages=[{"role": "user", "content": "Is 2 + 2 = 4? Reply yes or no."}])
    lps = llama_engine.next_token_logprobs(ask, ["yes", "no"])
    assert set(lps) == {"yes", "no"}
    assert all(v <= 0 for v in lps.values())
    assert llama_engine.last_scoring_usage() == (llama_engine.count_prompt_tokens(ask), 1)


def test_prompt_too_long_is_refused(llama_engine):
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        llama_engine.stream(Q, SamplingConfig(max_tokens=5000))


def test_token_texts_for_openai_logprobs(llama_engine):
    """With token_texts the engine returns each token's text (they join to the sample's text)
    and the top alternatives' texts next to their log-probs, as OpenAI's logprobs need."""
    prompt = Prompt.of(messages=[{"role": "user", "content": "Say hello."}])
    cfg = SamplingConfig(n=1, temperature=0.0, max_tokens=8, top_logprobs=3, token_texts=True)
    out = llama_engine.generate(prompt, cfg).samples[0]
    assert out.tokens is not None and len(out.tokens) == out.completion_tokens
    if out.finish_reason == "length":
        assert "".join(out.tokens) == out.text
    assert len(out.top_tokens) == len(out.tokens)
    for token, logprob, top in zip(out.tokens, out.token_logprobs, out.top_tokens, strict=True):
        assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
        assert top[0] == (token, logprob)  # greedy: the chosen token is the likeliest
    # Streamed, each token event carries its own OpenAI entry; together they are the sample's.
    events = list(llama_engine.stream(prompt, cfg))
    entries = [e for ev in events if isinstance(ev, TokenEvent) for e in ev.entries or ()]
    assert [e["token"] for e in entries] == out.tokens
    assert [e["logprob"] for e in entries] == pytest.approx(out.token_logprobs)
    assert [t["token"] for t in entries[0]["top_logprobs"]] == [t for t, _ in out.top_tokens[0]]
    # Without it, nothing extra is computed.
    plain = llama_engine.generate(prompt, SamplingConfig(n=1, max_tokens=4)).samples[0]
    assert plain.tokens is None and plain.top_tokens is None
    assert all(
        ev.entries is None
        for ev in llama_engine.stream(prompt, SamplingConfig(n=1, max_tokens=4))
        if isinstance(ev, TokenEvent)
    )


def test_output_constraints_are_refused_not_ignored(llama_engine):
    prompt = Prompt.of(messages=[{"role": "user", "content": "Hi"}])
    tool = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(ValueError, match="cannot honour tools"):
        llama_engine.stream(prompt, SamplingConfig(tools=(tool,)))


def test_json_schema_and_json_mode_are_enforced_by_a_grammar(llama_engine):
    """SmolLM2 does not answer in JSON on its own; the grammar makes every sample valid."""
    import json

    prompt = Prompt.of(messages=[{"role": "user", "content": "What is 2+2?"}])
    free = llama_engine.generate(prompt, SamplingConfig(max_tokens=24)).samples[0]
    assert not free.text.lstrip().startswith("{")
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    cfg = SamplingConfig(n=2, temperature=0.8, seed=3, max_tokens=40, response_format=fmt)
    res = llama_engine.generate(prompt, cfg)
    for s in res.samples:
        assert s.finish_reason == "stop", s.text
        value = json.loads(s.text)
        assert set(value) == {"answer"} and isinstance(value["answer"], int)
    mode = SamplingConfig(max_tokens=12, response_format={"type": "json_object"})
    assert llama_engine.generate(prompt, mode).samples[0].text.lstrip().startswith("{")
