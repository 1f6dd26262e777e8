"""The engine interface every backend implements, and the value types it speaks.

An engine turns one prompt into ``n`` samples. Strategies drive it through a
:class:`GenerationStream`: they iterate its events (a :class:`TokenEvent` per generated
token when token events were asked for, a :class:`SampleDone` when a sample ends) and may
call :meth:`GenerationStream.abort` on any running sample between events. An aborted sample
stops generating at once and reports the tokens it had generated (``finish_reason
"abort"``). A sample cut short by a failure (a dropped connection, a server error, an
unknown end) reports ``finish_reason "error"`` with the tokens it had generated (or a
bound on them), before the stream raises. :meth:`Engine.generate` is the non-streaming convenience on top.

Seeds: sample ``i`` of a request uses ``seed + i``, so a request is reproducible on one
machine given the same seed, prompt and parameters.
"""

from __future__ import annotations

import codecs
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

#: ``stop``: the sample ended by itself (end of turn, stop string); ``length``: it hit
#: ``max_tokens``; ``abort``: it was aborted (early stop, cancel); ``error``: it was cut short
#: by a failure or ended for a reason that is not a natural end (content filter, repetition
#: guard, an unknown reason). Only ``stop`` / ``length`` samples are answers.
FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class Prompt:
    """What to complete: chat ``messages`` (rendered with the model's chat template by the
    engine) or a raw ``text`` prompt. Exactly one is set."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("Prompt needs exactly one of messages or text")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("Prompt.messages must not be empty")
            for m in self.messages:
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise ValueError("each message needs 'role' and 'content'")

    @classmethod
    def of(
        cls, messages: Sequence[dict[str, str]] | None = None, prompt: str | None = None
    ) -> Prompt:
        """Build from the API's ``messages=`` or ``prompt=`` argument."""
        if messages is not None:
            return cls(messages=tuple(dict(m) for m in messages))
        return cls(text=prompt)

    def user_text(self) -> str:
        """Return the text of the last user turn (or the raw prompt)."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return str(m.get("content", ""))
        return str(self.messages[-1].get("content", ""))


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters of one engine request.

    ``temperature == 0`` is greedy decoding. ``seed=None`` draws a base seed at random (it
    is reported back in each sample). ``top_logprobs`` is how many top log-probs to record
    per token (0: none); the chosen token's log-prob is always recorded when the backend can
    give it. Log-probs are those of the model's distribution (temperature 1, before top-p).

    Output constraints of an OpenAI request, honoured by engines that can (see
    ``workers.strategies.request_options``) and refused with ``ValueError`` by the others,
    never ignored: ``response_format`` (json_object / json_schema), ``tools`` with
    ``tool_choice``, and ``passthrough`` (other OpenAI request fields sent as they are,
    e.g. ``frequency_penalty``). ``token_texts`` asks for each token's text and the top
    alternatives' texts (``SampleOutput.tokens`` / ``top_tokens``), for OpenAI's logprobs.
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    top_logprobs: int = 0
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: Any = None
    passthrough: tuple[tuple[str, Any], ...] = ()
    token_texts: bool = False

    @property
    def constrained(self) -> bool:
        """Whether the request carries output constraints beyond plain sampling."""
        return bool(self.response_format or self.tools or self.passthrough)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError("top_logprobs must be in [0, 20]")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of sample ``index``: its text delta (may be empty while a
    multi-byte character or a possible stop string is held back), its log-prob and the top
    log-probs (descending) when asked for. ``entries``: with ``SamplingConfig.token_texts``,
    OpenAI's ``logprobs.content`` entries of the tokens this event generated (a client that
    streams log-probs gets them with the text, not at the end). ``tool_calls``: OpenAI's
    streamed tool-call deltas of this event (``index``; ``id``, ``type`` and
    ``function.name`` on a call's first; ``function.arguments`` pieces), as they come."""

    index: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[float, ...] | None = None
    entries: tuple[dict[str, Any], ...] | None = None
    tool_calls: tuple[dict[str, Any], ...] | None = None


