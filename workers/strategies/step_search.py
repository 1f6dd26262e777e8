"""``step_search``: reward-guided search over reasoning steps.

A solution is built one *step* at a time: the engine continues a partial solution until the
step delimiter (``delimiter``, a blank line by default) or ``step_tokens``. A step scorer
rates each partial solution and the search decides which to extend:

- ``beam``: every kept node is extended by ``expand`` samples; the best ``beam_width``
  children are kept, the rest pruned (step-level beam search).
- ``particle`` (Puri et al. 2025, particle filtering for inference-time scaling):
  ``beam_width`` particles each take one step; particles are resampled in proportion to
  ``softmax(score / resample_temperature)`` (seeded), the ones not drawn are pruned.
- ``best_first`` (A*-style, after A*-decoding): a priority queue of partial solutions by
  score; the best open node is extended by ``expand`` samples; the search ends when the best
  node is a finished solution or the budget of ``max_steps * beam_width`` expansions is spent.

A path is finished when a step comes back empty (the model ended the answer), when it
contains an explicit final answer (``\\boxed{}`` or "the answer is"), or when it reached
``max_tokens``. Step scorers:

- ``logprob``: the policy's own mean token log-prob over the path (free: from the sampling);
- ``confidence``: the mean DeepConf token confidence over the path (top-k log-probs);
- ``prm``: a process reward model behind vLLM's pooling API (see :class:`PoolingPRM`);
  every call is billed as a scorer call with the tokens the server reports.

Every step generated is a billed sample (phase ``step``); the answer is the joined steps of
the best finished path. The trace holds the tree: per step the kept and pruned nodes with
their scores and parents.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from workers.engines.base import Engine, Prompt
from workers.strategies.base import (
    Candidate,
    RunContext,
    SamplingParams,
    Strategy,
    register_strategy,
    token_confidence,
)

_FINAL_RE = re.compile(r"\\boxed\{|answer\s+is", re.IGNORECASE)


@dataclass
class Node:
    """A partial solution: its steps, their token statistics and its score."""

    id: int
    parent: int | None
    steps: list[str]
    tokens: int = 0
    logprobs: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    done: bool = False
    score: float = 0.0
    sample_index: int | None = None

    def text(self, delimiter: str) -> str:
        return delimiter.join(self.steps)

    def view(self, delimiter: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "score": self.score,
            "done": self.done,
            "sample": self.sample_index,
            "text": self.text(delimiter)[-400:],
        }


class StepScorer:
    """Scores partial solutions; ``score_nodes`` may bill scorer calls through ``ctx``."""

    def score_nodes(self, ctx: RunContext, nodes: list[Node], delimiter: str) -> None:
        raise NotImplementedError


class LogprobScorer(StepScorer):
    def score_nodes(self, ctx: RunContext, nodes: list[Node], delimiter: str) -> None:
        for n in nodes:
            n.score = sum(n.logprobs) / len(n.logprobs) if n.logprobs else -math.inf


class ConfidenceScorer(StepScorer):
    def score_nodes(self, ctx: RunContext, nodes: list[Node], delimiter: str) -> None:
        for n in nodes:
            n.score = sum(n.confidences) / len(n.confidences) if n.confidences else 0.0


class PoolingPRM(StepScorer):
    """A process reward model served by vLLM (``vllm serve Qwen/Qwen2.5-Math-PRM-7B
    --runner pooling``; older vLLM: ``--task reward``) or any server with vLLM's pooling API.

    Request: ``POST {url}/pooling`` with ``{"model": model, "messages": [system, user,
    assistant]}`` where the assistant message is the steps each followed by the step tag
    ``<extra_0>`` (Qwen2.5-Math-PRM's format). Response (vLLM ``PoolingResponse``):
    ``{"data": [{"index": 0, "data": [[p_bad, p_good], ...]}], "usage": {"prompt_tokens": N,
    ...}}``, one row per step tag. The node's score aggregates p_good over its steps
    (``last``, ``min`` or ``mean``). ``usage.prompt_tokens`` is billed as scorer prompt tokens.
    """

    SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

    def __init__(
        self, url: str, model: str, aggregate: str = "last", step_tag: str = "<extra_0>"
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.aggregate = aggregate
        self.step_tag = step_tag

    def request(self, question: str, steps: list[str]) -> dict[str, Any]:
        body = "".join(s + self.step_tag for s in steps) or self.step_tag
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": body},
            ],
        }

    def score_nodes(self, ctx: RunContext, nodes: list[Node], delimiter: str) -> None:
        import httpx

        question = ctx.prompt.user_text()
        for n in nodes:
            t = time.perf_counter()
            r = httpx.post(f"{self.url}/pooling", json=self.request(question, n.steps), timeout=60)
            r.raise_for_status()
            payload = r.json()
            usage = payload.get("usage") or {}
            ctx.add_scorer_usage(
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                time.perf_counter() - t,
            )
            rows = payload["data"][0]["data"]
            good = [float(row[-1]) for row in rows] or [0.0]
            if self.aggregate == "min":
                n.score = min(good)
            elif self.aggregate == "mean":
                n.score = sum(good) / len(good)
            else:
                n.score = good[-1]


class StepSearchParams(SamplingParams):
    method: Literal["beam", "particle", "best_first"] = "beam"
    delimiter: str = Field(default="\n\n", min_length=1, max_length=16)
    step_tokens: int = Field(default=48, ge=1, le=4096, description="most tokens per step")
    max_steps: int = Field(default=4, ge=1, le=32)
    beam_width: int = Field(default=2, ge=1, le=16, description="nodes / particles kept")
    expand: int = Field(default=2, ge=1, le=16, description="samples per expanded node")
    scorer: Literal["logprob", "confidence", "prm"] = "logprob"
    top_logprobs: int = Field(default=5, ge=1, le=20)
    prm_url: str = Field(default="", max_length=500, description="base URL of the PRM server")
    prm_model: str = Field(default="Qwen/Qwen2.5-Math-PRM-7B", max_length=200)
    prm_aggregate: Literal["last", "min", "mean"] = "last"
    resample_temperature: float = Field(default=1.0, gt=0, le=100)

    @model_validator(mode="after")
    def _prm_needs_url(self) -> StepSearchParams:
        if self.scorer == "prm" and not self.prm_url.startswith(("http://", "https://")):
            raise ValueError("scorer 'prm' needs prm_url, the http(s) base URL of the server")
        return self


def continuation(engine: Engine, prompt: Prompt, partial: str) -> Prompt:
    """Return a raw prompt that continues ``partial`` as the assistant's reply."""
    render = getattr(engine, "render", None)
    if render is not None:
        text, _ = render(prompt)
    elif prompt.text is not None:
        text = prompt.text
    else:
        assert prompt.messages is not None
        text = "".join(f"{m['role']}: {m['content']}\n" for m in prompt.messages) + "assistant: "
    return Prompt(text=text + partial)


@register_strategy("step_search")
class StepSearch(Strategy):
    Params = StepSearchParams

    def planned_samples(self, params: Any) -> int:
        per_round = params.beam_width * (1 if params.method == "particle" else params.expand)
        return params.max_steps * per_round

    def scorer_calls(self, params: Any) -> int:
        return self.planned_samples(params) if params.scorer == "prm" else 0

    def max_extra_prompt_tokens(self, params: Any) -> int:
        # Every step request re-reads the partial path (at most max_tokens of this model);
        # a PRM reads it in its own tokenizer: allowed 4 of its tokens per policy token.
        path = params.max_tokens + len(params.delimiter) * params.max_steps
        return self.planned_samples(params) * path + self.scorer_calls(params) * 4 * path

    def max_completion_tokens(self, params: Any) -> int:
        return self.planned_samples(params) * min(params.step_tokens, params.max_tokens)

    def _scorer(self, params: Any, scorer: StepScorer | None) -> StepScorer:
        if scorer is not None:
            return scorer
        if params.scorer == "prm":
            return PoolingPRM(params.prm_url, params.prm_model, params.prm_aggregate)
        return ConfidenceScorer() if params.scorer == "confidence" else LogprobScorer()

    def execute(
        self, ctx: RunContext, params: Any, step_scorer: StepScorer | None = None, **extra: Any
    ):
        scorer = self._scorer(params, step_scorer)
        search = _Search(ctx, params, scorer)
        best = search.run()
        ctx.trace.update(search.trace(best))
        if best is None:
            return None, None
        ctx.answer_text = best.text(params.delimiter)
        return best.sample_index, None


class _Search:
    def __init__(self, ctx: RunContext, params: Any, scorer: StepScorer) -> None:
        self.ctx = ctx
        self.p = params
        self.scorer = scorer
        self.next_id = 1
        self.drawn = 0
        self.steps: list[dict[str, Any]] = []
        self.expanded = 0
        self.pruned = 0
        self.budget = StepSearch().planned_samples(params)
        self.rng = np.random.default_rng(params.seed or 0)

    # -- growing the tree ------------------------------------------------------------

    def children(self, node: Node, n: int) -> list[Node]:
        """Sample ``n`` next steps of ``node`` (one engine request); return the new nodes."""
        n = min(n, self.budget - self.drawn)
        if n <= 0 or self.ctx.check_cancel():
            return []
        p = self.p
        partial = node.text(p.delimiter) + (p.delimiter if node.steps else "")
        left = p.max_tokens - node.tokens
        sampling = p.sampling(
            n,
            seed_offset=self.drawn,
            top_logprobs=p.top_logprobs if p.scorer == "confidence" else 1,
        )
        sampling = replace(
            sampling,
            max_tokens=max(1, min(p.step_tokens, left)),
            stop=(*sampling.stop, p.delimiter),
        )
        prompt = continuation(self.ctx.engine, self.ctx.prompt, partial)
        cands = self.ctx.sample(sampling, phase="step", prompt=prompt)
        self.drawn += n
        self.expanded += len(cands)
        return [self.child(node, c) for c in cands]

    def child(self, parent: Node, c: Candidate) -> Node:
        step = c.text.strip("\n")
        node = Node(
            id=self.next_id,
            parent=parent.id,
            steps=[*parent.steps, step] if step.strip() else list(parent.steps),
            tokens=parent.tokens + c.completion_tokens,
            logprobs=parent.logprobs + list(c.token_logprobs),
            confidences=parent.confidences + [token_confidence(t) for t in c.top_logprobs],
            sample_index=c.index,
        )
        self.next_id += 1
        node.done = (
            not step.strip()
            or bool(_FINAL_RE.search(step))
            or node.tokens >= self.p.max_tokens
            or c.aborted
        )
        return node

    def record(self, step: int, kept: list[Node], pruned: list[Node]) -> None:
        self.pruned += len(pruned)
        d = self.p.delimiter
        self.steps.append(
            {
                "step": step,
                "kept": [n.view(d) for n in kept],
                "pruned": [n.view(d) for n in pruned],
            }
        )

    # -- the three searches ------------------------------------------------------------

    def run(self) -> Node | None:
        root = Node(id=0, parent=None, steps=[])
        if self.p.method == "beam":
            return self.beam(root)
        if self.p.method == "particle":
            return self.particles(root)
        return self.best_first(root)

    def best_of(self, nodes: list[Node]) -> Node | None:
        done = [n for n in nodes if n.done and n.steps]
        pool = done or [n for n in nodes if n.steps]
        return max(pool, key=lambda n: (n.score, -n.id)) if pool else None

    def beam(self, root: Node) -> Node | None:
        live, finished = [root], []
        for step in range(1, self.p.max_steps + 1):
            kids: list[Node] = []
            for node in live:
                kids += self.children(node, self.p.expand)
            if not kids:
                break
            self.scorer.score_nodes(self.ctx, kids, self.p.delimiter)
            ranked = sorted(kids, key=lambda n: (-n.score, n.id))
            kept, pruned = ranked[: self.p.beam_width], ranked[self.p.beam_width :]
            self.record(step, kept, pruned)
            finished += [n for n in kept if n.done]
            live = [n for n in kept if not n.done]
            if not live:
                break
        return self.best_of(finished + live)

    def particles(self, root: Node) -> Node | None:
        particles = [root] * self.p.beam_width
        for step in range(1, self.p.max_steps + 1):
            first_new = self.next_id
            moved: list[Node] = []
            for node in particles:
                if node.done:
                    moved.append(node)
                else:
                    moved += self.children(node, 1) or [node]
            fresh = [n for n in moved if n.id >= first_new]
            if not fresh:
                break
            self.scorer.score_nodes(self.ctx, fresh, self.p.delimiter)
            scores = np.array([n.score for n in moved], dtype=float)
            scores = np.where(np.isfinite(scores), scores, -1e9)
            w = np.exp((scores - scores.max()) / self.p.resample_temperature)
            draw = self.rng.choice(len(moved), size=len(moved), replace=True, p=w / w.sum())
            kept_ids = {int(i) for i in draw}
            particles = [moved[int(i)] for i in draw]
            kept = [moved[i] for i in sorted(kept_ids)]
            pruned = [n for i, n in enumerate(moved) if i not in kept_ids and n.id >= first_new]
            self.record(step, kept, pruned)
            if all(n.done for n in particles):
                break
        return self.best_of(particles)

    def best_first(self, root: Node) -> Node | None:
        frontier: list[tuple[float, int, Node]] = [(0.0, 0, root)]
        seen: list[Node] = []
        step = 0
        while frontier and self.drawn < self.budget:
            _, _, node = heapq.heappop(frontier)
            if node.done:
                return node
            step += 1
            kids = self.children(node, self.p.expand)
            if not kids:
                break
            self.scorer.score_nodes(self.ctx, kids, self.p.delimiter)
            seen += kids
            for k in kids:
                heapq.heappush(frontier, (-k.score, k.id, k))
            # Best-first prunes nothing: every child waits in the queue for its turn.
            self.record(step, sorted(kids, key=lambda n: (-n.score, n.id)), [])
        return self.best_of(seen)

    def trace(self, best: Node | None) -> dict[str, Any]:
        return {
            "kind": "search",
            "method": self.p.method,
            "scorer": self.p.scorer,
            "delimiter": self.p.delimiter,
            "steps": self.steps,
            "expanded": self.expanded,
            "pruned": self.pruned,
            "scorer_calls": self.ctx.ledger.scorer_calls,
            "best": None if best is None else best.view(self.p.delimiter),
        }
