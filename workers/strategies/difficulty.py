"""``difficulty_adaptive``: a cheap greedy probe decides how much compute a prompt gets
(DiffAdapt-style: Liu et al. 2025, easy / normal / hard from the trace's entropy).

1. The probe: one greedy sample (``probe_tokens`` at most) with top-k log-probs; its
   features are the mean token entropy (over the renormalised top-k), its length and the
   prompt's task tag.
2. A small logistic classifier estimates p(the probe's answer is right) from those features
   (:class:`DifficultyClassifier`; its default is a hand-set prior, replaced by
   :func:`fit_classifier` on the query log, refit with the router). ``p >= easy_above`` is
   *easy*, ``p < hard_below`` is *hard*, the rest *normal*.
3. Each class has its own strategy (``easy`` / ``normal`` / ``hard``: a strategy slug with
   params, or ``probe`` to answer with the probe itself). Default: easy = the probe,
   normal = majority@3, hard = short-1@8.

The probe is a billed sample (phase ``probe``); the class's samples follow it. The trace
records the features, p, the class and what ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.strategies.base import (
    RunContext,
    SamplingParams,
    Strategy,
    first_usable,
    get_strategy,
    register_strategy,
)

CLASSES = ("easy", "normal", "hard")


def topk_entropy(top: Sequence[float]) -> float:
    """Entropy (nats) of the top-k distribution of one token, renormalised."""
    if not top:
        return 0.0
    m = max(top)
    w = [math.exp(x - m) for x in top]
    z = sum(w)
    return -sum((x / z) * math.log(x / z) for x in w if x > 0)


class DifficultyClassifier(BaseModel):
    """p(probe right) = sigmoid(intercept + w_entropy * entropy + w_length * log1p(length)
    + w_task[task]); ``fitted_on`` = 0 marks the hand-set prior."""

    model_config = ConfigDict(extra="forbid")

    intercept: float = 2.0
    w_entropy: float = -3.0
    w_length: float = -0.2
    w_task: dict[str, float] = Field(default_factory=dict)
    easy_above: float = Field(default=0.7, gt=0, le=1)
    hard_below: float = Field(default=0.3, ge=0, lt=1)
    fitted_on: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> DifficultyClassifier:
        if self.hard_below > self.easy_above:
            raise ValueError("hard_below must be <= easy_above")
        return self

    def p_right(self, entropy: float, length: int, task: str = "") -> float:
        z = (
            self.intercept
            + self.w_entropy * entropy
            + self.w_length * math.log1p(length)
            + self.w_task.get(task, 0.0)
        )
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def classify(self, p: float) -> str:
        if p >= self.easy_above:
            return "easy"
        if p < self.hard_below:
            return "hard"
        return "normal"


def fit_classifier(
    rows: Sequence[dict[str, Any]],
    *,
    easy_above: float = 0.7,
    hard_below: float = 0.3,
    min_rows: int = 20,
) -> DifficultyClassifier:
    """Fit the classifier on logged probes: rows of ``entropy``, ``length``, ``task`` and
    ``probe_correct`` (0/1). Raise ValueError with fewer than ``min_rows`` rows or one class."""
    from sklearn.linear_model import LogisticRegression

    if len(rows) < min_rows:
        raise ValueError(f"need at least {min_rows} graded probes, got {len(rows)}")
    y = [int(bool(r["probe_correct"])) for r in rows]
    if len(set(y)) < 2:
        raise ValueError("every graded probe has the same outcome: nothing to learn")
    tasks = sorted({str(r.get("task") or "") for r in rows} - {""})
    x = [
        [float(r["entropy"]), math.log1p(float(r["length"]))]
        + [1.0 if (r.get("task") or "") == t else 0.0 for t in tasks]
        for r in rows
    ]
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    coef = [float(c) for c in model.coef_[0]]
    return DifficultyClassifier(
        intercept=float(model.intercept_[0]),
        w_entropy=coef[0],
        w_length=coef[1],
        w_task={t: coef[2 + i] for i, t in enumerate(tasks)},
        easy_above=easy_above,
        hard_below=hard_below,
        fitted_on=len(rows),
    )


class ClassStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(description="a strategy slug, or 'probe' to answer with the probe")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> ClassStrategy:
        if self.strategy == "probe":
            if self.params:
                raise ValueError("'probe' takes no params")
            return self
        if self.strategy in ("difficulty_adaptive", "cascade"):
            raise ValueError(f"a difficulty class cannot run {self.strategy}")
        self.params = get_strategy(self.strategy).validate_params(self.params).model_dump()
        return self


class DifficultyParams(SamplingParams):
    """The sampling fields are the classes' business; ``probe_tokens`` caps the probe."""

    probe_tokens: int = Field(default=128, ge=1, le=4096)
    top_logprobs: int = Field(default=5, ge=2, le=20)
    classifier: DifficultyClassifier = Field(default_factory=DifficultyClassifier)
    easy: ClassStrategy = Field(default_factory=lambda: ClassStrategy(strategy="probe"))
    normal: ClassStrategy = Field(
        default_factory=lambda: ClassStrategy(
            strategy="majority_vote", params={"n": 3, "max_tokens": 128}
        )
    )
    hard: ClassStrategy = Field(
        default_factory=lambda: ClassStrategy(
            strategy="short_m_at_k", params={"k": 8, "m": 1, "max_tokens": 128}
        )
    )
    mode: Literal["classify"] = "classify"

    @model_validator(mode="after")
    def _no_own_sampling(self) -> DifficultyParams:
        for name, f in SamplingParams.model_fields.items():
            if getattr(self, name) != f.get_default(call_default_factory=True):
                raise ValueError(f"{name} belongs in each class's params, not here")
        return self


