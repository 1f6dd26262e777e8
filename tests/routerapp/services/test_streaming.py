"""Live query events: from the process running a query to the request streaming it, over a
Redis stream (REDIS_URL set) or the Django cache (embedded default), or in process."""

from __future__ import annotations

import threading
import time

import pytest
from django.test import override_settings

from routerapp.models import Query
from routerapp.services.streaming import (
    END,
    IDLE,
    SAMPLE,
    TOKEN,
    CacheSink,
    LocalSink,
    QueryEvent,
    RedisSink,
    query_events,
    query_events_publisher,
    query_wait,
    redis_client,
)
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db(transaction=True)

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def _query() -> Query:
    return Query.objects.create(team=TeamFactory(), prompt="hi", status=Query.Status.RUNNING)


def _text(events: list[QueryEvent], index: int = 0) -> str:
    return "".join(e.text for e in events if e.kind == TOKEN and e.index == index)


def test_redis_reader_that_starts_late_sees_every_token_in_order() -> None:
    query = _query()
    sink = query_events_publisher(query.pk)
    assert isinstance(sink, RedisSink)
    words = [f"w{i} " for i in range(200)]
    for w in words:
        sink.token(0, w)
    sink.token(1, "other sample")
    sink.sample(0)
    sink.end("done")
    # The reader subscribes only now, after everything was published.
    events = list(query_events(query.pk, timeout_s=5))
    assert _text(events, 0) == "".join(words)
    assert _text(events, 1) == "other sample"
    assert [e.kind for e in events if e.kind != TOKEN] == [SAMPLE, END]
    assert events[-1].status == "done"
    # Token text was batched: far fewer stream entries than tokens.
    assert redis_client().xlen(f"costpass:query:{query.pk}:events") < 60


def test_redis_reader_gets_tokens_while_they_are_produced() -> None:
    query = _query()

    def produce() -> None:
        sink = query_events_publisher(query.pk)
        for i in range(5):
            time.sleep(0.1)
            sink.token(0, f"t{i}")
        sink.end("done")

    threading.Thread(target=produce).start()
    stamps = []
    for event in query_events(query.pk, timeout_s=10):
        stamps.append((time.monotonic(), event))
    tokens = [t for t, e in stamps if e.kind == TOKEN]
    assert _text([e for _, e in stamps]) == "t0t1t2t3t4"
    assert len(tokens) >= 4 and tokens[-1] - tokens[0] > 0.25  # as they came, not at the end


def test_reader_ends_from_the_database_when_no_end_event_comes() -> None:
    query = _query()
    query_events_publisher(query.pk).token(0, "partial")  # a worker that died after this
    Query.objects.filter(pk=query.pk).update(status=Query.Status.FAILED)
    events = list(query_events(query.pk, timeout_s=10))
    assert _text(events) == "partial"
    assert events[-1] == QueryEvent(END, status="failed")


def test_reader_times_out_and_reports_idle() -> None:
    query = _query()
    started = time.monotonic()
    events = list(query_events(query.pk, timeout_s=1.5, idle_s=0.5))
    assert 1.4 < time.monotonic() - started < 4
    assert events and all(e.kind == IDLE for e in events)
    assert query_wait(query.pk, timeout_s=0.5) is None


@override_settings(REDIS_URL="", CACHES=LOCMEM)
def test_cache_transport_of_the_embedded_default() -> None:
    query = _query()
    sink = query_events_publisher(query.pk)
    assert isinstance(sink, CacheSink)
    seen: list[QueryEvent] = []
    reader = threading.Thread(
        target=lambda: seen.extend(query_events(query.pk, timeout_s=10)), daemon=True
    )
    reader.start()
    for i in range(20):
        sink.token(0, f"{i},")
        time.sleep(0.01)
    sink.flush()
    sink.sample(0)
    sink.end("done")
    reader.join(10)
    assert _text(seen) == "".join(f"{i}," for i in range(20))
    assert [e.kind for e in seen if e.kind != TOKEN] == [SAMPLE, END]


