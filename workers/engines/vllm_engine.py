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
engine request of n samples, on the first sample, like the llama_cpp engine.

vllm is imported only when the engine is constructed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import secrets
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.engines.base import (
    Engine,
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
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        self.params = params
        self._vllm = vllm
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

    def count_prompt(self, prompt: Prompt) -> int:
        return len(self._tokenizer.encode(self.render(prompt), add_special_tokens=False))

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
        return _VllmStream(self, self.render(prompt), sampling, token_events)

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> dict[str, float]:
        import math

        text = self.render(prompt)
        sp = self.sampling_params(SamplingConfig(temperature=0.0, top_logprobs=20), 0, 1)

        async def run() -> Any:
            final = None
            async for out in self._llm.generate(text, sp, request_id=f"score-{uuid.uuid4()}"):
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
        self._last_scoring_usage = (len(out.prompt_token_ids or []), len(comp.token_ids))
        return result

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)


class _VllmStream(GenerationStream):
    def __init__(
        self, engine: VllmEngine, text: str, sampling: SamplingConfig, token_events: bool
    ) -> None:
        self.engine = engine
        self.sampling = sampling
        self.token_events = token_events
        self.timer = Timer()
        base = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        self.seeds = [base + i for i in range(sampling.n)]
        self._q: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self._done: dict[int, SampleOutput] = {}
        self._tasks: dict[int, concurrent.futures.Future[None]] = {}
        self.prompt_length = 0
        self.wall_s = 0.0
        self._iter: Iterator[StreamEvent] | None = None
        rid = uuid.uuid4().hex
        for i in range(sampling.n):
            self._tasks[i] = asyncio.run_coroutine_threadsafe(
                self._consume(i, text, f"{rid}-{i}"), engine._loop
            )

    async def _consume(self, i: int, text: str, request_id: str) -> None:
        eng = self.engine
        sp = eng.sampling_params(self.sampling, self.seeds[i])
        parts: list[str] = []
        token_ids: list[int] = []
        lps: list[float] = []
        tops: list[tuple[float, ...]] = []
        finish = "abort"
        prompt_len = 0
        try:
            async for out in eng._llm.generate(text, sp, request_id=request_id):
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
                    finish = "length" if comp.finish_reason == "length" else "stop"
        except asyncio.CancelledError:
            finish = "abort"
        except Exception as exc:  # noqa: BLE001 - surfaced to the consumer, which re-raises
            self._q.put(("error", i, exc))
            return
        self._q.put(
            (
                "done",
                i,
                SampleOutput(
                    index=i,
                    text="".join(parts),
                    completion_tokens=len(token_ids),
                    finish_reason=finish,  # type: ignore[arg-type]
                    seed=self.seeds[i],
                    prompt_tokens=prompt_len,
                    token_ids=token_ids,
                    token_logprobs=lps,
                    top_logprobs=tops,
                    latency_s=self.timer.elapsed(),
                    count_method="exact",
                ),
            )
        )

    def running(self) -> list[int]:
        return [i for i in range(self.sampling.n) if i not in self._done]

    def abort(self, index: int) -> None:
        fut = self._tasks.get(index)
        if fut is not None and index not in self._done:
            fut.cancel()

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._iter is None:
            self._iter = self._drain()
        return self._iter

    def _drain(self) -> Iterator[StreamEvent]:
        error: BaseException | None = None
        while len(self._done) < self.sampling.n:
            try:
                kind, i, payload = self._q.get(timeout=0.05)
            except queue.Empty:
                # A task cancelled before it started never reports: close it here.
                for j, fut in self._tasks.items():
                    if j not in self._done and fut.cancelled():
                        out = SampleOutput(j, "", 0, "abort", seed=self.seeds[j])
                        self._done[j] = out
                        yield SampleDone(out)
                continue
            if kind == "token":
                yield payload
            elif kind == "done":
                self._done[i] = payload
                yield SampleDone(payload)
            else:
                error = payload
                self._done[i] = SampleOutput(i, "", 0, "abort", seed=self.seeds[i])
                for j in self.running():
                    self.abort(j)
        self.wall_s = self.timer.elapsed()
        if error is not None:
            raise RuntimeError(f"vllm request failed: {error}") from error

    def result(self) -> GenerationResult:
        if self.running():
            raise RuntimeError("result() called before the stream ended")
        outs = [self._done[i] for i in range(self.sampling.n)]
        prompt_len = max((o.prompt_tokens for o in outs), default=0)
        # One engine request of n samples: the prompt is billed once, on sample 0.
        for o in outs:
            o.prompt_tokens = 0
        if outs:
            outs[0].prompt_tokens = prompt_len
        return GenerationResult(
            samples=outs,
            prompt_tokens=prompt_len,
            completion_tokens=sum(o.completion_tokens for o in outs),
            engine_requests=1,
            prompt_length=prompt_len,
            wall_s=self.wall_s,
            count_method="exact",
        )