def logprob_entries(
    tokens: Sequence[str],
    logprobs: Sequence[float],
    tops: Sequence[Sequence[tuple[str, float]]],
) -> list[dict[str, Any]]:
    """Return OpenAI's ``logprobs.content`` entries of tokens (their texts, log-probs and top
    alternatives as (text, log-prob), descending)."""
    return [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in (tops[i] if i < len(tops) else [])
            ],
        }
        for i, (token, logprob) in enumerate(zip(tokens, logprobs, strict=False))
    ]


@dataclass
class SampleOutput:
    """A finished or aborted sample.

    ``prompt_tokens`` is the prompt share billed to this sample: an engine request that
    processes its prompt once for several samples bills it on the first sample of the
    request and 0 on the others; one HTTP request per sample bills each.
    ``latency_s`` is measured from the start of the engine request to this sample's end.
    ``cached_prompt_tokens`` (part of ``prompt_tokens``) and ``reasoning_tokens`` (part of
    ``completion_tokens``) are what the server reported in ``usage.prompt_tokens_details`` /
    ``completion_tokens_details`` (0 when it did not): they have their own prices.
    """

    index: int
    text: str
    completion_tokens: int
    finish_reason: FinishReason
    seed: int | None = None
    prompt_tokens: int = 0
    token_ids: list[int] | None = None
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[float, ...]] = field(default_factory=list)
    latency_s: float = 0.0
    count_method: str = "exact"
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    #: OpenAI-shaped tool calls ({"id", "type": "function", "function": {name, arguments}}).
    tool_calls: list[dict[str, Any]] | None = None
    #: With ``SamplingConfig.token_texts``: each token's text, and the top alternatives
    #: (text, log-prob), descending, per token.
    tokens: list[str] | None = None
    top_tokens: list[list[tuple[str, float]]] | None = None

    @property
    def aborted(self) -> bool:
        """True when the sample did not end by itself (aborted or cut by an error)."""
        return self.finish_reason in ("abort", "error")


@dataclass(frozen=True)
class SampleDone:
    """Sample ``sample.index`` has ended (finished or aborted)."""

    sample: SampleOutput


StreamEvent = TokenEvent | SampleDone


@dataclass
class GenerationResult:
    """Every sample of one :meth:`Engine.generate` / stream, and what it billed."""

    samples: list[SampleOutput]
    prompt_tokens: int
    completion_tokens: int
    engine_requests: int
    prompt_length: int
    wall_s: float
    count_method: str = "exact"


class GenerationStream(ABC):
    """Events of one request of ``n`` samples, with per-sample abort.

    Iterate it to drive generation; call :meth:`abort` (or :meth:`abort_all`) between
    events; call :meth:`result` after the iteration ends. Use it as a context manager so
    that an exception aborts whatever still runs.
    """

    @abstractmethod
    def __iter__(self) -> Iterator[StreamEvent]: ...

    @abstractmethod
    def abort(self, index: int) -> None:
        """Stop sample ``index``; a no-op when it has already ended."""

    def abort_all(self) -> None:
        """Stop every running sample."""
        for i in self.running():
            self.abort(i)

    @abstractmethod
    def running(self) -> list[int]:
        """Return the indices of samples that have not ended yet."""

    @abstractmethod
    def result(self) -> GenerationResult:
        """Return the result; valid once iteration is over."""

    def close(self) -> None:
        """Abort what still runs and drain the stream."""
        self.abort_all()
        for _ in self:
            pass

    def salvage(self, reported: set[int]) -> list[SampleOutput]:
        """After a failure (the engine, the consumer or a time limit raised while the stream
        was being iterated): abort what still runs and return every sample whose
        :class:`SampleDone` is not in ``reported`` (indices the consumer received), with
        the tokens it generated, so that they can be billed. Never raises for a broken
        stream; engines whose iterator can die with the failure override it."""
        self.abort_all()
        outs: list[SampleOutput] = []
        try:
            for event in self:
                if isinstance(event, SampleDone) and event.sample.index not in reported:
                    outs.append(event.sample)
        except Exception:  # noqa: BLE001 - the failure is being handled by the caller
            pass
        return outs

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running():
            self.close()