def test_local_sink_for_inline_queries() -> None:
    sink = LocalSink()
    sink.token(0, "a")
    sink.token(0, "b")
    sink.end("done")
    events = list(sink.events(timeout_s=1))
    assert [e.kind for e in events] == [TOKEN, TOKEN, END] and _text(events) == "ab"


def _entry(token: str) -> dict:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


def _logprob_tokens(events: list[QueryEvent], index: int = 0) -> list[str]:
    return [
        e["token"] for ev in events if ev.kind == TOKEN and ev.index == index for e in ev.logprobs
    ]


@pytest.mark.parametrize("transport", ["redis", "cache", "local"])
def test_token_log_probs_and_tool_calls_travel_with_their_text(transport: str) -> None:
    """Each token's OpenAI log-prob entry reaches the reader with its text, on every
    transport, including a token whose text is held back (an empty delta); so do tool-call
    deltas."""
    query = _query()
    tokens = ["The", " answer", "", " is"]
    with override_settings(**({} if transport == "redis" else {"REDIS_URL": "", "CACHES": LOCMEM})):
        sink = LocalSink() if transport == "local" else query_events_publisher(query.pk)
        assert type(sink).__name__ == {"redis": "RedisSink", "cache": "CacheSink"}.get(
            transport, "LocalSink"
        )
        for i, token in enumerate(tokens):
            sink.token(0, token, [_entry(token or f"<held {i}>")])
            sink.flush()
        sink.token(1, "x", [_entry("x")])
        # A sample's tool-call deltas travel the same way (no text of their own).
        call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "add"}}
        sink.token(2, "", None, [call])
        sink.flush()
        sink.token(2, "", None, [{"index": 0, "function": {"arguments": "{}"}}])
        sink.sample(0)
        sink.end("done")
        if isinstance(sink, LocalSink):
            events = list(sink.events(timeout_s=2))
        else:
            events = list(query_events(query.pk, timeout_s=5))
    assert _text(events) == "The answer is"
    assert _logprob_tokens(events) == ["The", " answer", "<held 2>", " is"]
    assert _logprob_tokens(events, 1) == ["x"]
    calls = [c for e in events if e.kind == TOKEN and e.index == 2 for c in e.tool_calls]
    assert calls == [call, {"index": 0, "function": {"arguments": "{}"}}]
    assert all(isinstance(e, dict) and e["logprob"] == -0.5 for ev in events for e in ev.logprobs)


@pytest.mark.parametrize("transport", ["redis", "cache"])
def test_a_dead_runs_tool_calls_and_log_probs_count_in_its_bound(transport: str) -> None:
    """A sample that streamed only a tool call (no text), or log-prob entries for text still
    held back, is billed at least what it streamed when its process dies: the bound counts
    the call's bytes and the entries, not just the text."""
    from routerapp.models import Sample
    from routerapp.services.execution import samples_recover
    from tests.routerapp.api.conftest import make_configuration

    configuration = make_configuration(
        "http://127.0.0.1:9/v1", name=f"dead-{transport}", params={"n": 2, "max_tokens": 64}
    )
    query = Query.objects.create(
        team=TeamFactory(),
        prompt="What is 2+2?",
        configuration=configuration,
        status=Query.Status.RUNNING,
        runs=1,
        samples_planned=2,
    )
    args = '{"a": 4, "b": 4}'
    settings_ = {} if transport == "redis" else {"REDIS_URL": "", "CACHES": LOCMEM}
    with override_settings(**settings_):
        sink = query_events_publisher(query.pk)
        sink.start(0)
        sink.start(1)
        sink.token(0, "", None, [{"index": 0, "id": "c", "function": {"name": "add"}}])
        sink.token(0, "", None, [{"index": 0, "function": {"arguments": args}}])
        sink.token(1, "", [_entry("The"), _entry(" answer"), _entry(" is")])
        sink.flush()
        assert samples_recover(query=query) == 2
    lost = {s.index: s for s in Sample.objects.filter(query=query)}
    assert lost[0].count_method == "stream_bound"
    assert lost[0].completion_tokens == len(("add" + args).encode())  # not 0
    assert lost[1].completion_tokens == 3  # the three streamed tokens