@register_strategy("difficulty_adaptive")
class DifficultyAdaptive(Strategy):
    Params = DifficultyParams

    def _class(self, params: Any, name: str) -> tuple[Strategy, SamplingParams] | None:
        spec: ClassStrategy = getattr(params, name)
        if spec.strategy == "probe":
            return None
        sub = get_strategy(spec.strategy)
        return sub, sub.validate_params(spec.params)

    def _classes(self, params: Any) -> list[tuple[Strategy, SamplingParams]]:
        return [c for c in (self._class(params, n) for n in CLASSES) if c is not None]

    def planned_samples(self, params: Any) -> int:
        return 1 + max((s.planned_samples(p) for s, p in self._classes(params)), default=0)

    def scorer_calls(self, params: Any) -> int:
        return max((s.scorer_calls(p) for s, p in self._classes(params)), default=0)

    def max_completion_tokens(self, params: Any) -> int:
        rest = max((s.max_completion_tokens(p) for s, p in self._classes(params)), default=0)
        return params.probe_tokens + rest

    def max_prompt_billings(self, params: Any) -> int:
        return 1 + max((s.max_prompt_billings(p) for s, p in self._classes(params)), default=0)

    def max_extra_prompt_tokens(self, params: Any) -> int:
        return max((s.max_extra_prompt_tokens(p) for s, p in self._classes(params)), default=0)

    def execute(self, ctx: RunContext, params: Any, task: str = "", **extra: Any):
        probe_sampling = SamplingParams(temperature=0.0, max_tokens=params.probe_tokens).sampling(
            1, top_logprobs=params.top_logprobs
        )
        probe = ctx.sample(probe_sampling, phase="probe")
        if not probe or ctx.cancelled:
            return first_usable(ctx.candidates), None
        first = probe[0]
        entropies = [topk_entropy(t) for t in first.top_logprobs]
        entropy = sum(entropies) / len(entropies) if entropies else 0.0
        clf = params.classifier
        p = clf.p_right(entropy, first.completion_tokens, task or "")
        label = clf.classify(p)
        chosen_sub = self._class(params, label)
        ctx.trace.update(
            {
                "kind": "difficulty",
                "features": {
                    "entropy": entropy,
                    "length": first.completion_tokens,
                    "task": task or "",
                },
                "p_probe_right": p,
                "class": label,
                "thresholds": {"easy_above": clf.easy_above, "hard_below": clf.hard_below},
                "classifier_fitted_on": clf.fitted_on,
                "probe_answer": first.extracted_answer,
                "ran": "probe" if chosen_sub is None else chosen_sub[0].slug,
            }
        )
        if chosen_sub is None:
            return first.index, None
        sub, sub_params = chosen_sub
        child = ctx.child(ctx.engine, ctx.endpoint)
        chosen, votes = sub.execute(child, sub_params, **extra)
        ctx.absorb(child)
        ctx.trace["sub_trace"] = child.trace or None
        return chosen, votes