class Engine(ABC):
    """A loaded model behind one of the backends (``kind``).

    Engines are created once per process by :func:`workers.engines.get_engine` and reused
    across queries; a request leaves no state behind for the next one.
    """

    kind: ClassVar[str]
    #: True when each sample is its own request that bills the prompt (HTTP engines);
    #: False when the prompt is processed once per request of n samples.
    bills_prompt_per_sample: ClassVar[bool] = False

    @abstractmethod
    def stream(
        self, prompt: Prompt, sampling: SamplingConfig, *, token_events: bool = True
    ) -> GenerationStream:
        """Start ``sampling.n`` samples of ``prompt`` and return their stream.

        With ``token_events=False`` the stream may yield only :class:`SampleDone` events
        (an HTTP engine then uses non-streaming requests, whose usage is exact).
        """

    def generate(
        self,
        prompt: Prompt,
        sampling: SamplingConfig,
        *,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Generate every sample to its end (or until ``should_cancel()`` is true)."""
        stream = self.stream(prompt, sampling, token_events=should_cancel is not None)
        with stream:
            for _ in stream:
                if should_cancel is not None and should_cancel():
                    stream.abort_all()
        return stream.result()

    def count_prompt_tokens(
        self,
        prompt: Prompt | None = None,
        *,
        messages: Sequence[dict[str, str]] | None = None,
        text: str | None = None,
    ) -> int:
        """Return the number of prompt tokens one request of this prompt bills.

        Pass a :class:`Prompt`, or chat ``messages=``, or a raw ``text=`` prompt.
        """
        if prompt is None:
            prompt = Prompt.of(messages=messages, prompt=text)
        return self.count_prompt(prompt)

    @abstractmethod
    def count_prompt(self, prompt: Prompt) -> int:
        """Return the number of prompt tokens ``prompt`` bills per request."""

    @abstractmethod
    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> dict[str, float]:
        """Return, for each candidate string, the log-prob that the reply starts with it
        (the best of its leading-token spellings); ``-inf`` when none is found.

        Used by verifiers ("yes" / "no"). Bills one request of 1 completion token, reported
        by :meth:`last_scoring_usage`.
        """

    def last_scoring_usage(self) -> tuple[int, int]:
        """Return (prompt_tokens, completion_tokens) billed by the last scoring call."""
        return getattr(self, "_last_scoring_usage", (0, 0))

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing to free
        """Free the backend's resources."""


class StopChecker:
    """Finds stop strings in a sample's growing text without emitting a partial match.

    ``feed(delta)`` returns ``(text_safe_to_emit, stopped)``; when a stop string appears,
    ``text`` is truncated before it and ``stopped`` is true.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.text = ""
        self._emitted = 0
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    def feed(self, delta: str) -> tuple[str, bool]:
        self.text += delta
        if self.stop:
            # Search only the tail that may contain a new match.
            start = max(0, self._emitted - self._hold)
            best = -1
            for s in self.stop:
                pos = self.text.find(s, start)
                if pos != -1 and (best == -1 or pos < best):
                    best = pos
            if best != -1:
                self.text = self.text[:best]
                out = self.text[self._emitted :]
                self._emitted = len(self.text)
                return out, True
            safe = len(self.text)
            for s in self.stop:
                # Hold back the longest suffix of the text that is a prefix of a stop string.
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
            safe = max(safe, self._emitted)
        else:
            safe = len(self.text)
        out = self.text[self._emitted : safe]
        self._emitted = safe
        return out, False

    def flush(self) -> str:
        """Return the held-back text (the sample ended without a stop string)."""
        out = self.text[self._emitted :]
        self._emitted = len(self.text)
        return out


def utf8_decoder() -> codecs.IncrementalDecoder:
    """Return a decoder that holds back incomplete multi-byte characters between tokens."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class Timer:
    """Monotonic stopwatch started at construction."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class EngineLock:
    """Serialises use of a non-reentrant backend within a process (a Celery solo worker
    runs one query at a time, but a threaded web process may share an engine)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()
