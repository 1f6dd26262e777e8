"""The ``vllm`` engine: in-process vLLM V1 ``AsyncLLM`` behind a synchronous facade.

vLLM's engine is asyncio-based; a Celery GPU worker (``--pool=solo``, since CUDA cannot
live in a forked child) calls strategies synchronously. So the engine owns one event-loop
thread, creates ``AsyncLLM.from_engine_args(AsyncEngineArgs(...))`` on it, and each
request runs as tasks on that loop, pushing events into a thread-safe queue that the
strategy's thread iterates.

Each sample is its own ``generate()`` request with ``SamplingParams(n=1, seed=seed+i,
temperature, top_p, max_tokens, stop, logprobs, output_kind=DELTA)``, so any one of them
can be aborted: cancelling its consumer task makes ``AsyncLLM.generate`` call
``abort(request_id)`` (the same path vLLM's API server takes on a client disconnect).
vLLM's prefix cache computes the shared prompt once, so the prompt is billed once per
engine request of n samples, on the first sample reported (whatever order they end in, and
on every path: done, aborted, failed), like the llama_cpp engine.

The prompt is passed as token ids (``TokensPrompt``): the chat template is applied and
tokenized here, once, so vLLM does not tokenize the rendered text again (which adds a
second BOS on Llama / Mistral templates) and ``count_prompt`` is exactly what is billed.

Every sample is reported exactly once, by the task that consumed it: an aborted sample
reports the tokens it had received (a task cancelled before it started reports none).
vLLM's finish reasons ``stop`` / ``length`` / ``abort`` map to themselves; ``error``,
``repetition`` and any other are ``error`` (not answers). A request that raises reports
its partial sample (``error``) and the stream raises once every sample has ended.

vllm is imported only when the engine is constructed.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
)
from workers.engines.registry import register_engine


class VllmParams(BaseModel):
    """Parameters of a ``vllm`` endpoint: the model and ``AsyncEngineArgs`` fields.

    The typed fields are the usual ones; ``engine_args`` passes any other
    ``AsyncEngineArgs`` field through unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    seed: int = 0
    engine_args: dict[str, Any] = Field(default_factory=dict)


@register_engine("vllm", params=VllmParams)
class VllmEngine(Engine):
    """In-process vLLM engine (see the module docstring)."""

    kind = "vllm"
    bills_prompt_per_sample = False

    def __init__(self, params: VllmParams) -> None:
        import vllm
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self.params = params
        self._vllm = vllm
        self._tokens_prompt = TokensPrompt
        self._output_kind = RequestOutputKind.DELTA
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        args = vllm.AsyncEngineArgs(
            model=params.model,
            dtype=params.dtype,
            max_model_len=params.max_model_len,
            gpu_memory_utilization=params.gpu_memory_utilization,
            enforce_eager=params.enforce_eager,
            enable_prefix_caching=params.enable_prefix_caching,
            seed=params.seed,
            **params.engine_args,
        )

        async def make() -> Any:
            # Created on the loop thread: AsyncLLM starts its output handler there.
            return AsyncLLM.from_engine_args(args)

        self._llm = self._call(make())
        self._tokenizer = self._call(self._get_tokenizer())
        self._last_scoring_usage = (0, 0)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _get_tokenizer(self) -> Any:
        tok = self._llm.get_tokenizer()
        if asyncio.iscoroutine(tok):
            tok = await tok
        return tok

    def render(self, prompt: Prompt) -> str:
        """Return the prompt text, with the model's chat template applied to messages."""
        if prompt.text is not None:
            return prompt.text
        return str(
            self._tokenizer.apply_chat_template(
                [dict(m) for m in prompt.messages or ()],
                tokenize=False,
                add_generation_prompt=True,
            )
        )

    def prompt_token_ids(self, prompt: Prompt) -> list[int]:
        """Return the token ids vLLM is given: a raw prompt tokenized as vLLM would (with
        the tokenizer's special tokens), chat messages through the chat template, tokenized
        by it (its BOS once, no second one added)."""
        if prompt.text is not None:
            return list(self._tokenizer.encode(prompt.text))
        ids = self._tokenizer.apply_chat_template(
            [dict(m) for m in prompt.messages or ()],
            tokenize=True,
            add_generation_prompt=True,
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def tokens_prompt(self, ids: list[int]) -> Any:
        """Return vLLM's ``TokensPrompt`` for these ids."""
        return self._tokens_prompt(prompt_token_ids=list(ids))

    def count_prompt(self, prompt: Prompt) -> int:
        return len(self.prompt_token_ids(prompt))

    def sampling_params(self, sampling: SamplingConfig, seed: int, max_tokens: int | None = None):  # noqa: ANN201 - vllm type
        """Return vLLM ``SamplingParams`` for one sample."""
        return self._vllm.SamplingParams(
            n=1,
            seed=seed,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max_tokens or sampling.max_tokens,
            stop=list(sampling.stop) or None,
            # Always ask for the sampled token's log-prob (logprobs=0 gives just that).
            logprobs=sampling.top_logprobs,
            output_kind=self._output_kind,
        )

    def stream(
        self, prompt: Prompt, sampling: SamplingConfig, *, token_events: bool = True
    ) -> GenerationStream:
        if sampling.constrained or sampling.token_texts:
            # Routing sends these only to endpoints that honour them (request_options).
            raise ValueError(
                "the vllm engine cannot honour response_format, tools, token "
                "texts or pass-through request fields"
            )
        return _VllmStream(self, self.prompt_token_ids(prompt), sampling, token_events)

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> dict[str, float]:
        import math

        ids = self.prompt_token_ids(prompt)
        sp = self.sampling_params(SamplingConfig(temperature=0.0, top_logprobs=20), 0, 1)

        async def run() -> Any:
            final = None
            async for out in self._llm.generate(
                self.tokens_prompt(ids), sp, request_id=f"score-{uuid.uuid4()}"
            ):
                final = out
            return final

        out = self._call(run())
        comp = out.outputs[0]
        entries = comp.logprobs[0] if comp.logprobs else {}
        result: dict[str, float] = {}
        for cand in candidates:
            vals = [
                lp.logprob
                for lp in entries.values()
                if (lp.decoded_token or "").strip().lower() == cand.strip().lower()
            ]
            if not vals:
                result[cand] = float("-inf")
            else:
                m = max(vals)
                result[cand] = m + math.log(sum(math.exp(v - m) for v in vals))
        self._last_scoring_usage = (len(out.prompt_token_ids or ids), len(comp.token_ids))
        return result

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)


