"""The ``openai_compat`` engine: any OpenAI-compatible server over HTTP (httpx).

Works with ``vllm serve``, SGLang, llama.cpp's servers and hosted APIs, through either
``/chat/completions`` (``api="chat"``) or ``/completions``.

- Samples: one HTTP request per sample with ``seed + i`` (llama.cpp's servers ignore
  ``n``). With ``supports_n=True`` and no per-token streaming wanted, one request with
  ``n`` is sent instead (its prompt is billed once; per-sample seeds are then the server's).
- Streaming: server-sent events, one reader thread per running request; per-sample abort
  closes that request's stream (the server stops generating when it notices).
- Token counts, best available per sample (recorded as ``count_method``): the server's
  ``usage`` whenever it arrives (non-streaming responses; streams ask for it with
  ``stream_options.include_usage`` and keep reading to it once the sample has finished,
  even when it was aborted meanwhile); else the number of streamed log-prob entries
  (completion tokens); else, for streams, the number of chunks with content (servers stream
  one token per chunk); else the server's own tokenizer on the text (``/tokenize`` of vLLM /
  llama.cpp, ``/extras/tokenize`` of llama-cpp-python); else an estimate: characters / 4,
  and for chat prompts the contents' tokens + 4 per message + 3 (template overhead).
- Requests that end before the server reported usage are billed an upper bound on their
  completion tokens (``count_method "bound"``), because a server bills what it generated
  after the last chunk it sent:

  * a stream we aborted (early stop, cancel): what was received plus
    ``abort_overrun_tokens`` (the tokens a server may generate between its last chunk and
    noticing the closed connection; vLLM and llama.cpp check it every token), at most
    ``max_tokens``;
  * a request that broke after it was sent (dropped connection, read timeout, a body that
    is not SSE): the server may have gone on to the end, so ``max_tokens``;
  * an error event inside the stream (``data: {"error": ...}``, vLLM's shape): the server
    says it stopped, so what was received.

  A request that was sent is billed its prompt even if aborted or broken; a sample aborted
  before its request was sent, or refused (connection refused, HTTP error status), bills
  nothing. Finish reasons other than the known natural ends (``stop``, ``length`` and their
  aliases, tool calls) become ``error``, never ``stop``: such samples are not answers.
- Failures (workers.engines.resilience): a request is retried with backoff and jitter (or
  after the server's ``Retry-After``) on a connection error, 429 or 5xx before its first
  token, up to ``max_retries`` times; then, or on any failure after the first token, the
  stream raises an :class:`UpstreamError` that carries what the failed request generated
  (billed, with the bounds above; the other samples of the stream are aborted and reported
  first) and whether the endpoint (rather than the request) is at fault, so the caller can
  fall back to another endpoint and feed the endpoint's circuit breaker.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.engines.base import (
    Engine,
    FinishReason,
    GenerationResult,
    GenerationStream,
    Prompt,
    SampleDone,
    SampleOutput,
    SamplingConfig,
    StreamEvent,
    Timer,
    TokenEvent,
    logprob_entries,
)
from workers.engines.registry import register_engine
from workers.engines.resilience import (
    RETRY_LOG,
    RetryPolicy,
    UpstreamError,
    error_of_exception,
    error_of_response,
)
from workers.ledger import worst_count_method


class OpenAICompatParams(BaseModel):
    """Parameters of an ``openai_compat`` endpoint.

    ``base_url`` is the OpenAI base URL, usually ending in ``/v1``. ``api_key_env`` names
    the environment variable holding the API key (never the key itself).
    ``max_concurrency`` caps the requests in flight for one query (default: all samples).
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    api: Literal["chat", "completions"] = "chat"
    supports_n: bool = False
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_concurrency: int | None = Field(default=None, ge=1, le=1024)
    tokenize: Literal["auto", "none"] = "auto"
    stream_usage: bool = True
    #: Tokens billed on top of what was received for a stream we aborted before its usage
    #: arrived (see the module docstring).
    abort_overrun_tokens: int = Field(default=16, ge=0, le=4096)
    #: Retries of a request that failed before its first token (connection error, 429, 5xx).
    max_retries: int = Field(default=2, ge=0, le=10)
    #: A longer Retry-After is not waited for: the request fails over at once.
    retry_after_max_s: float = Field(default=10.0, ge=0, le=600)
    #: Extra, server-specific request fields (e.g. llama.cpp's ``repeat_penalty``).
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.replace("_", "").isalnum()):
            raise ValueError("api_key_env must be an environment variable name")
        return value


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


