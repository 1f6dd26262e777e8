"""What an HTTP engine bills when a stream does not end well: a dropped connection, an
error event, our own abort, servers that send several tokens per chunk, unknown finish
reasons. The upstream is a real HTTP server (bench/fake_upstream.py) that really streams,
really drops connections, and records what it generated: the bill must cover it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scripted_upstream import LONG_REPLY, Upstream, start_scripted_upstream
from workers.engines import Prompt, SampleDone, SamplingConfig, TokenEvent, get_engine
from workers.engines.resilience import UpstreamError
from workers.strategies import SampleFinished, get_strategy

Q = Prompt.of(messages=[{"role": "user", "content": "What is 2 + 2?"}])


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = start_scripted_upstream(tmp_path_factory.mktemp("scripted"), token_delay_ms=20)
    yield up
    up.stop()


def _engine(upstream: Upstream, **fault: object):  # type: ignore[no-untyped-def]
    params: dict = {
        "base_url": upstream.url,
        "model": "fake",
        "tokenize": "none",
        "max_retries": 0,
    }
    if fault:
        params["extra_body"] = {"fake_fault": fault}
    return get_engine("openai_compat", params)


def _drain(stream) -> tuple[list, list[str], UpstreamError | None]:  # type: ignore[no-untyped-def]
    done, texts, error = [], [], None
    try:
        for ev in stream:
            if isinstance(ev, TokenEvent) and ev.text:
                texts.append(ev.text)
            elif isinstance(ev, SampleDone):
                done.append(ev.sample)
    except UpstreamError as exc:
        error = exc
    return done, texts, error


def test_a_dropped_stream_is_billed_its_partial_text_and_a_bound(upstream):
    before = len(upstream.stats())
    eng = _engine(upstream, drop_after=12, tag="drop12")
    stream = eng.stream(Q, SamplingConfig(max_tokens=32))
    done, texts, error = _drain(stream)
    assert len(texts) == 12 and done == []  # 12 streamed tokens, then the stream broke
    # The failure carries what the request generated, for the runner to bill: the text seen,
    # and (no usage came: the server may have gone on to max_tokens) that bound.
    assert error is not None and error.partial is not None
    prompt_tokens, completion, text = error.partial
    assert text == "".join(texts) and prompt_tokens > 0
    assert completion == 32 >= upstream.generated(before) == 12


def test_an_error_event_bills_what_was_streamed(upstream):
    before = len(upstream.stats())
    eng = _engine(upstream, error_after=5, tag="err5")
    done, texts, error = _drain(eng.stream(Q, SamplingConfig(max_tokens=32)))
    assert error is not None and "scripted failure" in str(error) and done == []
    assert error.partial is not None
    assert error.partial[1] == 5 == len(texts) == upstream.generated(before)


def test_an_aborted_stream_is_billed_at_least_what_the_server_generated(upstream):
    # Two tokens per chunk: counting chunks would bill half of what was generated.
    before = len(upstream.stats())
    eng = _engine(upstream, tokens_per_chunk=2, tag="pairs")
    stream = eng.stream(Q, SamplingConfig(max_tokens=32))
    with stream:
        for ev in stream:
            if isinstance(ev, TokenEvent) and ev.text:
                stream.abort_all()
    [sample] = stream.result().samples
    assert sample.finish_reason == "abort"
    generated = upstream.generated(before)
    assert 2 <= generated < 19
    assert sample.completion_tokens >= generated
    assert sample.completion_tokens <= 32 and sample.count_method == "bound"


def test_usage_is_used_when_it_arrives(upstream):
    eng = _engine(upstream, tokens_per_chunk=3, tag="triples")
    stream = eng.stream(Q, SamplingConfig(max_tokens=32))
    done, _, error = _drain(stream)
    assert error is None
    [sample] = done
    assert sample.count_method == "usage"
    assert sample.completion_tokens == len(LONG_REPLY.split(" ")) == 19  # in 7 chunks


def test_unknown_finish_reasons_are_not_stop(upstream):
    eng = _engine(upstream, finish_reason="content_filter", tag="filter")
    for token_events in (True, False):
        res = eng.generate(Q, SamplingConfig(max_tokens=32)) if not token_events else None
        if res is None:
            done, _, _ = _drain(eng.stream(Q, SamplingConfig(max_tokens=32)))
            reason = done[0].finish_reason
        else:
            reason = res.samples[0].finish_reason
        assert reason == "error"


def test_a_refused_request_bills_nothing(upstream):
    eng = _engine(upstream, status=500, tag="refused")
    done, _, error = _drain(eng.stream(Q, SamplingConfig(max_tokens=32)))
    assert error is not None and error.partial is None and done == []


def test_a_strategy_passes_on_every_sample_when_one_drops(upstream):
    """majority of 3 where sample 1 drops: the other two are aborted and reach on_event with
    their tokens, the broken one's tokens travel in the failure; together they cover what
    the upstream generated."""
    before = len(upstream.stats())
    eng = _engine(upstream, drop_after=6, seeds=[1], tag="maj-drop")
    finished: list = []

    def on_event(ev):  # type: ignore[no-untyped-def]
        if isinstance(ev, SampleFinished):
            finished.append(ev.candidate)

    strategy = get_strategy("majority_vote")
    with pytest.raises(UpstreamError) as err:
        strategy.run(eng, messages=list(Q.messages or ()), params={"n": 3, "max_tokens": 32},
                     on_event=on_event)  # fmt: skip
    assert sorted(c.index for c in finished) == [0, 2]
    assert err.value.partial is not None and err.value.partial[1] == 32
    billed = sum(c.completion_tokens for c in finished) + err.value.partial[1]
    assert billed >= upstream.generated(before)


def test_a_failure_in_the_consumer_still_passes_on_the_running_samples(upstream):
    """The caller's on_event raising (a time limit, a lost database) must not swallow the
    samples still running: they are aborted and passed on with what they generated."""
    eng = _engine(upstream)
    finished: list = []
    raised = False

    def on_event(ev):  # type: ignore[no-untyped-def]
        nonlocal raised
        if isinstance(ev, SampleFinished):
            finished.append(ev.candidate)
        elif not raised and getattr(ev, "text", ""):
            raised = True
            raise TimeoutError("time limit")

    strategy = get_strategy("majority_vote")
    with pytest.raises(TimeoutError):
        strategy.run(eng, messages=list(Q.messages or ()), params={"n": 3, "max_tokens": 32},
                     on_event=on_event)  # fmt: skip
    assert sorted(c.index for c in finished) == [0, 1, 2]
    assert all(c.prompt_tokens > 0 for c in finished)
    assert sum(c.completion_tokens for c in finished) >= 1