def _finish_reason(reason: Any) -> FinishReason:
    """Map vLLM's finish reason (``FinishReason`` as a string): ``stop`` / ``length`` /
    ``abort`` are themselves; ``error``, ``repetition`` and anything else end a sample that
    is not an answer."""
    reason = str(reason) if reason is not None else ""
    if reason == "stop":
        return "stop"
    if reason == "length":
        return "length"
    if reason == "abort":
        return "abort"
    return "error"


class _VllmStream(GenerationStream):
    """One ``generate()`` task per sample on the engine's loop, each reporting its sample
    exactly once (``_report``), whatever ended it."""

    def __init__(
        self, engine: VllmEngine, ids: list[int], sampling: SamplingConfig, token_events: bool
    ) -> None:
        self.engine = engine
        self.sampling = sampling
        self.token_events = token_events
        self.timer = Timer()
        base = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        self.seeds = [base + i for i in range(sampling.n)]
        self._q: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self._done: dict[int, SampleOutput] = {}
        self._errors: dict[int, BaseException] = {}
        # Loop-thread state: the tasks and which samples have reported.
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._reported: set[int] = set()
        self._prompt_billed = False
        self.prompt_length = len(ids)
        self.wall_s = 0.0
        self._error: BaseException | None = None
        self._iter: Iterator[StreamEvent] | None = None
        rid = uuid.uuid4().hex
        prompt = engine.tokens_prompt(ids)
        for i in range(sampling.n):
            engine._loop.call_soon_threadsafe(self._spawn, i, prompt, f"{rid}-{i}")

    # -- loop thread -----------------------------------------------------------------

    def _spawn(self, i: int, prompt: Any, request_id: str) -> None:
        task = self.engine._loop.create_task(self._consume(i, prompt, request_id))
        self._tasks[i] = task
        task.add_done_callback(functools.partial(self._on_task_done, i))

    def _cancel(self, i: int) -> None:
        task = self._tasks.get(i)
        if task is not None and not task.done():
            task.cancel()

    def _on_task_done(self, i: int, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never ran its body: it generated nothing.
        self._report(i, self._output(i, [], [], [], [], "abort", 0))

    def _report(self, i: int, out: SampleOutput, error: BaseException | None = None) -> None:
        if i in self._reported:
            return
        self._reported.add(i)
        self._q.put(("done", i, (out, error)))

    def _output(
        self,
        i: int,
        parts: list[str],
        token_ids: list[int],
        lps: list[float],
        tops: list[tuple[float, ...]],
        finish: FinishReason,
        prompt_len: int,
    ) -> SampleOutput:
        return SampleOutput(
            index=i,
            text="".join(parts),
            completion_tokens=len(token_ids),
            finish_reason=finish,
            seed=self.seeds[i],
            prompt_tokens=prompt_len,
            token_ids=token_ids,
            token_logprobs=lps,
            top_logprobs=tops,
            latency_s=self.timer.elapsed(),
            count_method="exact",
        )

    async def _consume(self, i: int, prompt: Any, request_id: str) -> None:
        eng = self.engine
        sp = eng.sampling_params(self.sampling, self.seeds[i])
        parts: list[str] = []
        token_ids: list[int] = []
        lps: list[float] = []
        tops: list[tuple[float, ...]] = []
        finish: FinishReason = "abort"
        # The request reaches vLLM from here on: it may prefill the prompt even if aborted
        # before its first output, so the prompt is billed (once per engine request).
        prompt_len = self.prompt_length
        try:
            async for out in eng._llm.generate(prompt, sp, request_id=request_id):
                prompt_len = len(out.prompt_token_ids or [])
                comp = out.outputs[0]
                new_ids = list(comp.token_ids)
                for j, tok in enumerate(new_ids):
                    entry = comp.logprobs[j] if comp.logprobs and j < len(comp.logprobs) else None
                    lp = entry[tok].logprob if entry and tok in entry else None
                    top: tuple[float, ...] | None = None
                    if entry and self.sampling.top_logprobs:
                        ranked = sorted(
                            (v for v in entry.values() if v.rank is not None),
                            key=lambda v: v.rank,
                        )
                        top = tuple(v.logprob for v in ranked[: self.sampling.top_logprobs])
                        tops.append(top)
                    if lp is not None:
                        lps.append(lp)
                    if self.token_events:
                        delta = comp.text if j == len(new_ids) - 1 else ""
                        self._q.put(("token", i, TokenEvent(i, delta, lp, top)))
                token_ids.extend(new_ids)
                parts.append(comp.text)
                if out.finished:
                    finish = _finish_reason(comp.finish_reason)
        except asyncio.CancelledError:
            # generate() has aborted the request in vLLM; what was received is billed.
            self._report(i, self._output(i, parts, token_ids, lps, tops, "abort", prompt_len))
            return
        except Exception as exc:  # noqa: BLE001 - surfaced to the consumer, which re-raises
            out_ = self._output(i, parts, token_ids, lps, tops, "error", prompt_len)
            self._report(i, out_, exc)
            return
        self._report(i, self._output(i, parts, token_ids, lps, tops, finish, prompt_len))

    # -- consumer thread ---------------------------------------------------------------

    def running(self) -> list[int]:
        return [i for i in range(self.sampling.n) if i not in self._done]

    def abort(self, index: int) -> None:
        if index not in self._done:
            self.engine._loop.call_soon_threadsafe(self._cancel, index)

    def _take(self, i: int, payload: tuple[SampleOutput, BaseException | None]) -> SampleOutput:
        """Record sample ``i``'s report: one engine request bills the prompt once, on the
        first sample reported that saw it."""
        out, error = payload
        if out.prompt_tokens and not self._prompt_billed:
            self._prompt_billed = True
        else:
            out.prompt_tokens = 0
        self._done[i] = out
        if error is not None:
            self._errors[i] = error
            if self._error is None:
                self._error = error
                for j in self.running():
                    self.abort(j)
        return out

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._iter is None:
            self._iter = self._drain()
        return self._iter

    def _drain(self) -> Iterator[StreamEvent]:
        while len(self._done) < self.sampling.n:
            kind, i, payload = self._q.get()
            if kind == "token":
                if i not in self._done:
                    yield payload
            elif i not in self._done:
                yield SampleDone(self._take(i, payload))
        self.wall_s = self.timer.elapsed()
        if self._error is not None:
            raise RuntimeError(f"vllm request failed: {self._error}") from self._error

    def salvage(self, reported: set[int], timeout_s: float = 30.0) -> list[SampleOutput]:
        """Abort every task and collect each one's report from the queue (the iterator may
        have died with the failure)."""
        for i in range(self.sampling.n):
            self.engine._loop.call_soon_threadsafe(self._cancel, i)
        deadline = time.monotonic() + timeout_s
        while len(self._done) < self.sampling.n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                kind, i, payload = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if kind == "done" and i not in self._done:
                self._take(i, payload)
        for i in self.running():  # never answered: nothing known to bill
            self._done[i] = SampleOutput(i, "", 0, "abort", seed=self.seeds[i])
        self.wall_s = self.timer.elapsed()
        return [self._done[i] for i in range(self.sampling.n) if i not in reported]

    def result(self) -> GenerationResult:
        if self.running():
            raise RuntimeError("result() called before the stream ended")
        outs = [self._done[i] for i in range(self.sampling.n)]
        return GenerationResult(
            samples=outs,
            prompt_tokens=sum(o.prompt_tokens for o in outs),
            completion_tokens=sum(o.completion_tokens for o in outs),
            engine_requests=1,
            prompt_length=self.prompt_length,
            wall_s=self.wall_s,
            count_method="exact",
        )