@register_engine("openai_compat", params=OpenAICompatParams)
class OpenAICompatEngine(Engine):
    """HTTP engine (see the module docstring)."""

    kind = "openai_compat"
    bills_prompt_per_sample = True

    def __init__(self, params: OpenAICompatParams) -> None:
        self.params = params
        headers = {"Content-Type": "application/json"}
        if params.api_key_env:
            key = os.environ.get(params.api_key_env)
            if not key:
                raise ValueError(f"environment variable {params.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(params.timeout_s, connect=min(10.0, params.timeout_s)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        root = params.base_url
        self._root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._tokenizer_kind: str | None = None  # "vllm", "llamacpp", "extras", "none"
        self._tokenizer_lock = threading.Lock()
        self._last_scoring_usage = (0, 0)
        self.retry_policy = RetryPolicy(
            max_retries=params.max_retries,
            retry_after_max_s=params.retry_after_max_s,
            total_s=min(params.timeout_s, 60.0),
        )

    def send(
        self, body: dict[str, Any], *, stream: bool = False, path: str | None = None
    ) -> httpx.Response:
        """POST one request and return its (successful) response, retried per the engine's
        RetryPolicy while the upstream has generated nothing; raise UpstreamError otherwise.
        A streamed response must be closed by the caller."""

        def once() -> httpx.Response:
            url = self.url if path is None else self.params.base_url + path
            request = self._client.build_request("POST", url, json=body)
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                    raise error_of_exception(exc) from exc
                # Sent, and no answer in time: the server may be generating it. Not retried
                # (it could be generated twice); the caller bills its prompt.
                raise UpstreamError(
                    f"{type(exc).__name__}: no answer within {self.params.timeout_s:g}s",
                    partial=(0, 0, ""),
                ) from exc
            except httpx.TransportError as exc:
                raise error_of_exception(exc) from exc
            if response.status_code >= 400:
                response.read()
                response.close()
                raise error_of_response(response)
            return response

        return self.retry_policy.call(once, log=RETRY_LOG.get())

    def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return the server's answer to ``POST /embeddings`` for ``body`` (an OpenAI
        embeddings request; its ``model`` is replaced by this endpoint's), retried like any
        request; raise UpstreamError when it fails."""
        answer = self.send({**body, "model": self.params.model}, path="/embeddings").json()
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise UpstreamError("the embeddings answer has no 'data' list", transient=True)
        return answer

    @property
    def url(self) -> str:
        path = "/chat/completions" if self.params.api == "chat" else "/completions"
        return self.params.base_url + path

    # -- tokenization ----------------------------------------------------------------

    def _detect_tokenizer(self) -> str:
        with self._tokenizer_lock:
            if self._tokenizer_kind is not None:
                return self._tokenizer_kind
            kind = "none"
            if self.params.tokenize == "auto":
                for candidate in ("vllm", "llamacpp", "extras"):
                    try:
                        if self._tokenize_with(candidate, "hello world") is not None:
                            kind = candidate
                            break
                    except (httpx.HTTPError, ValueError, KeyError, TypeError):
                        continue
            self._tokenizer_kind = kind
            return kind

    def _tokenize_with(self, kind: str, text: str) -> int | None:
        if kind == "vllm":
            body: dict[str, Any] = {"model": self.params.model, "prompt": text}
            r = self._client.post(self._root + "/tokenize", json=body)
        elif kind == "llamacpp":
            r = self._client.post(self._root + "/tokenize", json={"content": text})
        elif kind == "extras":
            r = self._client.post(self._root + "/extras/tokenize", json={"input": text})
        else:
            return None
        if r.status_code != 200:
            return None
        data = r.json()
        if kind == "vllm" and "count" in data:
            return int(data["count"])
        tokens = data.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    def count_text_tokens(self, text: str) -> tuple[int, str]:
        """Return (tokens in ``text``, method) using the server's tokenizer when it has one."""
        if not text:
            return 0, "tokenize"
        kind = self._detect_tokenizer()
        if kind != "none":
            try:
                n = self._tokenize_with(kind, text)
            except httpx.HTTPError:
                n = None
            if n is not None:
                return n, "tokenize"
        return _estimate_tokens(text), "estimate"

    def count_prompt_tokens_with_method(self, prompt: Prompt) -> tuple[int, str]:
        """Return (prompt tokens billed per request, how they were counted)."""
        if prompt.text is not None:
            return self.count_text_tokens(prompt.text)
        assert prompt.messages is not None
        if self._detect_tokenizer() == "vllm":
            try:
                r = self._client.post(
                    self._root + "/tokenize",
                    json={
                        "model": self.params.model,
                        "messages": list(prompt.messages),
                        "add_generation_prompt": True,
                    },
                )
                if r.status_code == 200 and "count" in r.json():
                    return int(r.json()["count"]), "tokenize"
            except (httpx.HTTPError, ValueError):
                pass
        total = 3
        for m in prompt.messages:
            n, _ = self.count_text_tokens(str(m["content"]))
            total += n + 4
        return total, "estimate"

    def count_prompt(self, prompt: Prompt) -> int:
        return self.count_prompt_tokens_with_method(prompt)[0]

    # -- requests --------------------------------------------------------------------

    def request_body(self, prompt: Prompt, sampling: SamplingConfig, seed: int | None) -> dict:
        """Return the JSON body of one request for one sample."""
        body: dict[str, Any] = {
            "model": self.params.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        body.update(self.params.extra_body)
        if seed is not None:
            body["seed"] = seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if self.params.api == "chat":
            body["messages"] = (
                list(prompt.messages)
                if prompt.messages is not None
                else [{"role": "user", "content": prompt.text}]
            )
            if sampling.top_logprobs > 0 or sampling.token_texts:
                body["logprobs"] = True
                if sampling.top_logprobs > 0:
                    body["top_logprobs"] = sampling.top_logprobs
            if sampling.tools:
                body["tools"] = list(sampling.tools)
                if sampling.tool_choice is not None:
                    body["tool_choice"] = sampling.tool_choice
        else:
            if sampling.tools:
                raise ValueError("tools need an endpoint with api='chat'")
            body["prompt"] = prompt.text if prompt.text is not None else _transcript(prompt)
            if sampling.top_logprobs > 0 or sampling.token_texts:
                body["logprobs"] = sampling.top_logprobs
        if sampling.response_format is not None:
            body["response_format"] = dict(sampling.response_format)
        body.update(dict(sampling.passthrough))
        return body

    def stream(
        self, prompt: Prompt, sampling: SamplingConfig, *, token_events: bool = True
    ) -> GenerationStream:
        return _HttpStream(self, prompt, sampling, token_events)

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> dict[str, float]:
        k = 20 if self.params.api == "chat" else 5
        sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=1, top_logprobs=k)
        body = self.request_body(prompt, sampling, seed=0)
        data = self.send(body).json()
        choice = data["choices"][0]
        tops: list[tuple[str, float]] = []
        lp = choice.get("logprobs") or {}
        if self.params.api == "chat":
            for entry in (lp.get("content") or [])[:1]:
                tops = [(t["token"], float(t["logprob"])) for t in entry.get("top_logprobs", [])]
                tops.append((entry["token"], float(entry["logprob"])))
        else:
            first = (lp.get("top_logprobs") or [{}])[0] or {}
            tops = [(t, float(v)) for t, v in first.items()]
        usage = data.get("usage") or {}
        if usage:
            self._last_scoring_usage = (
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 1)),
            )
        else:
            self._last_scoring_usage = (self.count_prompt_tokens(prompt), 1)
        out: dict[str, float] = {}
        for cand in candidates:
            seen: dict[str, float] = {}
            for tok, val in tops:
                if tok.strip().lower() == cand.strip().lower():
                    seen[tok] = val
            if not seen:
                out[cand] = float("-inf")
            else:
                m = max(seen.values())
                out[cand] = m + math.log(sum(math.exp(v - m) for v in seen.values()))
        return out

    def close(self) -> None:
        self._client.close()


