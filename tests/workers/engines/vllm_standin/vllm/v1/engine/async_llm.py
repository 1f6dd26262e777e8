"""Stand-in for vllm.v1.engine.async_llm.AsyncLLM (see ../../../../README.md)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

REPLY = "Let me add the numbers carefully one at a time and the answer is 4 ."
BOS, EOS = "<s>", "</s>"


class StandInTokenizer:
    """A word-level tokenizer with a Llama-like chat template: the template text starts
    with the BOS string, and ``encode`` adds a BOS by default (``add_special_tokens``)."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {BOS: 1, EOS: 2}
        self.words: dict[int, str] = {1: BOS, 2: EOS}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.vocab) + 1
            self.words[self.vocab[piece]] = piece
        return self.vocab[piece]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        pieces = [p for p in re.split(r"(<s>|</s>|\s+)", text) if p and not p.isspace()]
        ids = [self._id(p) for p in pieces]
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        text = BOS + "".join(f" <|{m['role']}|> {m['content']}" for m in conversation)
        if add_generation_prompt:
            text += " <|assistant|>"
        # Like transformers: the template carries its own BOS, tokenized without adding one.
        return self.encode(text, add_special_tokens=False) if tokenize else text


class AsyncLLM:
    #: Per-seed script: {"finish_reason": r, "after": n} ends the request after n tokens
    #: with reason r; {"raise_after": n} raises after n tokens.
    SCRIPT: ClassVar[dict[int, dict[str, Any]]] = {}
    STEP_S: ClassVar[float] = 0.01
    #: abort() sends the ids to the engine core process and awaits it (a ZMQ round trip).
    ABORT_S: ClassVar[float] = 0.2
    last: ClassVar[AsyncLLM | None] = None

    def __init__(self, args: AsyncEngineArgs) -> None:
        self.args = args
        self.tokenizer = StandInTokenizer()
        self.prompts: list[Any] = []  # what generate() was given
        self.prompt_ids: dict[str, list[int]] = {}  # what vLLM would have prefilled
        self.generated: dict[str, int] = {}  # tokens generated per request id
        self.aborted: list[str] = []
        self.dead = False
        AsyncLLM.last = self

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, **kwargs: Any) -> AsyncLLM:
        return cls(engine_args)

    async def get_tokenizer(self) -> StandInTokenizer:
        return self.tokenizer

    async def abort(self, request_id: str | list[str], internal: bool = False) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        await asyncio.sleep(self.ABORT_S)
        self.aborted.extend(ids)

    def shutdown(self) -> None:
        self.dead = True

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        prompt_text: str | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any = None,
        priority: int = 0,
        data_parallel_rank: int | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        self.prompts.append(prompt)
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)  # vLLM adds the tokenizer's special tokens
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
        elif isinstance(prompt, dict) and "prompt" in prompt:
            ids = self.tokenizer.encode(prompt["prompt"])
        else:
            raise ValueError(f"unsupported prompt {type(prompt).__name__}")
        self.prompt_ids[request_id] = ids
        self.generated[request_id] = 0
        script = self.SCRIPT.get(int(sampling_params.seed or 0), {})
        words = REPLY.split(" ")
        delta = sampling_params.output_kind == RequestOutputKind.DELTA
        try:
            sent: list[int] = []
            for step, word in enumerate(words):
                await asyncio.sleep(self.STEP_S)
                if "raise_after" in script and step >= script["raise_after"]:
                    raise RuntimeError("scripted engine failure")
                tok = self.tokenizer._id(word)
                sent.append(tok)
                self.generated[request_id] += 1
                reason = None
                if "after" in script and len(sent) >= script["after"]:
                    reason = script["finish_reason"]
                elif len(sent) >= sampling_params.max_tokens:
                    reason = "length"
                elif step == len(words) - 1:
                    reason = "stop"
                logprobs = None
                if sampling_params.logprobs is not None:
                    logprobs = [{tok: Logprob(-0.25, rank=1, decoded_token=word)}]
                    for k in range(int(sampling_params.logprobs)):
                        logprobs[0][1000 + k] = Logprob(-2.0 - k, rank=2 + k, decoded_token="x")
                yield RequestOutput(
                    request_id=request_id,
                    prompt=prompt_text,
                    prompt_token_ids=ids,
                    prompt_logprobs=None,
                    outputs=[
                        CompletionOutput(
                            index=0,
                            text=(" " + word) if delta or step else word,
                            token_ids=[tok] if delta else list(sent),
                            cumulative_logprob=None,
                            logprobs=logprobs,
                            finish_reason=reason,
                        )
                    ],
                    finished=reason is not None,
                    num_cached_tokens=0,
                )
                if reason is not None:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id, internal=True)
            raise
