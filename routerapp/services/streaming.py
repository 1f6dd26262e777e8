"""Live events of a running query, from the process that runs it to the ones that stream it.

The process running a query (a Celery worker, or the web process for inline calls) publishes
token deltas, finished samples and the end of the query; an API request that streams or waits
for the query reads them.

Transports, chosen by configuration, same events:
- Redis (``REDIS_URL`` set): one Redis stream per query (``XADD`` / blocking ``XREAD``). A stream,
  not pub/sub, because a reader that subscribes after the worker has started must still see
  every token from the first one; the stream expires an hour after its last event.
- Embedded default (no Redis): the Django cache (a file cache shared by the web and worker
  processes). The publisher rewrites one snapshot per query (text so far per sample, samples
  done, end status) at most every ``CACHE_FLUSH_S``; readers poll it and emit the difference.
- In process: a queue between the thread running an inline query and the response streaming it.

A reader also re-reads the query row now and then, so it ends even if an end event was lost
(a worker killed, Redis restarted).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)

STREAM_TTL_S = 3600
STREAM_MAXLEN = 20_000
# The file cache is rewritten as a whole; a few snapshots a second keep it smooth and cheap.
CACHE_FLUSH_S = 0.1
CACHE_POLL_S = 0.05
# How often a reader checks the database for a query that ended without telling.
DB_CHECK_S = 1.0
# Token text is batched for this long before an XADD (one round trip per batch, not per token).
REDIS_FLUSH_S = 0.02

TOKEN, SAMPLE, END, IDLE = "token", "sample", "end", "idle"
# Sample ``index`` was sent to the engine. Readers skip it; crash recovery reads it (a sample
# that started may have been billed by the engine even if it never streamed a token).
START = "start"


@dataclass(frozen=True)
class QueryEvent:
    """One thing that happened to a query.

    ``token``: sample ``index`` generated ``text`` (and, when the request asked for them,
    OpenAI's ``logprobs`` entries of those tokens, and its ``tool_calls`` deltas); ``sample``: sample ``index`` finished;
    ``end``: the query reached ``status`` (done / failed / cancelled); ``idle``: nothing happened
    for a while (a reader's cue to send a keep-alive).
    """

    kind: str
    index: int = 0
    text: str = ""
    status: str = ""
    logprobs: tuple[dict[str, Any], ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()


class EventSink(Protocol):
    """Where the process running a query publishes its events."""

    def token(
        self,
        index: int,
        text: str,
        logprobs: Sequence[dict[str, Any]] | None = None,
        tool_calls: Sequence[dict[str, Any]] | None = None,
    ) -> None: ...

    def start(self, index: int) -> None: ...

    def sample(self, index: int) -> None: ...

    def end(self, status: str) -> None: ...

    def flush(self) -> None: ...


def _stream_key(query_id: Any) -> str:
    return f"costpass:query:{query_id}:events"


def _cache_key(query_id: Any) -> str:
    return f"query-events:{query_id}"


_redis_lock = threading.Lock()
_redis_client: tuple[str, Any] | None = None


def redis_client() -> Any:
    """Return this process's Redis client (a thread-safe connection pool), or None without Redis."""
    global _redis_client
    url = settings.REDIS_URL
    if not url:
        return None
    with _redis_lock:
        if _redis_client is None or _redis_client[0] != url:
            import redis

            _redis_client = (
                url,
                redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30),
            )
        return _redis_client[1]


class NullSink:
    """Publishes nothing (an inline query nobody streams)."""

    def token(
        self,
        index: int,
        text: str,
        logprobs: Sequence[dict[str, Any]] | None = None,
        tool_calls: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        pass

    def start(self, index: int) -> None:
        pass

    def sample(self, index: int) -> None:
        pass

    def end(self, status: str) -> None:
        pass

    def flush(self) -> None:
        pass


class RedisSink:
    """Appends a query's events to its Redis stream, batching token text for REDIS_FLUSH_S."""

    def __init__(self, query_id: Any, client: Any):
        self.key = _stream_key(query_id)
        self.client = client
        self._pending: dict[int, list[str]] = {}
        self._pending_logprobs: dict[int, list[dict[str, Any]]] = {}
        self._pending_calls: dict[int, list[dict[str, Any]]] = {}
        self._last_flush = 0.0
        self._broken = False

    def _xadd(self, entries: list[dict[str, str]]) -> None:
        if self._broken or not entries:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(self.key, fields, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(self.key, STREAM_TTL_S)
            pipe.execute()
        except Exception:  # events are best effort: a query must not fail because Redis did
            log.warning(
                "could not publish events of %s; readers fall back to the database", self.key
            )
            self._broken = True

    def _pending_entries(self) -> list[dict[str, str]]:
        entries = []
        for index, parts in self._pending.items():
            logprobs = self._pending_logprobs.get(index)
            calls = self._pending_calls.get(index)
            if not parts and not logprobs and not calls:
                continue
            entry = {"k": TOKEN, "i": str(index), "t": "".join(parts)}
            if logprobs:
                entry["l"] = json.dumps(logprobs, separators=(",", ":"))
            if calls:
                entry["c"] = json.dumps(calls, separators=(",", ":"))
            entries.append(entry)
        self._pending = {}
        self._pending_logprobs = {}
        self._pending_calls = {}
        return entries

    def token(
        self,
        index: int,
        text: str,
        logprobs: Sequence[dict[str, Any]] | None = None,
        tool_calls: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self._pending.setdefault(index, []).append(text)
        if logprobs:
            self._pending_logprobs.setdefault(index, []).extend(logprobs)
        if tool_calls:
            self._pending_calls.setdefault(index, []).extend(tool_calls)
        now = time.monotonic()
        if now - self._last_flush >= REDIS_FLUSH_S:
            self._last_flush = now
            self._xadd(self._pending_entries())

    def start(self, index: int) -> None:
        self._xadd([{"k": START, "i": str(index)}])

    def sample(self, index: int) -> None:
        self._xadd([*self._pending_entries(), {"k": SAMPLE, "i": str(index)}])

    def end(self, status: str) -> None:
        self._xadd([*self._pending_entries(), {"k": END, "s": status}])

    def flush(self) -> None:
        self._xadd(self._pending_entries())


class CacheSink:
    """Keeps one snapshot of a query's progress in the Django cache (no Redis)."""

    def __init__(self, query_id: Any):
        self.key = _cache_key(query_id)
        self.texts: dict[int, str] = {}
        self.logprobs: dict[int, list[dict[str, Any]]] = {}
        self.calls: dict[int, list[dict[str, Any]]] = {}
        self.samples: list[int] = []
        self.started: list[int] = []
        self.status = ""
        self._dirty = False
        self._last_flush = 0.0

    def _write(self) -> None:
        try:
            cache.set(
                self.key,
                {
                    "texts": self.texts,
                    "logprobs": self.logprobs,
                    "calls": self.calls,
                    "samples": self.samples,
                    "started": self.started,
                    "end": self.status,
                },
                timeout=STREAM_TTL_S,
            )
        except Exception:  # best effort, as for Redis
            log.warning("could not publish events of %s", self.key)
        self._dirty = False
        self._last_flush = time.monotonic()

    def token(
        self,
        index: int,
        text: str,
        logprobs: Sequence[dict[str, Any]] | None = None,
        tool_calls: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.texts[index] = self.texts.get(index, "") + text
        if logprobs:
            self.logprobs.setdefault(index, []).extend(logprobs)
        if tool_calls:
            self.calls.setdefault(index, []).extend(tool_calls)
        self._dirty = True
        if time.monotonic() - self._last_flush >= CACHE_FLUSH_S:
            self._write()

    def start(self, index: int) -> None:
        self.started.append(index)
        self._write()

    def sample(self, index: int) -> None:
        self.samples.append(index)
        self._write()

    def end(self, status: str) -> None:
        self.status = status
        self._write()

    def flush(self) -> None:
        if self._dirty:
            self._write()


class LocalSink:
    """Hands events to a reader in the same process (inline queries)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[QueryEvent] = queue.Queue()

    def token(
        self,
        index: int,
        text: str,
        logprobs: Sequence[dict[str, Any]] | None = None,
        tool_calls: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.queue.put(
            QueryEvent(
                TOKEN,
                index=index,
                text=text,
                logprobs=tuple(logprobs or ()),
                tool_calls=tuple(tool_calls or ()),
            )
        )

    def start(self, index: int) -> None:
        pass

    def sample(self, index: int) -> None:
        self.queue.put(QueryEvent(SAMPLE, index=index))

    def end(self, status: str) -> None:
        self.queue.put(QueryEvent(END, status=status))

    def flush(self) -> None:
        pass

    def events(self, *, timeout_s: float, idle_s: float = 10.0) -> Iterator[QueryEvent]:
        """Yield events until the end (or ``timeout_s``); ``idle`` after ``idle_s`` of silence."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                event = self.queue.get(timeout=min(idle_s, left))
            except queue.Empty:
                yield QueryEvent(IDLE)
                continue
            yield event
            if event.kind == END:
                return


def query_events_publisher(query_id: Any) -> EventSink:
    """Return the sink a worker publishes a query's events to (Redis, else the cache)."""
    client = redis_client()
    if client is not None:
        return RedisSink(query_id, client)
    return CacheSink(query_id)


@dataclass
class QueryProgress:
    """What a query's event channel recorded: the samples sent to the engine (``started``),
    the text each sample streamed (``texts``), the samples that finished (``finished``), and
    per sample a lower bound on the tokens it generated (``generated``: the UTF-8 bytes of
    its text and tool-call pieces, or its log-prob entries, whichever is more; a byte-level
    tokenizer emits at least one byte per token)."""

    started: set[int]
    texts: dict[int, str]
    finished: set[int]
    generated: dict[int, int] = field(default_factory=dict)

    def add(
        self,
        index: int,
        text: str,
        logprobs: Sequence[Any] = (),
        tool_calls: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Record one token event of sample ``index``."""
        self.texts[index] = self.texts.get(index, "") + text
        pieces = "".join(
            str((c.get("function") or {}).get(k) or "")
            for c in tool_calls
            for k in ("name", "arguments")
        )
        self._bytes[index] = self._bytes.get(index, 0) + len((text + pieces).encode())
        self._entries[index] = self._entries.get(index, 0) + len(logprobs)
        self.generated[index] = max(self._bytes[index], self._entries[index])

    def __post_init__(self) -> None:
        self._bytes: dict[int, int] = {}
        self._entries: dict[int, int] = {}


def query_progress(query_id: Any) -> QueryProgress | None:
    """Return what a query's event channel holds, or None when it holds nothing at all (never
    published, expired, or lost with a restarted Redis) or cannot be read."""
    client = redis_client()
    if client is None:
        snapshot = cache.get(_cache_key(query_id))
        if not snapshot:
            return None
        progress = QueryProgress(
            started={int(i) for i in snapshot.get("started") or []},
            texts={},
            finished={int(i) for i in snapshot.get("samples") or []},
        )
        for i, text in (snapshot.get("texts") or {}).items():
            progress.add(
                int(i),
                text,
                (snapshot.get("logprobs") or {}).get(i) or (),
                (snapshot.get("calls") or {}).get(i) or (),
            )
        return progress
    try:
        entries = client.xrange(_stream_key(query_id))
    except Exception:  # Redis unreachable: no record (the caller bills the conservative bound)
        log.warning("could not read the events of query %s", query_id)
        return None
    if not entries:
        return None
    progress = QueryProgress(started=set(), texts={}, finished=set())
    for _, fields in entries:
        values = {k.decode(): v.decode("utf-8", errors="replace") for k, v in fields.items()}
        kind, index = values.get("k"), int(values.get("i", 0) or 0)
        if kind == START:
            progress.started.add(index)
        elif kind == TOKEN:
            progress.add(
                index,
                values.get("t", ""),
                json.loads(values["l"]) if values.get("l") else (),
                json.loads(values["c"]) if values.get("c") else (),
            )
        elif kind == SAMPLE:
            progress.finished.add(index)
    return progress


def publish_end(*, query_id: Any, status: str) -> None:
    """Announce that a query has finished (call after the row is committed)."""
    query_events_publisher(query_id).end(status)


def _finished_status(query_id: Any) -> str | None:
    from routerapp.models import Query

    status = Query.objects.filter(pk=query_id).values_list("status", flat=True).first()
    if status is None:
        return Query.Status.FAILED.value
    return status if status in Query.FINISHED else None


def query_events(query_id: Any, *, timeout_s: float, idle_s: float = 10.0) -> Iterator[QueryEvent]:
    """Yield a query's events from its first token until its end, or until ``timeout_s`` has
    passed (the iteration then stops without an ``end``). Yields ``idle`` after ``idle_s``
    without events."""
    client = redis_client()
    if client is not None:
        yield from _redis_events(client, query_id, timeout_s=timeout_s, idle_s=idle_s)
    else:
        yield from _cache_events(query_id, timeout_s=timeout_s, idle_s=idle_s)


def _redis_events(
    client: Any, query_id: Any, *, timeout_s: float, idle_s: float
) -> Iterator[QueryEvent]:
    key = _stream_key(query_id)
    last_id = "0"
    deadline = time.monotonic() + timeout_s
    next_db_check = time.monotonic() + DB_CHECK_S
    last_event = time.monotonic()
    redis_ok = True
    while True:
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            return
        block_s = min(left, DB_CHECK_S, max(0.01, next_db_check - now))
        batch: list[Any] = []
        if redis_ok:
            try:
                batch = client.xread({key: last_id}, count=1000, block=int(block_s * 1000)) or []
            except Exception:  # Redis gone: keep serving from the database
                log.warning("could not read events of %s; polling the database", key)
                redis_ok = False
        else:
            time.sleep(block_s)
        for _, entries in batch:
            for entry_id, fields in entries:
                last_id = entry_id
                event = _decode(fields)
                if event is not None:
                    last_event = time.monotonic()
                    yield event
                    if event.kind == END:
                        return
        now = time.monotonic()
        if now >= next_db_check:
            next_db_check = now + DB_CHECK_S
            status = _finished_status(query_id)
            if status is not None:
                # The row says it is over; drain what is already in the stream, then end.
                if redis_ok:
                    try:
                        rest = client.xread({key: last_id}, count=100_000) or []
                    except Exception:
                        rest = []
                    for _, entries in rest:
                        for _, fields in entries:
                            event = _decode(fields)
                            if event is not None and event.kind != END:
                                yield event
                yield QueryEvent(END, status=status)
                return
        if now - last_event >= idle_s:
            last_event = now
            yield QueryEvent(IDLE)


def _decode(fields: dict[bytes, bytes]) -> QueryEvent | None:
    values = {k.decode(): v.decode("utf-8", errors="replace") for k, v in fields.items()}
    kind = values.get("k")
    if kind == TOKEN:
        logprobs = tuple(json.loads(values["l"])) if values.get("l") else ()
        calls = tuple(json.loads(values["c"])) if values.get("c") else ()
        return QueryEvent(
            TOKEN,
            index=int(values.get("i", 0)),
            text=values.get("t", ""),
            logprobs=logprobs,
            tool_calls=calls,
        )
    if kind == SAMPLE:
        return QueryEvent(SAMPLE, index=int(values.get("i", 0)))
    if kind == END:
        return QueryEvent(END, status=values.get("s", ""))
    return None


def _cache_events(query_id: Any, *, timeout_s: float, idle_s: float) -> Iterator[QueryEvent]:
    key = _cache_key(query_id)
    sent: dict[int, int] = {}
    sent_logprobs: dict[int, int] = {}
    sent_calls: dict[int, int] = {}
    samples_seen = 0
    deadline = time.monotonic() + timeout_s
    next_db_check = time.monotonic() + DB_CHECK_S
    last_event = time.monotonic()
    while time.monotonic() < deadline:
        snapshot = cache.get(key) or {}
        emitted = False
        logprobs = snapshot.get("logprobs") or {}
        all_calls = snapshot.get("calls") or {}
        for index, text in sorted((snapshot.get("texts") or {}).items()):
            index = int(index)
            done = sent.get(index, 0)
            entries = logprobs.get(index) or []
            done_lp = sent_logprobs.get(index, 0)
            calls = all_calls.get(index) or []
            done_calls = sent_calls.get(index, 0)
            if len(text) > done or len(entries) > done_lp or len(calls) > done_calls:
                sent[index] = len(text)
                sent_logprobs[index] = len(entries)
                sent_calls[index] = len(calls)
                emitted = True
                yield QueryEvent(
                    TOKEN,
                    index=index,
                    text=text[done:],
                    logprobs=tuple(entries[done_lp:]),
                    tool_calls=tuple(calls[done_calls:]),
                )
        samples = snapshot.get("samples") or []
        for index in samples[samples_seen:]:
            emitted = True
            yield QueryEvent(SAMPLE, index=int(index))
        samples_seen = len(samples)
        if snapshot.get("end"):
            yield QueryEvent(END, status=snapshot["end"])
            return
        now = time.monotonic()
        if emitted:
            last_event = now
        if now >= next_db_check:
            next_db_check = now + DB_CHECK_S
            status = _finished_status(query_id)
            if status is not None:
                yield QueryEvent(END, status=status)
                return
        if now - last_event >= idle_s:
            last_event = now
            yield QueryEvent(IDLE)
        time.sleep(CACHE_POLL_S)


def query_wait(query_id: Any, *, timeout_s: float) -> str | None:
    """Block until the query ends; return its status, or None when ``timeout_s`` ran out."""
    for event in query_events(query_id, timeout_s=timeout_s, idle_s=timeout_s + 1):
        if event.kind == END:
            return event.status
    return None


def query_finished_notify(
    *, query_id: Any, status: str, api_key_id: int | None, tokens: int
) -> None:
    """After a query's final row is committed: announce its end to readers and charge its
    tokens to its key's per-minute window (one Redis round trip). Best effort: neither may
    fail the query."""
    from routerapp.services.ratelimits import rate_limit_charge_tokens

    client = redis_client()
    if client is None:
        publish_end(query_id=query_id, status=status)
        rate_limit_charge_tokens(key_id=api_key_id, tokens=tokens)
        return
    key = _stream_key(query_id)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key, {"k": END, "s": status}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(key, STREAM_TTL_S)
        rate_limit_charge_tokens(key_id=api_key_id, tokens=tokens, pipe=pipe)
        pipe.execute()
    except Exception:  # readers fall back to the database; a missed charge only loosens a limit
        log.warning("could not announce the end of query %s", query_id)