def _transcript(prompt: Prompt) -> str:
    assert prompt.messages is not None
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt.messages) + "assistant: "


class _Slot:
    """Per-sample state shared between a reader thread and the consuming thread."""

    def __init__(self, index: int, seed: int | None) -> None:
        self.index = index
        self.seed = seed
        self.abort = threading.Event()
        self.response: httpx.Response | None = None
        self.done = False
        self.output: SampleOutput | None = None
        self.sent = False
        self.failure: BaseException | None = None  # its request's error, once consumed


class _HttpStream(GenerationStream):
    def __init__(
        self,
        engine: OpenAICompatEngine,
        prompt: Prompt,
        sampling: SamplingConfig,
        token_events: bool,
    ) -> None:
        self.engine = engine
        self.prompt = prompt
        self.sampling = sampling
        self.token_events = token_events
        self.timer = Timer()
        self._q: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        base = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        self.use_n = engine.params.supports_n and not token_events and sampling.n > 1
        self.slots = [_Slot(i, None if self.use_n else base + i) for i in range(sampling.n)]
        self._base_seed = base
        self._prompt_count: tuple[int, str] | None = None
        self._prompt_lock = threading.Lock()
        self.requests_sent = 0
        self._sent_lock = threading.Lock()
        self.wall_s = 0.0
        self._error: BaseException | None = None
        self._raised = False
        self._iter: Iterator[StreamEvent] | None = None
        limit = engine.params.max_concurrency or sampling.n
        self._sem = threading.Semaphore(limit)
        if token_events:
            # Streams may end without usage (aborted, or servers that ignore
            # stream_options): count the prompt now, before our own requests occupy a
            # server that serialises requests (llama-cpp-python's tokenizer waits for them).
            self._prompt_count = engine.count_prompt_tokens_with_method(prompt)
        # One plain request (no token events: nothing to abort it between tokens): it runs in
        # the consumer's own thread when the consumer first reads the stream, rather than in a
        # reader thread started for it (a thread and two context switches per call saved).
        self._deferred: _Slot | None = None
        if not token_events and not self.use_n and len(self.slots) == 1:
            self._deferred = self.slots[0]
            targets: list[threading.Thread] = []
        elif self.use_n:
            targets = [
                threading.Thread(
                    target=contextvars.copy_context().run, args=(self._run_n,), daemon=True
                )
            ]
        else:
            targets = [
                # Each reader sees the caller's context (its RETRY_LOG, where retries are noted).
                threading.Thread(
                    target=contextvars.copy_context().run, args=(self._run_one, s), daemon=True
                )
                for s in self.slots
            ]
        for t in targets:
            t.start()

    # -- consumer side -----------------------------------------------------------------

    def running(self) -> list[int]:
        return [s.index for s in self.slots if not s.done]

    def abort(self, index: int) -> None:
        self.slots[index].abort.set()

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._iter is None:
            self._iter = self._drain()
        return self._iter

    def _run_deferred(self) -> None:
        """Run the deferred request here, now (an aborted one answers at once, unsent)."""
        slot, self._deferred = self._deferred, None
        if slot is not None:
            self._run_one(slot)

    def _drain(self) -> Iterator[StreamEvent]:
        self._run_deferred()
        remaining = len(self.slots)
        while remaining:
            kind, index, payload = self._q.get()
            if kind == "token":
                yield payload
            elif kind == "done":
                slot = self.slots[index]
                slot.done = True
                slot.output = payload
                remaining -= 1
                yield SampleDone(payload)
            elif kind == "done_all":
                for out in payload:
                    slot = self.slots[out.index]
                    slot.done = True
                    slot.output = out
                    remaining -= 1
                    yield SampleDone(out)
            elif kind == "error":
                for s in self.slots:
                    s.abort.set()
                self._error = payload
                remaining -= 1
                self.slots[index].done = True
                self.slots[index].failure = payload
        self.wall_s = self.timer.elapsed()
        # The failure raised here carries its request's tokens (``partial``) to the runner.
        self._raised = self._error is not None
        if isinstance(self._error, UpstreamError):
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"openai_compat request failed: {self._error}") from self._error

    def salvage(self, reported: set[int], timeout_s: float = 30.0) -> list[SampleOutput]:
        """Abort every request, close the connections (a hung server gets no chance to
        read an abort) and collect each reader thread's sample without the iterator (it may
        have died with the failure). A failed request's tokens (its UpstreamError's
        ``partial``) become its sample; a reader that has not answered after ``timeout_s``
        is billed its bound: the prompt and ``max_tokens`` once its request was sent."""
        for slot in self.slots:
            slot.abort.set()
            if slot.response is not None and slot.output is None:
                with contextlib.suppress(Exception):
                    slot.response.close()
        self._run_deferred()
        deadline = time.monotonic() + timeout_s
        while any(s.output is None and s.failure is None for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                kind, index, payload = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if kind in ("done", "done_all"):
                for out in [payload] if kind == "done" else payload:
                    self.slots[out.index].output = out
            elif kind == "error":
                self.slots[index].failure = payload
        for slot in self.slots:
            if slot.output is None and slot.failure is not None:
                if not self._raised:  # else the failure the stream raised carries them
                    partial = getattr(slot.failure, "partial", None) or (0, 0, "")
                    slot.output = self._failed(slot, partial)
            elif slot.output is None:
                bound = (self._prompt_count or (0, ""))[0], self.sampling.max_tokens, ""
                slot.output = self._failed(slot, bound if slot.sent else (0, 0, ""))
            slot.done = True
        self.wall_s = self.timer.elapsed()
        return [s.output for s in self.slots if s.output is not None and s.index not in reported]

    def _failed(self, slot: _Slot, partial: tuple[int, int, str]) -> SampleOutput:
        prompt_tokens, completion, text = partial
        return SampleOutput(
            index=slot.index,
            text=text,
            completion_tokens=completion,
            finish_reason="error",
            seed=slot.seed,
            prompt_tokens=prompt_tokens,
            latency_s=self.timer.elapsed(),
            count_method="bound",
        )

    def result(self) -> GenerationResult:
        if self.running():
            raise RuntimeError("result() called before the stream ended")
        outs = [s.output for s in self.slots if s.output is not None]
        prompt_length = self._prompt_count[0] if self._prompt_count else 0
        return GenerationResult(
            samples=outs,
            prompt_tokens=sum(o.prompt_tokens for o in outs),
            completion_tokens=sum(o.completion_tokens for o in outs),
            engine_requests=self.requests_sent,
            prompt_length=prompt_length,
            wall_s=self.wall_s,
            count_method=worst_count_method(*(o.count_method for o in outs)),
        )

    # -- reader threads ----------------------------------------------------------------

    def _prompt_tokens(self) -> tuple[int, str]:
        with self._prompt_lock:
            if self._prompt_count is None:
                self._prompt_count = self.engine.count_prompt_tokens_with_method(self.prompt)
            return self._prompt_count

    def _run_one(self, slot: _Slot) -> None:
        try:
            with self._sem:
                if slot.abort.is_set():
                    self._q.put(("done", slot.index, self._aborted_unsent(slot)))
                    return
                with self._sent_lock:
                    self.requests_sent += 1
                slot.sent = True
                out = self._stream_one(slot) if self.token_events else self._post_one(slot)
            self._q.put(("done", slot.index, out))
        except Exception as exc:  # noqa: BLE001 - surfaced to the consumer, which re-raises
            self._q.put(("error", slot.index, exc))

    def _aborted_unsent(self, slot: _Slot) -> SampleOutput:
        return SampleOutput(
            index=slot.index,
            text="",
            completion_tokens=0,
            finish_reason="abort",
            seed=slot.seed,
            prompt_tokens=0,
            latency_s=self.timer.elapsed(),
            count_method="exact",
        )

    def _post_one(self, slot: _Slot) -> SampleOutput:
        eng = self.engine
        body = eng.request_body(self.prompt, self.sampling, slot.seed)
        try:
            data = eng.send(body).json()
        except UpstreamError as exc:
            if exc.partial is not None:  # sent, no answer: it may have run to max_tokens
                exc.partial = (self._prompt_tokens()[0], self.sampling.max_tokens, "")
            raise
        choice = data["choices"][0]
        text = _choice_text(choice, eng.params.api)
        lps, tops = _choice_logprobs(choice, eng.params.api, self.sampling.top_logprobs)
        tokens, top_tokens = self._token_texts(choice)
        usage = data.get("usage") or {}
        prompt_tokens, p_method = self._usage_or_count(usage.get("prompt_tokens"))
        if usage.get("completion_tokens") is not None:
            completion, c_method = int(usage["completion_tokens"]), "usage"
        elif lps:
            completion, c_method = len(lps), "logprobs"
        else:
            completion, c_method = eng.count_text_tokens(text or _calls_text(choice))
        cached, reasoning = usage_details(usage, prompt_tokens, completion)
        return SampleOutput(
            index=slot.index,
            text=text,
            completion_tokens=completion,
            finish_reason=_finish(choice.get("finish_reason")),
            seed=slot.seed,
            prompt_tokens=prompt_tokens,
            token_logprobs=lps,
            top_logprobs=tops,
            latency_s=self.timer.elapsed(),
            count_method=worst_count_method(p_method, c_method),
            cached_prompt_tokens=cached,
            reasoning_tokens=reasoning,
            tool_calls=_choice_tool_calls(choice, eng.params.api),
            tokens=tokens,
            top_tokens=top_tokens,
        )

    def _token_texts(
        self, choice: dict
    ) -> tuple[list[str] | None, list[list[tuple[str, float]]] | None]:
        if not self.sampling.token_texts:
            return None, None
        return _choice_tokens(choice, self.engine.params.api, self.sampling.top_logprobs)

    def _usage_or_count(self, reported: Any) -> tuple[int, str]:
        if reported is not None:
            return int(reported), "usage"
        return self._prompt_tokens()

    def _stream_one(self, slot: _Slot) -> SampleOutput:
        eng = self.engine
        api = eng.params.api
        body = eng.request_body(self.prompt, self.sampling, slot.seed)
        body["stream"] = True
        if eng.params.stream_usage:
            body["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        chunks = 0
        lps: list[float] = []
        tops: list[tuple[float, ...]] = []
        finish: str | None = None
        usage: dict[str, Any] = {}
        aborted = False
        calls = _ToolCallDeltas()
        tokens: list[str] | None = [] if self.sampling.token_texts else None
        top_tokens: list[list[tuple[str, float]]] = []
        try:
            opened = eng.send(body, stream=True)
        except UpstreamError as exc:
            if exc.partial is not None:  # sent, no answer: it may have run to max_tokens
                exc.partial = (self._prompt_tokens()[0], self.sampling.max_tokens, "")
            raise
        reported: str | None = None  # the server reported an error in the stream
        with contextlib.closing(opened) as response:
            slot.response = response
            try:
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if not isinstance(chunk, dict):
                        raise ValueError(f"a stream chunk is not an object: {payload[:200]}")
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk.get("error"):
                        reported = _error_message(chunk["error"])
                        break
                    # A chunk that arrives after an abort was still generated (and billed
                    # by the server): count it, but show no event for an aborted sample.
                    stopping = slot.abort.is_set()
                    for choice in chunk.get("choices") or []:
                        delta = _delta_text(choice, api)
                        c_lps, c_tops = _choice_logprobs(choice, api, self.sampling.top_logprobs)
                        call_parts = calls.add(choice)
                        if call_parts and not (delta or c_lps):
                            chunks += 1  # a tool-call delta is generated text too
                        if call_parts and self.token_events and not stopping:
                            self._q.put(
                                (
                                    "token",
                                    slot.index,
                                    TokenEvent(slot.index, "", tool_calls=call_parts),
                                )
                            )
                        entries = None
                        if tokens is not None:
                            c_tokens, c_top_tokens = self._token_texts(choice)
                            tokens.extend(c_tokens or [])
                            top_tokens.extend(c_top_tokens or [])
                            if c_tokens:
                                entries = tuple(
                                    logprob_entries(c_tokens, c_lps, c_top_tokens or [])
                                )
                        if delta or c_lps:
                            chunks += 1
                            parts.append(delta)
                            lps.extend(c_lps)
                            tops.extend(c_tops)
                            if self.token_events and not stopping:
                                event = TokenEvent(
                                    slot.index,
                                    delta,
                                    c_lps[-1] if c_lps else None,
                                    c_tops[-1] if c_tops else None,
                                    entries,
                                )
                                self._q.put(("token", slot.index, event))
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    if stopping and finish is None:
                        aborted = True
                        break
                    # A finished sample's usage follows its last chunk: read on to it.
                if finish is None and not aborted and reported is None:
                    raise ValueError("the stream ended before the sample finished")
            except (httpx.HTTPError, ValueError) as exc:
                # Closing an aborted stream can surface as a read error; anything else broke
                # the stream after the request was sent: the server may have gone on to
                # max_tokens, so that bound is billed with the tokens received so far.
                if slot.abort.is_set() and finish is None:
                    aborted = True
                elif finish is None:
                    prompt_tokens = self._usage_or_count(usage.get("prompt_tokens"))[0]
                    received = len(lps) or chunks
                    raise UpstreamError(
                        f"the stream broke after {received} tokens: {type(exc).__name__}: {exc}",
                        partial=(
                            prompt_tokens,
                            max(received, self.sampling.max_tokens),
                            "".join(parts),
                        ),
                    ) from exc
                # else: the sample had finished; only its usage chunk was lost.
        # Leaving the context manager closed the connection: the server stops generating.
        text = "".join(parts)
        prompt_tokens, p_method = self._usage_or_count(usage.get("prompt_tokens"))
        received, c_method = (len(lps), "logprobs") if lps else (chunks, "chunks")
        if reported is not None:  # the server stopped and said so: what it sent is billed
            raise UpstreamError(
                f"the upstream reported an error after {received} tokens: {reported}",
                partial=(prompt_tokens, int(usage.get("completion_tokens") or received), text),
            )
        reason = "abort" if aborted else _finish(finish)
        completion = received
        if usage.get("completion_tokens") is not None:
            completion, c_method = int(usage["completion_tokens"]), "usage"
        elif aborted:
            overrun = received + eng.params.abort_overrun_tokens
            completion, c_method = max(received, min(self.sampling.max_tokens, overrun)), "bound"
        # Usage only arrives with a whole sample (we stop reading an unfinished aborted one).
        cached, reasoning = usage_details(usage, prompt_tokens, completion)
        return SampleOutput(
            index=slot.index,
            text=text,
            completion_tokens=completion,
            finish_reason=reason,
            seed=slot.seed,
            prompt_tokens=prompt_tokens,
            token_logprobs=lps,
            top_logprobs=tops,
            latency_s=self.timer.elapsed(),
            count_method=worst_count_method(p_method, c_method),
            cached_prompt_tokens=cached,
            reasoning_tokens=reasoning,
            tool_calls=calls.result(),
            tokens=tokens,
            top_tokens=top_tokens if tokens is not None else None,
        )

    def _run_n(self) -> None:
        """One request with ``n`` choices (servers that honour ``n``)."""
        eng = self.engine
        try:
            body = eng.request_body(self.prompt, self.sampling, self._base_seed)
            body["n"] = self.sampling.n
            with self._sent_lock:
                self.requests_sent += 1
            try:
                data = eng.send(body).json()
            except UpstreamError as exc:
                if exc.partial is not None:  # every choice may have run to max_tokens
                    n_bound = self.sampling.max_tokens * self.sampling.n
                    exc.partial = (self._prompt_tokens()[0], n_bound, "")
                raise
            usage = data.get("usage") or {}
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            outs: list[SampleOutput] = []
            for i, choice in enumerate(choices[: self.sampling.n]):
                text = _choice_text(choice, eng.params.api)
                lps, tops = _choice_logprobs(choice, eng.params.api, self.sampling.top_logprobs)
                tokens, top_tokens = self._token_texts(choice)
                if lps:
                    completion, method = len(lps), "logprobs"
                else:
                    completion, method = eng.count_text_tokens(text or _calls_text(choice))
                outs.append(
                    SampleOutput(
                        index=i,
                        text=text,
                        completion_tokens=completion,
                        finish_reason=_finish(choice.get("finish_reason")),
                        seed=None,
                        prompt_tokens=0,
                        token_logprobs=lps,
                        top_logprobs=tops,
                        latency_s=self.timer.elapsed(),
                        count_method=method,
                        tool_calls=_choice_tool_calls(choice, eng.params.api),
                        tokens=tokens,
                        top_tokens=top_tokens,
                    )
                )
            if usage.get("prompt_tokens") is not None:
                outs[0].prompt_tokens = int(usage["prompt_tokens"])
            else:
                outs[0].prompt_tokens, outs[0].count_method = self._prompt_tokens()
            total = usage.get("completion_tokens")
            if total is not None and outs:
                # The server's total is exact; keep per-choice counts, fix the remainder.
                outs[-1].completion_tokens = max(
                    0, int(total) - sum(o.completion_tokens for o in outs[:-1])
                )
            # The request's cached prompt tokens go with the sample that bills the prompt; its
            # reasoning tokens are spread over the choices, none beyond a choice's own count.
            cached, reasoning = usage_details(
                usage, outs[0].prompt_tokens, sum(o.completion_tokens for o in outs)
            )
            outs[0].cached_prompt_tokens = cached
            for out in reversed(outs):
                out.reasoning_tokens = min(reasoning, out.completion_tokens)
                reasoning -= out.reasoning_tokens
            self._q.put(("done_all", 0, outs))
        except Exception as exc:  # noqa: BLE001 - surfaced to the consumer, which re-raises
            self._q.put(("error", 0, exc))
            for s in self.slots[1:]:
                self._q.put(("done", s.index, self._aborted_unsent(s)))


def usage_details(usage: dict[str, Any], prompt_tokens: int, completion: int) -> tuple[int, int]:
    """Return (cached prompt tokens, reasoning tokens) from an OpenAI ``usage`` object.

    ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``
    are parts of the prompt and completion counts; a server reporting more than the whole is
    capped at the whole (the part can never be billed twice).
    """
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    try:
        cached = int(prompt_details.get("cached_tokens") or 0)
        reasoning = int(completion_details.get("reasoning_tokens") or 0)
    except (TypeError, ValueError, AttributeError):
        return 0, 0
    return max(0, min(cached, prompt_tokens)), max(0, min(reasoning, completion))


_STOP_REASONS = frozenset(
    {"stop", "eos", "stop_sequence", "end_turn", "tool_calls", "function_call", "tool_use"}
)
_LENGTH_REASONS = frozenset({"length", "max_tokens", "model_length"})


def _finish(reason: Any) -> FinishReason:
    """Map a server's finish reason; anything that is not a known natural end (content
    filters, repetition guards, ``abort``, ``error``, unknown values) is ``error``."""
    if reason in _STOP_REASONS:
        return "stop"
    if reason in _LENGTH_REASONS:
        return "length"
    if reason in ("abort", "cancelled"):
        return "abort"
    return "error"


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _choice_text(choice: dict, api: str) -> str:
    if api == "chat":
        return str((choice.get("message") or {}).get("content") or "")
    return str(choice.get("text") or "")


def _delta_text(choice: dict, api: str) -> str:
    if api == "chat":
        return str((choice.get("delta") or {}).get("content") or "")
    return str(choice.get("text") or "")


def _choice_logprobs(
    choice: dict, api: str, k: int | None = None
) -> tuple[list[float], list[tuple[float, ...]]]:
    """Return the chosen-token log-probs and the top-``k`` log-probs (descending) per token.

    Some servers (llama-cpp-python) add the sampled token to the top list; it is cut to
    ``k`` so every backend reports the same shape."""
    lp = choice.get("logprobs")
    if not lp:
        return [], []
    lps: list[float] = []
    tops: list[tuple[float, ...]] = []
    if api == "chat":
        for entry in lp.get("content") or []:
            lps.append(float(entry["logprob"]))
            vals = sorted(
                (float(t["logprob"]) for t in entry.get("top_logprobs") or []), reverse=True
            )
            if vals:
                tops.append(tuple(vals[:k] if k else vals))
    else:
        lps = [float(v) for v in lp.get("token_logprobs") or [] if v is not None]
        for entry in lp.get("top_logprobs") or []:
            if entry:
                vals = sorted((float(v) for v in entry.values()), reverse=True)
                tops.append(tuple(vals[:k] if k else vals))
    return lps, tops


def _choice_tokens(
    choice: dict, api: str, k: int
) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """Return each token's text and its top-``k`` alternatives (text, log-prob), descending."""
    lp = choice.get("logprobs") or {}
    tokens: list[str] = []
    tops: list[list[tuple[str, float]]] = []
    if api == "chat":
        for entry in lp.get("content") or []:
            tokens.append(str(entry.get("token", "")))
            alts = [(str(t["token"]), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
            tops.append(sorted(alts, key=lambda a: -a[1])[:k])
    else:
        tokens = [str(t) for t in lp.get("tokens") or []]
        for entry in lp.get("top_logprobs") or []:
            alts = [(str(t), float(v)) for t, v in (entry or {}).items()]
            tops.append(sorted(alts, key=lambda a: -a[1])[:k])
    return tokens, tops


def _calls_text(choice: dict) -> str:
    """The generated text of a reply's tool calls (what a tokenizer bills when no usage)."""
    calls = _choice_tool_calls(choice, "chat") or []
    return "".join(c["function"]["name"] + c["function"]["arguments"] for c in calls)


def _choice_tool_calls(choice: dict, api: str) -> list[dict[str, Any]] | None:
    if api != "chat":
        return None
    calls = (choice.get("message") or {}).get("tool_calls")
    if not calls:
        return None
    return [
        {
            "id": str(c.get("id") or f"call_{i}"),
            "type": "function",
            "function": {
                "name": str((c.get("function") or {}).get("name") or ""),
                "arguments": str((c.get("function") or {}).get("arguments") or ""),
            },
        }
        for i, c in enumerate(calls)
    ]


class _ToolCallDeltas:
    """Tool calls of a streamed chat reply, put back together from their deltas (by index:
    the first delta of a call has its id and name, the others add to its arguments)."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, choice: dict) -> tuple[dict[str, Any], ...]:
        """Add a chunk's tool-call deltas; return them in OpenAI's delta shape (empty: none)."""
        parts = (choice.get("delta") or {}).get("tool_calls") or []
        out = []
        for part in parts:
            i = int(part.get("index", len(self.calls)))
            call = self.calls.setdefault(
                i, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            delta: dict[str, Any] = {"index": i, "function": {}}
            if part.get("id"):
                call["id"] = str(part["id"])
                delta.update(id=call["id"], type="function")
            function = part.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += str(function["name"])
                delta["function"]["name"] = str(function["name"])
            if function.get("arguments"):
                call["function"]["arguments"] += str(function["arguments"])
                delta["function"]["arguments"] = str(function["arguments"])
            out.append(delta)
        return tuple(out)

    def result(self) -> list[dict[str, Any]] | None:
        if not self.calls:
            return None
        return [self.calls[i] for i in sorted(self.calls)]
